"""ExactInversion of bijective nets, with a stability report (seed 001)."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from ..batching import batched_attribute
from ...blocks.plan import model_mode_guard
from ...blocks.chain import Chain, build_chain
from ..base import InversionError, InversionMethod, make_generator
from ..model import ModelAdapter, param_dtype_device

__all__ = ["ExactInversion", "seed001_loss", "stability_report"]


def seed001_loss(outputs: Tensor, labels: Tensor, var_weight: float = 1.0) -> Tensor:
    """Seed 001's training loss for invertible nets: the negative log-likelihood of the outputs
    under ``N(2 * label, 1)`` in every dimension, plus a penalty on the batch variance of the
    outputs moving away from 1 (our reading of "the variance penalty").

    Args:
        outputs (Tensor): ``(N, d)``.
        labels (Tensor): ``(N,)`` ints.
        var_weight (float): weight of the variance penalty.
    """
    mu = 2.0 * labels.to(outputs.dtype)[:, None]
    nll = 0.5 * (outputs - mu).pow(2).mean()
    var = outputs.var(dim=0, unbiased=False).mean()
    return nll + var_weight * (var - 1.0).pow(2)


def _bijective_chain(model: nn.Module, input_shape, what="ExactInversion") -> Chain:
    from ...blocks.plan import trace_leaf_modules

    dtype, device = param_dtype_device(model)
    trace = trace_leaf_modules(model, torch.zeros((2, *input_shape), dtype=dtype, device=device))
    if not trace.composes:
        raise ValueError(f"{what} needs a chain of modules")
    chain = build_chain(trace.calls, float("inf"), device, what)
    for layer in chain.layers:
        W = layer.linear.weight
        if W.shape[0] != W.shape[1] or layer.inv.rank < W.shape[0]:
            raise ValueError(f"{what}: '{layer.name}' ({tuple(W.shape)}, rank {layer.inv.rank}) "
                             "is not a square invertible Linear; the net is not bijective")
    return chain


def _invert(chain: Chain, y: Tensor):
    """Exact inverse of the chain on ``y`` (float64, LU solves); returns ``(x, bad, why)``."""
    bad = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    why = [""] * len(y)
    for layer in reversed(chain.layers):
        a = Chain.invert_elems(layer.post, y, bad, why)
        y = torch.linalg.solve(layer.inv.weight, (a - layer.inv.bias).T).T
    return Chain.invert_elems(chain.pre, y, bad, why), bad, why


class ExactInversion(InversionMethod):
    r"""Exact inversion of bijective nets: square invertible Linear layers and invertible
    activations (seed 001's nets: four blocks of ``Linear(784, 784) + LeakyReLU``).

    ``attribute(target=outputs)`` reconstructs the inputs that produced ``outputs``, by
    LU solves in float64 and exact activation inverses. :meth:`sample_outputs` draws seed 001's
    class-conditional Gaussian outputs (mean ``2 * label``, variance 1) to generate inputs.
    :func:`stability_report` measures how far a small output perturbation moves the
    reconstruction (seed 001 found that reconstructions break under perturbations below 1e-3).
    A sample verifies when ``||f(x) - y|| / ||y|| <= rtol`` (its convergence delta).

    Args:
        forward_func (nn.Module): the bijective net.
        input_shape (tuple of int, optional): shape of one input.
    """

    _no_forward_args = "the bijective chain is read from the model's layers; a model of one input is needed"

    @batched_attribute
    def attribute(self, inputs=None, target: Optional[Tensor] = None, *, rtol: float = 1e-4,
                  return_convergence_delta: bool = False, allow_unverified: bool = False):
        r"""Reconstruct inputs from outputs.

        Args:
            inputs: must be None.
            target (Tensor): outputs ``(N, d)`` to invert.
            rtol (float): relative tolerance of the verification.

        Returns:
            Tensor or (Tensor, Tensor): inputs ``(N, *input_shape)`` (and relative errors).
        """
        if inputs is not None:
            raise ValueError("`inputs` must be None; pass the outputs as `target`")
        if not isinstance(target, Tensor) or target.dim() != 2 or not target.is_floating_point():
            raise ValueError("`target` must be a float tensor of outputs (N, d)")
        if not 0 < rtol < 1:
            raise ValueError(f"`rtol` must be in (0, 1), got {rtol}")
        dtype, device = self.adapter.dtype_device
        with self.adapter.guard():
            chain = _bijective_chain(self.adapter.traceable, self.input_shape)
            if target.shape[1] != chain.layers[-1].linear.out_features:
                raise ValueError(f"`target` must have {chain.layers[-1].linear.out_features} columns")
            x, bad, why = _invert(chain, target.detach().to(torch.float64, copy=True).to(chain.device))
            x = x.reshape(len(x), *self.input_shape).to(dtype=dtype, device=device)
            with torch.no_grad():
                out = self.adapter(x).double()
            t = target.double().to(out.device)
            err = ((out - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-300)).cpu()
            ok = (err <= rtol) & ~bad.cpu() & torch.isfinite(err)
            if int(ok.sum()) < len(x) and not allow_unverified:
                reasons: Dict[str, int] = {}
                for o, w in zip(ok.tolist(), why):
                    if not o:
                        k = w or f"the reconstruction's relative output error exceeds rtol={rtol}"
                        reasons[k] = reasons.get(k, 0) + 1
                raise InversionError("ExactInversion: some outputs could not be inverted.",
                                     int(ok.sum()), len(x), reasons, x, ok, err)
            return (x, err) if return_convergence_delta else x

    def sample_outputs(self, labels, gen=None, dim: Optional[int] = None) -> Tensor:
        """Seed 001's class-conditional outputs: ``N(2 * label, 1)`` in every dimension.

        Args:
            labels (sequence of int or Tensor): ``(N,)``.
            gen (int or torch.Generator, optional): seed.
            dim (int, optional): output size (default: the last Linear's).

        Returns:
            Tensor: ``(N, dim)`` float64.
        """
        lab = torch.as_tensor(labels, dtype=torch.float64).reshape(-1)
        if dim is None:
            dim = [m for m in self.adapter.traceable.modules() if isinstance(m, nn.Linear)][-1].out_features
        g = make_generator(gen)
        return 2.0 * lab[:, None] + torch.randn((len(lab), dim), generator=g, dtype=torch.float64)


def stability_report(model: nn.Module, input_shape=None, outputs: Optional[Tensor] = None,
                     eps: float = 1e-3, n: int = 64, seed: int = 0) -> Dict[str, object]:
    """How much a bijective net's inverse amplifies output perturbations (seed 001).

    For every layer: the Linear's condition number and smallest singular value, and the largest
    slope of the activation inverse (1/negative_slope for LeakyReLU). The predicted amplification
    is the bound ``prod_k L_k / sigma_min(W_k)``, with ``L_k`` the inverse's Lipschitz constant.
    The measured one is ``max ||x(y + d) - x(y)|| / ||d||`` over random perturbations ``d`` of norm
    ``eps`` at ``n`` outputs: the model's outputs on random inputs, or the given ``outputs``.

    Returns:
        dict: ``layers`` (list of dicts), ``predicted_amplification``,
        ``measured_amplification``, ``eps``.
    """
    shape = tuple(input_shape or getattr(model, "input_shape", ()) or ())
    if not shape:
        raise ValueError("`input_shape` is required")
    with model_mode_guard(model):
        chain = _bijective_chain(model, shape, "stability_report")
        layers: List[Dict[str, object]] = []
        bound = 1.0
        for layer in chain.layers:
            s = layer.inv.singular_values
            slope = 1.0
            for _, m, _e in layer.post:
                if isinstance(m, nn.LeakyReLU):
                    slope *= 1.0 / m.negative_slope
                elif not isinstance(m, (nn.Identity, nn.Dropout)):
                    slope = float("nan")  # no global Lipschitz constant for saturating inverses
            layers.append({"layer": layer.name, "cond": float(s[0] / s[-1]), "sigma_min": float(s[-1]),
                           "inverse_slope": slope, "layer_bound": slope / float(s[-1])})
            bound *= slope / float(s[-1])
        g = torch.Generator().manual_seed(seed)
        if outputs is None:
            adapter = ModelAdapter(model, shape)
            with torch.no_grad():
                outputs = adapter(torch.rand((n, *shape), generator=g)).double()
        y = outputs.double().to(chain.device)
        d = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device)
        d = d / d.norm(dim=1, keepdim=True) * eps
        x0, _, _ = _invert(chain, y)
        x1, _, _ = _invert(chain, y + d)
        measured = float(((x1 - x0).norm(dim=1) / eps).max())
    return {"layers": layers, "predicted_amplification": bound, "measured_amplification": measured,
            "eps": eps}
