"""Inversions at scale: deterministic shards, a manifest, resume after a crash, and
``torch.distributed`` ranks (``torchrun --nproc_per_node=N -m captum_invert generate ...``).

The work is ``n_per_target`` samples of every target, cut into shards of ``shard_size``
samples. Shard ``i`` is a deterministic function of ``(seed, i)``, so any process can make it,
and rank ``r`` of ``W`` makes the shards ``i`` with ``i % W == r``. Each shard is written
atomically (a temporary file, then a rename): a shard file either is complete or is absent, and
a rerun of the same command skips the complete ones. Rank 0 writes ``manifest.json`` last.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .checkpoint import METHODS, file_sha256 as _sha256

__all__ = ["generate", "parse_targets", "read_manifest", "verify_shards", "ManifestError", "InversionDataset"]

MANIFEST = "manifest.json"
CONFIG = "config.json"


class ManifestError(RuntimeError):
    """A generation directory that is incomplete, corrupted, or made with other arguments."""


def model_hash(model) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and values), or of a file."""
    import torch

    if isinstance(model, (str, Path)) and os.path.isfile(model):
        return _sha256(model)
    mod = getattr(model, "module", model)  # a wrapped module
    h = hashlib.sha256()
    if isinstance(mod, torch.nn.Module):
        for k, v in mod.state_dict().items():
            v = v.detach().cpu().contiguous()
            h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
            h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    else:
        h.update(repr(mod).encode())
    return h.hexdigest()


def parse_targets(spec, n_classes: int):
    """The targets of a generation run.

    Args:
        spec: ``'0-9'`` (a range, inclusive), ``'1,3,7'``, a list of ints, a ``(T, C)`` float
            tensor of distributions, or the path of a ``.pt`` / ``.json`` file holding one
            (a list of ``C`` probabilities per row).
        n_classes (int): the model's classes.

    Returns:
        list of int, or Tensor ``(T, C)`` float64.
    """
    import torch

    if isinstance(spec, (str, Path)) and os.path.isfile(spec):
        p = str(spec)
        t = torch.load(p, weights_only=True) if p.endswith(".pt") else torch.tensor(json.loads(Path(p).read_text()))
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.dim() != 2 or t.shape[1] != n_classes or (t < 0).any() or not torch.allclose(
                t.sum(1), torch.ones(len(t), dtype=t.dtype), atol=1e-4):
            raise ValueError(f"`targets` file {p!r} must hold a (T, {n_classes}) array of distributions "
                             "(non-negative rows summing to 1)")
        return t
    if isinstance(spec, torch.Tensor) and spec.is_floating_point():
        return parse_targets_tensor(spec, n_classes)
    if isinstance(spec, str):
        out: List[int] = []
        try:
            for part in spec.split(","):
                part = part.strip()
                if "-" in part:
                    a, b = part.split("-")
                    out += list(range(int(a), int(b) + 1))
                elif part:
                    out.append(int(part))
        except ValueError:
            raise ValueError(f"`targets` must be classes like '0-9' or '1,3,7', or a file of distributions, "
                             f"got {spec!r}") from None
        spec = out
    spec = [int(c) for c in spec]
    if not spec or any(not 0 <= c < n_classes for c in spec):
        raise ValueError(f"`targets` must name classes in [0, {n_classes}), got {spec!r}")
    return spec


def parse_targets_tensor(t, n_classes: int):
    import torch

    t = t.detach().to("cpu", torch.float64)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[1] != n_classes:
        raise ValueError(f"`targets` distributions must have shape (T, {n_classes}), got {tuple(t.shape)}")
    return t


def _plan_shards(n_targets: int, n_per_target: int, shard_size: int):
    """``[(lo, hi), ...]``: shard ``i`` holds the flat sample indices ``lo..hi-1``; sample ``k``
    is of target ``k // n_per_target``."""
    total = n_targets * n_per_target
    return [(lo, min(total, lo + shard_size)) for lo in range(0, total, shard_size)]


def _dist_info():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def generate(model, out, targets, n_per_target: int, method: str = "generalized", shard_size: int = 64,
             seed: int = 0, input_range=None, input_shape: Optional[Sequence[int]] = None, weights=None,
             min_prob: float = 0.9, atol: float = 0.02, max_iter: int = 30, max_attempts: int = 3,
             progress: bool = False, _stop_after: Optional[int] = None, *, normalize="auto",
             num_classes: Optional[int] = None, in_chans: Optional[int] = None) -> dict:
    """Generate verified inversions of every target into shards under ``out``.

    Runs as one process, or as one rank of ``torch.distributed`` (initialized by the caller, or
    from ``torchrun``'s environment: gloo on CPU, NCCL on GPU); ranks take shards round-robin.
    Rerunning the same call after a crash skips the shards already written.

    Args:
        model: an ``nn.Module``, or a model file / ``package.module:factory`` string (see
            :func:`~captum_invert.checkpoint.load_model`; ``weights`` goes with the factory).
        out (str or Path): the directory.
        targets: classes (``'0-9'``, ``[1, 3]``), or distributions (a ``(T, C)`` tensor or a
            file of them); see :func:`parse_targets`.
        n_per_target (int): samples of each target.
        method (str): ``'forward'``, ``'generalized'`` or ``'backward'``.
        shard_size (int): samples per shard.
        seed (int): the run's seed; shard ``i`` draws from ``(seed, i)``.
        input_range, input_shape, min_prob, atol, max_iter: as in ``attribute``.
        max_attempts (int): solves per shard; samples that fail are redrawn from the next
            attempt's stream. What still fails is left out of the shard and counted in the
            manifest (``failed``): unverified samples are never written.
        progress (bool): a progress bar over this rank's shards.
        normalize: ``(mean, std)`` of a model that expects normalised inputs (the samples stay
            in pixel space), None, or ``'auto'``: what the model file's format records (see
            :func:`~captum_invert.checkpoint.load_model`; none for a module).
        num_classes, in_chans: a ``timm:`` / ``torchvision:`` model's options (see
            :func:`~captum_invert.checkpoint.load_model`).

    Returns:
        dict: the manifest (rank 0), or this rank's shard records (other ranks).

    Raises:
        ManifestError: ``out`` holds a run with other arguments.
    """
    import torch
    from safetensors.torch import save

    from . import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError, __version__
    from .checkpoint import load_model

    if method not in METHODS:
        raise ValueError(f"`method` must be one of {', '.join(METHODS)}, got {method!r}")
    for name, v in (("n_per_target", n_per_target), ("shard_size", shard_size), ("max_attempts", max_attempts)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {v!r}")
    info: dict = {}
    if isinstance(model, (str, Path)):
        spec = str(model)
        net, info = load_model(spec, weights, num_classes=num_classes, in_chans=in_chans)
        mhash = info.get("sha256") or model_hash(net)
    else:
        spec, net, mhash = type(model).__name__, model, model_hash(model)
    if isinstance(mhash, dict):  # a directory's files
        mhash = hashlib.sha256(json.dumps(mhash, sort_keys=True).encode()).hexdigest()
    if isinstance(normalize, str) and normalize == "auto":
        normalize = info.get("normalize")
    if input_shape is None and info.get("input_shape"):
        input_shape = tuple(info["input_shape"])
    cls = {"forward": ForwardPassInversion, "generalized": GeneralizedInversion,
           "backward": BackwardPassInversion}[method]
    inv = cls(net, input_shape=input_shape, normalize=normalize)
    probe = inv.adapter.probe()
    kind, n_classes = probe.kind, probe.n_classes
    tg = parse_targets(targets, n_classes)
    is_dist = isinstance(tg, torch.Tensor)
    n_t = len(tg)
    box = None if input_range is None else [float(v) for v in input_range]
    config = {"model": spec, "model_sha256": mhash, "method": method, "targets": tg.tolist() if is_dist else tg,
              "n_per_target": n_per_target, "shard_size": shard_size, "seed": seed, "input_range": box,
              "input_shape": list(inv.input_shape), "min_prob": min_prob, "atol": atol, "max_iter": max_iter,
              "max_attempts": max_attempts, "captum_invert": __version__}
    if inv.adapter.normalize is not None:  # older manifests have no such key
        config["normalize"] = [list(v) for v in inv.adapter.normalize]
    rank, world, owned = _dist_info()
    outp = Path(out)
    sdir = outp / "shards"
    try:
        if rank == 0:
            sdir.mkdir(parents=True, exist_ok=True)
            cfg_path = outp / CONFIG
            if cfg_path.is_file():
                old = json.loads(cfg_path.read_text())
                if old != config:
                    diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                    raise ManifestError(f"`out` {str(outp)!r} holds a run with other arguments (differing: "
                                        f"{', '.join(diff)}); use a new directory, or the same arguments to resume")
            else:
                _atomic_write_bytes(cfg_path, json.dumps(config, indent=2).encode())
        _barrier(world)
        if rank != 0 and json.loads((outp / CONFIG).read_text()) != config:
            raise ManifestError(f"rank {rank}: the arguments differ from rank 0's")
        t_start = time.perf_counter()
        shards = _plan_shards(n_t, n_per_target, shard_size)
        mine = [i for i in range(len(shards)) if i % world == rank]
        from tqdm.auto import tqdm

        done_now = 0
        for i in tqdm(mine, desc=f"rank {rank} shards", disable=not progress, leave=False):
            path = sdir / f"shard-{i:05d}.safetensors"
            if path.is_file():
                continue  # complete (atomic rename): a resumed run keeps it as it is
            if _stop_after is not None and done_now >= _stop_after:
                raise KeyboardInterrupt(f"stopped after {done_now} shard(s)")  # tests: a kill mid-run
            lo, hi = shards[i]
            idx = torch.arange(lo, hi)
            t_of = idx // n_per_target
            target = tg[t_of] if is_dist else [tg[int(k)] for k in t_of]
            xs = [None] * len(idx)
            ds = torch.full((len(idx),), float("nan"), dtype=torch.float64)
            todo = list(range(len(idx)))
            for attempt in range(max_attempts):
                if not todo:
                    break
                g = torch.Generator().manual_seed(hash_seed(seed, i, attempt))
                sub = target[todo] if is_dist else [target[j] for j in todo]
                kw = dict(target=sub, n_samples=len(todo), seed=g, min_prob=min_prob, atol=atol,
                          return_convergence_delta=True)
                if method != "backward":
                    kw["max_iter"] = max_iter
                if box is not None:
                    kw["input_range"] = tuple(box)
                try:
                    x, d = inv.attribute(**kw)
                    ok = torch.ones(len(todo), dtype=torch.bool)
                except InversionError as e:
                    x, d, ok = e.result, e.delta, e.verified
                for j, k in enumerate(todo):
                    if bool(ok[j]):
                        xs[k], ds[k] = x[j].detach().float().cpu(), float(d[j])
                todo = [k for j, k in enumerate(todo) if not bool(ok[j])]
            keep = [k for k in range(len(idx)) if xs[k] is not None]
            if keep:
                x = torch.stack([xs[k] for k in keep])
                probs = inv.adapter.probs(x, kind).float()
            else:
                x = torch.zeros((0, *inv.input_shape))
                probs = torch.zeros((0, n_classes))
            tsel = (tg[t_of[keep]] if is_dist else torch.tensor([target[k] for k in keep], dtype=torch.int64))
            blob = save({"inputs": x.contiguous(), "targets": tsel.contiguous().to(
                torch.float64 if is_dist else torch.int64), "probs": probs.contiguous(),
                "delta": ds[keep].contiguous(), "index": idx[keep].contiguous()},
                # one metadata key: safetensors orders several keys differently from run to run
                metadata={"shard": json.dumps({"index": i, "failed": len(idx) - len(keep)}, sort_keys=True)})
            _atomic_write_bytes(path, blob)
            done_now += 1
        _barrier(world)
        if rank != 0:
            return {"rank": rank, "shards": mine}
        return _write_manifest(outp, config, shards, tg, n_per_target, is_dist,
                               round(time.perf_counter() - t_start, 3), world)
    finally:
        if owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def hash_seed(seed: int, shard: int, attempt: int) -> int:
    """A 63-bit seed of ``(seed, shard, attempt)`` (sha256: no overlap between nearby seeds)."""
    h = hashlib.sha256(f"{seed}:{shard}:{attempt}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _write_manifest(outp: Path, config: dict, shards, tg, n_per_target: int, is_dist: bool,
                    seconds: float, world: int) -> dict:
    from safetensors import safe_open

    from . import __version__

    recs, total, failed = [], 0, 0
    for i, (lo, hi) in enumerate(shards):
        path = outp / "shards" / f"shard-{i:05d}.safetensors"
        if not path.is_file():
            raise ManifestError(f"shard {i} is missing after every rank finished: {path}")
        with safe_open(str(path), "pt") as f:
            n = f.get_slice("inputs").get_shape()[0]
            fail = int(json.loads(f.metadata()["shard"])["failed"])
        t_lo, t_hi = lo // n_per_target, (hi - 1) // n_per_target
        recs.append({"file": f"shards/{path.name}", "count": n, "failed": fail,
                     "targets": list(range(t_lo, t_hi + 1)) if is_dist else sorted({tg[k] for k in range(t_lo, t_hi + 1)}),
                     "sha256": _sha256(path)})
        total += n
        failed += fail
    manifest = {"complete": True, "n_samples": total, "failed": failed, "shards": recs,
                "model_sha256": config["model_sha256"], "arguments": config, "captum_invert": __version__,
                # this invocation's shard loop (a resumed run counts only what it made)
                "seconds": seconds, "world_size": world,
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _atomic_write_bytes(outp / MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest


def read_manifest(out) -> dict:
    """The manifest of a complete run, or ManifestError."""
    p = Path(out) / MANIFEST
    if not p.is_file():
        raise ManifestError(f"{str(Path(out))!r} has no {MANIFEST}: the run is not complete (rerun the same "
                            "command to finish it)")
    m = json.loads(p.read_text())
    if not m.get("complete"):
        raise ManifestError(f"{str(p)!r} does not mark the run complete")
    return m


def verify_shards(out) -> dict:
    """Check every shard's sha256 against the manifest; ManifestError names the first that
    differs or is missing. Returns the manifest."""
    m = read_manifest(out)
    for r in m["shards"]:
        p = Path(out) / r["file"]
        if not p.is_file():
            raise ManifestError(f"shard {r['file']} is missing")
        if _sha256(p) != r["sha256"]:
            raise ManifestError(f"shard {r['file']} is corrupted: its sha256 differs from the manifest's")
    return m


class InversionDataset(torch.utils.data.Dataset):
    """The samples of a complete :func:`~captum_invert.generate` run, read back as a torch
    Dataset of ``(input, target)`` pairs (``target`` an int64 class, or a ``(C,)`` float64
    distribution), in shard order.

    Args:
        root (str or Path): the run's directory (with ``manifest.json``).
        verify (bool): check every shard's sha256 against the manifest first (a corrupted or
            missing shard is a :class:`ManifestError`).

    Attributes:
        manifest (dict): the run's manifest.
        inputs (Tensor): ``(N, *input_shape)``.
        targets (Tensor): ``(N,)`` or ``(N, C)``.
        probs (Tensor): ``(N, C)``, the model's probabilities on each input.
    """

    def __init__(self, root, verify: bool = True) -> None:
        from safetensors.torch import load_file

        self.root = Path(root)
        self.manifest = verify_shards(root) if verify else read_manifest(root)
        parts = [load_file(str(self.root / r["file"])) for r in self.manifest["shards"]]
        self.inputs = torch.cat([p["inputs"] for p in parts])
        self.targets = torch.cat([p["targets"] for p in parts])
        self.probs = torch.cat([p["probs"] for p in parts])

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]
