"""Captum's ``additional_forward_args``, ``internal_batch_size`` and ``show_progress`` for the
inversion methods: extra model arguments, a call split into batches of samples (each solved and
verified on its own), and a progress bar."""
from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor, nn

from .base import InversionError, make_generator

__all__ = ["batched_attribute", "JointInputs", "joint_shapes"]

_DOC = '''
            additional_forward_args (optional): passed to the model after the inputs, as in
                Captum: ``model(x, *additional_forward_args)`` (a single value is one argument).
                Tensors must be shared by all samples: a batch dimension of 1 is expanded to
                each call's batch; a per-sample batch dimension is refused.
            internal_batch_size (int, optional): solve at most this many samples at a time
                (bounds memory for many samples, as Captum's keyword). Batches draw their
                random starts one after another from the same generator, so a seeded call is
                reproducible, but differs from the same call without batching.
            show_progress (bool): show a progress bar (tqdm) over the samples, updated after
                each internal batch.
'''


def _n_samples(a) -> int:
    inputs, target, n = a.get("inputs"), a.get("target"), a.get("n_samples")
    if isinstance(inputs, Tensor):
        return len(inputs)
    if n is not None:
        return int(n)
    if isinstance(target, Tensor):
        if target.is_floating_point():
            return target.shape[0] if target.dim() == 2 else 1
        return target.numel() if target.dim() == 1 else 1
    if isinstance(target, (list, tuple)):
        return len(target)
    return 1


def _slice_target(target, lo, hi, n):
    if isinstance(target, Tensor):
        if target.is_floating_point():
            return target[lo:hi] if target.dim() == 2 and target.shape[0] == n else target
        return target[lo:hi] if target.dim() == 1 and target.numel() == n else target
    if isinstance(target, (list, tuple)) and len(target) == n:
        return list(target[lo:hi])
    return target


class _WithArgs(nn.Module):
    """``model(x, *args)`` as a one-input model; tensors with batch dimension 1 are expanded to
    ``len(x)``."""

    def __init__(self, model, args) -> None:
        super().__init__()
        self.model = model
        self.args = args

    def forward(self, x):
        args = [a.expand(len(x), *a.shape[1:]) if isinstance(a, Tensor) and a.dim() > 0 and len(a) == 1 else a
                for a in self.args]
        return self.model(x, *args)


class JointInputs(nn.Module):
    """A model of several inputs, ``model(x1, x2, ..., *extra)``, as a model of one flat input
    ``(N, sum of numels)``: the inputs are inverted jointly, as Captum attributes tuple inputs.

    Args:
        model (nn.Module or callable): the multi-input model.
        shapes (tuple of tuple of int): each input's shape without the batch dimension.
    """

    def __init__(self, model, shapes) -> None:
        super().__init__()
        self.model = model
        self.shapes = tuple(tuple(s) for s in shapes)
        self.sizes = [int(torch.Size(s).numel()) for s in self.shapes]

    def forward(self, x, *extra):
        parts = torch.split(x, self.sizes, dim=1)
        return self.model(*(p.reshape(len(x), *s) for p, s in zip(parts, self.shapes)), *extra)


def joint_shapes(input_shape):
    """``None`` for a single input's shape, else the tuple of shapes of a multi-input model
    (``input_shape`` a sequence of sequences of positive ints; a ValueError otherwise)."""
    if input_shape is None or isinstance(input_shape, int) or not len(input_shape) or not all(
            isinstance(s, (tuple, list, torch.Size)) for s in input_shape):
        if input_shape is not None and not isinstance(input_shape, int) and any(
                isinstance(s, (tuple, list, torch.Size)) for s in input_shape):
            raise ValueError("`input_shape` must be a tuple of ints (one input) or a tuple of such tuples "
                             f"(one per input of a multi-input model), got {input_shape!r}")
        return None
    shapes = tuple(tuple(s) for s in input_shape)
    if not all(s and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in s) for s in shapes):
        raise ValueError(f"`input_shape`: every input's shape must be a tuple of positive ints, got {input_shape!r}")
    return shapes


def _join(inputs, shapes) -> Tensor:
    """A tuple of ``(N, *shape_i)`` tensors as one ``(N, sum of numels)`` tensor."""
    want = ", ".join(f"(N, {', '.join(map(str, s))})" for s in shapes)
    if not isinstance(inputs, (tuple, list)) or len(inputs) != len(shapes) or not all(
            isinstance(t, Tensor) and tuple(t.shape[1:]) == s for t, s in zip(inputs, shapes)) or len(
            {len(t) for t in inputs}) != 1:
        got = (tuple(tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in inputs)
               if isinstance(inputs, (tuple, list)) else type(inputs).__name__)
        raise ValueError(f"`inputs` must be a tuple of {len(shapes)} tensors of shapes {want}, got {got}")
    dt = functools.reduce(torch.promote_types, [t.dtype for t in inputs])
    return torch.cat([t.reshape(len(t), -1).to(dt) for t in inputs], 1)


def _split(x: Tensor, shapes):
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    return tuple(p.reshape(len(x), *s) for p, s in zip(torch.split(x, sizes, dim=1), shapes))


def _check_args(args, n):
    if not isinstance(args, tuple):
        args = (args,)
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and a.dim() > 0 and len(a) != 1:
            raise ValueError(
                f"`additional_forward_args`[{i}] is a tensor with batch dimension {len(a)}: inversion creates "
                "its own inputs, so extra arguments must be shared by every sample (a batch dimension of 1, "
                "expanded to each call's batch, or no batch dimension). For per-sample arguments, run one "
                "call per value.")
    return args


def batched_attribute(fn):
    """Give an ``attribute`` method (keywords ``inputs``, ``target``, ``n_samples``, ``seed``,
    ``return_convergence_delta``, ``allow_unverified``) the keywords
    ``additional_forward_args``, ``internal_batch_size`` and ``show_progress``. Without them the
    method runs as before."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def joint(self, *args, **kwargs):
        shapes = getattr(self, "_joint_shapes", None)
        if shapes is None:
            return wrapper(self, *args, **kwargs)
        extra = {k: kwargs.pop(k) for k in ("additional_forward_args", "internal_batch_size", "show_progress")
                 if k in kwargs}
        a = dict(sig.bind_partial(self, *args, **kwargs).arguments)
        a.pop("self")
        if a.get("inputs") is not None:
            a["inputs"] = _join(a["inputs"], shapes)
        try:
            out = wrapper(self, **a, **extra)
        except InversionError as e:
            e.result = None if e.result is None else _split(e.result, shapes)
            e.partial = None if e.partial is None else _split(e.partial, shapes)
            raise
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor) and a.get(
                "return_convergence_delta", False):
            return _split(out[0], shapes), out[1]
        return _split(out, shapes)

    def wrapper(self, *args, additional_forward_args=None, internal_batch_size=None, show_progress: bool = False,
                **kwargs):
        if additional_forward_args is not None:
            why = getattr(self, "_no_forward_args", None)
            if why:
                raise ValueError(f"`additional_forward_args` is not supported by {type(self).__name__}: {why}")
            extra = _check_args(additional_forward_args, None)
            model, plan = self.forward_func, getattr(self, "_plan", None)
            self.forward_func = _WithArgs(model, extra) if isinstance(model, nn.Module) else (
                lambda x: model(x, *extra))
            if plan is not None:  # a plan (GeneralizedInversion) is traced on the model as called
                self._plan = None
            try:
                return wrapper(self, *args, internal_batch_size=internal_batch_size, show_progress=show_progress,
                               **kwargs)
            finally:
                self.forward_func = model
                if hasattr(self, "_plan"):
                    self._plan = plan
        if internal_batch_size is not None and (isinstance(internal_batch_size, bool) or not isinstance(
                internal_batch_size, int) or internal_batch_size < 1):
            raise ValueError(f"`internal_batch_size` must be None or an int >= 1, got {internal_batch_size!r}")
        if not isinstance(show_progress, bool):
            raise ValueError(f"`show_progress` must be a bool, got {show_progress!r}")
        if internal_batch_size is None and not show_progress:
            return fn(self, *args, **kwargs)
        a = sig.bind(self, *args, **kwargs)
        a.apply_defaults()
        a = dict(a.arguments)
        a.pop("self")
        n = _n_samples(a)
        size = internal_batch_size or n
        if size >= n and not show_progress:
            return fn(self, **a)
        gen = make_generator(a.get("seed"))
        want_delta, allow = a.get("return_convergence_delta", False), a.get("allow_unverified", False)
        xs, ds, oks, reasons, diag, stats = [], [], [], {}, [], {}
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=type(self).__name__, disable=not show_progress, leave=False)
        try:
            for lo in range(0, n, size):
                hi = min(n, lo + size)
                part = dict(a, seed=gen, return_convergence_delta=True, allow_unverified=allow,
                            target=_slice_target(a.get("target"), lo, hi, n))
                part = {k: v for k, v in part.items() if k in sig.parameters}
                if isinstance(a.get("inputs"), Tensor):
                    part["inputs"] = a["inputs"][lo:hi]
                if "n_samples" in a and (a["n_samples"] is not None or not isinstance(a.get("inputs"), Tensor)):
                    part["n_samples"] = hi - lo
                try:
                    x, d = fn(self, **part)
                    ok = torch.ones(hi - lo, dtype=torch.bool)
                    if allow:  # unverified samples may be among them: ask the model
                        ok = d <= (1 - a.get("min_prob", 0.9)) if _is_class(a.get("target")) else d <= a.get(
                            "atol", 0.02)
                except InversionError as e:
                    x, d, ok = e.result, e.delta, e.verified
                    for r, k in e.reasons.items():
                        reasons[r] = reasons.get(r, 0) + k
                    for s in e.diagnosis or []:
                        s.index += lo
                        diag.append(s)
                for k, v in (self.last_stats or {}).items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):  # sums; means weighted
                        stats[k] = stats.get(k, 0) + (v * (hi - lo) / n if k.startswith("mean_") else v)
                xs.append(x)
                ds.append(d.cpu())
                oks.append(ok.cpu())
                bar.update(hi - lo)
                bar.set_postfix(verified=int(torch.cat(oks).sum()))
        finally:
            bar.close()
        x, d, ok = torch.cat(xs), torch.cat(ds), torch.cat(oks)
        stats["internal_batches"] = len(xs)
        self.last_stats = stats
        if not bool(ok.all()) and not allow:
            name = type(self).__name__
            raise InversionError(
                f"{name}: {int((~ok).sum())} sample(s) did not verify (pass allow_unverified=True to get them "
                "anyway, or relax min_prob / atol / input_range).", int(ok.sum()), n, reasons, x, ok, d,
                diag or None, a.get("min_prob", 0.9))
        return (x, d) if want_delta else x

    joint.__doc__ = _add_doc(fn.__doc__ or "")
    joint.__signature__ = sig.replace(parameters=list(sig.parameters.values()) + [
        inspect.Parameter("additional_forward_args", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("internal_batch_size", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("show_progress", inspect.Parameter.KEYWORD_ONLY, default=False)])
    return joint


def _is_class(target) -> bool:
    return not (isinstance(target, Tensor) and target.is_floating_point())


def _add_doc(doc: str) -> str:
    """Insert the two keywords' descriptions at the end of the Args section."""
    key = "\n        Returns:"
    return doc.replace(key, _DOC.rstrip("\n") + "\n" + key, 1) if key in doc else doc
