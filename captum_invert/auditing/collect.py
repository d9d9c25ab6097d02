"""The audit's figures: every number on the page, collected by the library's own methods.

Nothing here inverts by itself: it calls ForwardPassInversion (fooling inputs, prototypes,
the distribution target), BackwardPassInversion's ``region`` (piecewise-linear nets) and
:func:`~captum_invert.harden`, and measures what they return.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["audit", "AuditReport", "model_sha256"]


@dataclass
class AuditReport:
    """What :func:`audit` found.

    Attributes:
        data (dict): every figure, JSON-serialisable (what ``report.json`` holds): ``settings``,
            ``model``, ``classes`` (one dict per audited class), ``real_data``, ``distribution``,
            ``regions``, ``hardening``, ``skipped`` (sections the budget or the model left out,
            with the reason) and ``seconds``.
        images (dict): ``(section, class) -> (N, C, H, W)`` tensors in pixel space, for the page.
    """

    data: dict
    images: Dict[tuple, Tensor] = field(default_factory=dict)

    def to_json(self) -> str:
        import json

        return json.dumps(self.data, indent=2, default=str)

    def to_html(self) -> str:
        """One self-contained page (images inline, no external resources)."""
        from .render import render_html

        return render_html(self)

    def save(self, out) -> Dict[str, str]:
        """Write ``report.html`` and ``report.json`` to the directory ``out``; returns their paths."""
        from pathlib import Path

        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        (d / "report.json").write_text(self.to_json())
        (d / "report.html").write_text(self.to_html(), encoding="utf-8")
        return {"html": str(d / "report.html"), "json": str(d / "report.json")}


def model_sha256(model) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes and bytes), in order."""
    h = hashlib.sha256()
    sd = model.state_dict() if hasattr(model, "state_dict") else {}
    for k, v in sd.items():
        h.update(k.encode())
        if isinstance(v, Tensor):
            t = v.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _Clock:
    """The run's budget: sections ask before they start; what is skipped is listed."""

    def __init__(self, budget_s: Optional[float], progress: bool, steps: int) -> None:
        from tqdm.auto import tqdm

        self.t0, self.budget = time.perf_counter(), budget_s
        self.skipped: List[dict] = []
        self.bar = tqdm(total=steps, desc="audit", disable=not progress, leave=False)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allow(self, section: str) -> bool:
        self.bar.set_postfix_str(section)
        if self.budget is not None and self.elapsed() >= self.budget:
            self.skipped.append({"section": section, "reason": f"--budget-s {self.budget:g} s spent "
                                 f"({self.elapsed():.1f} s elapsed)"})
            self.bar.update(1)
            return False
        return True

    def done(self) -> None:
        self.bar.update(1)


def _invert(model, labels, *, seed, box, normalize, output, select, input_shape, min_prob, **kw):
    """ForwardPassInversion on ``labels`` (class indices, or a distribution with ``n_samples``):
    ``(verified x, their labels or None, seconds, iterations, reasons)``."""
    from .. import ForwardPassInversion, InversionError

    inv = ForwardPassInversion(model, input_shape=input_shape, normalize=normalize, output=output, select=select)
    t0 = time.perf_counter()
    reasons: Dict[str, int] = {}
    try:
        x = inv.attribute(target=labels, seed=seed, input_range=box, min_prob=min_prob, **kw)
        ok = torch.ones(len(x), dtype=torch.bool)
    except InversionError as e:
        x, ok, reasons = e.partial, e.verified.cpu(), e.reasons
    sec = time.perf_counter() - t0
    its = {k: inv.last_stats[k] for k in ("mean_iterations", "restarts", "escalated") if k in inv.last_stats}
    x = x.detach().float().cpu()[ok]
    lab = torch.as_tensor(labels)[ok] if isinstance(labels, list) else None
    return x, lab, sec, its, reasons


def _confused_pair(conf: Optional[Tensor], probs: Optional[Tensor], classes: Sequence[int]):
    """The two audited classes most confused: by the real data's confusion matrix, else by the
    fooling inputs' runner-up class."""
    best, pair = -1.0, (classes[0], classes[1] if len(classes) > 1 else classes[0])
    src = conf if conf is not None else probs
    if src is None or len(classes) < 2:
        return pair, "first two classes"
    for i, a in enumerate(classes):
        for b in classes[i + 1:]:
            v = float(src[a, b] + src[b, a])
            if v > best:
                best, pair = v, (a, b)
    return pair, ("the real data's confusion matrix" if conf is not None else
                  "the fooling inputs' mean probabilities")


def audit(model, *, data=None, judge=None, classes: Optional[Sequence[int]] = None, per_class: int = 4,
          prototypes_per_class: int = 2, input_shape=None, input_range=(0.0, 1.0), normalize=None,
          output: Optional[str] = None, select=None, min_prob: float = 0.9, budget_s: Optional[float] = None,
          harden: bool = False, seed: int = 0, progress: bool = True, model_info: Optional[dict] = None
          ) -> AuditReport:
    """Audit a classifier: how easily it is fooled, what it has learned, how far both are from
    real data, and whether hardening helps, class by class. Every returned input is verified.

    Args:
        model (nn.Module or callable): the classifier (as the methods take it).
        data (TensorDataset, optional): labelled real inputs ``(x, y)`` in pixel space, e.g.
            :func:`~captum_invert.datasets.load_dataset`. Enables the real-data reach, the
            distance of fooling inputs to real ones, the data-prior prototypes, the confusion
            pair and hardening.
        judge (nn.Module, optional): an independent classifier that reads the prototypes (its
            argmax against the class).
        classes (sequence of int, optional): the classes to audit (default: all, at most 10).
        per_class (int): fooling inputs per class.
        prototypes_per_class (int): data-free prototypes per class (``prior='auto'``).
        input_shape, normalize, output, select: as for the methods (``input_shape`` defaults
            to the data's).
        input_range (tuple): the pixel box of every input (default ``(0, 1)``).
        min_prob (float): the verification threshold.
        budget_s (float, optional): stop starting new sections after this many seconds; the
            report lists what was skipped.
        harden (bool): run one round of :func:`~captum_invert.harden` (needs ``data``) and
            report the undesirable rates before and after.
        seed (int): the seed of every section.
        progress (bool): a progress bar over the sections.
        model_info (dict, optional): what the loader recorded (kind, spec, file sha256).

    Returns:
        AuditReport
    """
    from .. import BackwardPassInversion, ModelAdapter, __version__
    from ..metrics import nearest_distance
    from ..priors import DataPrior

    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"`per_class` must be an int >= 1, got {per_class!r}")
    if isinstance(prototypes_per_class, bool) or not isinstance(prototypes_per_class, int) or prototypes_per_class < 0:
        raise ValueError(f"`prototypes_per_class` must be an int >= 0, got {prototypes_per_class!r}")
    if budget_s is not None and not (isinstance(budget_s, (int, float)) and budget_s > 0):
        raise ValueError(f"`budget_s` must be a positive number of seconds or None, got {budget_s!r}")
    if harden and data is None:
        raise ValueError("`harden=True` needs `data` (the clean training data it fine-tunes on)")
    if input_shape is None and data is not None:
        input_shape = tuple(data.tensors[0].shape[1:])
    adapter = ModelAdapter(model, input_shape, output=output, select=select, normalize=normalize)
    probe = adapter.probe()
    n_classes = probe.n_classes
    if classes is None:
        classes = list(range(min(n_classes, 10)))
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad or not classes:
        raise ValueError(f"`classes` must be class indices in [0, {n_classes}), got {classes}")
    box = tuple(float(v) for v in input_range) if input_range is not None else None
    common = dict(seed=seed, box=box, normalize=normalize, output=output, select=select,
                  input_shape=adapter.input_shape, min_prob=min_prob)
    clock = _Clock(budget_s, progress, 6 if harden else 5)
    per = {c: {"class": c} for c in classes}
    images: Dict[tuple, Tensor] = {}
    rep: dict = {"skipped": []}

    # --- real data ------------------------------------------------------------------------
    conf = None
    xd = yd = None
    if data is not None:
        xd, yd = data.tensors[0].float(), data.tensors[1].long()
        if tuple(xd.shape[1:]) != tuple(adapter.input_shape):
            raise ValueError(f"`data` images have shape {tuple(xd.shape[1:])}, the model takes "
                             f"{tuple(adapter.input_shape)}: give data of the model's input shape")
    if clock.allow("real data"):
        if data is not None:
            p = adapter.probs(xd, probe.kind)
            pred = p.argmax(1)
            conf = torch.zeros((n_classes, n_classes), dtype=torch.float64)
            for t, q in zip(yd.tolist(), pred.tolist()):
                if 0 <= t < n_classes:
                    conf[t, q] += 1
            rep["real_data"] = {"n": len(xd), "accuracy": float((pred == yd).double().mean())}
            for c in classes:
                m = yd == c
                per[c]["real_n"] = int(m.sum())
                per[c]["real_reach"] = float((p[m, c] >= min_prob).double().mean()) if m.any() else None
        else:
            rep["real_data"] = None
            clock.skipped.append({"section": "real data", "reason": "no data given (--data)"})
        clock.done()

    # --- fooling inputs -------------------------------------------------------------------
    fool_probs = None
    if clock.allow("fooling inputs"):
        labels = torch.tensor(classes).repeat_interleave(per_class)
        x, ok_lab, sec, its, reasons = _invert(model, labels.tolist(), **common)
        if len(x):
            fool_probs = adapter.probs(x, probe.kind)
            mean = torch.zeros((n_classes, n_classes), dtype=torch.float64)
            for c in classes:
                if (ok_lab == c).any():
                    mean[c] = fool_probs[ok_lab == c].mean(0)
            fool_probs = mean
        for c in classes:
            xc = x[ok_lab == c]
            per[c]["fooling_verified"] = int(len(xc))
            per[c]["fooling_requested"] = per_class
            per[c]["fooling_ms_per_sample"] = round(1000 * sec / len(labels), 1)
            if len(xc):
                images[("fooling", c)] = xc
                if xd is not None:
                    per[c]["fooling_nearest_real_l2"] = float(nearest_distance(xc, xd).mean())
        rep["fooling"] = {"seconds": round(sec, 3), "passes": its, "failures": reasons}
        clock.done()

    # --- prototypes -----------------------------------------------------------------------
    if prototypes_per_class and clock.allow("prototypes"):
        jadapter = ModelAdapter(judge, adapter.input_shape) if judge is not None else None
        labels = torch.tensor(classes).repeat_interleave(prototypes_per_class)
        kinds = [("data-free", "auto")]
        if xd is not None:
            kinds.append(("data prior", DataPrior(xd)))
        for name, prior in kinds:
            x, ok_lab, sec, its, reasons = _invert(model, labels.tolist(), prior=prior, **common)
            key = "prototypes" if name == "data-free" else "prototypes_data"
            for c in classes:
                xc = x[ok_lab == c]
                per[c][f"{key}_verified"] = int(len(xc))
                per[c][f"{key}_ms_per_sample"] = round(1000 * sec / len(labels), 1)
                if len(xc):
                    images[(key, c)] = xc
                    if jadapter is not None:
                        per[c][f"{key}_judge_read"] = float(
                            (jadapter.probs(xc).argmax(1) == c).double().mean())
                    if xd is not None:
                        per[c][f"{key}_nearest_real_l2"] = float(nearest_distance(xc, xd).mean())
        clock.done()
    elif not prototypes_per_class:
        clock.skipped.append({"section": "prototypes", "reason": "prototypes_per_class=0"})

    # --- flags ----------------------------------------------------------------------------
    for c in classes:
        per[c]["flag_noise_only"] = bool(per[c].get("real_reach") == 0.0 and per[c].get("fooling_verified", 0) > 0)

    # --- a distribution target between the two most confused classes ------------------------
    if clock.allow("distribution target") and len(classes) > 1:
        (a, b), how = _confused_pair(conf, fool_probs, classes)
        dist = torch.zeros(n_classes, dtype=torch.float64)
        dist[a] = dist[b] = 0.5
        x, ok_lab, sec, its, reasons = _invert(model, dist, n_samples=per_class, **common)
        rep["distribution"] = {"classes": [a, b], "chosen_by": how, "target": "0.5 / 0.5",
                               "verified": int(len(x)), "requested": per_class,
                               "reachable": bool(len(x) > 0), "seconds": round(sec, 3),
                               "failures": reasons}
        if len(x):
            images[("distribution", a)] = x
        clock.done()
    elif len(classes) < 2:
        clock.skipped.append({"section": "distribution target", "reason": "one class audited"})

    # --- certified regions (piecewise-linear nets) -----------------------------------------
    if clock.allow("certified regions"):
        regions: dict = {}
        try:
            bp = BackwardPassInversion(model, input_shape=adapter.input_shape, normalize=normalize, output=output,
                                       select=select)
            for c in classes:
                if budget_s is not None and clock.elapsed() >= budget_s:
                    clock.skipped.append({"section": f"certified region of class {c}", "reason": "budget spent"})
                    continue
                t0 = time.perf_counter()
                try:
                    reg = bp.region(c, seed=seed, input_range=box, min_prob=min_prob)
                    _, r = reg.chebyshev_ball()
                    regions[str(c)] = {"radius_l2": float(r), "seconds": round(time.perf_counter() - t0, 2),
                                       "dim": int(reg.dim)}
                except ValueError as e:
                    if not regions:  # the model itself has no regions (not a piecewise-linear chain)
                        raise
                    regions[str(c)] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                except Exception as e:  # noqa: BLE001 - one class's failure, reported on the page
                    regions[str(c)] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            rep["regions"] = regions
        except ValueError as e:
            rep["regions"] = None
            clock.skipped.append({"section": "certified regions", "reason": str(e)[:300]})
        clock.done()

    # --- hardening ------------------------------------------------------------------------
    if harden and clock.allow("hardening"):
        from ..hardening import harden as run_harden

        from ..blocks.normalize import normalized

        net = normalized(model, adapter.normalize, adapter.input_shape)
        _, hrep = run_harden(net, data, judge=judge, rounds=1, per_class=max(8, per_class), input_range=box,
                             epochs=1, attack_per_class=max(2, per_class), adam_steps=100, seed=seed)
        rep["hardening"] = {"rounds": hrep.rounds}
        clock.done()
    elif not harden:
        rep["hardening"] = None

    sd_hash = model_sha256(model) if hasattr(model, "state_dict") else None
    rep.update({
        "settings": {"captum_invert": __version__, "torch": torch.__version__, "seed": seed,
                     "per_class": per_class, "prototypes_per_class": prototypes_per_class,
                     "input_shape": list(adapter.input_shape), "input_range": list(box) if box else None,
                     "normalize": [list(v) for v in adapter.normalize] if adapter.normalize else None,
                     "min_prob": min_prob, "budget_s": budget_s, "harden": harden,
                     "judge": type(judge).__name__ if judge is not None else None,
                     "data": len(data) if data is not None else None},
        "model": {**(model_info or {}), "class": type(model).__name__, "state_dict_sha256": sd_hash,
                  "n_classes": n_classes, "output_read_as": probe.kind, "how": probe.how},
        "classes": [per[c] for c in classes],
        "skipped": clock.skipped,
        "seconds": round(clock.elapsed(), 2),
    })
    rep.setdefault("distribution", None)
    rep.setdefault("regions", None)
    rep.setdefault("fooling", None)
    clock.bar.close()
    return AuditReport(_finite(rep), images)


def _finite(obj):
    """NaN and infinities as None, so that the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
