"""PreimageRegion: a certified polytope of inputs that a piecewise-linear net maps to a target,
and how one is built from an anchor (the LP part of BackwardPassInversion)."""
from __future__ import annotations

import math
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..blocks.piecewise import Linearization
from ..solvers.lp import chebyshev_center, hit_and_run, null_basis

__all__ = ["PreimageRegion"]

NO_REGIONS = ("{what}: certified regions (`return_regions=True`, `region()`) need a model with "
              "piecewise-linear modules (ReLU, MaxPool, Conv, ...) in a chain of modules; this one has "
              "none (an analytic chain, whose preimage of a point is an affine set, not a polytope) or "
              "is not such a chain. Call attribute() with return_regions=False (the default)")

#: rows whose share of non-zero entries is below this are stored sparse (CSR)
SPARSE_BELOW = 0.25

# nats of margin kept between the region's class condition and the goal: covers the model's
# float32 rounding of the logits (about 1e-6 of their scale), so that every point verifies
SLACK = 1e-3


class PreimageRegion:
    r"""A convex polytope of inputs, every point of which the model maps to the target.

    ``{x : A x <= b, E x = f}`` (``x`` flattened), where the rows of ``A`` are

    - the activation pattern of every ReLU, LeakyReLU, Hardtanh and MaxPool at the anchor (each
      unit keeps its side of the kink; each pool keeps its argmax);
    - the class condition, linear because the pattern is fixed and the logits are an affine map
      ``G x + h`` of the input: for a class target ``t``, ``z_t - z_j >= m_j`` for every
      ``j != t`` with ``sum_j exp(-m_j) = (1 - min_prob) / min_prob * exp(-1e-3)`` (the budget is
      split in proportion to the anchor's ``exp(z_j)``; equal ``m_j`` give the margin form
      ``logit(min_prob) + log(C - 1)``), which implies ``p_t >= min_prob``. For a distribution,
      every logit difference to the target's largest class stays within ``delta`` of the
      anchor's, with ``delta`` chosen so that the max-abs gap stays ``<= atol``;
    - the box ``input_range`` (or, without one, ``|x_i| <= R`` with
      ``R = 2 max(1, max|anchor|)``, so that the region is bounded);

    and ``E x = f`` (mixed nets only, e.g. a ReLU trunk under a SELU head) fixes the input of the
    head's first Linear to a value whose analytic back-pass verified, so the whole region maps to
    that one output.

    **Guarantee.** In exact arithmetic every ``x`` with ``A x <= b`` (and ``E x = f``) has the
    float64 network output inside the goal, by ``1e-3`` nats to spare for a class target and
    ``1e-4`` of probability for a distribution. Evaluating the model in float32 adds rounding of
    about ``1e-6`` times the logits' scale, which the spare covers; a point that violates a row by
    less than ``tol`` (see :meth:`contains`) moves the output by at most ``tol`` times the
    row's slope. Mixed regions keep the head's input exact; the guarantee there is the verified
    output of the head's back-pass.

    Attributes:
        b (Tensor): ``(m,)`` float64.
        E (Tensor or None): ``(k, d)`` float64 equalities (mixed nets).
        f (Tensor or None): ``(k,)``.
        groups (list of (str, int, int)): ``(label, start, stop)`` row ranges of ``A``: one per
            kink module, ``'class'`` and ``'box'``.
        pattern (dict): per kink module name, its pattern (see
            :class:`~captum_invert.blocks.piecewise.Linearization`).
        anchor (Tensor): the anchor input, ``input_shape``.
        input_shape (tuple of int): shape of one input.
    """

    def __init__(self, A: Tensor, b: Tensor, input_shape, groups, pattern, anchor: Tensor,
                 E: Optional[Tensor] = None, f: Optional[Tensor] = None) -> None:
        n = A.norm(dim=1).clamp_min(1e-300)
        A, self.b = A / n[:, None], b / n
        # a conv net's pattern rows are local (2-3% of the entries of a 28x28 CNN's rows are not
        # zero): stored sparse, 64 regions of that CNN hold 0.3 GB instead of 6 GB
        self._rows = A
        if A.numel() and int(torch.count_nonzero(A)) < SPARSE_BELOW * A.numel():
            with warnings.catch_warnings():  # torch calls its CSR layout beta; sparse @ dense is all we use
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._rows = A.to_sparse_csr()
        self.E, self.f = E, f
        self.groups, self.pattern = groups, pattern
        self.anchor = anchor
        self.input_shape = tuple(input_shape)
        self._N = null_basis(E, A.shape[1]) if E is not None else None
        self._ball = None
        self.lp_message = ""

    @property
    def A(self) -> Tensor:
        """``(m, d)`` float64, the rows, normalized to unit L2 norm; dense, built on access when
        the region stores them sparse (when most entries are zero, as a conv net's local rows
        are: see ``nbytes``)."""
        return self._rows.to_dense() if self._rows.layout != torch.strided else self._rows

    def _times(self, X: Tensor) -> Tensor:
        """``X @ A.T`` for ``X`` ``(k, d)`` float64, from the stored rows: ``(k, m)``."""
        return (self._rows @ X.T).T

    @property
    def nbytes(self) -> int:
        """Bytes held by the region's rows, equalities, basis and anchor."""
        r = self._rows
        parts = ([r.values(), r.crow_indices(), r.col_indices()] if r.layout != torch.strided else [r])
        parts += [t for t in (self.b, self.E, self.f, self._N, self.anchor) if t is not None]
        return sum(t.numel() * t.element_size() for t in parts)

    @property
    def basis(self) -> Optional[Tensor]:
        """``(d, dim)`` orthonormal directions of the affine set ``E x = f``; None without ``E``."""
        return self._N

    @property
    def dim(self) -> int:
        """Dimension of the affine hull: ``d`` minus the rank of ``E``."""
        return self._rows.shape[1] if self._N is None else self._N.shape[1]

    def chebyshev_ball(self) -> Tuple[Tensor, float]:
        """The largest L2 ball inside the region (inside the affine set ``E x = f`` for mixed
        regions), by one linear program (HiGHS). Its radius is a certified robustness margin:
        no perturbation of the centre shorter than it changes the class.

        Returns:
            (Tensor, float): the centre ``input_shape`` (float64) and the radius (``-inf`` when
            the region is empty, with the centre None).
        """
        if self._ball is None:
            c, r, msg = chebyshev_center(self.A, self.b, self.E, self.f, self._N)
            self.lp_message = msg
            self._ball = (None if c is None else c.reshape(self.input_shape), r)
        return self._ball

    def ball_points(self, n: int, seed=None) -> Tensor:
        """``n`` uniform points of the Chebyshev ball (of its affine set, for mixed regions):
        a certificate check draws them, since every one must verify.

        Returns:
            Tensor: ``(n, *input_shape)`` float64.
        """
        gen = seed if isinstance(seed, torch.Generator) else (
            torch.Generator().manual_seed(int(seed)) if seed is not None else None)
        c, r = self.chebyshev_ball()
        if c is None:
            raise ValueError(f"the region is empty ({self.lp_message})")
        e = self.dim
        w = torch.randn(n, e, generator=gen, dtype=torch.float64)
        w = w / w.norm(dim=1, keepdim=True) * r * torch.rand(n, 1, generator=gen, dtype=torch.float64) ** (1 / e)
        if self._N is not None:
            w = w @ self._N.T
        return (c.reshape(1, -1) + w * (1 - 1e-9)).reshape(n, *self.input_shape)

    def contains(self, x: Tensor, tol: float = 1e-9) -> Tensor:
        """Whether each input is in the region.

        Args:
            x (Tensor): ``(N, *input_shape)``.
            tol (float): allowed violation of each (normalized) row and equality.

        Returns:
            Tensor: bool ``(N,)``.
        """
        xf = x.reshape(len(x), -1).to(self.b)
        ok = (self._times(xf) - self.b <= tol).all(1)
        if self.E is not None:
            En = self.E.norm(dim=1).clamp_min(1e-300)
            ok &= (((xf @ self.E.T - self.f).abs() / En) <= tol * 100 + 1e-9 * self.f.abs().max()).all(1)
        return ok

    def tight(self, x: Optional[Tensor] = None, tol: float = 1e-7) -> Tensor:
        """Rows of ``A`` that are tight (slack at most ``tol``) at ``x`` (default: the anchor).

        Returns:
            Tensor: bool ``(m,)``; ``groups`` names the module of each row range.
        """
        x = self.anchor if x is None else x
        return (self.b - self._times(x.reshape(1, -1).to(self.b))[0]) <= tol

    def sample(self, n: int, seed=None, spread: float = 1.0, steps: int = 64) -> Tensor:
        """``n`` points of the region: hit-and-run chains, pulled back towards the Chebyshev
        centre by ``spread``. The chains start on the segment from the centre to the anchor
        (at 99% of the way) when the anchor is in the region, else at the centre.

        Args:
            n (int): number of points.
            seed (int or torch.Generator, optional): reproducibility.
            spread (float): in ``[0, 1]``; each point is ``c + spread (y - c)`` for a hit-and-run
                point ``y`` and the centre ``c`` (convexity keeps it inside). 0 returns the
                centre.
            steps (int): hit-and-run moves per point.

        Returns:
            Tensor: ``(n, *input_shape)`` float64.

        Raises:
            ValueError: ``spread`` outside ``[0, 1]``, or an empty region.
        """
        if not 0.0 <= float(spread) <= 1.0:
            raise ValueError(f"`spread` must be in [0, 1], got {spread}")
        gen = seed if isinstance(seed, torch.Generator) else (
            torch.Generator().manual_seed(int(seed)) if seed is not None else None)
        c, r = self.chebyshev_ball()
        if c is None:
            raise ValueError(f"the region is empty ({self.lp_message})")
        c = c.reshape(-1)
        start = c
        a = self.anchor.reshape(1, *self.input_shape)
        if bool(self.contains(a, tol=0.0)[0]):
            # chains start near the anchor, on its segment to the centre (interior by convexity):
            # the anchors of random starts carry their diversity into the samples
            start = c + 0.99 * (a.reshape(-1).to(c) - c)
        y = hit_and_run(self.A, self.b, start, n, steps, gen, self._N)
        return (c + spread * (y - c)).reshape(n, *self.input_shape)

    def __repr__(self) -> str:
        kinds = ", ".join(f"{g[0]}: {g[2] - g[1]}" for g in self.groups)
        eq = f", {len(self.E)} equalities" if self.E is not None else ""
        return (f"PreimageRegion(input_shape={self.input_shape}, {len(self.b)} rows [{kinds}]{eq}, "
                f"dim={self.dim})")


def class_rows(lin: Linearization, anchor_flat: Tensor, target: int, min_prob: float):
    """Rows ``z_j - z_t <= -m_j`` (see :class:`PreimageRegion`)."""
    z = lin.G @ anchor_flat + lin.h
    C = len(z)
    others = torch.tensor([j for j in range(C) if j != target])
    w = torch.softmax(z[others], 0)
    budget = (1.0 - min_prob) / min_prob * math.exp(-SLACK)
    m = -(w * budget).clamp_min(1e-300).log()
    A = lin.G[others] - lin.G[target]
    b = lin.h[target] - lin.h[others] - m
    return A, b


def dist_rows(lin: Linearization, anchor_flat: Tensor, P: Tensor, atol: float):
    """Rows keeping every logit difference to ``k = argmax P`` within ``delta`` of the anchor's;
    None when the anchor itself is not within ``atol`` (less the spare)."""
    z = lin.G @ anchor_flat + lin.h
    p = torch.softmax(z, 0)
    P = P.to(p)
    room = (atol - 1e-4) - (p - P).abs()
    if bool((room <= 0).any()):
        return None
    delta = float((0.5 * torch.log1p(room / p.clamp_min(1e-300))).min())
    k = int(P.argmax())
    others = torch.tensor([j for j in range(len(z)) if j != k])
    D = lin.G[others] - lin.G[k]
    dh = lin.h[others] - lin.h[k]
    da = D @ anchor_flat + dh
    A = torch.cat([D, -D])
    b = torch.cat([da + delta - dh, -(da - delta) + dh])
    return A, b


def box_rows(d: int, lo, hi, anchor_flat: Tensor):
    """Rows of the box ``lo <= x <= hi`` (or ``|x| <= R`` without one)."""
    eye = torch.eye(d, dtype=torch.float64)
    if lo is None:
        R = 2.0 * max(1.0, float(anchor_flat.abs().max()))
        lo, hi = -R, R
    return torch.cat([eye, -eye]), torch.cat([torch.full((d,), float(hi), dtype=torch.float64),
                                              torch.full((d,), -float(lo), dtype=torch.float64)])


def assemble(lin: Linearization, extra: Sequence[Tuple[str, Tensor, Tensor]], input_shape, anchor: Tensor,
             E=None, f=None) -> PreimageRegion:
    """A :class:`PreimageRegion` from the pattern rows of ``lin`` and extra named row blocks."""
    A, b = [lin.A], [lin.b]
    groups: List[Tuple[str, int, int]] = list(lin.groups)
    n = len(lin.A)
    for name, Ax, bx in extra:
        A.append(Ax.to(torch.float64))
        b.append(bx.to(torch.float64))
        groups.append((name, n, n + len(Ax)))
        n += len(Ax)
    return PreimageRegion(torch.cat(A), torch.cat(b), input_shape, groups, dict(lin.pattern),
                          anchor.reshape(input_shape).to(torch.float64), E, f)
