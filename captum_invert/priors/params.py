"""Parameterizations: Fourier (Lucid's decorrelated spectrum, MaCo's fixed magnitude) and the data
prior (a PCA subspace of reference images)."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .base import Parameterization, Penalty, Prior, check_weight

__all__ = ["FourierParam", "DataPrior", "PCAParam", "LatentNorm", "spectrum_scale"]


#: Square root of natural images' RGB channel correlation (the figures Lucid publishes for
#: ImageNet); used by :class:`FourierParam` on colour images without reference images.
NATURAL_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64)


def spectrum_scale(h: int, w: int, decay: float = 1.0) -> Tensor:
    """``(h, w // 2 + 1)`` amplitude ``1 / max(f, 1 / max(h, w))^decay`` of a 1/f spectrum (natural
    images' law; Lucid's scaling), normalized to a root-mean-square of 1."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    f = torch.sqrt(fx * fx + fy * fy)
    s = 1.0 / f.clamp_min(1.0 / max(h, w)) ** decay
    return s / s.pow(2).mean().sqrt()


class FourierParam(Parameterization):
    r"""Images as a spectrum: ``x = squash(C * irfft2(s * c))`` (Olah et al. 2017, Lucid).

    - ``magnitude=None`` (Lucid): the free variables are the complex coefficients ``c``, scaled by
      a 1/f amplitude ``s`` (:func:`spectrum_scale`), so gradient steps change low frequencies
      first and the high-frequency noise that fools a net is slow to build up.
    - ``magnitude='natural'`` or ``'reference'`` or a tensor (MaCo, Fel et al. 2023): the
      amplitude is fixed (the 1/f law, the mean amplitude spectrum of ``reference`` images, or the
      given ``(C, H, W // 2 + 1)`` tensor) and only the phase ``phi`` is free:
      ``x = squash(irfft2(M * exp(i phi)))``. The image's energy and spectrum cannot drift; the
      optimisation can only move structure around.
    - ``decorrelate`` (colour images): ``C`` is the square root of the channel covariance of
      ``reference`` (its principal components, the largest first), or without reference natural
      images' (:data:`NATURAL_COLOR_SQRT`, Lucid's ImageNet figures); identity with one channel.
      The first decorrelated component is then the luminance, the others the chroma.
    - ``chroma_decay`` (decorrelated colour images, free spectrum): the chroma components get a
      1/f amplitude of their own exponent; ``math.inf`` keeps them constant over the image: one
      tint per image, the shapes drawn in luminance. The tint's coefficient has the spectrum's
      RMS scale (1), not the luminance mean's (10 at 32 px with ``decay=2``), so the images stay
      near grey unless the class pulls a colour. People see colour at a lower resolution
      than luminance (hence JPEG's chroma subsampling); a net's class evidence drawn in free
      chroma comes out as saturated colour noise.

    With ``input_range`` the image is squashed into the box by a sigmoid (free spectrum) or
    clamped (fixed magnitude, whose values already follow the reference's range; the gradient
    passes through the clamp).

    Args:
        decay (float): exponent of the 1/f amplitude.
        magnitude (None, str or Tensor): see above.
        reference (Tensor, optional): ``(M, C, H, W)`` images for ``'reference'`` and
            ``decorrelate``.
        decorrelate (bool): colour decorrelation (3-channel images).
        init_std (float): standard deviation of the starting coefficients (free spectrum).
        chroma_decay (float, optional): exponent of the chroma's 1/f amplitude (> 0, or
            ``math.inf`` for one tint per image); default ``decay``.
    """

    def __init__(self, decay: float = 1.0, magnitude: Union[None, str, Tensor] = None,
                 reference: Optional[Tensor] = None, decorrelate: bool = True,
                 init_std: float = 0.5, chroma_decay: Optional[float] = None) -> None:
        if isinstance(magnitude, str) and magnitude not in ("natural", "reference"):
            raise ValueError(f"`magnitude` must be None, 'natural', 'reference' or a tensor, got {magnitude!r}")
        if magnitude == "reference" and reference is None:
            raise ValueError("magnitude='reference' needs `reference` images")
        if chroma_decay is not None and not chroma_decay > 0:
            raise ValueError(f"`chroma_decay` must be None, a number > 0 or math.inf, got {chroma_decay!r}")
        if chroma_decay is not None and (magnitude is not None or not decorrelate):
            raise ValueError("`chroma_decay` applies to the free spectrum of decorrelated colours: pass "
                             "magnitude=None and decorrelate=True, or drop chroma_decay")
        self.decay, self.magnitude, self.reference = decay, magnitude, reference
        self.decorrelate, self.init_std, self.chroma_decay = decorrelate, init_std, chroma_decay

    def setup(self, input_shape, input_range):
        super().setup(input_shape, input_range)
        if len(self.input_shape) != 3:
            raise ValueError(f"FourierParam needs image inputs (C, H, W), got input_shape {self.input_shape}")
        c, h, w = self.input_shape
        self._hw = (h, w)
        self._scale = spectrum_scale(h, w, self.decay)
        self._color = torch.eye(c, dtype=torch.float64)
        ref = self.reference
        if ref is not None and tuple(ref.shape[1:]) != self.input_shape:
            raise ValueError(f"`reference` must have shape (M, {c}, {h}, {w}), got {tuple(ref.shape)}")
        if ref is not None and self.decorrelate and c > 1:
            flat = ref.double().transpose(0, 1).reshape(c, -1)
            cov = torch.cov(flat) + 1e-6 * torch.eye(c, dtype=torch.float64)
            var, vec = torch.linalg.eigh(cov)  # ascending: principal component first below
            self._color = (vec * var.clamp_min(0).sqrt()).flip(1)
            self._color = self._color / self._color.norm(dim=0).max()
        elif self.decorrelate and c == 3:  # natural images' colour correlation (Lucid's figures)
            self._color = NATURAL_COLOR_SQRT / NATURAL_COLOR_SQRT.norm(dim=0).max()
        if self.chroma_decay is not None and c > 1:
            scale = self._scale[None].repeat(c, 1, 1)
            if math.isinf(self.chroma_decay):  # the mean alone, at the spectrum's RMS scale
                scale[1:] = 0.0
                scale[1:, 0, 0] = 1.0
            else:
                scale[1:] = spectrum_scale(h, w, self.chroma_decay)
            self._scale = scale
        self._mag = None
        self._offset = torch.zeros(c, dtype=torch.float64)
        if self.magnitude is not None:
            if isinstance(self.magnitude, Tensor):
                mag = self.magnitude.double()
                if tuple(mag.shape) != (c, h, w // 2 + 1):
                    raise ValueError(f"`magnitude` must have shape ({c}, {h}, {w // 2 + 1}), got {tuple(mag.shape)}")
            elif self.magnitude == "reference":
                mag = torch.fft.rfft2(ref.double(), norm="ortho").abs().mean(0)
            else:
                mag = self._scale[None].expand(c, -1, -1) * math.sqrt(h * w) * 0.25
                if input_range is not None:  # a 1/f image around the box's centre
                    mag = mag.clone()
                    mag[:, 0, 0] = 0.5 * (input_range[0] + input_range[1]) * math.sqrt(h * w)
            self._mag = mag

    @property
    def color_matrix(self) -> Tensor:
        """The ``(C, C)`` colour map applied to the decorrelated image (after :meth:`setup`)."""
        return self._color

    def init(self, n, gen, dtype=torch.float32, device="cpu"):
        c, h, w = self.input_shape
        if self._mag is not None:
            z = torch.rand((n, c, h, w // 2 + 1), generator=gen, dtype=torch.float64) * (2 * math.pi)
        else:
            z = torch.randn((n, c, h, w // 2 + 1, 2), generator=gen, dtype=torch.float64) * self.init_std
        return z.to(dtype=dtype, device=device)

    def raw(self, z: Tensor) -> Tensor:
        """The image before the box: ``(n, C, H, W)``."""
        h, w = self._hw
        if self._mag is not None:
            spec = torch.polar(self._mag.to(z), z)
        else:
            spec = torch.view_as_complex(z.contiguous()) * self._scale.to(z)
        x = torch.fft.irfft2(spec, s=(h, w), norm="ortho")
        if self._mag is None:  # unit pixel variance for unit coefficients
            x = x * math.sqrt(2.0)
        if self._color.shape[0] > 1:
            x = torch.einsum("dc,nchw->ndhw", self._color.to(x), x)
        return x

    def image(self, z):
        x = self.raw(z)
        if self._mag is not None:
            if self.input_range is None:
                return x
            return x + (x.clamp(*self.input_range) - x).detach()
        return self._squash(x)

    def from_image(self, x):
        if self._mag is not None:
            return torch.angle(torch.fft.rfft2(x.double(), norm="ortho")).to(x.dtype)
        raw = self._unsquash(x).double()
        if self._color.shape[0] > 1:
            raw = torch.einsum("dc,nchw->ndhw", torch.linalg.inv(self._color), raw)
        spec = torch.fft.rfft2(raw / math.sqrt(2.0), norm="ortho")
        spec = torch.where(self._scale > 0, spec / self._scale.clamp_min(1e-300), 0)  # chroma held flat
        return torch.view_as_real(spec).to(x.dtype)

    def __repr__(self) -> str:
        mag = "" if self.magnitude is None else f", magnitude={self.magnitude if isinstance(self.magnitude, str) else 'tensor'}"
        chroma = "" if self.chroma_decay is None else f", chroma_decay={self.chroma_decay}"
        return f"FourierParam(decay={self.decay}{mag}{chroma})"


class PCAParam(Parameterization):
    r"""Images in the principal subspace of reference images: ``x = clamp(mu + V diag(sigma) z)``
    with ``mu`` the references' mean, ``V`` their top principal directions and ``sigma`` the
    standard deviations along them (so ``z ~ N(0, I)`` is the references' Gaussian). The gradient
    passes through the clamp into the box. Directions outside the subspace (high-frequency
    adversarial noise, in digits) cannot be used.

    With ``match_histogram`` every image's pixel values are replaced, rank for rank, by the
    quantiles of the references' pooled pixel values (the gradient passes straight through).
    Images then have the references' contrast: crisp strokes on a clean background instead of
    the subspace's blur.

    Args:
        reference (Tensor): ``(M, *input_shape)`` images, e.g. a sample of the training set.
        var_ratio (float): keep the fewest components that explain this fraction of the variance.
        max_components (int, optional): at most this many components.
        match_histogram (bool): match each image to the references' pixel histogram.
    """

    def __init__(self, reference: Tensor, var_ratio: float = 0.95, max_components: Optional[int] = None,
                 match_histogram: bool = False) -> None:
        if not isinstance(reference, Tensor) or reference.dim() < 2 or len(reference) < 2:
            raise ValueError("`reference` must be a tensor of at least 2 images (M, *input_shape)")
        if not 0 < var_ratio <= 1:
            raise ValueError(f"`var_ratio` must be in (0, 1], got {var_ratio!r}")
        flat = reference.reshape(len(reference), -1).double()
        self.mean = flat.mean(0)
        _, s, vt = torch.linalg.svd(flat - self.mean, full_matrices=False)
        var = s.pow(2) / (len(flat) - 1)
        k = int((torch.cumsum(var, 0) / var.sum() < var_ratio).sum()) + 1
        k = min(k, len(var), max_components or len(var))
        self.basis, self.sigma, self.k = vt[:k], var[:k].sqrt(), k
        self.ref_shape = tuple(reference.shape[1:])
        self.var_ratio = var_ratio
        self.profile = None
        if match_histogram:  # quantiles of the pooled pixels at (i + 1/2) / d
            pool = flat.reshape(-1)
            if len(pool) > 2_000_000:
                pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:2_000_000]]
            pool = pool.sort()[0]
            d = flat.shape[1]
            self.profile = pool[((torch.arange(d, dtype=torch.float64) + 0.5) / d * len(pool)).long()]

    def setup(self, input_shape, input_range):
        super().setup(input_shape, input_range)
        if self.ref_shape != self.input_shape:
            raise ValueError(f"`reference` images have shape {self.ref_shape}, the model's input_shape is {self.input_shape}")

    def init(self, n, gen, dtype=torch.float32, device="cpu"):
        return torch.randn((n, self.k), generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    def image(self, z):
        x = (self.mean.to(z) + (z * self.sigma.to(z)) @ self.basis.to(z)).reshape(len(z), *self.input_shape)
        if self.profile is not None:
            flat = x.reshape(len(x), -1)
            matched = self.profile.to(x)[flat.argsort(1).argsort(1)]
            x = x + (matched.reshape(x.shape) - x).detach()
        if self.input_range is None:
            return x
        return x + (x.clamp(*self.input_range) - x).detach()

    def from_image(self, x):
        flat = x.reshape(len(x), -1).double() - self.mean.to(x.device)
        return ((flat @ self.basis.to(x.device).T) / self.sigma.to(x.device)).to(x.dtype)

    def __repr__(self) -> str:
        hm = ", match_histogram=True" if self.profile is not None else ""
        return f"PCAParam(k={self.k}, var_ratio={self.var_ratio}{hm})"


class LatentNorm(Penalty):
    r"""Keeps Gaussian latents ``z`` (``k`` dimensions) on their typical shell:
    ``weight * relu(||z|| - sqrt(k))^2``. A plain ``||z||^2`` (the Gaussian's log-density) pulls
    every sample to the mean image, so all samples of a class would meet at one point; the shell
    allows any direction as likely as a typical reference sample."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = check_weight(weight)

    def __call__(self, x, z):
        zf = z.reshape(len(z), -1)
        return self.weight * (zf.norm(dim=1) - math.sqrt(zf.shape[1])).clamp_min(0).pow(2)

    def __repr__(self) -> str:
        return f"LatentNorm({self.weight})"


def DataPrior(reference: Tensor, var_ratio: float = 0.9, weight: float = 1.0,
              max_components: Optional[int] = None, transforms: bool = True,
              diversity: float = 1.0, match_histogram: bool = False) -> Prior:
    """A data prior from reference images the user passes: the :class:`PCAParam` subspace of the
    references with their Gaussian (:class:`LatentNorm` on the whitened coordinates), a
    :class:`~captum_invert.priors.Diversity` term between the samples of one target and, for
    image inputs, the transforms of :func:`~captum_invert.priors.robust_transforms`.

    Args:
        reference (Tensor): ``(M, *input_shape)`` images (any classes; no labels are used).
        var_ratio (float): variance kept by the subspace.
        weight (float): weight of :class:`LatentNorm`.
        max_components (int, optional): cap on the subspace's dimension.
        transforms (bool): add the robust transforms (image inputs only).
        diversity (float): weight of the diversity term (0: none).
        match_histogram (bool): give every image the references' pixel histogram (see
            :class:`PCAParam`): crisper, more varied images, at a lower judge-read rate on some
            nets (see the docs page "Readable prototypes").

    Returns:
        Prior
    """
    from .penalties import Diversity
    from .transforms import robust_transforms

    prior = Prior(PCAParam(reference, var_ratio, max_components, match_histogram), (), [LatentNorm(weight)])
    if diversity:
        prior = prior + Diversity(diversity)
    if transforms:
        prior = prior + robust_transforms(tuple(reference.shape[1:]))
    return prior
