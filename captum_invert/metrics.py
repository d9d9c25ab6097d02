"""Metrics of generated inputs: verification, diversity, distance to the training set, and the
quality of prototypes as an independent judge sees them (judge accuracy with a reject option,
Frechet distance in the judge's feature space, copies of reference images)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .blocks.plan import model_mode_guard

__all__ = ["class_probabilities", "target_probability", "mean_pairwise_distance",
           "nearest_distance", "judge_accuracy", "judge_features", "frechet_distance",
           "class_diversity", "copies", "prototype_report", "judge_agreement",
           "normalized_reconstruction_error"]


def class_probabilities(model, x: Tensor, batch_size: int = 1024, *, output: Optional[str] = None,
                        select=None, normalize=None) -> Tensor:
    """The model's class probabilities on ``x``, read as every method reads them (see
    :class:`~captum_invert.InversionMethod`: the output kind is read from the output, or
    declared with ``output``; ``select`` picks one of several outputs), in eval mode (restored
    afterwards), shape ``(N, C)`` float64 on the CPU. A single output is a binary classifier:
    ``[1 - p, p]``.

    Args:
        model (nn.Module or callable): the classifier.
        x (Tensor): inputs ``(N, *input_shape)``.
        batch_size (int): inputs per forward pass.
        output, select, normalize: as for the methods (``x`` in pixel space with ``normalize``).

    Returns:
        Tensor: ``(N, C)``.
    """
    from ._core.model import ModelAdapter

    if not len(x):
        return torch.zeros(0)
    adapter = ModelAdapter(model, tuple(x.shape[1:]), output=output, select=select, normalize=normalize)
    return adapter.probs(x, batch_size=batch_size)


def target_probability(model: nn.Module, x: Tensor, labels) -> Tensor:
    """``(N,)`` probability the model gives each sample's label."""
    p = class_probabilities(model, x)
    lab = torch.as_tensor(labels, device=p.device).reshape(-1).expand(len(p))
    return p.gather(1, lab[:, None]).squeeze(1)


def mean_pairwise_distance(x: Tensor) -> float:
    """Mean L2 distance between distinct samples of ``x`` ``(N, ...)`` (0 for N < 2): the
    diversity of a set of inversions."""
    n = len(x)
    if n < 2:
        return 0.0
    d = torch.cdist(x.reshape(n, -1).double(), x.reshape(n, -1).double())
    return float(d.sum() / (n * (n - 1)))


def nearest_distance(x: Tensor, reference: Tensor, batch_size: int = 512,
                     labels: Optional[Tensor] = None, reference_labels: Optional[Tensor] = None) -> Tensor:
    """``(N,)`` L2 distance from each sample to its nearest reference (e.g. training) image;
    with labels, only references of the same label count.

    Args:
        x (Tensor): ``(N, ...)`` samples.
        reference (Tensor): ``(M, ...)`` reference images, same per-item shape.
        labels, reference_labels (Tensor, optional): ``(N,)`` and ``(M,)``.

    Returns:
        Tensor: ``(N,)`` float64.
    """
    xf = x.reshape(len(x), -1).double()
    rf = reference.reshape(len(reference), -1).double().to(xf.device)
    out = torch.empty(len(xf), dtype=torch.float64)
    for i in range(0, len(xf), batch_size):
        d = torch.cdist(xf[i:i + batch_size], rf)
        if labels is not None and reference_labels is not None:
            same = labels[i:i + batch_size, None].to(d.device) == reference_labels[None].to(d.device)
            d = torch.where(same, d, torch.full_like(d, float("inf")))
        out[i:i + batch_size] = d.amin(1).cpu()
    return out


def judge_accuracy(judge: nn.Module, x: Tensor, labels, reject_class: Optional[int] = None,
                   batch_size: int = 1024) -> dict:
    """How an independent judge model reads inversions (the model-inversion literature's attack
    accuracy), with a reject option.

    A judge that must name one of the classes "reads" noise as some class; one with a reject
    output (e.g. "no digit", trained on noise, blobs and gratings) can say that an image is none
    of them. Pass its index as ``reject_class``.

    Args:
        judge (nn.Module): the judge (never the audited model); eval mode, restored.
        x (Tensor): ``(N, *input_shape)`` inversions.
        labels (int or Tensor): the intended class of each, ``(N,)``.
        reject_class (int, optional): the judge's reject output.

    Returns:
        dict: ``read`` (fraction whose top output is the intended class), ``forced`` (the same
        among the class outputs only, the reject output left out), ``rejected`` (fraction whose
        top output is the reject class; 0 without one).
    """
    p = class_probabilities(judge, x, batch_size)
    lab = torch.as_tensor(labels, device=p.device).reshape(-1).expand(len(p))
    top = p.argmax(1)
    if reject_class is not None:
        if not 0 <= reject_class < p.shape[1]:
            raise ValueError(f"`reject_class` must be in [0, {p.shape[1]}), got {reject_class!r}")
        keep = torch.ones(p.shape[1], dtype=torch.bool, device=p.device)
        keep[reject_class] = False
        idx = keep.nonzero().squeeze(1)
        forced = idx[p[:, keep].argmax(1)]
        rejected = float((top == reject_class).double().mean()) if len(p) else 0.0
    else:
        forced, rejected = top, 0.0
    n = max(len(p), 1)
    return {"read": float((top == lab).sum()) / n, "forced": float((forced == lab).sum()) / n,
            "rejected": rejected}


def judge_agreement(judges, x: Tensor, labels, batch_size: int = 1024) -> dict:
    """Readability that does not trust one model: the share of inversions that every one of
    several independent judges reads as the intended class (DeepInversion lists "images that
    several models are confident on" as open work). One judge can be fooled by the same
    features as the audited net; an image that judges of different architectures all read is
    far more likely to show the class.

    Args:
        judges (sequence of nn.Module): at least one judge, none of them the audited model.
        x (Tensor): ``(N, *input_shape)`` inversions.
        labels (int or Tensor): the intended class of each, ``(N,)``.

    A judge "reads" an image when its top output is the intended class, so a judge's reject
    output ("no digit") counts as not read.

    Returns:
        dict: ``agree`` (fraction read by every judge), ``any`` (fraction read by at least one),
        ``read`` (list: each judge's read fraction, see :func:`judge_accuracy`) and ``mask``
        (``(N,)`` bool: read by every judge).
    """
    judges = list(judges) if isinstance(judges, (list, tuple)) else [judges]
    if not judges or not all(isinstance(j, nn.Module) for j in judges):
        raise ValueError("`judges` must be a non-empty sequence of models")
    lab = torch.as_tensor(labels).reshape(-1).expand(len(x)).cpu()
    hits = []
    for j in judges:
        hits.append(class_probabilities(j, x, batch_size).argmax(1).cpu() == lab)
    h = torch.stack(hits)
    n = max(len(x), 1)
    every = h.all(0)
    return {"agree": float(every.sum()) / n, "any": float(h.any(0).sum()) / n,
            "read": [float(r.sum()) / n for r in h], "mask": every}


def judge_features(judge: nn.Module, x: Tensor, layer: Optional[nn.Module] = None,
                   batch_size: int = 1024) -> Tensor:
    """``(N, D)`` features of ``x`` in the judge: the input of ``layer`` (default: the judge's
    last ``nn.Linear``, i.e. its penultimate features), in eval mode (restored)."""
    if layer is None:
        lins = [m for m in judge.modules() if isinstance(m, nn.Linear)]
        if not lins:
            raise ValueError("`layer` is required: the judge has no nn.Linear")
        layer = lins[-1]
    feats = []
    h = layer.register_forward_pre_hook(lambda m, i: feats.append(i[0].detach().flatten(1)))
    try:
        with model_mode_guard(judge), torch.no_grad():
            for i in range(0, len(x), batch_size):
                judge(x[i:i + batch_size])
    finally:
        h.remove()
    return torch.cat(feats).double().cpu()


def frechet_distance(a: Tensor, b: Tensor) -> float:
    r"""Frechet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``:
    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` (FID's formula, Heusel et al.
    2017, in any feature space; use :func:`judge_features`). Computed in float64 with symmetric
    eigendecompositions: ``Tr (S_a S_b)^{1/2}`` is the sum of the square roots of the
    eigenvalues of ``S_a^{1/2} S_b S_a^{1/2}``."""
    a, b = a.double().reshape(len(a), -1), b.double().reshape(len(b), -1)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_distance needs at least 2 samples in each set")
    ma, mb = a.mean(0), b.mean(0)
    sa, sb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    w, v = torch.linalg.eigh(sa)
    ra = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(ra @ sb @ ra).clamp_min(0).sqrt().sum()
    return float((ma - mb).pow(2).sum() + sa.trace() + sb.trace() - 2 * cross)


def class_diversity(x: Tensor, labels) -> float:
    """Mean over classes of :func:`mean_pairwise_distance` of the samples of that class (how much
    the samples of one target differ; near-duplicates give about 0)."""
    lab = torch.as_tensor(labels).reshape(-1).expand(len(x))
    vals = [mean_pairwise_distance(x[lab == c]) for c in lab.unique().tolist() if int((lab == c).sum()) > 1]
    return sum(vals) / len(vals) if vals else 0.0


def copies(x: Tensor, reference: Tensor, radius: float = 1.0) -> Tensor:
    """``(N,)`` bool: which samples lie within L2 ``radius`` of some reference image (a copy of
    a training image rather than something the inversion made)."""
    return nearest_distance(x, reference) <= radius


def prototype_report(x: Tensor, labels, judge: nn.Module, reference: Tensor, reference_labels: Tensor,
                     reject_class: Optional[int] = None, copy_radius: float = 1.0) -> dict:
    """Every prototype-quality figure of a set of inversions at once.

    Args:
        x (Tensor): ``(N, *input_shape)`` inversions; ``labels`` ``(N,)`` their classes.
        judge (nn.Module): an independent judge; ``reject_class`` its reject output.
        reference (Tensor): ``(M, *input_shape)`` real images with ``reference_labels`` ``(M,)``.
        copy_radius (float): L2 radius of :func:`copies`; copies do not count as read.

    Returns:
        dict: ``read``, ``forced``, ``rejected`` (:func:`judge_accuracy`, copies counted as not
        read), ``copies`` (fraction), ``nn_dist`` (mean distance to the nearest reference image
        of the same class), ``frechet`` (judge features of ``x`` against those of the references
        of the same classes), ``diversity`` (:func:`class_diversity`).
    """
    lab = torch.as_tensor(labels).reshape(-1).expand(len(x)).cpu()
    cp = copies(x, reference, copy_radius)
    acc = judge_accuracy(judge, x[~cp], lab[~cp], reject_class) if bool((~cp).any()) else {
        "read": 0.0, "forced": 0.0, "rejected": 0.0}
    keep = float((~cp).double().mean())
    ref_sel = torch.isin(reference_labels.cpu(), lab.unique())
    fx = judge_features(judge, x)
    fr = judge_features(judge, reference[ref_sel])
    return {"read": acc["read"] * keep, "forced": acc["forced"] * keep, "rejected": acc["rejected"] * keep,
            "copies": float(cp.double().mean()),
            "nn_dist": float(nearest_distance(x, reference, labels=lab, reference_labels=reference_labels.cpu()).mean()),
            "frechet": frechet_distance(fx, fr) if len(fx) > 1 else float("nan"),
            "diversity": class_diversity(x, lab)}


def normalized_reconstruction_error(x: Tensor, rec: Tensor, reference: Optional[Tensor] = None) -> float:
    """Seed 003's error: ``mean ||x - rec|| / N`` with ``N`` the mean Euclidean distance between
    the images of ``reference`` (default ``x``): 0 is perfect, about 1 is as far as a random
    other image."""
    ref = x if reference is None else reference
    N = mean_pairwise_distance(ref)
    return float((x.float().cpu() - rec.float().cpu()).flatten(1).norm(dim=1).mean()) / max(N, 1e-12)
