"""GeneralizedInversion: analytic back-pass where the plan proves a block analytic,
Levenberg-Marquardt through the opaque blocks (seed 000's generalized method)."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..blocks.plan import InversionPlan
from ..priors import resolve_prior
from ..blocks.chain import build_chain, output_target, tail_linear_target, walk
from .backward_pass import BackwardPassInversion
from .diagnosis import check_reference
from .batching import batched_attribute
from .base import InversionMethod, count_reasons, make_generator
from .goal import goal_residual
from .forward_pass import by_forward_pass
from .region import NO_REGIONS
from .solve import escalate, phased_lm

__all__ = ["GeneralizedInversion"]


def _has_linear(block) -> bool:
    return any(isinstance(c.module, nn.Linear) for c in block.calls)


class GeneralizedInversion(InversionMethod):
    r"""Block-wise inversion: ``NN(x) = NN_n(... NN_1(x))``, each block inverted the way that fits
    it (the generalized method of seed 000, "Inverting Neural Networks").

    An :class:`~captum_invert.blocks.plan.InversionPlan` (``print(inv.plan)``) splits the model,
    with proven boundaries, into analytic blocks (Linear, invertible activations, softmax) and
    opaque ones (attention, LayerNorm, convolutions, ReLU, ...). The inversion uses three parts:

    - the **analytic tail** (e.g. a ViT's head ``Linear(192, 10)``, or a CNN's Linear + SELU
      classifier): the back-pass from the target gives the minimum-norm embedding ``h`` and, from
      the null space of the tail's first Linear (182-dimensional for a ViT-tiny head), a random
      direction ``n`` and offset ``c = std * ||h||``. One target so becomes a distribution of
      target embeddings;
    - the **opaque middle**: Levenberg-Marquardt (:func:`~captum_invert.solvers.levenberg_marquardt`)
      on the goal's residual (as in :class:`~captum_invert.ForwardPassInversion`) plus one soft
      residual ``0.5 tanh((<n, h(x)> - c) / (std ||h||))`` that moves the embedding along the
      sampled null direction (bounded, so it never blocks the goal where the opaque block cannot
      follow). Two vector-Jacobian products per iteration, not one per embedding dimension;
    - the **analytic head**, when the plan starts with one (e.g. ``Flatten -> Linear``): the
      solver works on the head's output instead of the pixels, and the head is then inverted
      analytically with null-space noise, exactly as in
      :class:`~captum_invert.BackwardPassInversion` (including ``input_range``).

    Analytic blocks inside the middle are run as part of it. A model that is one analytic block
    is handed to :class:`~captum_invert.BackwardPassInversion`. A piecewise-linear chain (ReLU,
    Conv, MaxPool, ...) is an opaque block by default: its samples come from Levenberg-Marquardt
    in milliseconds. Certified regions are asked for: ``attribute(..., return_regions=True)`` or
    :meth:`region` invert it by linear programming (:class:`~captum_invert.BackwardPassInversion`,
    about 1,000x the cost per sample). ``print(inv.plan)`` says which route each block takes
    and why. The whole model verifies every returned sample; failures are restarted from new
    random points, then :class:`~captum_invert.InversionError`.

    Args:
        forward_func (nn.Module): the classifier (its leaf modules are hooked).
        input_shape (tuple of int, optional): shape of one input.
        split_points (sequence of str, optional): module names where blocks must start (see
            :class:`~captum_invert.blocks.plan.InversionPlan`).
        lp (bool, optional): plan piecewise-linear chains as ``analytic (LP)`` blocks, so that
            every ``attribute`` call goes through linear programming (samples are points of
            certified regions, kept in ``last_regions``; about 0.3-6 s per sample on a 2-core
            CPU for 28x28 nets). False keeps them opaque: Levenberg-Marquardt, milliseconds per
            sample; regions only when asked for (``return_regions=True``, :meth:`region`).
            Default: the solver settings' ``lp`` (False).
        output, select, solver: see :class:`~captum_invert.InversionMethod`.
    """

    def __init__(self, forward_func, input_shape=None, *, split_points: Optional[Sequence[str]] = None,
                 lp: Optional[bool] = None, **options) -> None:
        if not isinstance(forward_func, nn.Module):
            raise ValueError("GeneralizedInversion needs an nn.Module (it hooks the layers); "
                             "use ForwardPassInversion for a plain callable")
        super().__init__(forward_func, input_shape, **options)
        self.split_points = list(split_points) if split_points is not None else None
        if lp is not None and not isinstance(lp, bool):
            raise ValueError(f"`lp` must be a bool or None (the solver settings' lp), got {lp!r}")
        if lp is not None:
            self.solver = dataclasses.replace(self.solver, lp=lp)
        self.lp = self.solver.lp
        self._plan = None

    @property
    def plan(self) -> InversionPlan:
        """The model's :class:`~captum_invert.blocks.plan.InversionPlan` (built on first use).

        Raises:
            ValueError: for a TorchScript or ``torch.export`` model, which has no layers to plan
                (``attribute`` runs it as one opaque Levenberg-Marquardt block).
        """
        if self.adapter.traceable is None:
            raise ValueError(
                f"GeneralizedInversion.plan: the model ({type(self.forward_func).__name__}) is compiled "
                "(TorchScript or torch.export), so its layers cannot be traced: `attribute` runs it as one "
                "opaque block (Levenberg-Marquardt, as ForwardPassInversion). Pass the eager nn.Module for "
                "a plan of blocks")
        if self._plan is None:
            g = torch.Generator().manual_seed(0)
            ex = self.adapter.cast(torch.randn((2, *self.input_shape), generator=g))
            self._plan = InversionPlan(self.adapter.traceable, ex, self.split_points, ends_only=True, lp=self.lp)
        return self._plan

    @batched_attribute
    def attribute(
        self,
        inputs: Optional[Tensor] = None,
        target=None,
        *,
        n_samples: Optional[int] = None,
        std: float = 0.1,
        cond_num: float = 100.0,
        max_iter: int = 30,
        input_range: Optional[Tuple[float, float]] = None,
        min_prob: float = 0.9,
        atol: float = 0.02,
        margin: float = 0.05,
        seed=None,
        init_std: float = 1.0,
        max_retries: int = 10,
        prior=None,
        return_convergence_delta: bool = False,
        allow_unverified: bool = False,
        reference=None,
        return_regions: bool = False,
    ):
        r"""Generate inputs that the model maps to ``target``.

        Args:
            inputs (Tensor, optional): ``(N, *input_shape)`` starting points of the solver;
                default random (uniform in ``input_range``, else ``N(0, init_std^2)``).
            target: a class index, one per sample, or a distribution ``(C,)`` / ``(N, C)``.
            n_samples (int, optional): number of samples.
            std (float): null-space spread of the analytic blocks (relative to the norm of the
                pseudo-inverse solution, as in the paper); 0 disables it.
            cond_num (float): condition-number cap of every analytic Linear (> 1).
            max_iter (int): Levenberg-Marquardt iterations per start.
            input_range (tuple, optional): ``(lo, hi)``; every returned input lies in it.
            min_prob (float): class targets: the probability to reach.
            atol (float): distribution targets: max-abs tolerance.
            margin (float): activation-range margin of the analytic blocks (see
                :class:`~captum_invert.BackwardPassInversion`).
            seed (int or torch.Generator, optional): reproducibility.
            init_std (float): standard deviation of random starts without ``input_range``.
            max_retries (int): restarts for samples that fail, each from the best of many ranked
                draws, some crossed with what earlier starts reached (see
                :class:`~captum_invert._core.solve.Restarts`). Default: 10.
            prior (optional): an image prior (:mod:`captum_invert.priors`), ``'auto'`` or None.
                Every start is first shaped by it; the blocks then move the shaped image as
                little as they can: the analytic head keeps the start's own null-space component
                and adds no noise, the tail's null-space preference stays. A model that is one
                analytic block is solved as by :class:`~captum_invert.ForwardPassInversion` with
                the prior (the back-pass's null-space noise would undo the prior).
            return_convergence_delta (bool): also return the per-sample delta.
            allow_unverified (bool): return failed samples instead of raising.
            reference (Tensor or tuple, optional): real inputs ``(M, *input_shape)``, or a pair
                ``(inputs, labels)``, e.g. a sample of the training set. Used only when samples
                fail: the :class:`~captum_invert.InversionError`'s diagnosis then says how many
                of them (of the target's class) reach the target.
            return_regions (bool): piecewise-linear nets only: also return one certified
                :class:`~captum_invert.PreimageRegion` per sample; each sample is then a point of
                its region, by :class:`~captum_invert.BackwardPassInversion`'s linear program
                (about 1,000x the cost of the default route; its anchors get at least 50
                Levenberg-Marquardt iterations, that method's default). Not with ``prior``.

        Returns:
            Tensor or tuple: inputs ``(N, *input_shape)``; with ``return_convergence_delta``
            also ``delta`` ``(N,)``; with ``return_regions``, last, the list of ``N`` regions.
        """
        self._check_analytic_args(std, cond_num, margin)
        self._check_solver_args(max_iter, max_retries, init_std)
        input_range = self._check_range(input_range)
        n_inputs = self._check_inputs(inputs)
        reference = check_reference(reference, self.input_shape)
        gen = make_generator(seed)
        if not isinstance(return_regions, bool):
            raise ValueError(f"`return_regions` must be a bool, got {return_regions!r}")
        if return_regions and prior is not None:
            raise ValueError("`return_regions=True` cannot be combined with `prior`: a region's samples are "
                             "hit-and-run points of a polytope, not images shaped by a prior. Pass prior=None, or "
                             "return_regions=False")
        if return_regions and self.adapter.traceable is None:
            raise ValueError(NO_REGIONS.format(what="GeneralizedInversion"))
        prior = resolve_prior(prior, self.adapter.module, self.input_shape, input_range)
        self.last_stats = {}
        if return_regions:
            inv = self._sibling(BackwardPassInversion, self.input_shape)
            out = inv.attribute(inputs, target, n_samples=n_samples, std=std, cond_num=cond_num, seed=gen,
                                input_range=input_range, min_prob=min_prob, atol=atol, margin=margin,
                                max_iter=max(max_iter, 50), max_retries=max_retries, init_std=init_std,
                                return_convergence_delta=return_convergence_delta,
                                allow_unverified=allow_unverified, reference=reference, return_regions=True)
            self.last_stats, self.last_regions = {**inv.last_stats}, inv.last_regions
            return out
        with self.adapter.guard():
            kind, n_classes, trace = self._probe()
            goal = self._parse_target(target, n_samples, n_classes, min_prob, atol, n_inputs)
            self._check_reachable(goal, self._output_tail(trace), "GeneralizedInversion", allow_unverified,
                                  trace, kind, input_range)
            compiled = self.adapter.traceable is None  # opaque: one LM block
            blocks = None if compiled else self.plan.blocks
            tgt = goal.labels.tolist() if goal.labels is not None else goal.dist
            binary = kind.startswith("binary")
            one_analytic = not compiled and len(blocks) == 1 and blocks[0].kind == "analytic"
            lp_route = not compiled and blocks[0].kind == "lp"
            # a piecewise-linear chain: the whole model by LM (see InversionPlan.route)
            whole = compiled or (not lp_route and self.plan.piecewise)
            if whole or (prior is not None or binary) and (one_analytic or lp_route):
                return by_forward_pass(self, inputs, goal, max_iter=max_iter, input_range=input_range,
                                       min_prob=min_prob, atol=atol, seed=gen, init_std=init_std,
                                       max_retries=max_retries, prior=prior, reference=reference,
                                       return_convergence_delta=return_convergence_delta,
                                       allow_unverified=allow_unverified)
            if one_analytic or lp_route:
                inv = self._sibling(BackwardPassInversion, self.input_shape)
                out = inv.attribute(inputs, tgt, std=std, cond_num=cond_num, seed=gen, input_range=input_range,
                                    min_prob=min_prob, atol=atol, margin=margin, max_iter=max_iter,
                                    max_retries=max_retries, init_std=init_std,
                                    return_convergence_delta=return_convergence_delta,
                                    allow_unverified=allow_unverified, reference=reference,
                                    return_regions=lp_route)  # lp=True: every call by the LP, regions kept
                if lp_route:
                    out = out[:-1] if return_convergence_delta else out[0]
                self.last_stats = {"route": "backward_pass", **inv.last_stats}
                self.last_regions = getattr(inv, "last_regions", None)
                return out
            return self._run(goal, kind, std, cond_num, max_iter, input_range, margin, gen,
                             init_std, max_retries, inputs, return_convergence_delta, allow_unverified,
                             prior, reference)

    def region(self, target, **kwargs):
        r"""A certified preimage region of a piecewise-linear net (ReLU, Conv, MaxPool, ..., with
        an optional analytic head): :meth:`BackwardPassInversion.region
        <captum_invert.BackwardPassInversion.region>` on this method's model, normalisation and
        solver settings; the keywords are that method's.

        Returns:
            PreimageRegion
        """
        if self.adapter.traceable is None:
            raise ValueError(NO_REGIONS.format(what="GeneralizedInversion.region()"))
        return self._sibling(BackwardPassInversion, self.input_shape).region(target, **kwargs)

    def _run(self, goal, kind, std, cond_num, max_iter, input_range, margin, gen, init_std,
             max_retries, inputs, return_delta, allow_unverified, prior=None, reference=None):
        plan = self.plan
        blocks = plan.blocks
        dtype, device = self.adapter.dtype_device
        head = blocks[0] if blocks[0].kind == "analytic" and _has_linear(blocks[0]) else None
        # a binary (single-output) head has no softmax to invert: no analytic tail there
        tail = (blocks[-1] if blocks[-1].kind == "analytic" and _has_linear(blocks[-1])
                and not kind.startswith("binary") else None)
        i_mid = head.stop if head is not None else 0
        N, shape = goal.n, self.input_shape
        head_chain = tail_chain = None
        if head is not None:
            head_chain = build_chain(head.calls, cond_num, device, "GeneralizedInversion")
            head_chain.set_boxes(margin, input_range)
            u_lo, u_hi = head_chain.out_box[2].to(dtype), head_chain.out_box[3].to(dtype)
        if tail is not None:
            tail_chain = build_chain(tail.calls, cond_num, device, "GeneralizedInversion")
            tail_chain.set_boxes(margin, None)
        x = torch.zeros((N, *shape), dtype=dtype, device=device)
        ok = torch.zeros(N, dtype=torch.bool)
        delta = torch.ones(N, dtype=torch.float64)
        why = [""] * N
        stats = self.last_stats
        stats.update(route="generalized", head=head is not None, tail=tail is not None, restarts=0)
        learn = self._restarts(goal, kind, input_range, gen, init_std, max_iter)
        for attempt in range(max_retries + 1):
            todo = (~ok).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            stats["restarts"] += len(todo) if attempt else 0
            g = goal.subset(todo)
            if attempt == 0 and inputs is not None:
                x0 = inputs[todo].detach().to(dtype=dtype, device=device)
            elif prior is None:
                x0 = learn.starts(todo)
            if prior is not None:
                x0 = self._shaped_starts(prior, g, kind, input_range, gen,
                                         x0 if attempt == 0 and inputs is not None else None)
            # null-space targets of the tail: one sampled direction per sample
            null = None
            if tail_chain is not None and std > 0 and tail_chain.layers[0].inv.null.shape[1] > 0:
                z, _ = output_target(tail_chain, g.aim().to(tail_chain.device), goal.atol)
                ones = torch.ones(len(todo), dtype=torch.float64, device=tail_chain.device)
                h_mn, bad, _ = walk(tail_chain, z, None, ones * 0, 0.0, gen, None)
                inv0 = tail_chain.layers[0].inv
                lin_in = inv0.solve(tail_linear_target(tail_chain, z))
                n = inv0.null_noise(len(todo), gen)
                n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-300)
                s = (std * lin_in.norm(dim=1)).clamp_min(1e-12)
                null = (n.to(dtype), s.to(dtype), s.to(dtype))  # direction, offset c, scale
            # the first attempt solves in the head's output space; retries solve on the inputs,
            # where input_range is a plain box (the head's image of the box is not)
            use_head = head is not None and attempt == 0
            sol_v, steps = self._solve(plan, goal.subset(todo), kind, x0, head if use_head else None, tail,
                                       i_mid if use_head else 0, null, max_iter, input_range,
                                       (u_lo, u_hi) if use_head else None, tail_chain)
            if use_head:
                # project each start onto the head's preimage of its solution: the start's own
                # null-space component is kept (its diversity), plus the paper's noise
                u = sol_v.to(torch.float64)
                refs, _ = head_chain.forward64(x0)
                pending = torch.arange(len(todo))
                xs = torch.zeros((len(todo), *shape), dtype=dtype, device=device)
                for sc in (1.0, 0.25, 0.0):
                    if pending.numel() == 0:
                        break
                    scale = torch.full((len(pending),), sc, dtype=torch.float64, device=head_chain.device)
                    pd = pending.to(head_chain.device)
                    xf, bad, why_h = walk(
                        head_chain, u[pending.to(u.device)].to(head_chain.device),
                        ([r[pd] for r in refs[0]], [r[pd] for r in refs[1]]), scale,
                        0.0 if prior is not None else std, gen, input_range)
                    cand = xf.reshape(len(pending), *shape).to(dtype=dtype, device=device)
                    ok_c, _, _ = self._verify(cand, goal.subset(todo[pending]), kind, input_range)
                    ok_c &= ~bad.cpu()
                    xs[pending.to(device)] = cand
                    for j in (~ok_c).nonzero().squeeze(1).tolist():
                        why[int(todo[pending[j]])] = ("the analytic head's preimage: "
                                                      + (why_h[j] or "did not verify"))
                    pending = pending[~ok_c]
            else:
                xs = sol_v
            ok_t, d_t, _ = self._verify(xs, goal.subset(todo), kind, input_range)
            x[todo.to(device)] = xs
            delta[todo], ok[todo] = d_t, ok_t
            learn.update(todo, xs, ok_t, steps)
            for j, i in enumerate(todo.tolist()):
                if ok_t[j]:
                    why[i] = ""
                elif attempt or not why[i]:
                    why[i] = ("Levenberg-Marquardt through the opaque blocks did not reach the target ("
                              f"{learn.report(max_iter, self.solver.escalation)})")
        learn.keep_best(x, delta, ok)
        return self._finish(x, ok, delta, count_reasons([w if not o else "" for w, o in zip(why, ok.tolist())]),
                            allow_unverified, return_delta, "GeneralizedInversion", goal, kind, input_range,
                            reference)

    def _solve(self, plan, goal, kind, x0, head, tail, i_mid, null, max_iter, input_range, u_box,
               tail_chain):
        """Levenberg-Marquardt on the middle: variables are the head's output (with a head) or
        the inputs; returns the solution and the solver steps of each sample."""
        adapter = self.adapter
        mdt, device = adapter.dtype_device
        dtype = adapter.solver_dtype  # half / bfloat16 models: float32 variables and algebra
        gl = goal.to(device)
        captured = {}
        hook = None
        if null is not None:
            mod = plan.calls[tail.start].module
            hook = mod.register_forward_pre_hook(lambda m, i: captured.__setitem__("h", i[0]))
            pre = tail_chain.pre
        if head is not None:
            with torch.no_grad():
                v0 = plan.block_input(x0, i_mid)
            v0 = torch.maximum(torch.minimum(v0, u_box[1].reshape(v0.shape[1:])), u_box[0].reshape(v0.shape[1:]))
            run = lambda v: plan.run_from(i_mid, v.to(mdt), None, self.input_shape).to(dtype)  # noqa: E731
            bounds = (u_box[0].reshape(v0.shape[1:]).to(dtype), u_box[1].reshape(v0.shape[1:]).to(dtype))
        else:
            v0 = x0
            run = lambda v: adapter(v).to(dtype)  # noqa: E731
            bounds = input_range
        v0 = v0.to(dtype)
        gr = goal_residual(gl, dtype, 0.5 if head is not None else 0.1)
        lp_of = lambda v: adapter.log_probs_of(run(v), kind)  # noqa: E731

        # weaker than the goal's weakest residual (a distribution's scaled group residual)
        pref = 0.5 * gr.weakest

        def res(v, idx):
            r, aux = gr(lp_of(v), idx)
            if null is not None:
                h = captured.pop("h").reshape(len(v), -1).to(dtype)
                for _, m, e in pre:
                    h = e.forward(m, h)
                n, c, s = null
                # bounded and weaker than the goal: a preference, never in the goal's way when
                # the opaque block cannot reach it (e.g. a LayerNorm's fixed-norm output)
                dev = ((h * n[idx].to(h)).sum(1) - c[idx].to(h)) / s[idx].to(h)
                r = torch.cat([r, (pref * torch.tanh(dev))[:, None]], 1)
            return r, aux

        try:
            reach = None if gr.reach is None else (lambda v, idx: gr.reach[0](lp_of(v), idx), gr.reach[1])
            sol = phased_lm(res, gr.done, reach, v0, max_iter, bounds, self.solver.jacobian_averaging)
            sol = escalate(adapter, self.solver, self.last_stats, res, gr.done, gr.loose, sol, bounds, max_iter)
        finally:
            if hook is not None:
                hook.remove()
        return sol.x.detach().to(mdt), sol.n_iter
