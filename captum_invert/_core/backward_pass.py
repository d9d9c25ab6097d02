"""BackwardPassInversion: the seed paper's analytic back-pass (BACKPASSINV), made feasible on
deep nets by anchoring it on a root of the network."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..blocks.chain import Chain, build_chain, output_target, walk
from ..blocks.piecewise import LP_MAX_ENTRIES, constraint_count, linearize, lp_fits, split_piecewise
from ..blocks.plan import LeafTrace
from .diagnosis import check_reference
from .batching import batched_attribute
from .base import (
    Goal, InversionMethod, count_reasons, make_generator,
)
from .forward_pass import by_forward_pass
from .region import NO_REGIONS, PreimageRegion, assemble, box_rows, class_rows, dist_rows

__all__ = ["BackwardPassInversion"]


@dataclass
class _LP:
    """A piecewise-linear trunk (linearized per anchor) and, on mixed nets, the analytic head
    above it."""
    trunk: list
    head: Optional[Chain]
    n_rows: int

class BackwardPassInversion(InversionMethod):
    r"""Analytic backward-pass inversion of a chain of Linear layers and invertible activations
    (BACKPASSINV of the seed paper, "Inverting Neural Networks", seed 000).

    For a target distribution ``p`` the network output must be ``log p + c`` for some constant
    ``c`` (softmax is invertible up to a constant). Each activation is inverted exactly on its
    range (:mod:`captum_invert.blocks.activations`), each ``Linear`` ``a = W h + b`` by the SVD
    pseudo-inverse with singular values below ``sigma_1 / cond_num`` zeroed, plus a random vector
    of its null space (``std`` times the norm of the pseudo-inverse solution), so that one target
    yields many inputs.

    How a sample is made:

    1. *Analytic pass* (the paper's algorithm). ``c`` is chosen so that the output lies inside
       the last activation's range with a ``margin`` and the pseudo-inverse preimage of the last
       Linear has the smallest norm. Walking down, each null-space vector is shortened along
       its ray so the layer's input stays inside the next activation inverse's domain (and, at
       the input, inside ``input_range``, by alternating projections). On shallow nets this
       verifies directly.
    2. *Anchored pass*, for the samples the analytic pass cannot make. On deep nets the target
       is usually not in the image of the deeper layers: a layer-by-layer pass then leaves an
       activation's domain, whatever null-space vector it picks. A root ``x*`` of the whole net
       is found by damped Newton / Levenberg-Marquardt steps from a random start (one residual
       for a class target, on its log-odds; C residuals for a distribution). Then the
       back-pass runs again through the layers, now projecting the root's own activations onto
       each preimage: every null-space vector keeps the output exactly, and because the anchor
       lies inside every domain it can be shortened until the sample does too. If a lower layer
       still leaves its domain, the noise of that sample is scaled down (1, 1/4, 1/16, 0).
    3. *Verification*: every sample goes through the caller's model (its dtype, its device);
       failures are retried from new starts ``max_retries`` times, then
       :class:`~captum_invert.InversionError` says how many verified and why the others did not
       (which layer, which constraint).

    Linear layers that are not of full row rank after the cap (expanding layers, e.g. 64 -> 512)
    cannot reach every target; no null-space noise is added above the lowest of them, so the
    anchor's output is kept exactly.

    **Piecewise-linear nets** (ReLU, Hardtanh/ReLU6, MaxPool, Conv, AvgPool, BatchNorm2d: the
    modules an analytic inverse does not exist for) are inverted by linear programming, the
    seed paper's stated next step. From each anchor (step 2) the net is fixed to its activation
    pattern and becomes affine; the inputs that keep the pattern and satisfy a linear sufficient
    form of the goal form a :class:`~captum_invert.PreimageRegion`, every point of which verifies.
    Its Chebyshev centre comes from one linear program (HiGHS, through
    ``scipy.optimize.linprog``); the sample is a hit-and-run point of the region (``spread``).
    On mixed nets (a ReLU trunk under a SELU head) the head is inverted analytically from the
    anchor, with its null-space noise, and the region keeps the head's input at that value.
    :meth:`region` returns the region itself. The dense constraint matrix limits the size:
    ``d`` inputs times (units + pool pairs + ``2 d``) rows at most ``LP_MAX_ENTRIES`` (2e8
    float64 entries, 1.6 GB): a 28x28 CNN of a few thousand units fits, a 3x224x224 net does not
    (a ``ValueError`` points to GeneralizedInversion, whose LM handles it).

    Args:
        forward_func (nn.Module): a chain of ``Flatten``, ``Linear``, registered activations
            (SELU, LeakyReLU, ELU, CELU, PReLU, Tanh, Sigmoid, Softplus, Identity), ``Dropout``
            and ``BatchNorm1d`` (run in eval mode), optionally ending in ``Softmax`` or
            ``LogSoftmax``; below them, optionally a piecewise-linear trunk (Linear, Conv1d/2d,
            ReLU, LeakyReLU, Hardtanh/ReLU6, MaxPool1d/2d, AvgPool, AdaptiveAvgPool2d,
            BatchNorm). Anything else (GELU, attention, a residual addition) raises a
            ``ValueError`` pointing to :class:`~captum_invert.ForwardPassInversion`.
        input_shape (tuple of int, optional): shape of one input; see
            :class:`~captum_invert.InversionMethod`.
        output, select, solver: see :class:`~captum_invert.InversionMethod`.

    Raises:
        ValueError: the model is not an ``nn.Module`` whose layers can be read: a plain callable,
            or a TorchScript / ``torch.export`` module (use ForwardPassInversion or
            GeneralizedInversion, which run it as an opaque function).
    """

    def __init__(self, forward_func, input_shape=None, **options) -> None:
        super().__init__(forward_func, input_shape, **options)
        if self.adapter.traceable is None:
            what = "is compiled (TorchScript or torch.export), so its layers cannot be read" if (
                self.adapter.compiled) else "is not an nn.Module, so its layers cannot be read"
            raise ValueError(f"BackwardPassInversion inverts the model layer by layer, but the model "
                             f"({type(forward_func).__name__}) {what}. Use ForwardPassInversion or "
                             "GeneralizedInversion, which run it as an opaque function, or pass the eager "
                             "nn.Module")

    def _chain(self, trace: LeafTrace, cond_num: float) -> Chain:
        name = type(self.forward_func).__name__
        if not trace.composes:
            raise ValueError(
                f"BackwardPassInversion needs a model that is a chain of modules, but running the "
                f"leaf modules that {name} executes, in order, does not reproduce its output "
                "(functional code such as F.relu or a residual addition in forward()?). Use "
                "ForwardPassInversion, which works on any differentiable model."
            )
        device = self.adapter.device
        chain = build_chain(trace.calls, cond_num, device, "BackwardPassInversion")
        n0 = chain.layers[0].linear.in_features
        if math.prod(self.input_shape) != n0:
            raise ValueError(f"`input_shape` {self.input_shape} holds {math.prod(self.input_shape)} "
                             f"values but the first Linear takes {n0}")
        return chain

    # --- the public call -----------------------------------------------------------------
    @batched_attribute
    def attribute(
        self,
        inputs: Optional[Tensor] = None,
        target=None,
        *,
        n_samples: Optional[int] = None,
        std: float = 0.1,
        cond_num: float = 100.0,
        seed=None,
        input_range: Optional[Tuple[float, float]] = None,
        min_prob: float = 0.9,
        atol: float = 0.02,
        margin: float = 0.05,
        max_iter: int = 50,
        max_retries: int = 10,
        init_std: float = 0.1,
        return_convergence_delta: bool = False,
        allow_unverified: bool = False,
        reference=None,
        spread: float = 1.0,
        return_regions: bool = False,
    ):
        r"""Generate inputs that the model maps to ``target``.

        Args:
            inputs (Tensor, optional): ``(N, *input_shape)`` starting points of the anchor
                solve (step 2); default random: uniform in ``input_range`` when given, else
                ``N(0, init_std^2)``.
            target (int, sequence of int, or Tensor): a class index (probability >=
                ``min_prob``), one class per sample, or a class distribution ``(C,)`` /
                ``(N, C)`` (max-abs difference <= ``atol``).
            n_samples (int, optional): number of samples (default: 1, or the length of a
                per-sample ``target`` / of ``inputs``).
            std (float): null-space noise, relative to the norm of each Linear's
                pseudo-inverse solution (the paper's ``std``). 0 gives minimum-norm preimages.
            cond_num (float): cap on each Linear's condition number (> 1).
            seed (int or torch.Generator, optional): makes the result reproducible.
            input_range (tuple of float, optional): ``(lo, hi)``; every returned input lies in it.
            min_prob (float): for class targets, the probability the class must reach.
            atol (float): for distribution targets, the max-abs tolerance.
            margin (float): in (0, 0.5); each bounded activation range is shrunk by this fraction
                of the distance from its value at 0 to its asymptote when sampling null-space
                noise and choosing the softmax constant (keeps samples out of saturation).
            max_iter (int): Levenberg-Marquardt iterations of each anchor solve (50, not the 30 of
                ForwardPassInversion: an anchor aims at the middle of the class region, not just
                past ``min_prob``, so that the region around it has room).
            max_retries (int): restarts for samples that fail, each from the best of many ranked
                draws, some crossed with what earlier starts reached (see
                :class:`~captum_invert._core.solve.Restarts`). Default: 10.
            init_std (float): standard deviation of random starts without ``input_range`` (0.1,
                not the 1.0 of ForwardPassInversion: the anchors' starts, kept from the first
                release and not re-measured since).
            return_convergence_delta (bool): also return the per-sample delta.
            allow_unverified (bool): return failed samples too instead of raising.
            reference (Tensor or tuple, optional): real inputs ``(M, *input_shape)``, or a pair
                ``(inputs, labels)``, e.g. a sample of the training set. Used only when samples
                fail: the :class:`~captum_invert.InversionError`'s diagnosis then says how many
                of them (of the target's class) reach the target.
            spread (float): with ``return_regions``: in ``[0, 1]``, how far from the region's
                Chebyshev centre towards a uniform point of the region each sample lies (see
                :meth:`PreimageRegion.sample`).
            return_regions (bool): piecewise-linear nets only. False (default): the samples are
                the Levenberg-Marquardt roots of the whole net (as
                :class:`~captum_invert.ForwardPassInversion`, with this method's ``max_iter``
                and ``init_std``; milliseconds per sample), since a ReLU trunk has no analytic
                inverse. True: each sample is a point of a certified
                :class:`~captum_invert.PreimageRegion` around its own anchor (one linear program
                per sample, about 1,000x the cost), and the regions are returned too (also in
                ``self.last_regions``: one per sample, None where no sample verified).

        Returns:
            Tensor, or a tuple: inputs ``(N, *input_shape)`` in the model's dtype and device;
            with ``return_convergence_delta``, also ``delta`` ``(N,)``: the max-abs gap between
            the model's probabilities and the aimed-at distribution (``1 - p_target`` for a
            class target); with ``return_regions``, last, the list of ``N``
            :class:`~captum_invert.PreimageRegion`.

        Raises:
            ValueError: a bad argument, a model that is not an invertible chain, or a target out
                of reach of the output activation's bounded range (see ForwardPassInversion).
            InversionError: some samples did not verify (and ``allow_unverified`` is False).
        """
        self._check_analytic_args(std, cond_num, margin)
        self._check_solver_args(max_iter, max_retries, init_std)
        input_range = self._check_range(input_range)
        n_inputs = self._check_inputs(inputs)
        reference = check_reference(reference, self.input_shape)
        gen = make_generator(seed)
        if not isinstance(return_regions, bool):
            raise ValueError(f"`return_regions` must be a bool, got {return_regions!r}")
        if not 0.0 <= float(spread) <= 1.0:
            raise ValueError(f"`spread` must be in [0, 1], got {spread}")
        with self.adapter.guard():
            kind, n_classes, trace = self._probe()
            self._need_softmax(kind, "BackwardPassInversion")
            goal = self._parse_target(target, n_samples, n_classes, min_prob, atol, n_inputs)
            tail = self._output_tail(trace)
            self._check_reachable(goal, tail, "BackwardPassInversion", allow_unverified, trace, kind, input_range)
            lp = self._lp_setup(trace, cond_num, margin, need_fit=return_regions)
            if lp is None and return_regions:
                raise ValueError(NO_REGIONS.format(what="BackwardPassInversion"))
            if lp is not None and return_regions:
                out = self._run_lp(lp, kind, goal, std, gen, input_range, max_iter, max_retries, init_std,
                                   inputs, spread, return_convergence_delta, allow_unverified, tail, reference)
                return (*(out if isinstance(out, tuple) else (out,)), list(self.last_regions))
            if lp is not None:  # no analytic inverse of the trunk: the anchors are the samples
                return by_forward_pass(self, inputs, goal, max_iter=max_iter, input_range=input_range,
                                       min_prob=min_prob, atol=atol, seed=gen, init_std=init_std,
                                       max_retries=max_retries, reference=reference,
                                       return_convergence_delta=return_convergence_delta,
                                       allow_unverified=allow_unverified)
            chain = self._chain(trace, cond_num)
            chain.set_boxes(margin, input_range)
            return self._run(chain, kind, goal, std, gen, input_range, max_iter, max_retries,
                             init_std, inputs, return_convergence_delta, allow_unverified, tail, reference)

    # --- piecewise-linear nets: linear programming ------------------------------------------
    def _lp_setup(self, trace: LeafTrace, cond_num: float, margin: float, need_fit: bool = True) -> Optional[_LP]:
        """The LP plan of a model with piecewise-linear modules, or None (a plain chain). A
        ValueError when its dense LP does not fit, unless ``need_fit`` is False."""
        calls = list(trace.calls)
        if calls and isinstance(calls[-1].module, (nn.Softmax, nn.LogSoftmax)):
            calls = calls[:-1]
        split = split_piecewise(calls)
        if split is None:
            return None
        if not trace.composes:
            raise ValueError(
                f"BackwardPassInversion needs a model that is a chain of modules, but running the leaf "
                f"modules that {type(self.forward_func).__name__} executes, in order, does not reproduce its "
                "output (functional code such as F.relu or a residual addition in forward()?). Use "
                "GeneralizedInversion or ForwardPassInversion, which work on any differentiable model.")
        trunk, rest = split
        plain = (nn.Linear, nn.Flatten, nn.Identity, nn.Dropout)
        head = None
        if all(isinstance(c.module, plain) for c in rest):
            trunk = trunk + rest  # the logits are affine on each region: one LP block
        else:
            device = self.adapter.device
            head = build_chain(rest, cond_num, device, "BackwardPassInversion")
            head.set_boxes(margin, None)
        d = math.prod(self.input_shape)
        rows = constraint_count(trunk) + 2 * d
        if not lp_fits(trunk, d) and need_fit:
            raise ValueError(
                f"the piecewise-linear part of this model is too large for the dense linear program: {d} "
                f"inputs x {rows} constraint rows ({d * rows:.3g} float64 entries; the limit is "
                f"{LP_MAX_ENTRIES:.3g}), so certified regions are out of reach. Samples without regions "
                "(return_regions=False, the default; or GeneralizedInversion, ForwardPassInversion) need no "
                "constraint matrix.")
        return _LP(trunk, head, rows)

    def _region_at(self, lp: _LP, anchor: Tensor, goal: Goal, input_range, std: float, gen):
        """The region around one anchor: ``(PreimageRegion, '')`` or ``(None, reason)``."""
        shape = self.input_shape
        lin = linearize(lp.trunk, anchor.reshape(shape))
        af = anchor.reshape(-1).to(torch.float64)
        lo, hi = (None, None) if input_range is None else input_range
        box = ("box",) + box_rows(len(af), lo, hi, af)
        if lp.head is None:
            if goal.labels is not None:
                rows = class_rows(lin, af, int(goal.labels[0]), goal.min_prob)
            else:
                rows = dist_rows(lin, af, goal.dist[0], goal.atol)
                if rows is None:
                    return None, "the anchor is not within atol of the target distribution"
            reg = assemble(lin, [("class", *rows), box], shape, af)
            c, r = reg.chebyshev_ball()
            if c is None or not r > 0:
                return None, ("the anchor's activation pattern holds no ball of inputs that reach the "
                              f"target (linear program: {reg.lp_message}; radius {r:.3g})")
            return reg, ""
        head = lp.head
        h_a = (lin.G @ af + lin.h)[None]
        refs, y_out = head.forward64(h_a.to(head.device))
        one = torch.ones(1, dtype=torch.float64, device=head.device)
        msg = ""
        for s in (1.0, 0.25, 0.0625, 0.0):
            hs, bad, why = walk(head, y_out, refs, one * s, std, gen, None)
            if bool(bad.any()):
                msg = why[0]
                continue
            hs = hs[0].to(torch.float64).cpu()
            if head.pre:  # the trunk's output itself is fixed
                E, f = lin.G, hs - lin.h
            else:  # the input of the head's first Linear is fixed
                W = head.layers[0].inv.weight.to(torch.float64).cpu()
                E, f = W @ lin.G, W @ (hs - lin.h)
            reg = assemble(lin, [box], shape, af, E, f)
            c, r = reg.chebyshev_ball()
            if c is not None and r > 0:
                return reg, ""
            msg = (f"no ball of the anchor's activation pattern maps to the analytic head's preimage "
                   f"(linear program: {reg.lp_message})")
        return None, msg

    def _run_lp(self, lp: _LP, kind, goal: Goal, std, gen, input_range, max_iter, max_retries, init_std,
                inputs, spread, return_delta, allow_unverified, tail, reference):
        dtype, device = self.adapter.dtype_device
        N, shape = goal.n, self.input_shape
        x = torch.zeros((N, *shape), dtype=dtype, device=device)
        ok = torch.zeros(N, dtype=torch.bool)
        delta = torch.ones(N, dtype=torch.float64)
        why = [""] * N
        regions: List[Optional[PreimageRegion]] = [None] * N
        # distribution anchors aim at half the tolerance: the rest is the region's room
        anchor_goal = goal if goal.dist is None else Goal(None, goal.dist, goal.n_classes, goal.min_prob,
                                                          goal.atol / 2)
        stats = self.last_stats = {"route": "lp", "anchors": 0, "regions": 0, "retries": 0}
        learn = self._restarts(anchor_goal, kind, input_range, gen, init_std, max_iter)
        for attempt in range(max_retries + 1):
            todo = (~ok).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            stats["retries"] = attempt
            if attempt == 0 and inputs is not None:
                x0 = inputs[todo].detach()
            else:
                x0 = learn.starts(todo)
            sol, found, _, _ = self._solve_to_goal(x0, anchor_goal.subset(todo), kind, max_iter, input_range,
                                                   tail=tail)
            learn.update(todo, sol.x, found, sol.n_iter)
            stats["anchors"] += int(found.sum())
            for j, i in enumerate(todo.tolist()):
                if not found[j]:
                    why[i] = ("the Levenberg-Marquardt anchor solve did not reach the target ("
                              f"{learn.report(max_iter, self.solver.escalation)})")
                    continue
                gi = goal.subset(torch.tensor([i]))
                reg, reason = self._region_at(lp, sol.x[j].detach().cpu(), gi, input_range, std, gen)
                if reg is None:
                    why[i] = reason
                    continue
                stats["regions"] += 1
                xs = reg.sample(1, gen, spread).to(dtype=dtype, device=device)
                ok_s, d_s, _ = self._verify(xs, gi, kind, input_range)
                x[i], delta[i] = xs[0], d_s[0]
                if bool(ok_s[0]):
                    ok[i], why[i], regions[i] = True, "", reg
                else:
                    why[i] = "a point of the region did not verify on the model (rounding beyond the spare)"
        self.last_regions = regions
        return self._finish(x, ok, delta, count_reasons([w if not o else "" for w, o in zip(why, ok.tolist())]),
                            allow_unverified, return_delta, "BackwardPassInversion", goal, kind, input_range,
                            reference)

    def region(self, target, *, seed=None, input_range: Optional[Tuple[float, float]] = None,
               inputs: Optional[Tensor] = None, min_prob: float = 0.9, atol: float = 0.02,
               std: float = 0.1, cond_num: float = 100.0, margin: float = 0.05, max_iter: int = 50,
               max_retries: int = 10, init_std: float = 0.1) -> PreimageRegion:
        r"""A certified preimage region of a piecewise-linear net: a polytope of inputs, every
        point of which the model maps to ``target``.

        The anchor is a Levenberg-Marquardt root from ``inputs`` (or a random start); see
        :class:`~captum_invert.PreimageRegion` for the rows and the guarantee.

        Args:
            target (int or Tensor): a class index, or a distribution ``(C,)``.
            seed (int or torch.Generator, optional): reproducibility.
            input_range (tuple, optional): ``(lo, hi)``: the box is part of the region.
            inputs (Tensor, optional): ``(1, *input_shape)`` or ``input_shape``: the anchor's start.
            min_prob, atol, std, cond_num, margin, max_iter, max_retries, init_std: as in
                :meth:`attribute`.

        Returns:
            PreimageRegion

        Raises:
            ValueError: the model has no piecewise-linear module (its back-pass is analytic and
                the preimage of one output is an affine set, not a polytope), or a bad argument.
            InversionError: no anchor gave a region.
        """
        if isinstance(target, (list, tuple)) or (isinstance(target, Tensor) and target.dim() > 1):
            raise ValueError("`target` of region() must be one class index or one distribution (C,)")
        if inputs is not None:
            inputs = inputs.reshape(1, *self.input_shape) if inputs.dim() == len(self.input_shape) else inputs
            if len(inputs) != 1:
                raise ValueError(f"`inputs` of region() must hold one start, got {len(inputs)}")
        with self.adapter.guard():
            _, _, trace = self._probe()
            if trace is None or self._lp_setup(trace, cond_num, margin) is None:
                raise ValueError(NO_REGIONS.format(what="region()"))
        self.attribute(inputs, target, n_samples=1, std=std, cond_num=cond_num, seed=seed, input_range=input_range,
                       min_prob=min_prob, atol=atol, margin=margin, max_iter=max_iter, max_retries=max_retries,
                       init_std=init_std, return_regions=True)
        return self.last_regions[0]

    def _run(self, chain, kind, goal: Goal, std, gen, input_range, max_iter, max_retries,
             init_std, inputs, return_delta, allow_unverified, tail, reference=None):
        dtype, device = self.adapter.dtype_device
        N = goal.n
        shape = self.input_shape
        P = goal.aim().to(chain.device)
        # 1. analytic pass
        z, ok_c = output_target(chain, P, goal.atol)
        ones = torch.ones(N, dtype=torch.float64, device=chain.device)
        x, bad, why = walk(chain, z, None, ones, std, gen, input_range)
        for i in (~ok_c).nonzero().squeeze(1).tolist():
            why[i] = "the target distribution is outside the range of the output activation"
        x = x.reshape(N, *shape)
        ok, delta, _ = self._verify(x, goal, kind, input_range)
        ok &= ~(bad | ~ok_c).cpu()
        for i in (~ok & torch.tensor([not w for w in why])).nonzero().squeeze(1).tolist():
            why[i] = "the analytic pass did not verify (condition-number cap or rounding)"
        why_analytic = list(why)
        stats = self.last_stats = {"analytic": int(ok.sum()), "anchored": 0, "anchor_failed": 0, "retries": 0}
        # 2. anchored pass for the rest
        learn = self._restarts(goal, kind, input_range, gen, init_std, max_iter)
        for attempt in range(max_retries + 1):
            todo = (~ok).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            stats["retries"] = attempt
            g = goal.subset(todo)
            if attempt == 0 and inputs is not None:
                x0 = inputs[todo].detach()
            else:
                x0 = learn.starts(todo)
            # an anchor that already verifies is kept even if it stopped short of the aim
            sol, found, _, _ = self._solve_to_goal(x0, g, kind, max_iter, input_range,
                                             tail=tail)
            learn.update(todo, sol.x, found, sol.n_iter)
            stats["anchor_failed"] += int((~found).sum())
            for j, i in enumerate(todo.tolist()):
                if not found[j]:
                    why[i] = ("the Levenberg-Marquardt anchor solve did not reach the target ("
                              f"{learn.report(max_iter, self.solver.escalation)}); "
                              f"the analytic pass: {why_analytic[i]}")
            idx_f = found.nonzero().squeeze(1)
            if idx_f.numel() == 0:
                continue
            anchors = sol.x[idx_f.to(sol.x.device)]
            rows = todo[idx_f]
            refs, y_out = chain.forward64(anchors)
            pending = torch.arange(len(rows))
            for s in (1.0, 0.25, 0.0625, 0.0):
                if pending.numel() == 0:
                    break
                sc = torch.full((len(pending),), s, dtype=torch.float64, device=chain.device)
                pd = pending.to(chain.device)
                sub = ([r[pd] for r in refs[0]], [r[pd] for r in refs[1]])
                xs, bad_s, why_s = walk(chain, y_out[pd], sub, sc, std, gen, input_range)
                xs = xs.reshape(len(pending), *shape)
                if s == 0.0:  # the anchor itself, verified by the model as every sample is
                    xs = torch.where(bad_s.reshape(-1, *([1] * len(shape))).cpu(),
                                     anchors[pending.to(anchors.device)].to(xs), xs.cpu())
                    bad_s = torch.zeros_like(bad_s)
                sub_goal = goal.subset(rows[pending])
                ok_s, d_s, _ = self._verify(xs, sub_goal, kind, input_range)
                ok_s &= ~bad_s.cpu()
                dest = rows[pending]
                x[dest], delta[dest] = xs.to(x), d_s
                ok[dest[ok_s]] = True
                for j, i in enumerate(dest.tolist()):
                    why[i] = "" if ok_s[j] else (why_s[j] or "the anchored sample did not verify")
                stats["anchored"] += int(ok_s.sum())
                pending = pending[~ok_s]
        return self._finish(x, ok, delta, count_reasons([w if not o else "" for w, o in zip(why, ok.tolist())]),
                            allow_unverified, return_delta, "BackwardPassInversion", goal, kind, input_range,
                            reference)
