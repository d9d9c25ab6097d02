"""Shared machinery of every inversion method: target parsing, argument checks, the model guard,
verification by the caller's model, convergence delta and :class:`InversionError`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from ..blocks.plan import model_mode_guard, trace_leaf_modules
from ..solvers.lm import LMResult, levenberg_marquardt

__all__ = ["InversionError", "Goal", "InversionMethod", "make_generator", "random_starts"]

TargetType = Union[int, Sequence[int], Tensor]


class InversionError(RuntimeError):
    """Raised when fewer samples verify than were requested.

    Attributes:
        n_verified (int): samples that did verify.
        n_requested (int): samples asked for.
        reasons (dict): ``reason -> number of samples`` for the failures (which layer, which
            constraint).
        partial (Tensor or None): the verified samples, ``(n_verified, *input_shape)``.
        verified (Tensor or None): bool mask ``(n_requested,)`` of which requested samples verified.
        result (Tensor or None): all samples, ``(n_requested, *input_shape)``, unverified ones
            included (their values are the last attempt).
        delta (Tensor or None): per-sample convergence delta of ``result``.
        diagnosis (list or None): one :class:`~captum_invert.SampleDiagnosis` per failed sample
            (best probability reached, input-gradient norm, saturated layers, whether the target
            is provably out of reach, and with ``reference=`` whether real inputs reach it).
    """

    def __init__(self, message: str, n_verified: int = 0, n_requested: int = 0,
                 reasons: Optional[Dict[str, int]] = None, result: Optional[Tensor] = None,
                 verified: Optional[Tensor] = None, delta: Optional[Tensor] = None,
                 diagnosis: Optional[list] = None, min_prob: float = 0.9) -> None:
        self.n_verified, self.n_requested = n_verified, n_requested
        self.reasons = dict(reasons or {})
        self.result, self.verified, self.delta = result, verified, delta
        self.diagnosis = list(diagnosis) if diagnosis is not None else None
        self.partial = result[verified] if result is not None and verified is not None else None
        lines = [message, f"{n_verified} of {n_requested} samples verified."]
        for r, k in sorted(self.reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k} sample(s): {r}" if k else f"  {r}")
        if self.diagnosis:
            from .diagnosis import format_diagnosis

            lines.append("Diagnosis:")
            lines += [f"  {line}" for line in format_diagnosis(self.diagnosis, min_prob)]
        super().__init__("\n".join(lines))


def make_generator(seed) -> torch.Generator:
    """A CPU generator from an int seed, a Generator (used as is) or None (fresh entropy)."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    if seed is None:
        g.seed()
    elif isinstance(seed, int) and not isinstance(seed, bool):
        g.manual_seed(seed)
    else:
        raise ValueError(f"`seed` must be an int, a torch.Generator or None, got {seed!r}")
    return g


def random_starts(n: int, shape: Tuple[int, ...], input_range, gen: torch.Generator,
                  init_std: float = 1.0, dtype=torch.float32, device="cpu") -> Tensor:
    """Random initial inputs: uniform in ``input_range`` when given, else ``N(0, init_std^2)``.

    Drawn on the CPU from ``gen`` (reproducible on every device), then moved.
    """
    if input_range is not None:
        lo, hi = input_range
        x = torch.rand((n, *shape), generator=gen, dtype=torch.float64) * (hi - lo) + lo
    else:
        x = torch.randn((n, *shape), generator=gen, dtype=torch.float64) * init_std
    return x.to(dtype=dtype, device=device)


@dataclass
class Goal:
    """What each sample must reach.

    Exactly one of ``labels`` (``(N,)`` int64: the class must get probability >= ``min_prob``)
    and ``dist`` (``(N, C)``: max-abs difference of the probabilities <= ``atol``) is set.
    """

    labels: Optional[Tensor]
    dist: Optional[Tensor]
    n_classes: int
    min_prob: float = 0.9
    atol: float = 0.02

    @property
    def n(self) -> int:
        return len(self.labels) if self.labels is not None else len(self.dist)

    def subset(self, idx: Tensor) -> "Goal":
        return Goal(None if self.labels is None else self.labels[idx.to(self.labels.device)],
                    None if self.dist is None else self.dist[idx.to(self.dist.device)],
                    self.n_classes, self.min_prob, self.atol)

    def to(self, device) -> "Goal":
        return Goal(None if self.labels is None else self.labels.to(device),
                    None if self.dist is None else self.dist.to(device),
                    self.n_classes, self.min_prob, self.atol)

    def aim(self, dtype=torch.float64) -> Tensor:
        """The distribution an analytic method aims at, ``(N, C)``: for a class, probability
        ``(1 + min_prob) / 2`` on it and the rest spread evenly (a margin above ``min_prob``)."""
        if self.dist is not None:
            return self.dist.to(dtype)
        dev = self.labels.device
        p = (1.0 + self.min_prob) / 2.0
        out = torch.full((self.n, self.n_classes), (1.0 - p) / max(self.n_classes - 1, 1),
                         dtype=dtype, device=dev)
        out[torch.arange(self.n, device=dev), self.labels] = p
        return out

    def delta(self, probs: Tensor) -> Tensor:
        """Per-sample max-abs gap between ``probs`` ``(N, C)`` and the aimed-at distribution (the
        one-hot of the class for a class target, i.e. ``1 - p_target``)."""
        if self.labels is not None:
            lab = self.labels.to(probs.device)
            return 1.0 - probs.gather(1, lab[:, None]).squeeze(1)
        return (probs - self.dist.to(probs)).abs().amax(1)

    def ok(self, probs: Tensor) -> Tensor:
        """Bool ``(N,)``: which samples meet the goal."""
        d = self.delta(probs)
        return d <= (1.0 - self.min_prob) if self.labels is not None else d <= self.atol


def _check_prob(name, v, lo=0.0, hi=1.0):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo < v < hi):
        raise ValueError(f"`{name}` must be a float in ({lo}, {hi}), got {v!r}")


def _check_pos(name, v, allow_zero=False, integer=False):
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not (v >= 0 if allow_zero else v > 0) or (
        not integer and not math.isfinite(v)
    ):
        kind = "an int" if integer else "a finite number"
        raise ValueError(f"`{name}` must be {kind} {'>= 0' if allow_zero else '> 0'}, got {v!r}")


class InversionMethod(Attribution):
    """Base of the inversion methods (a Captum ``Attribution``).

    Args:
        forward_func (nn.Module or callable): the classifier; its output is taken as logits
            unless its last executed module is ``nn.Softmax`` (probabilities) or
            ``nn.LogSoftmax`` (log-probabilities).
        input_shape (tuple of int, optional): shape of one input without the batch dimension.
            Default: ``forward_func.input_shape`` if present, else ``(in_features,)`` of its first
            ``nn.Linear``. For a model of several inputs, a tuple of shapes, e.g.
            ``((1, 28, 28), (10,))``: the inputs are inverted jointly, ``inputs`` and the result
            are tuples of tensors (as Captum's tuple inputs), and ``input_range`` applies to all.
    """

    #: run the first-order escalation (:meth:`_escalate`) of stalled solves; False restores the
    #: Levenberg-Marquardt-only path (for before/after benchmarks)
    _escalation: bool = True
    #: weight of the past in the Jacobian of the Levenberg-Marquardt steps (``averaging`` of
    #: :func:`~captum_invert.solvers.levenberg_marquardt`); 0.0 restores the pointwise Jacobian
    #: (for before/after benchmarks)
    _jacobian_averaging: float = 0.5

    def __init__(self, forward_func, input_shape: Optional[Sequence[int]] = None) -> None:
        if not callable(forward_func):
            raise ValueError(f"`forward_func` must be a callable model, got {type(forward_func).__name__}")
        from .batching import JointInputs, joint_shapes

        forward_func = _opaque_if_compiled(forward_func)
        #: the shapes of a multi-input model's inputs (``input_shape`` a tuple of shapes), else None
        self._joint_shapes = joint_shapes(input_shape)
        if self._joint_shapes is not None:  # inverted as one flat input; attribute splits results
            if isinstance(forward_func, CompiledModel):
                forward_func = CompiledModel(JointInputs(forward_func.module, self._joint_shapes))
            else:
                forward_func = JointInputs(forward_func, self._joint_shapes)
            input_shape = (sum(forward_func.sizes if isinstance(forward_func, JointInputs)
                               else forward_func.module.sizes),)
        super().__init__(forward_func)
        self.input_shape, self._inferred_shape = self._infer_input_shape(forward_func, input_shape)
        self.last_stats: Dict[str, Any] = {}

    # --- configuration --------------------------------------------------------------------
    @staticmethod
    def _infer_input_shape(model, input_shape) -> Tuple[Tuple[int, ...], str]:
        """``(shape, how)``: ``how`` is ``''`` when the caller gave the shape, else where it came
        from (an ``input_shape`` attribute, timm's ``pretrained_cfg['input_size']``, or a guess
        from the first ``nn.Linear``)."""
        if input_shape is not None:
            shape = tuple(input_shape) if not isinstance(input_shape, int) else (input_shape,)
            if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
                raise ValueError(f"`input_shape` must be a tuple of positive ints, got {input_shape!r}")
            return shape, ""
        shape = getattr(model, "input_shape", None)
        if shape is not None:
            return tuple(shape), "the model's `input_shape` attribute"
        for attr in ("pretrained_cfg", "default_cfg"):  # timm models declare their input size
            cfg = getattr(model, attr, None)
            if isinstance(cfg, dict) and cfg.get("input_size"):
                return _timm_shape(model, tuple(int(v) for v in cfg["input_size"])), f"the model's {attr}['input_size']"
        if isinstance(model, nn.Module):
            for m in model.modules():
                if isinstance(m, nn.Linear):
                    return (m.in_features,), "the in_features of the first nn.Linear"
        raise ValueError("`input_shape` is required: it cannot be inferred from this model; pass the shape "
                         "of one input without the batch dimension, e.g. input_shape=(3, 224, 224)")

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def model(self):
        return self.forward_func

    def _model_dtype_device(self):
        m = self.forward_func
        if isinstance(m, CompiledModel):
            m = m.module
        if isinstance(m, nn.Module):
            for p in m.parameters():
                if p.device.type == "meta":
                    raise ValueError(
                        "the model's parameters are on the meta device (shapes without values), so it "
                        "cannot be evaluated: materialize and load its weights first, e.g. "
                        "`model.to_empty(device='cpu'); model.load_state_dict(state_dict)`")
                return p.dtype, p.device
        return torch.get_default_dtype(), torch.device("cpu")

    def _probe(self) -> Tuple[str, int, Any]:
        """Run the model on two zero inputs (eval mode) and read its output kind and classes."""
        dtype, device = self._model_dtype_device()
        x = torch.zeros((2, *self.input_shape), dtype=dtype, device=device)
        trace = None
        try:  # eval mode, restored on exit: a probe never touches batch statistics
            with model_mode_guard(self.forward_func):
                if isinstance(self.forward_func, nn.Module):
                    trace = trace_leaf_modules(self.forward_func, x)
                    out = trace.output
                else:
                    with torch.no_grad():
                        out = self.forward_func(x)
        except Exception as e:  # noqa: BLE001
            msg = (f"the model does not accept inputs of shape (N, {', '.join(map(str, self.input_shape))}) "
                   f"(`input_shape`={self.input_shape}): {type(e).__name__}: {e}")
            emb = [n for n, m in self.forward_func.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
                   ] if isinstance(self.forward_func, nn.Module) else []
            if emb:
                msg += (f". The model has an embedding layer ({emb[0]}): its inputs are integer token ids, "
                        "which no gradient method can invert. Invert the embedding's output instead, "
                        f"e.g. LayerInversion(model, layer=model.{emb[0]}), or wrap the model so that it "
                        "takes the embeddings as its input")
            elif getattr(self, "_inferred_shape", ""):
                msg += (f". `input_shape` was guessed as {self.input_shape} ({self._inferred_shape}); pass the "
                        f"shape of one input, e.g. {type(self).__name__}(model, input_shape=(1, 28, 28))")
            raise ValueError(msg) from e
        if isinstance(self.forward_func, CompiledModel):  # a compiled model may fix the batch size
            try:
                with torch.no_grad():
                    self.forward_func(torch.zeros((3, *self.input_shape), dtype=dtype, device=device))
            except Exception as e:  # noqa: BLE001
                raise ValueError(
                    f"the compiled model ({type(self.forward_func.module).__name__}) accepts a batch of 2 but "
                    f"not of 3 ({type(e).__name__}: {str(e)[:200]}); inversion runs it on batches of every "
                    "size. Export it with a dynamic batch dimension, e.g. torch.export.export(model, (x,), "
                    "dynamic_shapes=({0: torch.export.Dim('batch')},))") from e
        if not isinstance(out, Tensor) or out.dim() != 2:
            got = f"{type(out).__name__}{tuple(out.shape) if isinstance(out, Tensor) else ''}"
            if isinstance(out, dict):
                got += f" with keys {sorted(out)}"
            raise ValueError(
                f"the model must return a tensor of shape (N, n_classes), got {got}. Wrap a model whose "
                "output is a tuple, a dict or an object in a module that selects the logits, e.g. "
                "`class Logits(nn.Module): def __init__(self, m): super().__init__(); self.m = m` with "
                "`def forward(self, x): return self.m(x)['logits']` (or `[0]`, or `.logits`)")
        last = trace.calls[-1].module if trace is not None and trace.calls else None
        kind = self.output_kind(last, out.shape[1])
        if kind.startswith("binary"):  # no softmax over outputs: nothing of the trace applies
            return kind, 2, None
        return kind, out.shape[1], trace

    @staticmethod
    def output_kind(last: Optional[nn.Module], n_outputs: int) -> str:
        """How to read a model's output from its last executed module and its width:
        ``'binary_probs'`` / ``'binary_logits'`` for one output (after an ``nn.Sigmoid`` or not),
        else ``'probs'`` (``nn.Softmax``), ``'log_probs'`` (``nn.LogSoftmax``) or ``'logits'``."""
        if n_outputs == 1:  # one output: a binary classifier (its sigmoid is p(class 1))
            return "binary_probs" if isinstance(last, nn.Sigmoid) else "binary_logits"
        if isinstance(last, nn.Softmax):
            return "probs"
        if isinstance(last, nn.LogSoftmax):
            return "log_probs"
        return "logits"

    @staticmethod
    def _need_softmax(kind: str, what: str) -> None:
        """ValueError for a single-output (binary sigmoid) model in a method that inverts a
        softmax over several outputs."""
        if kind.startswith("binary"):
            raise ValueError(f"{what} inverts a softmax over several outputs, but this model has a single "
                             "output (a binary sigmoid classifier): use ForwardPassInversion or "
                             "GeneralizedInversion, with target 1 (sigmoid >= min_prob) or 0 (<= 1 - min_prob)")

    @staticmethod
    def log_probs_from(out: Tensor, kind: str) -> Tensor:
        """``(N, C)`` log-probabilities from the model's output of the given kind. A single
        output is a binary classifier: ``binary_logits`` (a logit, sigmoid implied) or
        ``binary_probs`` (the model ends in ``nn.Sigmoid``) give the two classes
        ``[log(1 - p), log p]``: class 1 is the positive one."""
        if kind == "binary_logits":
            z = out[:, :1]
            return torch.cat([torch.nn.functional.logsigmoid(-z), torch.nn.functional.logsigmoid(z)], 1)
        if kind == "binary_probs":
            p = out[:, :1].clamp(torch.finfo(out.dtype).tiny, 1.0)
            return torch.cat([torch.log1p(-p.clamp(max=1 - torch.finfo(out.dtype).eps)), p.log()], 1)
        if kind == "probs":
            return out.clamp_min(torch.finfo(out.dtype).tiny).log()
        if kind == "log_probs":
            return out
        return torch.log_softmax(out, dim=1)

    # --- arguments ------------------------------------------------------------------------
    def _parse_target(self, target: TargetType, n_samples: Optional[int], n_classes: int,
                      min_prob: float, atol: float, n_inputs: Optional[int] = None) -> Goal:
        _check_prob("min_prob", min_prob)
        _check_prob("atol", atol)
        if n_samples is not None:
            _check_pos("n_samples", n_samples, integer=True)
        if n_inputs is not None and n_samples is not None and n_samples != n_inputs:
            raise ValueError(f"`n_samples` ({n_samples}) differs from the number of `inputs` ({n_inputs})")
        n = n_inputs if n_inputs is not None else n_samples
        accepted = ("an int class index, a sequence of ints (one per sample), or a float tensor "
                    "holding a class distribution of shape (C,) or (N, C)")
        if target is None:
            raise ValueError(f"`target` is required: {accepted}")
        if isinstance(target, bool):
            raise ValueError(f"`target` must be {accepted}, got a bool")
        if isinstance(target, Tensor) and target.is_floating_point():
            t = target.detach().to("cpu", torch.float64)
            if t.dim() == 1:
                t = t[None].expand(n or 1, -1)
            if t.dim() != 2 or t.shape[1] != n_classes:
                raise ValueError(f"`target` distribution must have shape ({n_classes},) or (N, {n_classes}), "
                                 f"got {tuple(target.shape)}")
            if n is not None and t.shape[0] != n:
                raise ValueError(f"`target` has {t.shape[0]} rows but {n} samples were asked for")
            if not torch.isfinite(t).all() or (t < 0).any() or not torch.allclose(
                t.sum(1), torch.ones(len(t), dtype=t.dtype), atol=1e-4
            ):
                raise ValueError("`target` distribution must be finite, non-negative and sum to 1 per row")
            return Goal(None, t.clone(), n_classes, min_prob, atol)
        if isinstance(target, Tensor):
            if target.dim() > 1:
                raise ValueError(f"`target` class indices must be a 0-d or 1-d int tensor, got shape {tuple(target.shape)}")
            target = target.tolist()
        if isinstance(target, int):
            labels = [target] * (n or 1)
        elif isinstance(target, (list, tuple)):
            labels = list(target)
            if not labels or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
                raise ValueError(f"`target` must be {accepted}, got {target!r}")
            if n is not None and len(labels) != n:
                raise ValueError(f"`target` has {len(labels)} entries but {n} samples were asked for")
        else:
            raise ValueError(f"`target` must be {accepted}, got {type(target).__name__}")
        bad = [v for v in labels if not 0 <= v < n_classes]
        if bad:
            raise ValueError(f"`target` class index {bad[0]} is out of range [0, {n_classes})")
        return Goal(torch.tensor(labels, dtype=torch.int64), None, n_classes, min_prob, atol)

    def _check_inputs(self, inputs) -> Optional[int]:
        """``None`` or the number of rows of ``inputs`` after checking its shape."""
        if inputs is None:
            return None
        if not isinstance(inputs, Tensor) or tuple(inputs.shape[1:]) != self.input_shape:
            raise ValueError(
                f"`inputs` must be a tensor of shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}"
            )
        return len(inputs)

    @staticmethod
    def _check_solver_args(max_iter, max_retries, init_std) -> None:
        _check_pos("max_iter", max_iter, integer=True)
        _check_pos("max_retries", max_retries, allow_zero=True, integer=True)
        _check_pos("init_std", init_std)

    @staticmethod
    def _check_analytic_args(std, cond_num, margin) -> None:
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not (std >= 0 and math.isfinite(std)):
            raise ValueError(f"`std` must be a finite float >= 0, got {std!r}")
        if isinstance(cond_num, bool) or not isinstance(cond_num, (int, float)) or not cond_num > 1:
            raise ValueError(f"`cond_num` must be a number > 1 (inf allowed), got {cond_num!r}")
        _check_prob("margin", margin, 0.0, 0.5)

    @staticmethod
    def _check_range(input_range) -> Optional[Tuple[float, float]]:
        if input_range is None:
            return None
        try:
            lo, hi = (float(v) for v in input_range)
        except Exception:
            raise ValueError(f"`input_range` must be None or a pair (lo, hi), got {input_range!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"`input_range` must satisfy lo < hi (finite), got {input_range!r}")
        return lo, hi

    # --- verification ---------------------------------------------------------------------
    def _verify(self, x: Tensor, goal: Goal, kind: str, input_range=None) -> Tuple[Tensor, Tensor, Tensor]:
        """Run the caller's model (its dtype and device) on ``x``; return ``(ok, delta, probs)``."""
        dtype, device = self._model_dtype_device()
        with torch.no_grad():
            out = self.forward_func(x.to(dtype=dtype, device=device))
            probs = self.log_probs_from(out, kind).exp().to(torch.float64)
        ok = goal.to(probs.device).ok(probs) & torch.isfinite(probs).all(1)
        ok &= torch.isfinite(x.reshape(len(x), -1)).all(1).to(ok.device)
        if input_range is not None:
            flat = x.reshape(len(x), -1)
            ok &= ((flat >= input_range[0]) & (flat <= input_range[1])).all(1).to(ok.device)
        return ok.cpu(), goal.to(probs.device).delta(probs).cpu(), probs.cpu()

    @staticmethod
    def _tail_range(tail, n_classes: int, dtype, device) -> Tuple[Tensor, Tensor]:
        """``(lo, hi)`` ``(C,)``: the range of each output of the tail (``-inf`` / ``inf`` where
        unbounded)."""
        zero = torch.zeros(n_classes, dtype=dtype, device=device)
        lo, hi = zero - math.inf, zero + math.inf
        for m, e in tail[1]:
            a, b = e.forward(m, lo), e.forward(m, hi)
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        return lo, hi

    @classmethod
    def _prob_bounds(cls, tail, n_classes: int) -> Tuple[Tensor, Tensor]:
        """``(p_min, p_max)`` ``(C,)`` float64: the range of each class's probability that the
        output tail's bounded range allows (p_c is largest with ``z_c = hi_c`` and every other
        ``z_j = lo_j``, smallest the other way round)."""
        lo, hi = cls._tail_range(tail, n_classes, torch.float64, "cpu")
        eye = torch.eye(len(lo), dtype=torch.bool)
        p_max = 1 / (1 + torch.exp(lo[None, :] - hi[:, None]).masked_fill(eye, 0).sum(1))
        p_min = 1 / (1 + torch.exp(hi[None, :] - lo[:, None]).masked_fill(eye, 0).sum(1))
        return p_min, p_max

    def _check_reachable(self, goal: Goal, tail, what: str, allow_unverified: bool = False,
                         trace=None, kind: Optional[str] = None) -> None:
        """Raise ``ValueError`` before any work when the target is provably out of reach of every
        input: a class target above the highest probability the class can get, or a distribution
        that no reachable output comes within ``atol`` of. Two proofs: the bounded range of an
        output tail (a Tanh or Sigmoid on the logits), and, with ``trace`` and ``kind``, a
        normalized head (a LayerNorm before the last Linear, as in ViT, Swin, MLP-Mixer and
        ConvNeXt; see :mod:`~captum_invert.blocks.norm_head`). Skipped with ``allow_unverified``
        (the caller asked for the closest inputs anyway)."""
        if allow_unverified:
            return
        if tail is None:
            self._check_head_reach(goal, trace, kind, what)
            return
        lo, hi = self._tail_range(tail, goal.n_classes, torch.float64, "cpu")
        p_min, p_max = self._prob_bounds(tail, goal.n_classes)
        names = " -> ".join(type(m).__name__ for m, _ in tail[1])
        bounds = f"the model's output activation ({names}) keeps the logits in [{float(lo.min()):.3g}, {float(hi.max()):.3g}]"
        if goal.labels is not None:
            bad = sorted({int(c) for c in goal.labels.tolist() if float(p_max[c]) < goal.min_prob})
            if bad:
                best = min(float(p_max[c]) for c in bad)
                raise ValueError(
                    f"{what}: `target` class(es) {bad} cannot reach `min_prob`={goal.min_prob}: {bounds}, so no "
                    f"input gives them a probability above {best:.4g}. Use min_prob below that.")
            return
        dist = goal.dist.double().cpu()
        far = (dist > p_max + goal.atol) | (dist < p_min - goal.atol)
        if bool(far.any()):
            c = int(far.any(0).nonzero()[0])
            raise ValueError(
                f"{what}: the `target` distribution is out of reach: {bounds}, so class {c}'s probability "
                f"stays in [{float(p_min[c]):.4g}, {float(p_max[c]):.4g}] for every input (atol={goal.atol}).")

    def _check_head_reach(self, goal: Goal, trace, kind: Optional[str], what: str) -> None:
        """The normalized-head part of :meth:`_check_reachable`."""
        from ..blocks.norm_head import class_log_prob_bound, distribution_gap_bound, find_norm_head

        if trace is None or kind is None or kind.startswith("binary") or not isinstance(self.forward_func, nn.Module):
            return
        dtype, device = self._model_dtype_device()
        g = torch.Generator().manual_seed(0)  # the caller's seed is not consumed
        probe = torch.randn((3, *self.input_shape), generator=g).to(dtype=dtype, device=device)
        nh = find_norm_head(self.forward_func, trace, probe, lambda o: self.log_probs_from(o, kind))
        if nh is None:
            return
        if goal.labels is not None:
            classes = sorted({int(c) for c in goal.labels.tolist()})
            ub = class_log_prob_bound(nh, classes, math.log(goal.min_prob))
            bad = [(c, float(u)) for c, u in zip(classes, ub.tolist()) if u < math.log(goal.min_prob)]
            if bad:
                best = max(math.exp(u) for _, u in bad)
                raise ValueError(
                    f"{what}: `target` class(es) {[c for c, _ in bad]} cannot reach `min_prob`={goal.min_prob}: "
                    f"{nh.describe()}, so no input gives them a probability above {best:.4g}. Use min_prob "
                    "below that.")
            return
        rows = torch.unique(goal.dist.double().cpu(), dim=0)
        lower, kappa = distribution_gap_bound(nh, rows, goal.atol)
        far = lower > kappa
        if bool(far.any()):
            i = int(far.nonzero()[0])
            raise ValueError(
                f"{what}: the `target` distribution is out of reach: {nh.describe()}. On the target's classes "
                f"above atol, every input's probabilities stay at least {float(lower[i]):.3g} nats from the "
                f"target (sum p*_j log(p*_j / p_j)), and every distribution within atol={goal.atol} of it is "
                f"within {float(kappa[i]):.3g}. Pass allow_unverified=True for the closest inputs.")

    @staticmethod
    def _output_tail(trace) -> Optional[Tuple[nn.Module, list]]:
        """``(pre_module, [(module, entry), ...])`` when the model is a proven chain that ends in
        registered invertible activations at least one of which saturates (a bounded range, like
        SELU's exponential tail); else None."""
        from ..blocks.activations import get_inverse, is_invertible

        if trace is None or not trace.composes:
            return None
        calls = list(trace.calls)
        if calls and isinstance(calls[-1].module, (nn.Softmax, nn.LogSoftmax)):
            calls = calls[:-1]
        tail = []
        while calls and get_inverse(calls[-1].module) is not None and is_invertible(calls[-1].module):
            c = calls.pop()
            tail.insert(0, (c.module, get_inverse(c.module)))
        if not calls or not tail:
            return None
        pre = calls[-1].module
        if sum(c.module is pre for c in trace.calls) != 1:
            return None
        bounded = any(bool(torch.isfinite(torch.stack(list(e.output_range(m)))).any()) for m, e in tail)
        return (pre, tail) if bounded else None

    @staticmethod
    def _log_prob_goal(gl: Goal, dtype, stop: float):
        """The goal as residuals on log-probabilities ``lp`` ``(b, C)``.

        Returns:
            (goal_res, done): ``goal_res(lp, idx) -> (r, aux)`` with, for a class target, the
            one-sided ``max(0, logit(aim) - log-odds_t)`` (``aim = (1 + min_prob) / 2``), for a
            distribution ``lp - log p*`` (zero entries raised to ``atol / 2C``, renormalized);
            ``done(x, r, idx, aux)`` stops a sample once ``p_t`` covered the fraction ``stop`` of
            the way from ``min_prob`` to ``aim`` (class), or within ``atol / 2`` (distribution).
        """
        if gl.labels is not None:
            aim_p = (1.0 + gl.min_prob) / 2
            log_aim = math.log(aim_p)
            log_stop = math.log(gl.min_prob + stop * (aim_p - gl.min_prob))

            log_odds = log_aim - math.log1p(-aim_p)

            def goal_res(lp, idx):
                t = gl.labels[idx][:, None]
                lp_t = lp.gather(1, t)
                # log-odds z_t - logsumexp(z_others): Newton steps on log p_t crawl as p_t -> 1
                # (d log p_t / d z_t = 1 - p_t), the log-odds stay linear in the logits there
                odds = lp_t - torch.logsumexp(lp.scatter(1, t, -math.inf), 1, keepdim=True)
                return (log_odds - odds).clamp_min(0.0), lp_t

            def done(xx, rr, idx, lp_t):
                return lp_t.squeeze(1) >= log_stop - 1e-12

            log_min = math.log(gl.min_prob)
            done.loose = lambda xx, rr, idx, lp_t: lp_t.squeeze(1) >= log_min
            goal_res.log_odds = log_odds
            return goal_res, done
        logP = gl.dist.to(dtype).clamp_min(gl.atol / (2 * gl.n_classes))
        logP = (logP / logP.sum(1, keepdim=True)).log()

        def done(xx, rr, idx, lp):
            return (lp.exp() - gl.dist[idx].to(lp)).abs().amax(1) <= gl.atol / 2

        done.loose = lambda xx, rr, idx, lp: (lp.exp() - gl.dist[idx].to(lp)).abs().amax(1) <= gl.atol
        reduced = _reduced_dist_residual(gl, logP)
        if reduced is not None:
            reduced.logP = logP
            return reduced, done

        def goal_res(lp, idx):
            return lp - logP[idx], lp

        goal_res.logP = logP
        return goal_res, done

    def _solve_to_goal(self, x0: Tensor, goal: Goal, kind: str, max_iter: int, input_range,
                       residual: str = "log_prob", stop: float = 0.5,
                       tail=None) -> Tuple[LMResult, Tensor, Tensor, Tensor]:
        """Levenberg-Marquardt from ``x0`` towards ``goal`` on the caller's model.

        Residuals (``residual``):

        - ``'log_prob'`` (default): for a class target the single one-sided residual
          ``max(0, logit(aim) - (log p_t - log(1 - p_t)))`` on the class's log-odds, with
          ``aim = (1 + min_prob) / 2`` (one
          vector-Jacobian product per iteration; a sample stops once ``p_t`` has covered the
          fraction ``stop`` of the way from ``min_prob`` to ``aim``: margin for methods that
          move the sample afterwards); for a distribution, ``log p(x) - log p*`` (C residuals;
          zero entries of ``p*`` are raised to ``atol / 2C`` and renormalized).
        - ``'prob'``: ``p(x) - p*`` with ``p*`` the aimed-at distribution (C residuals; bounded,
          but its gradient vanishes where the softmax saturates).

        With ``tail`` (see :meth:`_output_tail`: the model ends in saturating invertible
        activations, e.g. a SELU on the logits) the ``'log_prob'`` residuals are measured before
        that tail: the logits the goal needs are mapped back through the tail's exact inverse and
        compared with the pre-activations, which a forward hook reads. In the exponential tail of
        SELU the log-probability is nearly flat and Newton steps crawl; the pre-activation
        residual is linear there.

        Returns:
            (LMResult, Tensor, Tensor, Tensor): the solver's result; a bool ``(N,)`` mask of
            samples that reached the goal (stopped by the solver or verified by the model); and
            the model's verification of the solution, ``ok`` ``(N,)`` and ``delta`` ``(N,)``.
        """
        mdt, device = self._model_dtype_device()
        dtype = solver_dtype(mdt)  # half / bfloat16 models: the solver's algebra runs in float32
        gl = goal.to(device)
        raw = self.forward_func

        def model(xx):
            return raw(xx.to(mdt)).to(dtype)

        use_tail = tail is not None and residual == "log_prob"
        captured = {}
        handle = None
        if use_tail:
            pre, elems = tail
            handle = pre.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
            zero = torch.zeros(gl.n_classes, dtype=dtype, device=device)
            lo, hi = self._tail_range(tail, gl.n_classes, dtype, device)  # shrunk a little at bounded ends
            span = torch.where(torch.isfinite(hi - lo), hi - lo, torch.ones_like(lo))
            lo_m, hi_m = lo + 1e-3 * span, hi - 1e-3 * span

            def tail_fwd(a):
                for m, e in elems:
                    a = e.forward(m, a)
                return a

            def tail_inv(z):
                for m, e in reversed(elems):
                    z = e.inverse(m, z)
                return z

            def logits_of(xx):
                model(xx)
                a = captured.pop("a").to(dtype)
                return a, tail_fwd(a)
        lp_of = lambda xx: self.log_probs_from(model(xx), kind)  # noqa: E731
        if residual == "prob":
            P = gl.aim(dtype)

            def res(xx, idx):
                p = lp_of(xx).exp()
                return p - P[idx], p

            def done(xx, rr, idx, p):
                return goal.subset(idx.cpu()).to(device).ok(p)

        else:
            goal_res, done = self._log_prob_goal(gl, dtype, stop)
            if not use_tail:
                def res(xx, idx):
                    return goal_res(lp_of(xx), idx)
            elif gl.labels is not None:
                log_odds = goal_res.log_odds
                safe = tail_fwd(zero)[None]  # in the tail's range: the inverse is finite there

                def res(xx, idx):
                    a, z = logits_of(xx)
                    t = gl.labels[idx][:, None]
                    others = torch.logsumexp(z.scatter(1, t, -math.inf), 1, keepdim=True)
                    # only the target column is inverted: a saturated other logit (ELU's -1) has
                    # an infinite inverse, and its zero-weighted gradient would still be NaN
                    z_need = safe.expand_as(z).scatter(
                        1, t, torch.minimum(torch.maximum(others + log_odds, lo_m[t]), hi_m[t]))
                    r = (tail_inv(z_need).gather(1, t) - a.gather(1, t)).clamp_min(0.0)
                    return r, torch.log_softmax(z, 1).gather(1, t)
            else:
                logP = goal_res.logP

                def res(xx, idx):
                    a, z = logits_of(xx)
                    c = (z - logP[idx]).mean(1, keepdim=True)
                    z_need = torch.minimum(torch.maximum(logP[idx] + c, lo_m), hi_m)
                    return tail_inv(z_need) - a, torch.log_softmax(z, 1)

        try:
            x0 = x0.to(dtype=dtype, device=device)
            reach = getattr(goal_res, "reach", None) if residual == "log_prob" and not use_tail else None
            if reach is not None:
                reach = (lambda xx, idx, r1=reach[0]: r1(lp_of(xx), idx), reach[1])
            sol = _phased_lm(res, done, reach, x0, max_iter, input_range, self._jacobian_averaging)
            sol = self._escalate(res, done, sol, input_range, max_iter)
        finally:
            if handle is not None:
                handle.remove()
        ok, delta, _ = self._verify(sol.x, goal, kind, input_range)
        return sol, sol.done.cpu() | ok, ok, delta

    def _escalate(self, res, done, sol: LMResult, bounds, max_iter: int) -> LMResult:
        """The escalation of samples the Levenberg-Marquardt left short of the goal (not for
        non-finite ones, nor for those within the goal's own tolerance, ``done.loose``): up to ``5 * max_iter`` steps of :func:`projected_adam` on the same
        residual from where they stalled (a sample whose residual has not dropped by 1% in
        ``max(10, max_iter // 2)`` steps stops early), with :func:`surrogate_gradients` through
        the model's activations. Values, and so ``done`` and every verification, stay the model's own.
        Returns ``sol`` with those samples' points, ``done`` and ``n_iter`` updated; samples that
        converge without it cost nothing more. ``self.last_stats`` gets ``escalated`` (samples)
        and ``first_order_steps``."""
        from ..solvers.first_order import projected_adam, surrogate_gradients

        stalled = (~sol.done & sol.finite).nonzero().squeeze(1)
        if stalled.numel() == 0 or not self._escalation:
            return sol
        loose = getattr(done, "loose", None)
        if loose is not None:  # short of the solver's margin but within the goal's tolerance: kept
            with torch.no_grad():
                r_s, aux_s = res(sol.x[stalled], stalled)
                stalled = stalled[~loose(sol.x[stalled], r_s, stalled, aux_s).to(stalled.device)]
            if stalled.numel() == 0:
                return sol
        xs = sol.x[stalled].detach()
        lr = 0.05 * _step_scale(xs, bounds)
        with surrogate_gradients(self.forward_func):
            esc = projected_adam(lambda v, idx: res(v, stalled[idx]), xs, 5 * max_iter, lr,
                                 lambda v, r, idx, aux: done(v, r, stalled[idx], aux), bounds,
                                 patience=max(10, max_iter // 2))
        x = sol.x.clone()
        x[stalled] = esc.x.to(x)
        d = sol.done.clone()
        d[stalled] = esc.done
        n_iter = sol.n_iter.clone()
        n_iter[stalled] += esc.n_iter
        zero = sol.zero_grad.clone() if sol.zero_grad is not None else torch.zeros_like(d)
        zero[stalled] = zero[stalled] & ~esc.done
        st = self.last_stats
        st["escalated"] = st.get("escalated", 0) + int(stalled.numel())
        st["escalated_converged"] = st.get("escalated_converged", 0) + int(esc.done.sum())
        st["first_order_steps"] = st.get("first_order_steps", 0) + int(esc.n_iter.sum())
        rn = sol.residual_norm.clone()
        rn[stalled] = esc.residual_norm.to(rn)
        return LMResult(x, d, n_iter, rn, sol.finite, zero)

    def _shaped_starts(self, prior, goal: Goal, kind: str, input_range, gen,
                       inputs: Optional[Tensor] = None) -> Tensor:
        """The shaping phase of a ``prior`` (see :func:`~captum_invert.priors.shape_inputs`):
        ``(goal.n, *input_shape)`` images in the model's dtype and device, from the prior's random
        variables, or from ``inputs`` where the parameterization can represent them."""
        from ..priors import shape_inputs

        dtype, device = self._model_dtype_device()
        # the shaping aims ten times closer to certainty than verification needs: the image
        # lands inside the class region, not on its boundary, and the polish barely moves it
        x, stats = shape_inputs(self.forward_func, lambda o: self.log_probs_from(o, kind), prior,
                                self.input_shape, input_range, gen, labels=goal.labels, dist=goal.dist,
                                aim=1.0 - (1.0 - goal.min_prob) / 10, x0=inputs, n=goal.n, dtype=dtype,
                                device=device)
        self.last_stats["shaping_steps"] = self.last_stats.get("shaping_steps", 0) + stats["steps"] * goal.n
        return x

    def compute_convergence_delta(self, attributions: Tensor, target: TargetType = None,
                                  min_prob: float = 0.9, atol: float = 0.02) -> Tensor:
        """Per-sample max-abs gap between the model's probabilities on ``attributions`` and the
        aimed-at distribution (for a class target: ``1 - p_target``).

        Args:
            attributions (Tensor): inputs, ``(N, *input_shape)``.
            target: as in ``attribute``.

        Returns:
            Tensor: ``(N,)`` float64.
        """
        kind, n_classes, _ = self._probe()
        goal = self._parse_target(target, None, n_classes, min_prob, atol, n_inputs=len(attributions))
        with model_mode_guard(self.forward_func):
            return self._verify(attributions, goal, kind)[1]

    def _finish(self, x: Tensor, ok: Tensor, delta: Tensor, reasons: Dict[str, int],
                allow_unverified: bool, return_convergence_delta: bool, what: str,
                goal: Optional[Goal] = None, kind: Optional[str] = None, input_range=None,
                reference=None):
        """Return the result, or raise InversionError when some samples did not verify; with
        ``goal`` and ``kind`` the error carries the diagnosis of each failed sample (see
        :class:`~captum_invert.SampleDiagnosis`)."""
        dtype, device = self._model_dtype_device()
        x = x.to(dtype=dtype, device=device)
        n_ok = int(ok.sum())
        if n_ok < len(x) and not allow_unverified:
            diag = None
            if goal is not None and kind is not None:
                from .diagnosis import diagnose

                bad = (~ok).nonzero().squeeze(1)
                try:
                    diag = diagnose(self, x[bad.to(x.device)], bad, goal.subset(bad), kind, input_range,
                                    reference)
                except Exception as e:  # noqa: BLE001 - a diagnosis never hides the error itself
                    diag = None
                    reasons = {**reasons, f"(no diagnosis: {type(e).__name__}: {e})": 0}
            raise InversionError(
                f"{what}: {len(x) - n_ok} sample(s) did not verify (pass allow_unverified=True to "
                "get them anyway, or relax min_prob / atol / input_range).",
                n_ok, len(x), reasons, x, ok.clone(), delta, diag,
                goal.min_prob if goal is not None else 0.9,
            )
        return (x, delta) if return_convergence_delta else x


class CompiledModel:
    """A TorchScript module or a ``torch.export`` program's module, called as an opaque function:
    neither takes forward hooks or ``eval()`` reliably, so no method traces it, changes its mode
    or hooks its layers (BackwardPassInversion and GeneralizedInversion's analytic blocks need a
    plain ``nn.Module``; the surrogate gradients do not reach its activations). Export or script
    the model in eval mode. ``module`` is the wrapped model."""

    def __init__(self, module) -> None:
        self.module = module
        self.input_shape = getattr(module, "input_shape", None)

    def __call__(self, x):
        return self.module(x)

    def __repr__(self) -> str:
        return f"CompiledModel({type(self.module).__name__})"


def _opaque_if_compiled(model):
    """Wrap TorchScript and exported modules in :class:`CompiledModel`; others unchanged."""
    if isinstance(model, torch.jit.ScriptModule):
        return CompiledModel(model)
    try:
        from torch.fx import GraphModule
    except ImportError:  # pragma: no cover
        return model
    # torch.export's unlifted module: a GraphModule whose eval() / train() raise
    if isinstance(model, GraphModule) and ("eval" in vars(model) or any(
            c.__name__ == "_StatefulGraphModule" for c in type(model).__mro__)):
        return CompiledModel(model)
    return model


# the support's log-odds residual, scaled down: where the model cannot push its rest as low as
# aimed, the least-squares compromise then leaves the support's ratios almost exact
_GROUP_WEIGHT = 0.1


def _reduced_dist_residual(gl: Goal, logP: Tensor):
    """Residuals for a distribution target whose number does not grow with the classes, or None
    when they would not be fewer than the ``C`` full ones.

    The classes whose target mass exceeds ``atol / 2`` form the support ``S`` (at most ``k`` per
    row); every other class is pooled into one rest group of target mass ``rho*``. Residuals:

    - ``k - 1`` ratios inside the support, ``(log p_j - log p_ref) - (log p*_j - log p*_ref)``
      with ``ref`` the support's largest class;
    - one on the support's log-odds against the rest. When ``rho*`` is within the rest mass
      that the tolerance allows (``delta = atol (1 - rho*) / (2 max p*_S)``) it is one-sided: the
      rest only has to stay under ``rho* + delta / 2``. A model that cannot push its rest
      lower (e.g. a normalized head) still gets the support's ratios exact, where an equality
      would trade them for an unreachable rest;
    - when the target puts more than ``atol / 4`` on the rest, one one-sided guard residual that
      keeps the rest's largest class within ``atol / 2`` of its target.

    A step then costs ``k`` (or ``k + 1``) vector-Jacobian products instead of ``C``; ``done``
    and verification still read all ``C`` probabilities (the max-abs rule).

    ``goal_res.reach`` is a first phase of one residual (one product per step): the norm of the
    ``k`` gaps between each support class's log-ratio to the rest and its aim, until their
    target-weighted mean is within one nat. It lifts every support class from a start where they
    carry no mass, each in proportion to its gap, which the ``k`` residuals do in dearer steps;
    where the gaps' gradients are near orthogonal and of like size (as on a wide network) the
    Gauss-Newton step on the norm equals the one on the ``k`` gaps."""
    P = gl.dist.to(logP)
    C = gl.n_classes
    keep = P > gl.atol / 2
    k = int(keep.sum(1).max())
    rest_P = P.masked_fill(keep, 0.0).sum(1)
    guard = bool((rest_P > gl.atol / 4).any())
    if k == 0 or k + int(guard) >= C or bool(keep.all(1).any()):
        return None
    S = P.topk(k, 1).indices  # (N, k): the support first, largest first; padded slots masked out
    maskS = keep.gather(1, S)
    logPS = P.gather(1, S).clamp_min(1e-300).log()
    inner = (logPS[:, 1:] - logPS[:, :1]).masked_fill(~maskS[:, 1:], 0.0)
    top = P.gather(1, S[:, :1]).squeeze(1)
    delta = gl.atol * (1 - rest_P) / (2 * top)
    one_sided = rest_P < delta
    rho = torch.where(one_sided, rest_P + delta / 2, rest_P)  # the rest mass aimed at
    odds = (1 - rho).log() - rho.log()  # the support's log-odds against the rest
    cap = (P + gl.atol / 2).log()

    def group(lp, idx):
        kp = keep[idx]
        return (torch.logsumexp(lp.masked_fill(~kp, -math.inf), 1)
                - torch.logsumexp(lp.masked_fill(kp, -math.inf), 1))

    def goal_res(lp, idx):
        lS = lp.gather(1, S[idx])
        r_in = ((lS[:, 1:] - lS[:, :1]) - inner[idx]) * maskS[idx, 1:]
        gap = odds[idx] - group(lp, idx)
        r_g = _GROUP_WEIGHT * torch.where(one_sided[idx], gap.clamp_min(0.0), gap)[:, None]
        r = torch.cat([r_in, r_g], 1)
        if guard:
            over = (lp - cap[idx]).masked_fill(keep[idx], -math.inf).amax(1, keepdim=True).clamp_min(0.0)
            r = torch.cat([r, over], 1)
        return r, lp

    goal_res.n_residuals = k + int(guard)
    goal_res.weakest = _GROUP_WEIGHT
    ratio = (logPS - rho.log()[:, None]).masked_fill(~maskS, 0.0)  # each support class to the rest
    w = P.gather(1, S).masked_fill(~maskS, 0.0)
    w = w / w.sum(1, keepdim=True)

    def gaps(lp, idx):  # (N, k): each support class's log-ratio to the rest, short of its aim
        rest = torch.logsumexp(lp.masked_fill(keep[idx], -math.inf), 1, keepdim=True)
        return (ratio[idx] - (lp.gather(1, S[idx]) - rest)).masked_fill(~maskS[idx], 0.0)

    def reach_res(lp, idx):  # one residual, so one product per step
        return gaps(lp, idx).norm(dim=1, keepdim=True), lp

    def reach_done(xx, rr, idx, lp):  # within a nat on the mean: the main phase finishes the work
        return (w[idx] * gaps(lp, idx)).sum(1) <= 1.0

    # functions of the log-probabilities, like goal_res
    goal_res.reach = (reach_res, reach_done)
    return goal_res


def _phased_lm(res, done, reach, x0: Tensor, max_iter: int, bounds, averaging: float = 0.0) -> LMResult:
    """:func:`levenberg_marquardt` on ``res``; with ``reach = (res1, done1)`` (a cheaper residual
    that gets a distribution target's support its mass, see :func:`_reduced_dist_residual`)
    first up to ``max_iter`` iterations on it, then the main solve from there (iterations add)."""
    if reach is None:
        return levenberg_marquardt(res, x0, max_iter=max_iter, done_fn=done, bounds=bounds, has_aux=True,
                                   averaging=averaging)
    first = levenberg_marquardt(reach[0], x0, max_iter=max_iter, done_fn=reach[1], bounds=bounds,
                                has_aux=True, averaging=averaging)
    ok = first.finite if first.finite is not None else torch.ones_like(first.done)
    x1 = torch.where(ok.reshape(-1, *[1] * (x0.dim() - 1)).to(x0.device), first.x, x0)
    sol = levenberg_marquardt(res, x1, max_iter=max_iter, done_fn=done, bounds=bounds, has_aux=True,
                              averaging=averaging)
    sol.n_iter = sol.n_iter + first.n_iter
    return sol


def _timm_shape(model, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """timm's ``pretrained_cfg['input_size']`` is the pretrained weights' size; a model created
    with other ``in_chans`` or ``img_size`` keeps it. Correct it from the model itself: the
    channels of the first convolution, and a patch embedding's ``img_size``."""
    if len(shape) != 3 or not isinstance(model, nn.Module):
        return shape
    c, h, w = shape
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = int(size[0]), int(size[1])
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            c = m.in_channels
            break
    return c, h, w


def solver_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the solvers' variables and algebra for a model of ``dtype``: float32 for
    half and bfloat16 (whose linear solves PyTorch lacks on the CPU and whose 8-bit mantissa
    cannot resolve a step), else the model's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _step_scale(x: Tensor, bounds) -> Tensor:
    """``(B,)`` a natural length per sample: the mean width of a bounded box, else twice the
    root-mean-square of the point (an input's typical spread), at least 1e-3."""
    B = len(x)
    flat = x.reshape(B, -1)
    rms = (2 * flat.pow(2).mean(1).sqrt()).clamp_min(1e-3)
    if bounds is None:
        return rms
    lo, hi = (torch.as_tensor(b, dtype=x.dtype, device=x.device).expand(x.shape[1:]).reshape(-1) for b in bounds)
    w = hi - lo
    fin = torch.isfinite(w)
    if bool(fin.all()):
        return w.mean().expand(B).clone()
    return rms


def count_reasons(reasons: List[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for r in reasons:
        if r:
            out[r] = out.get(r, 0) + 1
    return out
