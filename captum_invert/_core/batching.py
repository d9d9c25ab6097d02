"""Captum's ``additional_forward_args``, ``internal_batch_size`` and ``show_progress`` for the
inversion methods: extra model arguments, a call split into batches of samples (each solved and
verified on its own), and a progress bar."""
from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

from .errors import InversionError
from .solve import make_generator

__all__ = ["batched_attribute"]

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


def batched_attribute(fn):
    """Give an ``attribute`` method (keywords ``inputs``, ``target``, ``n_samples``, ``seed``,
    ``return_convergence_delta``, ``allow_unverified``) the keywords
    ``additional_forward_args``, ``internal_batch_size`` and ``show_progress``. Without them the
    method runs as before."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def joint(self, *args, **kwargs):
        adapter = self.adapter
        if not adapter.joint_shapes:
            return wrapper(self, *args, **kwargs)
        extra = {k: kwargs.pop(k) for k in ("additional_forward_args", "internal_batch_size", "show_progress")
                 if k in kwargs}
        a = dict(sig.bind_partial(self, *args, **kwargs).arguments)
        a.pop("self")
        if a.get("inputs") is not None:
            a["inputs"] = adapter.flat(a["inputs"])
        try:
            out = wrapper(self, **a, **extra)
        except InversionError as e:
            e.result, e.partial = adapter.unflat(e.result), adapter.unflat(e.partial)
            raise
        if isinstance(out, tuple):  # (inputs, delta and/or regions)
            return (adapter.unflat(out[0]), *out[1:])
        return adapter.unflat(out)

    def wrapper(self, *args, additional_forward_args=None, internal_batch_size=None, show_progress: bool = False,
                **kwargs):
        if additional_forward_args is not None:
            why = getattr(self, "_no_forward_args", None)
            if why:
                raise ValueError(f"`additional_forward_args` is not supported by {type(self).__name__}: {why}")
            adapter, plan = self.adapter, getattr(self, "_plan", None)
            self.adapter = adapter.with_args(additional_forward_args)
            if plan is not None:  # a plan (GeneralizedInversion) is traced on the model as called
                self._plan = None
            try:
                return wrapper(self, *args, internal_batch_size=internal_batch_size, show_progress=show_progress,
                               **kwargs)
            finally:
                self.adapter = adapter
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
        want_regions = a.get("return_regions", False)
        xs, ds, oks, regs, reasons, diag, stats, note = [], [], [], [], {}, [], {}, ""
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
                    out = fn(self, **part)
                    x, d = out[0], out[1]
                    regs.extend(out[2] if want_regions else [])
                    ok = torch.ones(hi - lo, dtype=torch.bool)
                    if allow:  # unverified samples may be among them: ask the model
                        ok = d <= (1 - a.get("min_prob", 0.9)) if _is_class(a.get("target")) else d <= a.get(
                            "atol", 0.02)
                except InversionError as e:
                    x, d, ok, note = e.result, e.delta, e.verified, e.note or note
                    if want_regions:
                        regs.extend(getattr(self, "last_regions", None) or [None] * (hi - lo))
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
        if want_regions:
            self.last_regions = regs
        if not bool(ok.all()) and not allow:
            name = type(self).__name__
            raise InversionError(
                f"{name}: {int((~ok).sum())} sample(s) did not verify (pass allow_unverified=True to get them "
                "anyway, or relax min_prob / atol / input_range).", int(ok.sum()), n, reasons, x, ok, d,
                diag or None, a.get("min_prob", 0.9), note)
        out = (x, d) if want_delta else (x,)
        out += (regs,) if want_regions else ()
        return out if len(out) > 1 else x

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
