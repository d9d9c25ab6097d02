"""LayerInversion: inputs whose activation at a layer matches a target activation."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .batching import batched_attribute
from ..blocks.plan import layer_output
from ..solvers.lm import levenberg_marquardt, levenberg_marquardt_cg
from .base import InversionError, InversionMethod, make_generator, random_starts
from .goal import check_pos, check_prob

__all__ = ["LayerInversion"]


class LayerInversion(InversionMethod):
    r"""Reconstruct inputs from a layer's activations: find ``x`` with ``layer(x) ~= target``.

    The residual is the whole activation, ``(a(x) - a*) / ||a*||``, solved from random starts by
    Levenberg-Marquardt. With more than 64 activation values per sample, the matrix-free solver
    (:func:`~captum_invert.solvers.levenberg_marquardt_cg`: conjugate gradients on
    ``J J^T + lambda I``) is used, so the cost does not grow with the layer's width. A sample is
    verified when its relative error ``||a(x) - a*|| / ||a*||`` is at most ``rtol``. That error is
    the convergence delta. The forward pass stops at the layer (a forward hook), so the layers
    above it cost nothing.

    This is the optimization baseline of seed 003 (Dosovitskiy & Brox) and reconstructs images
    from embeddings as in seed 001.

    Args:
        forward_func (nn.Module): the model.
        layer (nn.Module or str): the module (or its name in ``named_modules()``) whose output is
            matched.
        input_shape (tuple of int, optional): shape of one input.
        output, select, solver: see :class:`~captum_invert.InversionMethod` (the layer's
            activation is matched, so ``output`` and ``select`` only matter for the probe).
    """

    def __init__(self, forward_func, layer: Union[nn.Module, str], input_shape=None, **options) -> None:
        if not isinstance(forward_func, nn.Module):
            raise ValueError("LayerInversion needs an nn.Module (it hooks `layer`)")
        super().__init__(forward_func, input_shape, **options)
        if self.adapter.traceable is None:
            raise ValueError("LayerInversion hooks `layer`, but the model is compiled (TorchScript or "
                             "torch.export): pass the eager nn.Module")
        if isinstance(layer, str):
            mods = dict(forward_func.named_modules())
            if layer not in mods:
                raise ValueError(f"`layer`: the model has no module named {layer!r}")
            layer = mods[layer]
        if not isinstance(layer, nn.Module) or not any(m is layer for m in forward_func.modules()):
            raise ValueError("`layer` must be a module of the model (or its name)")
        self.layer = layer

    def activation(self, x: Tensor) -> Tensor:
        """The layer's output on ``x`` (the model stops there), in eval mode (restored)."""
        with self.adapter.guard():
            return layer_output(self.adapter.traceable, self.layer, self.adapter.cast(x))

    @batched_attribute
    def attribute(
        self,
        inputs: Optional[Tensor] = None,
        target: Optional[Tensor] = None,
        *,
        n_samples: Optional[int] = None,
        max_iter: int = 50,
        rtol: float = 1e-2,
        input_range: Optional[Tuple[float, float]] = None,
        seed=None,
        init_std: float = 1.0,
        max_retries: int = 3,
        cg_iters: int = 20,
        return_convergence_delta: bool = False,
        allow_unverified: bool = False,
    ):
        r"""Find inputs whose activation at ``layer`` matches ``target``.

        Args:
            inputs (Tensor, optional): with ``target=None``, the images ``(N, *input_shape)``
                whose activations are inverted (they are *not* used as starts); with a
                ``target``, optional starting points.
            target (Tensor, optional): activations ``(N, *activation_shape)`` to match.
            n_samples (int, optional): samples per target row when ``target`` has one row.
            max_iter (int): Levenberg-Marquardt iterations per start (50, not the 30 of the
                class targets: every activation value is a residual to match, not one log-odds).
            rtol (float): relative tolerance a sample must meet, in (0, 1).
            input_range (tuple, optional): ``(lo, hi)`` box for the inputs.
            seed (int or torch.Generator, optional): reproducibility.
            init_std (float): random starts are ``N(0, init_std^2)`` (uniform in ``input_range``).
            max_retries (int): new random starts for samples that fail.
            cg_iters (int): conjugate-gradient iterations of the matrix-free solver.
            return_convergence_delta (bool): also return the per-sample relative error.
            allow_unverified (bool): return samples above ``rtol`` instead of raising.

        Returns:
            Tensor or (Tensor, Tensor): inputs ``(N, *input_shape)`` and, with
            ``return_convergence_delta``, the relative errors ``(N,)``.
        """
        check_prob("rtol", rtol)
        check_pos("max_iter", max_iter, allow_zero=True, integer=True)
        check_pos("max_retries", max_retries, allow_zero=True, integer=True)
        check_pos("init_std", init_std)
        input_range = self._check_range(input_range)
        mdt, device = self.adapter.dtype_device
        dtype = self.adapter.solver_dtype  # half / bfloat16 models: the solver runs in float32
        if inputs is not None and (not isinstance(inputs, Tensor) or tuple(inputs.shape[1:]) != self.input_shape):
            raise ValueError(f"`inputs` must be a tensor of shape (N, {', '.join(map(str, self.input_shape))})")
        gen = make_generator(seed)
        with self.adapter.guard():
            if target is None:
                if inputs is None:
                    raise ValueError("give `target` activations, or `inputs` whose activations are inverted")
                with torch.no_grad():
                    target = self.activation(inputs.to(dtype=dtype, device=device))
                starts = None
            else:
                if not isinstance(target, Tensor) or not target.is_floating_point():
                    raise ValueError("`target` must be a float tensor of activations (N, ...)")
                with torch.no_grad():
                    a_shape = tuple(self.activation(torch.zeros((1, *self.input_shape), dtype=dtype, device=device)).shape[1:])
                if tuple(target.shape[1:]) != a_shape:
                    raise ValueError(f"`target` must have shape (N, {', '.join(map(str, a_shape))}), "
                                     f"got {tuple(target.shape)}")
                starts = inputs
            target = target.detach().to(dtype=dtype, device=device)
            if n_samples is not None:
                check_pos("n_samples", n_samples, integer=True)
                if len(target) != 1 and len(target) != n_samples:
                    raise ValueError(f"`n_samples` ({n_samples}) must match `target`'s {len(target)} rows")
                target = target.expand(n_samples, *target.shape[1:])
            N = len(target)
            t_flat = target.reshape(N, -1)
            t_norm = t_flat.norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
            m = t_flat.shape[1]
            scale = t_norm / (m ** 0.5)

            def res(xx, idx):
                a = layer_output(self.adapter.traceable, self.layer, xx.to(mdt)).to(dtype)  # hot path
                return (a.reshape(len(xx), -1) - t_flat[idx]) / scale[idx, None]

            def done(xx, rr, idx, aux):
                return rr.norm(dim=1) / (m ** 0.5) <= rtol

            x = torch.zeros((N, *self.input_shape), dtype=dtype, device=device)
            err = torch.full((N,), float("inf"), dtype=torch.float64)
            ok = torch.zeros(N, dtype=torch.bool)
            for attempt in range(max_retries + 1):
                todo = (~ok).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                if attempt == 0 and starts is not None:
                    x0 = starts[todo].detach().to(dtype=dtype, device=device)
                else:
                    x0 = random_starts(len(todo), self.input_shape, input_range, gen, init_std, dtype, device)
                r_fn = lambda xx, idx, todo=todo: res(xx, todo.to(device)[idx])  # noqa: E731
                d_fn = lambda xx, rr, idx, aux: done(xx, rr, idx, aux)  # noqa: E731
                if m > 64:
                    sol = levenberg_marquardt_cg(r_fn, x0, max_iter, d_fn, input_range, cg_iters=cg_iters)
                else:
                    sol = levenberg_marquardt(r_fn, x0, max_iter, d_fn, input_range)
                with torch.no_grad():
                    e = (self.activation(sol.x).to(dtype).reshape(len(todo), -1) - t_flat[todo.to(device)]).norm(dim=1) / t_norm[todo.to(device)]
                better = e.cpu().double() < err[todo]
                x[todo[better].to(device)] = sol.x[better.to(sol.x.device)].detach()
                err[todo] = torch.minimum(err[todo], e.cpu().double())
                ok[todo] = err[todo] <= rtol
            self.last_stats = {"max_rel_error": float(err.max()), "mean_rel_error": float(err.mean())}
            n_ok = int(ok.sum())
            if n_ok < N and not allow_unverified:
                raise InversionError(
                    f"LayerInversion: {N - n_ok} sample(s) stayed above rtol={rtol} (pass "
                    "allow_unverified=True to get them anyway, or raise rtol / max_iter).",
                    n_ok, N, {f"relative activation error above rtol after {max_retries + 1} start(s) "
                              f"(worst {float(err.max()):.3g})": N - n_ok}, x, ok.clone(), err)
            x = self.adapter.cast(x)
            return (x, err) if return_convergence_delta else x

    def compute_convergence_delta(self, attributions: Tensor, target: Tensor = None, *,
                                  min_prob: float = 0.9, atol: float = 0.02) -> Tensor:
        """Relative error ``||a(x) - target|| / ||target||`` per sample, ``(N,)``.

        Args:
            attributions (Tensor): inputs ``(N, *input_shape)``.
            target (Tensor): the activations ``(N, *activation_shape)`` they should give.
            min_prob, atol: the common signature's keywords (unused: the delta is relative).

        Returns:
            Tensor: ``(N,)`` float64.
        """
        if target is None:
            raise ValueError("`target` activations are required")
        with self.adapter.guard(), torch.no_grad():
            a = self.activation(attributions).reshape(len(attributions), -1).double()
            t = target.reshape(len(target), -1).double().to(a.device)
        return ((a - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-300)).cpu()
