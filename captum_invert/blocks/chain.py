"""The algebra of inverting a chain ``pre-elementwise -> [Linear -> elementwise*]+ ->
(log)softmax?``: the chain built from a trace, the boxes its activations allow, the float64
forward pass, and the walk down from an output target by capped pseudo-inverses with
null-space noise (the seed paper's back-pass)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .activations import ElementwiseInverse, get_inverse, interior, registered_types
from .linear import LinearInverse, linear_inverse

__all__ = ["Chain", "ChainLayer", "build_chain", "output_target", "tail_linear_target", "walk", "box_affine"]

_Elem = Tuple[str, nn.Module, ElementwiseInverse]
_NOT_INVERTIBLE_HINT = {
    nn.ReLU: "ReLU maps every negative input to 0, so it has no inverse",
    nn.ReLU6: "ReLU6 clips, so it has no inverse",
    nn.Hardtanh: "Hardtanh clips, so it has no inverse",
    nn.GELU: "GELU is not monotone",
    nn.SiLU: "SiLU is not monotone",
}


@dataclass
class ChainLayer:
    """One Linear of a :class:`Chain` and the elementwise modules after it.

    Attributes:
        name (str): the Linear's module name.
        linear (nn.Linear): the module.
        inv (LinearInverse): its capped pseudo-inverse and null space.
        post (list): ``(name, module, ElementwiseInverse)`` of the modules after it.
    """

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


class Chain:
    """A model proven to be ``pre-elementwise -> [Linear -> elementwise*]+ -> (log)softmax?``
    (built by :func:`build_chain`).

    Attributes:
        pre (list): elementwise modules before the first Linear.
        layers (list of ChainLayer): the Linear layers, input first.
        boxes (list): per layer, ``(lo, hi, lo_m, hi_m)`` of its input (after :meth:`set_boxes`).
    """

    def __init__(self, pre: List[_Elem], layers: List[ChainLayer], device) -> None:
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


def build_chain(calls, cond_num: float, device, what: str) -> Chain:
    """A :class:`Chain` from executed leaf calls (Flatten, Linear, registered activations, an
    optional final Softmax/LogSoftmax); any other module raises a ``ValueError`` naming it."""
    calls = list(calls)
    if calls and isinstance(calls[-1].module, (nn.Softmax, nn.LogSoftmax)):
        calls = calls[:-1]
    pre: List[_Elem] = []
    layers: List[ChainLayer] = []
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
            layers.append(ChainLayer(c.name, m, linear_inverse(m, cond_num, device)))
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
    return Chain(pre, layers, device)


def output_target(chain: Chain, P: Tensor, atol: float):
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
        y = Chain.invert_elems(last.post, z, bad.clone(), [""] * len(z))
        return last.inv.solution_norm(y)

    g = (math.sqrt(5) - 1) / 2
    for _ in range(30):  # golden section, batched (bracket / 1e6)
        x1, x2 = b - g * (b - a), a + g * (b - a)
        left = cost(x1) < cost(x2)
        a, b = torch.where(left, a, x1), torch.where(left, x2, b)
    c = (a + b) / 2
    return logp + c[:, None], ok

def tail_linear_target(chain: Chain, z: Tensor) -> Tensor:
    """The target of the chain's first Linear's output when its last output is ``z``:
    inverts the elementwise modules and the Linear layers above the first one by their
    minimum-norm solutions (used for the size of null-space offsets)."""
    bad = torch.zeros(len(z), dtype=torch.bool, device=z.device)
    y = z
    for k in reversed(range(1, len(chain.layers))):
        y = chain.layers[k].inv.solve(Chain.invert_elems(chain.layers[k].post, y, bad, [""] * len(z)))
    return Chain.invert_elems(chain.layers[0].post, y, bad, [""] * len(z))

def walk(chain: Chain, y_out: Tensor, refs: Optional[List[Tensor]], scale: Tensor,
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
        a = Chain.invert_elems(layer.post, y, bad, why)
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
            h = box_affine(base + v if noisy else base, lo, hi, inv, a)
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
    x = Chain.invert_elems(chain.pre, y, bad, why)
    return x, bad, why

def box_affine(h: Tensor, lo: Tensor, hi: Tensor, inv: LinearInverse, a: Tensor,
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
