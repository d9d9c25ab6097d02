"""A user's own model from disk, and the ``captum-invert invert`` job on it.

``load_model`` accepts the three forms a trained PyTorch classifier is shipped in: a TorchScript
file, a ``torch.export`` program (``.pt2``), or ``package.module:factory`` (a callable that
returns the ``nn.Module``) with an optional state dict.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

__all__ = ["load_model", "parse_target", "run_invert"]

METHODS = ("forward", "generalized", "backward")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(spec: str, weights: Optional[str] = None):
    """Load a classifier.

    Args:
        spec (str): a TorchScript file (``torch.jit.save``), a ``torch.export`` program
            (``torch.export.save``, usually ``.pt2``; a fixed batch size is run in chunks of it),
            or ``package.module:factory``, where ``factory()`` returns the ``nn.Module``.
        weights (str, optional): a state dict (``torch.save(model.state_dict(), path)``, or a
            dict holding one under ``'state_dict'`` or ``'model'``) for the ``module:factory``
            form; loaded with ``weights_only=True``.

    Returns:
        (model, dict): the model in eval mode, and what was loaded (``kind``, ``spec``, and the
        ``sha256`` of each file).
    """
    import torch

    info = {"spec": spec}
    if os.path.isfile(spec):
        if weights is not None:
            raise ValueError("`--weights` goes with the `package.module:factory` form; a TorchScript "
                             "or .pt2 file holds its weights")
        info["sha256"] = file_sha256(spec)
        errors = []
        if not spec.endswith(".pt2"):
            try:
                with warnings.catch_warnings():  # TorchScript's deprecation notice: still a format users ship
                    warnings.simplefilter("ignore", FutureWarning)
                    model = torch.jit.load(spec, map_location="cpu")
                info["kind"] = "torchscript"
                return model.eval(), info
            except Exception as e:  # noqa: BLE001
                errors.append(f"TorchScript: {type(e).__name__}: {str(e)[:200]}")
        try:
            model = torch.export.load(spec).module()
            info["kind"] = "torch.export"
            return model, info
        except Exception as e:  # noqa: BLE001
            errors.append(f"torch.export: {type(e).__name__}: {str(e)[:200]}")
        raise ValueError(f"`model` {spec!r} is neither a TorchScript file nor a torch.export program "
                         f"({'; '.join(errors)}). A plain state dict needs the `package.module:factory` "
                         "form with --weights")
    if ":" not in spec or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"`model` must be an existing TorchScript / .pt2 file or `package.module:factory` "
                         f"(e.g. mypkg.nets:make_cnn), got {spec!r}")
    mod_name, fn_name = spec.split(":")
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"`model` {spec!r}: cannot import {fn_name!r} from {mod_name!r} ({e}); the "
                         "module must be importable (installed, or on PYTHONPATH)") from e
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"`model` {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
    info["kind"] = "factory"
    if weights is not None:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(sd, dict):
            for key in ("state_dict", "model"):
                if isinstance(sd.get(key), dict):
                    sd = sd[key]
        model.load_state_dict(sd)
        info["weights"] = weights
        info["sha256"] = file_sha256(weights)
    return model.eval(), info


def parse_target(text: str, n_classes: int):
    """``'3'`` (a class), ``'0.5,0.3,0.2,...'`` (a distribution of ``n_classes`` entries) or
    ``'1:0.5,2:0.3,3:0.2'`` (a sparse distribution; the classes not named get 0).

    Returns:
        int or Tensor: a class index, or a ``(n_classes,)`` float64 distribution.
    """
    import torch

    text = text.strip()
    accepted = ("a class index (e.g. 3), a comma-separated distribution over every class "
                "(e.g. 0.5,0.5 for two classes), or class:probability pairs (e.g. 1:0.5,2:0.3,3:0.2)")
    try:
        if "," not in text and ":" not in text:
            c = int(text)
            if not 0 <= c < n_classes:
                raise ValueError(f"`--target` class {c} is out of range [0, {n_classes})")
            return c
        t = torch.zeros(n_classes, dtype=torch.float64)
        parts = [p for p in text.split(",") if p.strip()]
        if all(":" in p for p in parts):
            for p in parts:
                c, v = p.split(":")
                if not 0 <= int(c) < n_classes:
                    raise ValueError(f"`--target` class {int(c)} is out of range [0, {n_classes})")
                t[int(c)] = float(v)
        elif len(parts) == n_classes:
            t[:] = torch.tensor([float(p) for p in parts], dtype=torch.float64)
        else:
            raise ValueError(f"`--target` has {len(parts)} entries but the model has {n_classes} classes: "
                             f"give {accepted}")
    except ValueError as e:
        if "`--target`" in str(e):
            raise
        raise ValueError(f"`--target` must be {accepted}, got {text!r}") from None
    if (t < 0).any() or not math.isclose(float(t.sum()), 1.0, abs_tol=1e-4):
        raise ValueError(f"`--target` distribution must be non-negative and sum to 1, got sum {float(t.sum()):.4g}")
    return t


def _shape(text: Optional[str], what: str, n: Optional[int] = None, cast=int) -> Optional[Tuple]:
    if text is None:
        return None
    try:
        vals = tuple(cast(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"`{what}` must be comma-separated numbers, got {text!r}") from None
    if n is not None and len(vals) != n:
        raise ValueError(f"`{what}` must have {n} comma-separated numbers, got {text!r}")
    return vals


def _shapes(text: Optional[str], what: str):
    """One shape ``'1,28,28'``, or one per input of a multi-input model: ``'1,28,28;12'``."""
    if text is None or ";" not in text:
        return _shape(text, what)
    return tuple(_shape(part, what) for part in text.split(";"))


def run_invert(model: str, out: str, target: str, method: str = "generalized", weights: Optional[str] = None,
               n_samples: int = 16, input_shape: Optional[str] = None, input_range: Optional[str] = None,
               seed: int = 0, min_prob: float = 0.9, atol: float = 0.02, max_iter: int = 30,
               progress: bool = True) -> dict:
    """Invert a user's model and write ``samples.safetensors`` (``inputs`` ``(N, *shape)``,
    ``probs`` ``(N, C)``, ``delta`` ``(N,)`` and ``target``), ``grid.png`` and
    ``metrics.json`` to ``out``. Only verified samples are written; when fewer verify than were
    asked for, the metrics say how many and why, and the job raises the ``InversionError``
    after writing them.

    Args: as the command line's options (``input_shape`` ``'1,28,28'``, or ``'1,28,28;12'`` for a
    model of two inputs, ``input_range`` ``'0,1'``). A multi-input model's samples are written as
    ``inputs.0``, ``inputs.1``, ... and its grid shows the first input.

    Returns:
        dict: the metrics.
    """
    if method not in METHODS:
        raise ValueError(f"`--method` must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"`--n-samples` must be an int >= 1, got {n_samples!r}")
    shape = _shapes(input_shape, "--input-shape")
    box = _shape(input_range, "--input-range", 2, float)
    import matplotlib

    matplotlib.use("Agg")
    import torch
    from safetensors.torch import save_file

    from . import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError, __version__
    from .visualization import plot_inversion_grid

    net, info = load_model(model, weights)
    cls = {"forward": ForwardPassInversion, "generalized": GeneralizedInversion,
           "backward": BackwardPassInversion}[method]
    inv = cls(net, input_shape=shape)
    probe = inv.adapter.probe()
    kind, n_classes = probe.kind, probe.n_classes
    goal = parse_target(target, n_classes)
    kw = dict(target=goal, n_samples=n_samples, seed=seed, min_prob=min_prob, atol=atol,
              return_convergence_delta=True)
    if method != "backward":
        kw.update(max_iter=max_iter, show_progress=progress)
    if box is not None:
        kw["input_range"] = box
    t0 = time.perf_counter()
    error = None
    try:
        x, delta = inv.attribute(**kw)
    except InversionError as e:
        error = e
        x, delta = e.partial, e.delta[e.verified]
    seconds = time.perf_counter() - t0
    parts = tuple(t.detach().float().cpu() for t in x) if isinstance(x, tuple) else (x.detach().float().cpu(),)
    x = parts[0]
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    probs = torch.zeros((0, n_classes))
    if len(x):
        probs = inv.adapter.probs(inv.adapter.flat(parts) if len(parts) > 1 else x, kind).float()
    tgt = torch.as_tensor(goal, dtype=torch.float64 if isinstance(goal, torch.Tensor) else torch.int64)
    tensors = {"inputs": x.contiguous()} if len(parts) == 1 else {f"inputs.{i}": t.contiguous()
                                                                  for i, t in enumerate(parts)}
    save_file({**tensors, "probs": probs.float().contiguous(),
               "delta": delta.detach().double().cpu().contiguous(),
               "target": tgt.reshape(-1).contiguous()}, str(outp / "samples.safetensors"),
              metadata={"model": info["spec"], "method": method, "target": target,
                        "captum_invert": __version__})
    if len(x) and x.dim() in (3, 4):  # an image (the first input of a multi-input model)
        cols = min(8, len(x))
        rows = []
        for i in range(0, len(x), cols):
            chunk = x[i:i + cols]
            if len(chunk) < cols:
                chunk = torch.cat([chunk, torch.zeros((cols - len(chunk), *chunk.shape[1:]))])
            col_p = (probs[i:i + cols, goal] if isinstance(goal, int) else
                     1 - delta[i:i + cols].float())
            col_p = torch.cat([col_p, torch.full((cols - len(col_p),), float("nan"))])
            rows.append((f"{i}-{i + cols - 1}", chunk, col_p))
        fig = plot_inversion_grid(rows, class_names=[str(c) for c in range(cols)],
                                  title=f"{cls.__name__} on {Path(info['spec']).name}, target {target}",
                                  value_range=box)
        fig.savefig(outp / "grid.png", dpi=100)
        import matplotlib.pyplot as plt

        plt.close(fig)
    from .metrics import mean_pairwise_distance

    metrics = {
        "model": info, "method": method, "target": target, "n_classes": n_classes,
        "input_shape": [list(t.shape[1:]) for t in parts] if len(parts) > 1 else list(inv.input_shape), "input_range": list(box) if box else None,
        "n_requested": n_samples, "n_verified": len(x), "seconds": round(seconds, 3),
        "ms_per_verified": round(1000 * seconds / max(len(x), 1), 2),
        "max_delta": float(delta.max()) if len(x) else None,
        "diversity": mean_pairwise_distance(torch.cat([t.reshape(len(t), -1) for t in parts], 1))
        if len(x) > 1 else None,
        "last_stats": {k: v for k, v in inv.last_stats.items() if isinstance(v, (int, float, str))},
        "seed": seed, "min_prob": min_prob, "atol": atol, "captum_invert": __version__,
        "torch": torch.__version__,
    }
    if error is not None:
        metrics["failures"] = error.reasons
    (outp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if error is not None:
        raise error
    return metrics
