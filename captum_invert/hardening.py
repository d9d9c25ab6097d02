"""Hardening a classifier with its own inversions (seed 000: "use undesirable input images that
yield specific classes to retrain the network to classify them correctly"), and ACET, the peer
it is measured against.

:func:`harden` runs rounds of: generate inversions of every class on the current model (with
:func:`~captum_invert.generate`, so the generation scales out the same way); keep the
*undesirable* ones; fine-tune a copy on the clean data plus those inputs with the uniform
distribution as their target.

- **Undesirable.** An inversion is undesirable when an independent criterion does not accept it
  as its class. With a ``judge`` (a classifier the inverted model never saw, e.g.
  :func:`~captum_invert.models.train_judge`), the judge's top class is not the target. Without
  one, the inversion is farther from the class's training images (L2, nearest) than 95% of that
  class's own images are from their nearest classmate.
- **Reject target: the uniform distribution**, as in ACET / CEDA (Hein et al., CVPR 2019): the
  model keeps its outputs (no extra class that every caller would have to know), and low
  confidence is exactly what makes an inversion fail verification at ``min_prob``.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ._core.model import ModelAdapter

__all__ = ["harden", "acet", "HardenReport", "undesirable", "attack_rates", "projected_adam_attack"]


@dataclass
class HardenReport:
    """Per-round figures of :func:`harden` (round 0: the model passed in).

    Attributes:
        rounds (list of dict): ``round``, ``clean_accuracy``, ``lm_found`` /
            ``lm_undesirable`` (the share of LM inversions from random starts that verify, and
            that verify and are undesirable), ``adam_found`` / ``adam_undesirable`` (the same for
            projected Adam from uniform noise), ``kept`` (undesirable inversions added to the
            training set that round), ``seconds``.
    """

    rounds: List[dict] = field(default_factory=list)

    def table(self) -> str:
        cols = ["round", "clean_accuracy", "lm_found", "lm_undesirable", "adam_found", "adam_undesirable",
                "kept", "seconds"]
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.rounds:
            out.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols)
                       + " |")
        return "\n".join(out)


def _nn_threshold(x: Tensor, y: Tensor, n_classes: int, q: float = 0.95) -> Tensor:
    """Per class, the ``q`` quantile of each training image's distance to its nearest classmate."""
    thr = torch.zeros(n_classes)
    for c in range(n_classes):
        xc = x[y == c].flatten(1).float()
        if len(xc) < 2:
            thr[c] = float("inf")
            continue
        d = torch.cdist(xc, xc)
        d.fill_diagonal_(float("inf"))
        thr[c] = torch.quantile(d.min(1).values, q)
    return thr


def undesirable(x: Tensor, labels: Tensor, judge: Optional[nn.Module] = None,
                data: Optional[TensorDataset] = None, threshold: Optional[Tensor] = None) -> Tensor:
    """Bool ``(N,)``: which inputs an independent criterion does not accept as their label.

    Args:
        x (Tensor): ``(N, *shape)`` inputs.
        labels (Tensor): ``(N,)`` their classes.
        judge (nn.Module, optional): an independent classifier; undesirable = its top class
            (over its first ``C`` outputs or all, a reject output included) is not the label.
        data (TensorDataset, optional): the training data, for the distance criterion (used
            without a judge): undesirable = nearest distance to the label's images above
            ``threshold[label]`` (default: the 95% quantile of the class's own nearest-classmate
            distances).
    """
    if judge is not None:
        return ModelAdapter(judge, tuple(x.shape[1:])).probs(x).argmax(1) != labels.cpu()
    if data is None:
        raise ValueError("`undesirable` needs a `judge` or the training `data`")
    xd, yd = data.tensors
    n_classes = int(yd.max()) + 1
    thr = threshold if threshold is not None else _nn_threshold(xd, yd, n_classes)
    out = torch.zeros(len(x), dtype=torch.bool)
    for c in labels.unique().tolist():
        sel = (labels == c).nonzero().squeeze(1)
        d = torch.cdist(x[sel].flatten(1).float().cpu(), xd[yd == c].flatten(1).float()).min(1).values
        out[sel] = d > thr[c]
    return out


def projected_adam_attack(model: nn.Module, labels: Tensor, shape, steps: int = 400, lr: float = 0.01,
                          input_range=(0.0, 1.0), seed: int = 0) -> Tensor:
    """The strong attack: Adam on ``log p_label`` from uniform noise, projected onto the box
    after every step (``steps`` steps, no early stop). Returns ``(N, *shape)`` inputs."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = input_range
    x = (torch.rand((len(labels), *shape), generator=g) * (hi - lo) + lo).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr * (hi - lo))
    adapter = ModelAdapter(model, tuple(shape))
    kind = adapter.probe().kind
    with adapter.guard():
        for _ in range(steps):
            opt.zero_grad()
            (-adapter.log_probs(x, kind).gather(1, labels[:, None].to(adapter.device)).sum()).backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
    return x.detach()


def attack_rates(model: nn.Module, n_classes: int, per_class: int, shape, judge=None, data=None,
                 threshold=None, input_range=(0.0, 1.0), seed: int = 12345, adam_steps: int = 400,
                 min_prob: float = 0.9) -> dict:
    """The fixed attacks of the report, from fixed seeds: ``per_class`` starts per class of
    ForwardPassInversion (LM) and of :func:`projected_adam_attack`. ``*_found``: the share of
    starts that reach ``p >= min_prob``; ``*_undesirable``: that reach it and are undesirable;
    ``adam_judged``: the judge's (or distance criterion's) acceptance of what Adam found."""
    from . import ForwardPassInversion

    labels = torch.arange(n_classes).repeat_interleave(per_class)
    out = {}
    inv = ForwardPassInversion(model, input_shape=shape)
    x, d = inv.attribute(target=labels.tolist(), seed=seed, input_range=input_range, min_prob=min_prob,
                         allow_unverified=True, return_convergence_delta=True)
    ok = d <= 1 - min_prob
    bad = undesirable(x, labels, judge, data, threshold)
    out["lm_found"] = float(ok.float().mean())
    out["lm_undesirable"] = float((ok & bad).float().mean())
    xa = projected_adam_attack(model, labels, shape, adam_steps, input_range=input_range, seed=seed)
    pa = ModelAdapter(model, tuple(shape)).probs(xa).gather(1, labels[:, None]).squeeze(1)
    oka = pa >= min_prob
    bada = undesirable(xa, labels, judge, data, threshold)
    out["adam_found"] = float(oka.float().mean())
    out["adam_undesirable"] = float((oka & bada).float().mean())
    out["adam_judged"] = float((oka & ~bada).sum() / oka.sum().clamp_min(1))
    return out


def _fine_tune(model: nn.Module, data: TensorDataset, reject: Optional[Tensor], epochs: int, lr: float,
               batch_size: int, weight: float, seed: int,
               extra: Optional[Callable[[nn.Module, Tensor], Tensor]] = None) -> nn.Module:
    """Adam on CE(clean) + ``weight`` * CE(uniform, p(reject batch)) (+ ``extra(model, xb)``)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)
    adapter = ModelAdapter(model, tuple(data.tensors[0].shape[1:]))
    kind = adapter.probe().kind  # the loss reads the output as the methods do (a sigmoid head too)
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            loss = nn.functional.nll_loss(adapter.log_probs(xb, kind), yb.to(adapter.device))
            if reject is not None and len(reject):
                i = torch.randint(len(reject), (min(batch_size, len(reject)),), generator=g)
                loss = loss - weight * adapter.log_probs(reject[i], kind).mean()
            if extra is not None:
                loss = loss + extra(model, xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def _trainable_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters are leaves (see :meth:`ModelAdapter.trainable_copy`)."""
    return ModelAdapter(model, (1,)).trainable_copy()


def _accuracy(model, data: TensorDataset) -> float:
    from .models import accuracy

    return accuracy(model, data)


def harden(model: nn.Module, dataset: TensorDataset, judge: Optional[nn.Module] = None, rounds: int = 5,
           per_class: int = 64, method: str = "forward", input_range=(0.0, 1.0), epochs: int = 2,
           lr: float = 5e-4, batch_size: int = 128, weight: float = 1.0, eval_data: Optional[TensorDataset] = None,
           attack_per_class: int = 10, adam_steps: int = 400, seed: int = 0, workdir=None,
           progress: bool = False) -> Tuple[nn.Module, HardenReport]:
    """Harden a copy of ``model`` against its own undesirable inversions.

    Args:
        model (nn.Module): the classifier; it is not modified (a deep copy is trained).
        dataset (TensorDataset): the clean training data ``(inputs, labels)``.
        judge (nn.Module, optional): the independent criterion (see the module docstring); else
            the distance to ``dataset``.
        rounds (int): generate-and-fine-tune rounds.
        per_class (int): inversions generated per class and round.
        method (str): the generating method (``'forward'``, ``'generalized'``, ``'backward'``).
        input_range (tuple): the box of the inversions and attacks.
        epochs, lr, batch_size: fine-tuning per round (Adam).
        weight (float): weight of the uniform-target loss on the undesirable inputs.
        eval_data (TensorDataset, optional): held-out data for the clean accuracy (default:
            ``dataset``).
        attack_per_class (int), adam_steps (int): the report's fixed attacks
            (:func:`attack_rates`).
        seed (int): seed of generation, fine-tuning and attacks.
        workdir (str or Path, optional): where the rounds' shards go (default: a temporary dir).

    Returns:
        (nn.Module, HardenReport): the hardened copy (eval mode) and the per-round report.
    """
    from .generation import generate
    from .generation import InversionDataset

    if rounds < 0 or per_class < 1:
        raise ValueError(f"`rounds` must be >= 0 and `per_class` >= 1, got {rounds!r}, {per_class!r}")
    x, y = dataset.tensors
    shape = tuple(x.shape[1:])
    n_classes = int(y.max()) + 1
    thr = None if judge is not None else _nn_threshold(x, y, n_classes)
    ev = eval_data or dataset
    net = _trainable_copy(model).eval()
    for p in net.parameters():
        p.requires_grad_(True)
    report = HardenReport()

    def measure(r, kept, t):
        row = {"round": r, "clean_accuracy": _accuracy(net, ev), "kept": kept, "seconds": round(t, 1)}
        row.update(attack_rates(net, n_classes, attack_per_class, shape, judge, dataset, thr, input_range,
                                adam_steps=adam_steps))
        report.rounds.append(row)

    measure(0, 0, 0.0)
    bad_pool: List[Tensor] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = workdir or tmp
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            out = f"{root}/round-{r}"
            generate(net, out, list(range(n_classes)), per_class, method=method, shard_size=max(per_class, 16),
                     max_attempts=1,
                     seed=seed + r, input_range=input_range, input_shape=shape, progress=progress)
            inv = InversionDataset(out)
            bad = undesirable(inv.inputs, inv.targets, judge, dataset, thr)
            bad_pool.append(inv.inputs[bad])
            reject = torch.cat(bad_pool)
            _fine_tune(net, dataset, reject, epochs, lr, batch_size, weight, seed + r)
            measure(r, int(bad.sum()), time.perf_counter() - t0)
    for p, q in zip(net.parameters(), model.parameters()):
        p.requires_grad_(q.requires_grad)
    return net, report


def acet(model: nn.Module, dataset: TensorDataset, epochs: int = 4, lr: float = 5e-4, batch_size: int = 128,
         weight: float = 1.0, eps: float = 0.3, steps: int = 10, input_range=(0.0, 1.0), seed: int = 0) -> nn.Module:
    """ACET (Hein et al., CVPR 2019), as the peer of :func:`harden`: fine-tune a copy on the
    clean data plus, per batch, uniform noise attacked to maximise the model's confidence
    (``steps`` of signed-gradient ascent on ``max_c log p_c`` in an L-infinity ball of radius
    ``eps`` around the noise, inside the box), with loss ``weight * max_c log p_c`` on those
    inputs (their confidence pushed down). Returns the copy in eval mode."""
    lo, hi = input_range
    g = torch.Generator().manual_seed(seed)
    net = _trainable_copy(model)
    for p in net.parameters():
        p.requires_grad_(True)

    adapter = ModelAdapter(net, tuple(dataset.tensors[0].shape[1:]))
    kind = adapter.probe().kind

    def extra(m, xb):
        z = torch.rand(xb.shape, generator=g) * (hi - lo) + lo
        a = z.clone()
        m.eval()
        for _ in range(steps):
            a.requires_grad_(True)
            conf = adapter.log_probs(a, kind).amax(1).sum()
            (grad,) = torch.autograd.grad(conf, a)
            with torch.no_grad():
                a = torch.minimum(torch.maximum(a + (eps / 4) * grad.sign(), z - eps), z + eps).clamp(lo, hi)
        m.train()
        return weight * adapter.log_probs(a.detach(), kind).amax(1).mean()

    return _fine_tune(net, dataset, None, epochs, lr, batch_size, weight, seed, extra)
