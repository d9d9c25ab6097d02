"""BackwardPassInversion: the seed paper's analytic back-pass (BACKPASSINV), made feasible on
deep nets by anchoring it on a root of the network."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..blocks.activations import ElementwiseInverse, get_inverse, interior, registered_types
from ..blocks.linear import LinearInverse, linear_inverse
from ..blocks.piecewise import LP_MAX_ENTRIES, constraint_count, linearize, lp_fits, split_piecewise
from ..blocks.plan import LeafTrace
from .diagnosis import check_reference
from .batching import batched_attribute
from .base import (
    Goal, InversionMethod, count_reasons, make_generator, random_starts,
)
from .region import PreimageRegion, assemble, box_rows, class_rows, dist_rows

__all__ = ["BackwardPassInversion"]


@dataclass
class _LP:
    """A piecewise-linear trunk (linearized per anchor) and, on mixed nets, the analytic head
    above it."""
    trunk: list
    head: Optional["_Chain"]
    n_rows: int

_Elem = Tuple[str, nn.Module, ElementwiseInverse]
_NOT_INVERTIBLE_HINT = {
    nn.ReLU: "ReLU maps every negative input to 0, so it has no inverse",
    nn.ReLU6: "ReLU6 clips, so it has no inverse",
    nn.Hardtanh: "Hardtanh clips, so it has no inverse",
    nn.GELU: "GELU is not monotone",
    nn.SiLU: "SiLU is not monotone",
}


@dataclass
class _Layer:
    name: str
    linear: nn.Linear
    inv: LinearInverse
    post: List[_Elem] = field(default_factory=list)


def _push_box(lo: Tensor, hi: Tensor, elems: Sequence[_Elem], margin: float):
    """Image of the box (lo, hi) under the elementwise modules; with ``margin`` each bounded
    activation range is shrunk by :func:`interior` first."""
    for _, m, e in elems:
        a, b = e.forward(m, lo), e.forward(m, hi)
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        if margin > 0:
            lm, hm = interior(e, m, margin, lo)
            lo, hi = torch.maximum(lo, lm), torch.minimum(hi, hm)
    return lo, hi


class _Chain:
    """A model proven to be ``pre-elementwise -> [Linear -> elementwise*]+ -> (log)softmax?``."""

    def __init__(self, pre: List[_Elem], layers: List[_Layer], device) -> None:
        self.pre, self.layers, self.device = pre, layers, device
        self.boxes = []  # per layer: (lo, hi, lo_m, hi_m) of the Linear's input, or None for layer 0
        self.margin = None

    def set_boxes(self, margin: float, input_range) -> None:
        self.margin = margin
        self.boxes = []
        f64 = dict(dtype=torch.float64, device=self.device)
        for k, layer in enumerate(self.layers):
            n = layer.linear.in_features
            if k == 0:
                if input_range is None:
                    lo, hi = torch.full((n,), -math.inf, **f64), torch.full((n,), math.inf, **f64)
                else:
                    lo = torch.full((n,), float(input_range[0]), **f64)
                    hi = torch.full((n,), float(input_range[1]), **f64)
                elems = self.pre
            else:
                lo, hi = torch.full((n,), -math.inf, **f64), torch.full((n,), math.inf, **f64)
                elems = self.layers[k - 1].post
            t = _push_box(lo, hi, elems, 0.0)
            mgn = _push_box(lo, hi, elems, margin)
            self.boxes.append((*t, *mgn))
        out = torch.full((self.layers[-1].linear.out_features,), math.inf, **f64)
        self.out_box = (*_push_box(-out, out, self.layers[-1].post, 0.0),
                        *_push_box(-out, out, self.layers[-1].post, margin))

    def forward64(self, x: Tensor):
        """Float64 pass: the inputs and outputs of every Linear, and the output (pre-softmax)."""
        h = x.reshape(len(x), -1).to(dtype=torch.float64, device=self.device)
        for _, m, e in self.pre:
            h = e.forward(m, h)
        refs, pres = [], []
        for layer in self.layers:
            refs.append(h)
            h = h @ layer.inv.weight.T + layer.inv.bias
            pres.append(h)
            for _, m, e in layer.post:
                h = e.forward(m, h)
        return (refs, pres), h

    @staticmethod
    def invert_elems(elems: Sequence[_Elem], y: Tensor, bad: Tensor, why: List[str]):
        """Invert elementwise modules (last first); samples with a value outside a module's
        range are flagged in ``bad`` with the module named in ``why``."""
        for name, m, e in reversed(elems):
            lo, hi = (t.to(y) for t in e.output_range(m))
            out = ~((y > lo) & (y < hi)).all(1) & ~bad
            for i in out.nonzero().squeeze(1).tolist():
                why[i] = (f"a value left the range ({float(lo.min()):.4g}, {float(hi.max()):.4g}) "
                          f"of '{name}' ({type(m).__name__}), so its inverse is undefined")
            bad |= out
            if bool(bad.any()):  # feed flagged samples a harmless in-range value
                y = torch.where(bad[:, None], e.forward(m, torch.zeros_like(y[:1])), y)
            y = e.inverse(m, y)
        return y


def build_chain(calls, cond_num: float, device, what: str) -> _Chain:
    """A :class:`_Chain` from executed leaf calls (Flatten, Linear, registered activations, an
    optional final Softmax/LogSoftmax); any other module raises a ``ValueError`` naming it."""
    calls = list(calls)
    if calls and isinstance(calls[-1].module, (nn.Softmax, nn.LogSoftmax)):
        calls = calls[:-1]
    pre: List[_Elem] = []
    layers: List[_Layer] = []
    for c in calls:
        m = c.module
        if isinstance(m, nn.Flatten):
            if layers and c.in_shape != c.out_shape:
                raise ValueError(f"'{c.name}' (Flatten) reshapes between Linear layers; not supported")
            continue
        if isinstance(m, nn.Linear):
            if len(c.in_shape) != 2:
                raise ValueError(
                    f"'{c.name}' (Linear) is applied to a tensor of shape {c.in_shape}; "
                    f"{what} needs (N, features). Use ForwardPassInversion."
                )
            layers.append(_Layer(c.name, m, linear_inverse(m, cond_num, device)))
            continue
        entry = get_inverse(m)
        if entry is None:
            hint = _NOT_INVERTIBLE_HINT.get(type(m), "it is neither nn.Linear nor a registered "
                                            "invertible elementwise module")
            if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
                hint = "softmax is supported only as the last module"
            known = ", ".join(sorted(t.__name__ for t in registered_types()))
            raise ValueError(
                f"{what} cannot invert module '{c.name}' ({type(m).__name__}): "
                f"{hint}. Invertible modules: Linear, Flatten, {known} "
                "(add one with captum_invert.blocks.register_activation). "
                "Use ForwardPassInversion, which works on any differentiable model."
            )
        try:
            entry.check(m)
        except ValueError as e:
            raise ValueError(f"module '{c.name}': {e}. Use ForwardPassInversion.") from None
        (layers[-1].post if layers else pre).append((c.name, m, entry))
    if not layers:
        raise ValueError(f"{what} found no nn.Linear to invert")
    return _Chain(pre, layers, device)


class BackwardPassInversion(InversionMethod):
    r"""Analytic backward-pass inversion of a chain of Linear layers and invertible activations
    (BACKPASSINV of the seed paper, "Inverting Neural Networks", seed 000).

    For a target distribution ``p`` the network output must be ``log p + c`` for some constant
    ``c`` (softmax is invertible up to a constant). Each activation is inverted exactly on its
    range (:mod:`captum_invert.blocks.activations`), each ``Linear`` ``a = W h + b`` by the SVD
    pseudo-inverse with singular values below ``sigma_1 / cond_num`` zeroed, plus a random vector
    of its null space (``std`` times the norm of the pseudo-inverse solution), so that one target
    yields many inputs.

    How a sample is made:

    1. *Analytic pass* (the paper's algorithm). ``c`` is chosen so that the output lies inside
       the last activation's range with a ``margin`` and the pseudo-inverse preimage of the last
       Linear has the smallest norm. Walking down, each null-space vector is shortened along
       its ray so the layer's input stays inside the next activation inverse's domain (and, at
       the input, inside ``input_range``, by alternating projections). On shallow nets this
       verifies directly.
    2. *Anchored pass*, for the samples the analytic pass cannot make. On deep nets the target
       is usually not in the image of the deeper layers: a layer-by-layer pass then leaves an
       activation's domain, whatever null-space vector it picks. A root ``x*`` of the whole net
       is found by damped Newton / Levenberg-Marquardt steps from a random start (one residual
       for a class target, on its log-odds; C residuals for a distribution). Then the
       back-pass runs again through the layers, now projecting the root's own activations onto
       each preimage: every null-space vector keeps the output exactly, and because the anchor
       lies inside every domain it can be shortened until the sample does too. If a lower layer
       still leaves its domain, the noise of that sample is scaled down (1, 1/4, 1/16, 0).
    3. *Verification*: every sample goes through the caller's model (its dtype, its device);
       failures are retried from new starts ``max_retries`` times, then
       :class:`~captum_invert.InversionError` says how many verified and why the others did not
       (which layer, which constraint).

    Linear layers that are not of full row rank after the cap (expanding layers, e.g. 64 -> 512)
    cannot reach every target; no null-space noise is added above the lowest of them, so the
    anchor's output is kept exactly.

    **Piecewise-linear nets** (ReLU, Hardtanh/ReLU6, MaxPool, Conv, AvgPool, BatchNorm2d: the
    modules an analytic inverse does not exist for) are inverted by linear programming, the
    seed paper's stated next step. From each anchor (step 2) the net is fixed to its activation
    pattern and becomes affine; the inputs that keep the pattern and satisfy a linear sufficient
    form of the goal form a :class:`~captum_invert.PreimageRegion`, every point of which verifies.
    Its Chebyshev centre comes from one linear program (HiGHS, through
    ``scipy.optimize.linprog``); the sample is a hit-and-run point of the region (``spread``).
    On mixed nets (a ReLU trunk under a SELU head) the head is inverted analytically from the
    anchor, with its null-space noise, and the region keeps the head's input at that value.
    :meth:`region` returns the region itself. The dense constraint matrix limits the size:
    ``d`` inputs times (units + pool pairs + ``2 d``) rows at most ``LP_MAX_ENTRIES`` (2e8
    float64 entries, 1.6 GB): a 28x28 CNN of a few thousand units fits, a 3x224x224 net does not
    (a ``ValueError`` points to GeneralizedInversion, whose LM handles it).

    Args:
        forward_func (nn.Module): a chain of ``Flatten``, ``Linear``, registered activations
            (SELU, LeakyReLU, ELU, CELU, PReLU, Tanh, Sigmoid, Softplus, Identity), ``Dropout``
            and ``BatchNorm1d`` (run in eval mode), optionally ending in ``Softmax`` or
            ``LogSoftmax``; below them, optionally a piecewise-linear trunk (Linear, Conv1d/2d,
            ReLU, LeakyReLU, Hardtanh/ReLU6, MaxPool1d/2d, AvgPool, AdaptiveAvgPool2d,
            BatchNorm). Anything else (GELU, attention, a residual addition) raises a
            ``ValueError`` pointing to :class:`~captum_invert.ForwardPassInversion`.
        input_shape (tuple of int, optional): shape of one input; see
            :class:`~captum_invert.InversionMethod`.
        output, select, solver: see :class:`~captum_invert.InversionMethod`.

    Raises:
        ValueError: the model is not an ``nn.Module`` whose layers can be read: a plain callable,
            or a TorchScript / ``torch.export`` module (use ForwardPassInversion or
            GeneralizedInversion, which run it as an opaque function).
    """

    def __init__(self, forward_func, input_shape=None, **options) -> None:
        super().__init__(forward_func, input_shape, **options)
        if self.adapter.traceable is None:
            what = "is compiled (TorchScript or torch.export), so its layers cannot be read" if (
                self.adapter.compiled) else "is not an nn.Module, so its layers cannot be read"
            raise ValueError(f"BackwardPassInversion inverts the model layer by layer, but the model "
                             f"({type(forward_func).__name__}) {what}. Use ForwardPassInversion or "
                             "GeneralizedInversion, which run it as an opaque function, or pass the eager "
                             "nn.Module")

    def _chain(self, trace: LeafTrace, cond_num: float) -> _Chain:
        name = type(self.forward_func).__name__
        if not trace.composes:
            raise ValueError(
                f"BackwardPassInversion needs a model that is a chain of modules, but running the "
                f"leaf modules that {name} executes, in order, does not reproduce its output "
                "(functional code such as F.relu or a residual addition in forward()?). Use "
                "ForwardPassInversion, which works on any differentiable model."
            )
        device = self.adapter.device
        chain = build_chain(trace.calls, cond_num, device, "BackwardPassInversion")
        n0 = chain.layers[0].linear.in_features
        if math.prod(self.input_shape) != n0:
            raise ValueError(f"`input_shape` {self.input_shape} holds {math.prod(self.input_shape)} "
                             f"values but the first Linear takes {n0}")
        return chain

    # --- the analytic pieces ------------------------------------------------------------
    @staticmethod
    def _output_target(chain: _Chain, P: Tensor, atol: float):
        """Logits ``log P + c`` with ``c`` inside the last activation's range (with margin) and
        minimizing the norm of the last Linear's pseudo-inverse preimage. Returns ``(z, ok)``."""
        P = P.clamp_min(atol / (2 * P.shape[1]))
        logp = (P / P.sum(1, keepdim=True)).log()
        lo, hi, lo_m, hi_m = chain.out_box
        c_min = (lo_m - logp).amax(1)
        c_max = (hi_m - logp).amin(1)
        ok = c_min < c_max
        spread = (logp.amax(1) - logp.amin(1)) * 2 + 2
        centre = -logp.mean(1)
        a = torch.where(torch.isfinite(c_min), c_min, torch.where(torch.isfinite(c_max), c_max - spread, centre - spread))
        b = torch.where(torch.isfinite(c_max), c_max, torch.where(torch.isfinite(c_min), c_min + spread, centre + spread))
        b = torch.where(ok, b, a + 1)
        last = chain.layers[-1]
        bad = torch.zeros(len(P), dtype=torch.bool, device=P.device)

        def cost(c):
            z = logp + c[:, None]
            y = _Chain.invert_elems(last.post, z, bad.clone(), [""] * len(z))
            return last.inv.solution_norm(y)

        g = (math.sqrt(5) - 1) / 2
        for _ in range(30):  # golden section, batched (bracket / 1e6)
            x1, x2 = b - g * (b - a), a + g * (b - a)
            left = cost(x1) < cost(x2)
            a, b = torch.where(left, a, x1), torch.where(left, x2, b)
        c = (a + b) / 2
        return logp + c[:, None], ok

    @staticmethod
    def _tail_linear_target(chain: _Chain, z: Tensor) -> Tensor:
        """The target of the chain's first Linear's output when its last output is ``z``:
        inverts the elementwise modules and the Linear layers above the first one by their
        minimum-norm solutions (used for the size of null-space offsets)."""
        bad = torch.zeros(len(z), dtype=torch.bool, device=z.device)
        y = z
        for k in reversed(range(1, len(chain.layers))):
            y = chain.layers[k].inv.solve(_Chain.invert_elems(chain.layers[k].post, y, bad, [""] * len(z)))
        return _Chain.invert_elems(chain.layers[0].post, y, bad, [""] * len(z))

    @staticmethod
    def _walk(chain: _Chain, y_out: Tensor, refs: Optional[List[Tensor]], scale: Tensor,
              std: float, gen: torch.Generator, input_range):
        """Walk down from the output ``y_out`` (B, C). ``refs = (inputs, outputs)`` of every
        Linear on the anchor: each preimage of Linear k is the projection of ``inputs[k]`` (None:
        the minimum-norm solution). ``scale`` (B,) multiplies the null-space noise. Returns
        ``(x_flat, bad, why)``."""
        B = len(y_out)
        bad = torch.zeros(B, dtype=torch.bool, device=y_out.device)
        why = [""] * B
        L = len(chain.layers)
        deficient = [k for k, l in enumerate(chain.layers) if not l.inv.full_row_rank]
        top_noise = min(deficient) if deficient else L - 1
        y = y_out
        for k in reversed(range(L)):
            layer, inv = chain.layers[k], chain.layers[k].inv
            a = _Chain.invert_elems(layer.post, y, bad, why)
            if bool(bad.all()):  # nothing left to invert
                return torch.zeros(B, chain.layers[0].linear.in_features, dtype=y.dtype,
                                   device=y.device), bad, why
            if refs is None:
                base = inv.solve(a)
            else:
                base = refs[0][k] + (a - refs[1][k]) @ inv.pinv.T
            d = inv.null.shape[1]
            noisy = bool(d and std > 0 and k <= top_noise)
            if noisy:
                v = inv.null_noise(B, gen)
                mn_norm = base.norm(dim=1) if refs is None else inv.solution_norm(a)
                v *= (std * mn_norm[:, None] / math.sqrt(d)) * scale[:, None]
            lo, hi, lo_m, hi_m = chain.boxes[k]
            if k == 0 and input_range is None:
                h = base + v if noisy else base
            elif k == 0:
                h = BackwardPassInversion._box_affine(base + v if noisy else base, lo, hi, inv, a)
                viol = (h - h.clamp(lo, hi)).abs().amax(1) > 0
                h = h.clamp(lo, hi)
                out = viol & ~bad
                for i in out.nonzero().squeeze(1).tolist():
                    why[i] = ("no point of the first Linear's preimage was found inside "
                              f"`input_range` {tuple(input_range)}")
                bad |= out
            else:
                out = ~((base > lo) & (base < hi)).all(1) & ~bad
                for i in out.nonzero().squeeze(1).tolist():
                    why[i] = (f"the preimage of '{layer.name}' (Linear) left the range of the "
                              f"activation below it (the domain of its inverse)")
                bad |= out
                if noisy:  # shorten v along its ray so base + s v stays in the margin box
                    room = torch.where(v > 0, torch.maximum(hi_m, base), torch.minimum(lo_m, base)) - base
                    s = (room / v).nan_to_num_(nan=math.inf).amin(1).clamp_(0.0, 1.0)
                    h = base + s[:, None] * v
                else:
                    h = base
            y = h
        x = _Chain.invert_elems(chain.pre, y, bad, why)
        return x, bad, why

    @staticmethod
    def _box_affine(h: Tensor, lo: Tensor, hi: Tensor, inv: LinearInverse, a: Tensor,
                    iters: int = 60) -> Tensor:
        """Alternating projections between the box and ``{h : h W^T + b = a}``; ends on the
        affine set (the caller clamps and verifies)."""
        t = a - inv.bias
        for _ in range(iters):
            c = h.clamp(lo, hi)
            if bool((c == h).all()):
                break
            h = c + (t - c @ inv.weight.T) @ inv.pinv.T
        return h

    # --- the public call -----------------------------------------------------------------
    @batched_attribute
    def attribute(
        self,
        inputs: Optional[Tensor] = None,
        target=None,
        *,
        n_samples: Optional[int] = None,
        std: float = 0.1,
        cond_num: float = 100.0,
        seed=None,
        input_range: Optional[Tuple[float, float]] = None,
        min_prob: float = 0.9,
        atol: float = 0.02,
        margin: float = 0.05,
        max_iter: int = 50,
        max_retries: int = 3,
        init_std: float = 0.1,
        return_convergence_delta: bool = False,
        allow_unverified: bool = False,
        reference=None,
        spread: float = 1.0,
    ):
        r"""Generate inputs that the model maps to ``target``.

        Args:
            inputs (Tensor, optional): ``(N, *input_shape)`` starting points of the anchor
                solve (step 2); default random: uniform in ``input_range`` when given, else
                ``N(0, init_std^2)``.
            target (int, sequence of int, or Tensor): a class index (probability >=
                ``min_prob``), one class per sample, or a class distribution ``(C,)`` /
                ``(N, C)`` (max-abs difference <= ``atol``).
            n_samples (int, optional): number of samples (default: 1, or the length of a
                per-sample ``target`` / of ``inputs``).
            std (float): null-space noise, relative to the norm of each Linear's
                pseudo-inverse solution (the paper's ``std``). 0 gives minimum-norm preimages.
            cond_num (float): cap on each Linear's condition number (> 1).
            seed (int or torch.Generator, optional): makes the result reproducible.
            input_range (tuple of float, optional): ``(lo, hi)``; every returned input lies in it.
            min_prob (float): for class targets, the probability the class must reach.
            atol (float): for distribution targets, the max-abs tolerance.
            margin (float): in (0, 0.5); each bounded activation range is shrunk by this fraction
                of the distance from its value at 0 to its asymptote when sampling null-space
                noise and choosing the softmax constant (keeps samples out of saturation).
            max_iter (int): Levenberg-Marquardt iterations of each anchor solve (50, not the 30 of
                ForwardPassInversion: an anchor aims at the middle of the class region, not just
                past ``min_prob``, so that the region around it has room).
            max_retries (int): new random starts for samples that fail.
            init_std (float): standard deviation of random starts without ``input_range``.
            return_convergence_delta (bool): also return the per-sample delta.
            allow_unverified (bool): return failed samples too instead of raising.
            reference (Tensor or tuple, optional): real inputs ``(M, *input_shape)``, or a pair
                ``(inputs, labels)``, e.g. a sample of the training set. Used only when samples
                fail: the :class:`~captum_invert.InversionError`'s diagnosis then says how many
                of them (of the target's class) reach the target.
            spread (float): piecewise-linear nets only: in ``[0, 1]``, how far from the
                region's Chebyshev centre towards a uniform point of the region each sample
                lies (see :meth:`PreimageRegion.sample`). The regions are kept in
                ``self.last_regions`` (one per sample, None where no sample verified; with
                ``internal_batch_size``, those of the last batch).

        Returns:
            Tensor or (Tensor, Tensor): inputs ``(N, *input_shape)`` in the model's dtype and
            device; with ``return_convergence_delta``, also ``delta`` ``(N,)``: the max-abs gap
            between the model's probabilities and the aimed-at distribution (``1 - p_target``
            for a class target).

        Raises:
            ValueError: a bad argument, a model that is not an invertible chain, or a target out
                of reach of the output activation's bounded range (see ForwardPassInversion).
            InversionError: some samples did not verify (and ``allow_unverified`` is False).
        """
        self._check_analytic_args(std, cond_num, margin)
        self._check_solver_args(max_iter, max_retries, init_std)
        input_range = self._check_range(input_range)
        n_inputs = self._check_inputs(inputs)
        reference = check_reference(reference, self.input_shape)
        gen = make_generator(seed)
        with self.adapter.guard():
            kind, n_classes, trace = self._probe()
            self._need_softmax(kind, "BackwardPassInversion")
            goal = self._parse_target(target, n_samples, n_classes, min_prob, atol, n_inputs)
            tail = self._output_tail(trace)
            self._check_reachable(goal, tail, "BackwardPassInversion", allow_unverified, trace, kind)
            lp = self._lp_setup(trace, cond_num, margin)
            if lp is not None:
                if not 0.0 <= float(spread) <= 1.0:
                    raise ValueError(f"`spread` must be in [0, 1], got {spread}")
                return self._run_lp(lp, kind, goal, std, gen, input_range, max_iter, max_retries, init_std,
                                    inputs, spread, return_convergence_delta, allow_unverified, tail, reference)
            chain = self._chain(trace, cond_num)
            chain.set_boxes(margin, input_range)
            return self._run(chain, kind, goal, std, gen, input_range, max_iter, max_retries,
                             init_std, inputs, return_convergence_delta, allow_unverified, tail, reference)

    # --- piecewise-linear nets: linear programming ------------------------------------------
    def _lp_setup(self, trace: LeafTrace, cond_num: float, margin: float) -> Optional[_LP]:
        """The LP plan of a model with piecewise-linear modules, or None (a plain chain)."""
        calls = list(trace.calls)
        if calls and isinstance(calls[-1].module, (nn.Softmax, nn.LogSoftmax)):
            calls = calls[:-1]
        split = split_piecewise(calls)
        if split is None:
            return None
        if not trace.composes:
            raise ValueError(
                f"BackwardPassInversion needs a model that is a chain of modules, but running the leaf "
                f"modules that {type(self.forward_func).__name__} executes, in order, does not reproduce its "
                "output (functional code such as F.relu or a residual addition in forward()?). Use "
                "GeneralizedInversion or ForwardPassInversion, which work on any differentiable model.")
        trunk, rest = split
        plain = (nn.Linear, nn.Flatten, nn.Identity, nn.Dropout)
        head = None
        if all(isinstance(c.module, plain) for c in rest):
            trunk = trunk + rest  # the logits are affine on each region: one LP block
        else:
            device = self.adapter.device
            head = build_chain(rest, cond_num, device, "BackwardPassInversion")
            head.set_boxes(margin, None)
        d = math.prod(self.input_shape)
        rows = constraint_count(trunk) + 2 * d
        if not lp_fits(trunk, d):
            raise ValueError(
                f"the piecewise-linear part of this model is too large for the dense linear program: {d} "
                f"inputs x {rows} constraint rows ({d * rows:.3g} float64 entries; the limit is "
                f"{LP_MAX_ENTRIES:.3g}). Use GeneralizedInversion or ForwardPassInversion, whose "
                "Levenberg-Marquardt solver needs no constraint matrix.")
        return _LP(trunk, head, rows)

    def _region_at(self, lp: _LP, anchor: Tensor, goal: Goal, input_range, std: float, gen):
        """The region around one anchor: ``(PreimageRegion, '')`` or ``(None, reason)``."""
        shape = self.input_shape
        lin = linearize(lp.trunk, anchor.reshape(shape))
        af = anchor.reshape(-1).to(torch.float64)
        lo, hi = (None, None) if input_range is None else input_range
        box = ("box",) + box_rows(len(af), lo, hi, af)
        if lp.head is None:
            if goal.labels is not None:
                rows = class_rows(lin, af, int(goal.labels[0]), goal.min_prob)
            else:
                rows = dist_rows(lin, af, goal.dist[0], goal.atol)
                if rows is None:
                    return None, "the anchor is not within atol of the target distribution"
            reg = assemble(lin, [("class", *rows), box], shape, af)
            c, r = reg.chebyshev_ball()
            if c is None or not r > 0:
                return None, ("the anchor's activation pattern holds no ball of inputs that reach the "
                              f"target (linear program: {reg.lp_message}; radius {r:.3g})")
            return reg, ""
        head = lp.head
        h_a = (lin.G @ af + lin.h)[None]
        refs, y_out = head.forward64(h_a.to(head.device))
        one = torch.ones(1, dtype=torch.float64, device=head.device)
        msg = ""
        for s in (1.0, 0.25, 0.0625, 0.0):
            hs, bad, why = self._walk(head, y_out, refs, one * s, std, gen, None)
            if bool(bad.any()):
                msg = why[0]
                continue
            hs = hs[0].to(torch.float64).cpu()
            if head.pre:  # the trunk's output itself is fixed
                E, f = lin.G, hs - lin.h
            else:  # the input of the head's first Linear is fixed
                W = head.layers[0].inv.weight.to(torch.float64).cpu()
                E, f = W @ lin.G, W @ (hs - lin.h)
            reg = assemble(lin, [box], shape, af, E, f)
            c, r = reg.chebyshev_ball()
            if c is not None and r > 0:
                return reg, ""
            msg = (f"no ball of the anchor's activation pattern maps to the analytic head's preimage "
                   f"(linear program: {reg.lp_message})")
        return None, msg

    def _run_lp(self, lp: _LP, kind, goal: Goal, std, gen, input_range, max_iter, max_retries, init_std,
                inputs, spread, return_delta, allow_unverified, tail, reference):
        dtype, device = self.adapter.dtype_device
        N, shape = goal.n, self.input_shape
        x = torch.zeros((N, *shape), dtype=dtype, device=device)
        ok = torch.zeros(N, dtype=torch.bool)
        delta = torch.ones(N, dtype=torch.float64)
        why = [""] * N
        regions: List[Optional[PreimageRegion]] = [None] * N
        # distribution anchors aim at half the tolerance: the rest is the region's room
        anchor_goal = goal if goal.dist is None else Goal(None, goal.dist, goal.n_classes, goal.min_prob,
                                                          goal.atol / 2)
        stats = self.last_stats = {"route": "lp", "anchors": 0, "regions": 0, "retries": 0}
        for attempt in range(max_retries + 1):
            todo = (~ok).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            stats["retries"] = attempt
            if attempt == 0 and inputs is not None:
                x0 = inputs[todo].detach()
            else:
                x0 = random_starts(len(todo), shape, input_range, gen, init_std, dtype, device)
            sol, found, _, _ = self._solve_to_goal(x0, anchor_goal.subset(todo), kind, max_iter, input_range,
                                                   tail=tail)
            stats["anchors"] += int(found.sum())
            for j, i in enumerate(todo.tolist()):
                if not found[j]:
                    why[i] = (f"the Levenberg-Marquardt anchor solve did not reach the target in {max_iter} "
                              f"iterations from {max_retries + 1} random start(s)")
                    continue
                gi = goal.subset(torch.tensor([i]))
                reg, reason = self._region_at(lp, sol.x[j].detach().cpu(), gi, input_range, std, gen)
                if reg is None:
                    why[i] = reason
                    continue
                stats["regions"] += 1
                xs = reg.sample(1, gen, spread).to(dtype=dtype, device=device)
                ok_s, d_s, _ = self._verify(xs, gi, kind, input_range)
                x[i], delta[i] = xs[0], d_s[0]
                if bool(ok_s[0]):
                    ok[i], why[i], regions[i] = True, "", reg
                else:
                    why[i] = "a point of the region did not verify on the model (rounding beyond the spare)"
        self.last_regions = regions
        return self._finish(x, ok, delta, count_reasons([w if not o else "" for w, o in zip(why, ok.tolist())]),
                            allow_unverified, return_delta, "BackwardPassInversion", goal, kind, input_range,
                            reference)

    def region(self, target, *, seed=None, input_range: Optional[Tuple[float, float]] = None,
               inputs: Optional[Tensor] = None, min_prob: float = 0.9, atol: float = 0.02,
               std: float = 0.1, cond_num: float = 100.0, margin: float = 0.05, max_iter: int = 50,
               max_retries: int = 3, init_std: float = 0.1) -> PreimageRegion:
        r"""A certified preimage region of a piecewise-linear net: a polytope of inputs, every
        point of which the model maps to ``target``.

        The anchor is a Levenberg-Marquardt root from ``inputs`` (or a random start); see
        :class:`~captum_invert.PreimageRegion` for the rows and the guarantee.

        Args:
            target (int or Tensor): a class index, or a distribution ``(C,)``.
            seed (int or torch.Generator, optional): reproducibility.
            input_range (tuple, optional): ``(lo, hi)``: the box is part of the region.
            inputs (Tensor, optional): ``(1, *input_shape)`` or ``input_shape``: the anchor's start.
            min_prob, atol, std, cond_num, margin, max_iter, max_retries, init_std: as in
                :meth:`attribute`.

        Returns:
            PreimageRegion

        Raises:
            ValueError: the model has no piecewise-linear module (its back-pass is analytic and
                the preimage of one output is an affine set, not a polytope), or a bad argument.
            InversionError: no anchor gave a region.
        """
        if isinstance(target, (list, tuple)) or (isinstance(target, Tensor) and target.dim() > 1):
            raise ValueError("`target` of region() must be one class index or one distribution (C,)")
        if inputs is not None:
            inputs = inputs.reshape(1, *self.input_shape) if inputs.dim() == len(self.input_shape) else inputs
            if len(inputs) != 1:
                raise ValueError(f"`inputs` of region() must hold one start, got {len(inputs)}")
        with self.adapter.guard():
            _, _, trace = self._probe()
            if trace is None or self._lp_setup(trace, cond_num, margin) is None:
                raise ValueError("region() needs a model with piecewise-linear modules (ReLU, MaxPool, Conv, ...); "
                                 "this model is an analytic chain, whose preimage of a point is an affine set: "
                                 "use attribute()")
        self.attribute(inputs, target, n_samples=1, std=std, cond_num=cond_num, seed=seed, input_range=input_range,
                       min_prob=min_prob, atol=atol, margin=margin, max_iter=max_iter, max_retries=max_retries,
                       init_std=init_std)
        return self.last_regions[0]

    def _run(self, chain, kind, goal: Goal, std, gen, input_range, max_iter, max_retries,
             init_std, inputs, return_delta, allow_unverified, tail, reference=None):
        dtype, device = self.adapter.dtype_device
        N = goal.n
        shape = self.input_shape
        P = goal.aim().to(chain.device)
        # 1. analytic pass
        z, ok_c = self._output_target(chain, P, goal.atol)
        ones = torch.ones(N, dtype=torch.float64, device=chain.device)
        x, bad, why = self._walk(chain, z, None, ones, std, gen, input_range)
        for i in (~ok_c).nonzero().squeeze(1).tolist():
            why[i] = "the target distribution is outside the range of the output activation"
        x = x.reshape(N, *shape)
        ok, delta, _ = self._verify(x, goal, kind, input_range)
        ok &= ~(bad | ~ok_c).cpu()
        for i in (~ok & torch.tensor([not w for w in why])).nonzero().squeeze(1).tolist():
            why[i] = "the analytic pass did not verify (condition-number cap or rounding)"
        why_analytic = list(why)
        stats = self.last_stats = {"analytic": int(ok.sum()), "anchored": 0, "anchor_failed": 0, "retries": 0}
        # 2. anchored pass for the rest
        for attempt in range(max_retries + 1):
            todo = (~ok).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            stats["retries"] = attempt
            g = goal.subset(todo)
            if attempt == 0 and inputs is not None:
                x0 = inputs[todo].detach()
            else:
                x0 = random_starts(len(todo), shape, input_range, gen, init_std, dtype, device)
            # an anchor that already verifies is kept even if it stopped short of the aim
            sol, found, _, _ = self._solve_to_goal(x0, g, kind, max_iter, input_range,
                                             tail=tail)
            stats["anchor_failed"] += int((~found).sum())
            for j, i in enumerate(todo.tolist()):
                if not found[j]:
                    why[i] = (f"the Levenberg-Marquardt anchor solve did not reach the target in "
                              f"{max_iter} iterations from {max_retries + 1} random start(s); "
                              f"the analytic pass: {why_analytic[i]}")
            idx_f = found.nonzero().squeeze(1)
            if idx_f.numel() == 0:
                continue
            anchors = sol.x[idx_f.to(sol.x.device)]
            rows = todo[idx_f]
            refs, y_out = chain.forward64(anchors)
            pending = torch.arange(len(rows))
            for s in (1.0, 0.25, 0.0625, 0.0):
                if pending.numel() == 0:
                    break
                sc = torch.full((len(pending),), s, dtype=torch.float64, device=chain.device)
                pd = pending.to(chain.device)
                sub = ([r[pd] for r in refs[0]], [r[pd] for r in refs[1]])
                xs, bad_s, why_s = self._walk(chain, y_out[pd], sub, sc, std, gen, input_range)
                xs = xs.reshape(len(pending), *shape)
                if s == 0.0:  # the anchor itself, verified by the model as every sample is
                    xs = torch.where(bad_s.reshape(-1, *([1] * len(shape))).cpu(),
                                     anchors[pending.to(anchors.device)].to(xs), xs.cpu())
                    bad_s = torch.zeros_like(bad_s)
                sub_goal = goal.subset(rows[pending])
                ok_s, d_s, _ = self._verify(xs, sub_goal, kind, input_range)
                ok_s &= ~bad_s.cpu()
                dest = rows[pending]
                x[dest], delta[dest] = xs.to(x), d_s
                ok[dest[ok_s]] = True
                for j, i in enumerate(dest.tolist()):
                    why[i] = "" if ok_s[j] else (why_s[j] or "the anchored sample did not verify")
                stats["anchored"] += int(ok_s.sum())
                pending = pending[~ok_s]
        return self._finish(x, ok, delta, count_reasons([w if not o else "" for w, o in zip(why, ok.tolist())]),
                            allow_unverified, return_delta, "BackwardPassInversion", goal, kind, input_range,
                            reference)
