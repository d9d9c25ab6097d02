"""A small training loop with a cache of trained weights."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["TrainConfig", "train", "accuracy", "cache_dir", "CACHE_ENV"]

#: Environment variable overriding the weight cache directory.
CACHE_ENV = "CAPTUM_INVERT_CACHE"
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are the seed paper's (SGD, lr 0.001, momentum
    0.9, 20 epochs). The paper gives no batch size; 64 is ours."""

    epochs: int = 20
    lr: float = 1e-3
    momentum: float = 0.9
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "sgd"  # 'sgd', 'adam' or 'adamw'
    seed: int = 0


def cache_dir() -> Path:
    """The weight cache: ``$CAPTUM_INVERT_CACHE`` or the user's cache dir (platformdirs)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("captum-invert"))
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "captum-invert"


def _fingerprint(model: nn.Module, data: TensorDataset, config: TrainConfig) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_FORMAT, repr(model), asdict(config)]).encode())
    for t in data.tensors:
        t = t.contiguous().cpu()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:24]


def accuracy(model: nn.Module, data: TensorDataset, batch_size: int = 1024) -> float:
    """Fraction of ``data`` that ``model`` classifies right (argmax of its outputs), in eval mode;
    the model's mode is restored."""
    was = model.training
    model.eval()
    x, y = data.tensors
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                correct += (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    finally:
        model.train(was)
    return correct / max(len(x), 1)


def train(
    model: nn.Module,
    data: TensorDataset,
    config: Optional[TrainConfig] = None,
    cache: bool = True,
    progress: bool = True,
    loss_fn: Optional[nn.Module] = None,
) -> nn.Module:
    """Train ``model`` on ``data`` with cross-entropy on its outputs (taken as logits), or load
    the weights from the cache when the same architecture, configuration and data were trained
    before.

    The model's parameters are re-initialized from ``config.seed`` first, so a cached and a fresh
    run give the same weights. The model is returned in eval mode.

    Args:
        model (nn.Module): the classifier.
        data (TensorDataset): ``(inputs, labels)``.
        config (TrainConfig, optional): hyper-parameters; default the seed paper's.
        cache (bool): read and write the weight cache (:func:`cache_dir`).
        progress (bool): show a tqdm progress bar.
        loss_fn (nn.Module, optional): loss on ``(outputs, labels)``; default cross-entropy.
            Custom losses are not part of the cache key: pass ``cache=False`` or a distinct
            ``config.seed`` for them.

    Returns:
        nn.Module: the same ``model``, trained, in eval mode.
    """
    config = config or TrainConfig()
    if config.optimizer not in ("sgd", "adam", "adamw"):
        raise ValueError(f"`config.optimizer` must be 'sgd', 'adam' or 'adamw', got {config.optimizer!r}")
    if not isinstance(data, TensorDataset) or len(data.tensors) != 2:
        raise ValueError("`data` must be a TensorDataset of (inputs, labels)")
    path = cache_dir() / f"weights-{_fingerprint(model, data, config)}.pt"
    if cache and path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception:  # corrupt or stale file: retrain
            pass
    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
    opt = (
        torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                        weight_decay=config.weight_decay)
        if config.optimizer == "sgd"
        else (torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW)(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    )
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, generator=gen)
    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(range(config.epochs), desc=f"train {type(model).__name__}", disable=not progress,
               leave=False)
    for _ in bar:
        total, n = 0.0, 0
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
            n += len(xb)
        bar.set_postfix(loss=f"{total / max(n, 1):.4f}")
    model.eval()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model
