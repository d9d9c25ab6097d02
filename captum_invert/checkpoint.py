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
from typing import Optional, Tuple

__all__ = ["load_model", "load_onnx", "onnx_probabilities", "parse_target", "run_invert"]

METHODS = ("forward", "generalized", "backward")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MODEL_FORMS = ("a TorchScript file, a torch.export program (.pt2), an ONNX file (.onnx), "
               "timm:NAME, torchvision:NAME, hf:DIRECTORY (a saved Hugging Face image classifier) "
               "or package.module:factory")


def load_model(spec: str, weights: Optional[str] = None, *, num_classes: Optional[int] = None,
               in_chans: Optional[int] = None):
    """Load a classifier.

    Args:
        spec (str): one of

            - a TorchScript file (``torch.jit.save``);
            - a ``torch.export`` program (``torch.export.save``, usually ``.pt2``; a fixed batch
              size is run in chunks of it);
            - an ONNX file (``.onnx``), converted with ``onnx2torch`` (the ``[onnx]`` extra);
              weights stored as ``Constant`` nodes (as Paddle exports them) are moved into
              initializers first;
            - ``timm:NAME`` or ``torchvision:NAME``: the architecture by name, built without
              weights (no hub access), then ``weights`` loaded;
            - ``hf:DIRECTORY``: a Hugging Face image classifier saved with ``save_pretrained``
              (``transformers``; read offline);
            - ``package.module:factory``, where ``factory()`` returns the ``nn.Module``.
        weights (str, optional): a state dict (``torch.save(model.state_dict(), path)``, a dict
            holding one under ``'state_dict'`` or ``'model'``, or a ``.safetensors`` file) for the
            ``timm:``, ``torchvision:`` and ``module:factory`` forms; ``torch.load`` runs with
            ``weights_only=True``.
        num_classes (int, optional): classes of a ``timm:`` / ``torchvision:`` model (default:
            the architecture's, 1000 for ImageNet models).
        in_chans (int, optional): input channels of a ``timm:`` model (default 3).

    Returns:
        (model, dict): the model in eval mode, and what was loaded: ``kind``, ``spec``, the
        ``sha256`` of each file, and where the format records them, ``normalize`` (``(mean,
        std)`` of the inputs the model expects) and ``input_shape``.
    """
    import torch

    info = {"spec": spec}
    named = spec.split(":", 1)[0] if ":" in spec else None
    if (num_classes is not None or in_chans is not None) and named not in ("timm", "torchvision"):
        raise ValueError("`--num-classes` and `--in-chans` build a model by name: they go with the timm:NAME "
                         f"and torchvision:NAME forms, not with {spec!r}")
    if named in ("timm", "torchvision", "hf") and not os.path.exists(spec):
        model = {"timm": _load_timm, "torchvision": _load_torchvision, "hf": _load_hf}[named](
            spec.split(":", 1)[1], info, num_classes, in_chans)
        if weights is not None:
            if named == "hf":
                raise ValueError("`--weights` does not go with hf:DIRECTORY: the directory holds its weights")
            _load_weights(model, weights, info)
        return model.eval(), info
    if os.path.isfile(spec):
        if weights is not None:
            raise ValueError("`--weights` goes with the timm:, torchvision: and package.module:factory forms; a "
                             "TorchScript, .pt2 or .onnx file holds its weights")
        info["sha256"] = file_sha256(spec)
        if spec.lower().endswith(".onnx"):
            info["kind"] = "onnx"
            return load_onnx(spec, info), info
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
                         f"({'; '.join(errors)}). An ONNX file must end in .onnx; a plain state dict needs "
                         "the timm:NAME, torchvision:NAME or package.module:factory form with --weights")
    if ":" not in spec or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"`model` must be {MODEL_FORMS} (e.g. model.onnx, timm:resnet18, "
                         f"mypkg.nets:make_cnn), got {spec!r}")
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
        _load_weights(model, weights, info)
    return model.eval(), info


def _load_weights(model, weights: str, info: dict) -> None:
    import torch

    if not os.path.isfile(weights):
        raise FileNotFoundError(f"`--weights` {weights!r} does not exist")
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(weights)
    else:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(sd, dict):
        for key in ("state_dict", "model"):
            if isinstance(sd.get(key), dict):
                sd = sd[key]
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ValueError(f"`--weights` {weights!r} does not fit the model: {str(e)[:400]}. For a model by name, "
                         "--num-classes / --in-chans must match the checkpoint") from e
    info["weights"] = weights
    info["sha256"] = file_sha256(weights)


def _require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for this model form: pip install 'captum-invert[{extra}]'") from e


def _load_timm(name: str, info: dict, num_classes, in_chans):
    timm = _require("timm", "dev")
    kw = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None}
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        raise ValueError(f"`model` timm:{name}: timm {timm.__version__} has no model {name!r}"
                         + (f"; similar names: {', '.join(close)}" if close else
                            "; list them with timm.list_models('*resnet*')"))
    model = timm.create_model(name, pretrained=False, **kw)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans = in_chans if in_chans is not None else 3
    if cfg.get("mean") is not None and cfg.get("std") is not None:
        if len(cfg["mean"]) in (1, chans) and len(cfg["std"]) in (1, chans):
            info["normalize"] = (tuple(cfg["mean"]), tuple(cfg["std"]))
        else:  # timm keeps the RGB statistics for other in_chans: no convention to follow
            info["normalize_note"] = (f"timm's pretrained_cfg gives {len(cfg['mean'])}-channel statistics for a "
                                      f"{chans}-channel model: not applied; pass --normalize MEAN/STD")
    info["kind"] = "timm"
    return model


def _load_torchvision(name: str, info: dict, num_classes, in_chans):
    import torchvision

    if in_chans is not None:
        raise ValueError("`--in-chans` is a timm option: torchvision builds its models for 3 channels")
    names = torchvision.models.list_models()
    if name not in names:
        close = [n for n in names if name.lower() in n or n in name.lower()][:8]
        raise ValueError(f"`model` torchvision:{name}: torchvision {torchvision.__version__} has no model {name!r}"
                         + (f"; similar names: {', '.join(close)}" if close else
                            f"; e.g. {', '.join(names[:6])}"))
    kw = {"num_classes": num_classes} if num_classes is not None else {}
    model = torchvision.models.get_model(name, weights=None, **kw)
    try:  # the published weights' preprocessing (read from the enum; nothing is downloaded)
        tf = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        info["normalize"] = (tuple(tf.mean), tuple(tf.std))
        crop = tf.crop_size[0] if isinstance(tf.crop_size, (list, tuple)) else tf.crop_size
        info["input_shape"] = (3, int(crop), int(crop))
    except Exception:  # noqa: BLE001 - a model without published weights: no preprocessing known
        pass
    info["kind"] = "torchvision"
    return model


def _load_hf(path: str, info: dict, num_classes, in_chans):
    transformers = _require("transformers", "hf")
    if not os.path.isdir(path):
        raise ValueError(f"`model` hf:{path}: not a directory; save the model with "
                         "model.save_pretrained(DIRECTORY) (there is no hub access)")
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"`model` hf:{path}: transformers cannot load an image classifier from it "
                         f"({type(e).__name__}: {str(e)[:300]})") from e
    pre = Path(path) / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        if cfg.get("do_normalize", True) and cfg.get("image_mean") is not None:
            info["normalize"] = (tuple(cfg["image_mean"]), tuple(cfg["image_std"]))
    info["kind"] = "hf"
    info["sha256"] = {f.name: file_sha256(f) for f in sorted(Path(path).iterdir()) if f.is_file()}
    return model


def constants_to_initializers(proto) -> int:
    """Move the tensors of an ONNX graph's ``Constant`` nodes into its initializers (in place),
    as onnx2torch expects weights; returns how many were moved."""
    import onnx

    g = proto.graph
    keep, moved = [], 0
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            g.initializer.append(t)
            moved += 1
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return moved


def load_onnx(path: str, info: Optional[dict] = None):
    """An ONNX classifier as a PyTorch module (``onnx2torch``), in eval mode.

    Args:
        path (str): the ``.onnx`` file.
        info (dict, optional): filled with ``input_shape`` when the file fixes every dimension but
            the batch, and ``onnx_input`` (the input's name).

    Returns:
        nn.Module: onnx2torch's module, which matches the ONNX graph.

    Raises:
        ValueError: the file holds no model or uses an operator onnx2torch cannot convert (named).
    """
    onnx = _require("onnx", "onnx")
    onnx2torch = _require("onnx2torch", "onnx")
    try:
        proto = onnx.load(path)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"`model` {path!r} is not a readable ONNX file ({type(e).__name__}: {str(e)[:200]})") from e
    constants_to_initializers(proto)
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"`model` {path!r}: the ONNX graph has {len(inputs)} inputs; one image input is supported")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = onnx2torch.convert(proto)
    except Exception as e:  # noqa: BLE001
        ops = sorted({n.op_type for n in proto.graph.node})
        raise ValueError(f"`model` {path!r}: onnx2torch cannot convert this graph ({type(e).__name__}: "
                         f"{str(e)[:300]}); its operators: {', '.join(ops)}. Export the model from PyTorch "
                         "instead, or as TorchScript / torch.export") from e
    if info is not None:
        info["onnx_input"] = inputs[0].name
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) > 1 and all(isinstance(d, int) and d > 0 for d in dims[1:]):
            info["input_shape"] = tuple(dims[1:])
    return model.eval()


def onnx_probabilities(path: str, x, output: Optional[str] = None):
    """The class probabilities that onnxruntime gives ``x`` (``(N, ...)``, already in the model's
    input units), read as the methods read outputs; ``(N, C)`` float64."""
    import torch

    ort = _require("onnxruntime", "onnx")
    from ._core.model import ModelAdapter

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    run = lambda t: torch.from_numpy(sess.run(None, {name: t.detach().float().cpu().numpy()})[0])  # noqa: E731
    return ModelAdapter(run, tuple(x.shape[1:]), output=output).probs(x)


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


def parse_normalize(text: Optional[str]):
    """``--normalize``: ``auto`` (what the model's format records, else none), ``none``,
    ``imagenet``, or ``MEAN/STD`` with one value or one per channel each, e.g. ``0.5/0.5`` or
    ``0.485,0.456,0.406/0.229,0.224,0.225``. Returns ``'auto'``, None or ``(mean, std)``."""
    from .blocks.normalize import IMAGENET_MEAN, IMAGENET_STD

    if text is None or text == "auto":
        return "auto"
    if text == "none":
        return None
    if text == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    parts = text.split("/")
    if len(parts) != 2:
        raise ValueError("`--normalize` must be auto, none, imagenet or MEAN/STD (e.g. 0.5/0.5 or "
                         f"0.485,0.456,0.406/0.229,0.224,0.225), got {text!r}")
    return _shape(parts[0], "--normalize", cast=float), _shape(parts[1], "--normalize", cast=float)


def parse_prior(text: Optional[str], input_shape=None):
    """``--prior``: ``auto``, ``none`` or ``data:PATH`` (an image folder or a tensor file, see
    :func:`~captum_invert.datasets.load_images`): the prior a method takes."""
    if text is None or text == "none":
        return None
    if text == "auto":
        return "auto"
    if text.startswith("data:") and len(text) > 5:
        from .datasets import load_images
        from .priors import DataPrior

        x = load_images(text[5:], image_shape=input_shape).tensors[0]
        return DataPrior(x)
    raise ValueError(f"`--prior` must be auto, none or data:PATH (an image folder or a tensor file), got {text!r}")


def run_invert(model: str, out: str, target: str, method: str = "generalized", weights: Optional[str] = None,
               n_samples: int = 16, input_shape: Optional[str] = None, input_range: Optional[str] = None,
               seed: int = 0, min_prob: float = 0.9, atol: float = 0.02, max_iter: int = 30,
               progress: bool = True, *, normalize: Optional[str] = "auto", prior: Optional[str] = None,
               num_classes: Optional[int] = None, in_chans: Optional[int] = None) -> dict:
    """Invert a user's model and write ``samples.safetensors`` (``inputs`` ``(N, *shape)``,
    ``probs`` ``(N, C)``, ``delta`` ``(N,)`` and ``target``), ``grid.png`` and
    ``metrics.json`` to ``out``. Only verified samples are written; when fewer verify than were
    asked for, the metrics say how many and why, and the job raises the ``InversionError``
    after writing them. For an ONNX model the written samples are also checked under
    onnxruntime (``metrics['onnxruntime']``).

    Args: as the command line's options (``input_shape`` ``'1,28,28'``, or ``'1,28,28;12'`` for a
    model of two inputs, ``input_range`` ``'0,1'``, ``normalize`` and ``prior`` as
    :func:`parse_normalize` and :func:`parse_prior` read them). A multi-input model's samples are
    written as ``inputs.0``, ``inputs.1``, ... and its grid shows the first input. With a
    normalisation the samples are pixel images; the model saw them normalised.

    Returns:
        dict: the metrics.
    """
    if method not in METHODS:
        raise ValueError(f"`--method` must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"`--n-samples` must be an int >= 1, got {n_samples!r}")
    shape = _shapes(input_shape, "--input-shape")
    box = _shape(input_range, "--input-range", 2, float)
    norm = parse_normalize(normalize)
    if prior is not None and method == "backward":
        raise ValueError("`--prior` shapes the starts of --method forward or generalized, not backward")
    import matplotlib

    matplotlib.use("Agg")
    import torch
    from safetensors.torch import save as save_bytes

    from . import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError, __version__
    from .visualization import plot_inversion_grid

    net, info = load_model(model, weights, num_classes=num_classes, in_chans=in_chans)
    if shape is None and info.get("input_shape"):
        shape = tuple(info["input_shape"])
    if norm == "auto":
        norm = info.get("normalize")
    cls = {"forward": ForwardPassInversion, "generalized": GeneralizedInversion,
           "backward": BackwardPassInversion}[method]
    inv = cls(net, input_shape=shape, normalize=norm)
    probe = inv.adapter.probe()
    kind, n_classes = probe.kind, probe.n_classes
    goal = parse_target(target, n_classes)
    kw = dict(target=goal, n_samples=n_samples, seed=seed, min_prob=min_prob, atol=atol,
              return_convergence_delta=True)
    if method != "backward":
        kw.update(max_iter=max_iter, show_progress=progress)
        if prior is not None:
            kw["prior"] = parse_prior(prior, inv.input_shape)
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
    # written through open() so that the file gets the umask's permissions (save_file gives 0600)
    (outp / "samples.safetensors").write_bytes(save_bytes(
        {**tensors, "probs": probs.float().contiguous(), "delta": delta.detach().double().cpu().contiguous(),
         "target": tgt.reshape(-1).contiguous()},
        metadata={"model": info["spec"], "method": method, "target": target, "captum_invert": __version__}))
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
    if norm is not None:
        metrics["normalize"] = [list(v) for v in inv.adapter.normalize]
    if prior is not None:
        metrics["prior"] = prior
    if info.get("kind") == "onnx" and len(x):
        try:
            fed = inv.adapter.module.normalize(x) if norm is not None else x
            pr = onnx_probabilities(model, fed.detach(), output=None)
            from ._core.goal import parse_target as goal_of

            ok = goal_of(goal, None, n_classes, min_prob, atol, n_inputs=len(x)).ok(pr)  # verification's rule
            metrics["onnxruntime"] = {"verified": int(ok.sum()), "of": len(x),
                                      "max_prob_gap": float((pr - probs.double()).abs().max())}
        except ImportError as e:
            metrics["onnxruntime"] = {"skipped": str(e)}
    if error is not None:
        metrics["failures"] = error.reasons
    (outp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if error is not None:
        raise error
    return metrics
