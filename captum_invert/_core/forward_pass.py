"""ForwardPassInversion: root-finding from random starts with batched Levenberg-Marquardt
(FORWARDPASSINV of the seed paper), for any differentiable model."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..priors import resolve_prior
from .diagnosis import check_reference
from .batching import batched_attribute
from .base import InversionMethod, count_reasons, make_generator

__all__ = ["ForwardPassInversion"]

_RESIDUALS = ("log_prob", "prob")


class ForwardPassInversion(InversionMethod):
    r"""Inputs that any differentiable classifier maps to a target, by root-finding
    (FORWARDPASSINV of the seed paper, "Inverting Neural Networks", seed 000).

    From random starts (or the given ``inputs``), batched Levenberg-Marquardt drives the
    residual between the model's (log-)probabilities and the target to zero. The Jacobian with
    respect to the input comes from ``torch.func`` (reverse mode: one vector-Jacobian product per
    residual), and each step is solved in the small output space,
    ``(J J^T + lambda I) u = r``, ``dx = -J^T u`` (see
    :func:`~captum_invert.solvers.levenberg_marquardt`). For a class target there is one
    residual, ``logit(aim) - (z_t - logsumexp(z_others))`` (the class's log-odds) with
    ``aim = (1 + min_prob) / 2``, so an iteration costs
    one forward and one backward pass whatever the input size. Samples that have converged leave
    the batch. Samples that do not converge in ``max_iter`` iterations are escalated: up to
    ``5 * max_iter`` steps of projected Adam on the same residual, with surrogate gradients
    through saturated activations (:func:`~captum_invert.solvers.surrogate_gradients`; the
    values stay the model's own). Those still short are restarted, up to ``max_retries`` times,
    each time from the best of many draws ranked by the target's log-odds: draws of varied
    intensity and resolution, half of them crossed with the sample's best point so far or a
    verified sample of the same target (:class:`~captum_invert._core.solve.Restarts`). After that an
    :class:`~captum_invert.InversionError` is raised, unless ``allow_unverified=True``.

    The model runs in eval mode during the call and in its own dtype and device; every
    returned sample is verified by it.

    Args:
        forward_func (nn.Module or callable): any differentiable classifier returning
            ``(N, C)`` logits (or probabilities if it ends in ``nn.Softmax``), e.g. a timm ViT.
            Samples must not interact (no batch statistics).
        input_shape (tuple of int, optional): shape of one input; default
            ``forward_func.input_shape`` or the first Linear's ``in_features``.
        output, select, solver: how to read the model's output, which of several outputs, and
            the solver settings; see :class:`~captum_invert.InversionMethod`.
    """

    @batched_attribute
    def attribute(
        self,
        inputs: Optional[Tensor] = None,
        target=None,
        *,
        n_samples: Optional[int] = None,
        max_iter: int = 30,
        input_range: Optional[Tuple[float, float]] = None,
        min_prob: float = 0.9,
        atol: float = 0.02,
        seed=None,
        init_std: float = 1.0,
        max_retries: int = 10,
        residual: str = "log_prob",
        prior=None,
        return_convergence_delta: bool = False,
        allow_unverified: bool = False,
        reference=None,
    ):
        r"""Find inputs that the model maps to ``target``.

        Args:
            inputs (Tensor, optional): ``(N, *input_shape)`` starting points. Default: random,
                uniform in ``input_range`` when given, else ``N(0, init_std^2)`` per coordinate.
                Restarts are always random.
            target (int, sequence of int, or Tensor): a class index (probability >=
                ``min_prob``), one class per sample, or a class distribution ``(C,)`` /
                ``(N, C)`` (max-abs difference <= ``atol``).
            n_samples (int, optional): number of samples (default: 1, or the length of a
                per-sample ``target`` / of ``inputs``).
            max_iter (int): Levenberg-Marquardt iterations per start (the paper: 30).
            input_range (tuple of float, optional): ``(lo, hi)`` box kept by projection; every
                returned input lies in it.
            min_prob (float): for class targets, the probability the class must reach.
            atol (float): for distribution targets, the max-abs tolerance.
            seed (int or torch.Generator, optional): makes the result reproducible.
            init_std (float): standard deviation of random starts without ``input_range``.
            max_retries (int): restarts for samples that fail, each from the best of many ranked
                draws, some crossed with what earlier starts reached (see
                :class:`~captum_invert._core.solve.Restarts`). Default: 10.
            residual (str): ``'log_prob'`` (default) or ``'prob'``; see
                :func:`~captum_invert._core.solve.solve_to_goal`.
            prior (optional): an image prior (:mod:`captum_invert.priors`), ``'auto'``
                (:func:`~captum_invert.priors.auto_prior`) or None. With a prior every start
                (``inputs`` included) is first shaped by it (Adam on the prior's variables,
                through its transforms and penalties); Levenberg-Marquardt then polishes the
                shaped image on the untransformed model, with the smallest steps that reach the
                target, and the model verifies the result as always.
            return_convergence_delta (bool): also return the per-sample delta.
            allow_unverified (bool): return unconverged samples too instead of raising.
            reference (Tensor or tuple, optional): real inputs ``(M, *input_shape)``, or a pair
                ``(inputs, labels)``, e.g. a sample of the training set. Used only when samples
                fail: the :class:`~captum_invert.InversionError`'s diagnosis then says how many
                of them (of the target's class) reach the target.

        Returns:
            Tensor or (Tensor, Tensor): inputs ``(N, *input_shape)`` in the model's dtype and
            device; with ``return_convergence_delta`` also ``delta`` ``(N,)``: the max-abs gap
            between the model's probabilities and the aimed-at distribution (``1 - p_target``
            for a class target).

        Raises:
            ValueError: a bad argument, or a target that the bounded range of the model's output
                activation (a Tanh or Sigmoid on the logits) puts out of reach of every input
                (not raised with ``allow_unverified``).
            InversionError: some samples did not verify (and ``allow_unverified`` is False).
        """
        self._check_solver_args(max_iter, max_retries, init_std)
        if residual not in _RESIDUALS:
            raise ValueError(f"`residual` must be one of {_RESIDUALS}, got {residual!r}")
        input_range = self._check_range(input_range)
        n_inputs = self._check_inputs(inputs)
        reference = check_reference(reference, self.input_shape)
        gen = make_generator(seed)
        dtype, device = self.adapter.dtype_device
        prior = resolve_prior(prior, self.adapter.module, self.input_shape, input_range)
        self.last_stats = {}
        with self.adapter.guard():
            kind, n_classes, trace = self._probe()
            tail = self._output_tail(trace)
            goal = self._parse_target(target, n_samples, n_classes, min_prob, atol, n_inputs)
            self._check_reachable(goal, tail, "ForwardPassInversion", allow_unverified, trace, kind, input_range)
            N = goal.n
            x = torch.zeros((N, *self.input_shape), dtype=dtype, device=device)
            ok = torch.zeros(N, dtype=torch.bool)
            delta = torch.ones(N, dtype=torch.float64)
            iters = torch.zeros(N, dtype=torch.long)
            nonfinite = torch.zeros(N, dtype=torch.bool)
            zero = torch.zeros(N, dtype=torch.bool)
            stats = self.last_stats
            stats.update(restarts=0, converged_first_start=0)
            learn = self._restarts(goal, kind, input_range, gen, init_std, max_iter)
            for attempt in range(max_retries + 1):
                todo = (~ok).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                if attempt == 0 and inputs is not None:
                    x0 = inputs.detach().to(dtype=dtype, device=device)
                    if input_range is not None:
                        x0 = x0.clamp(*input_range)
                elif prior is None:
                    x0 = learn.starts(todo)
                if prior is not None:
                    x0 = self._shaped_starts(prior, goal.subset(todo), kind, input_range, gen,
                                             x0 if attempt == 0 and inputs is not None else None)
                stats["restarts"] += int(attempt > 0) * len(todo)
                sol, _, ok_t, d_t = self._solve_to_goal(x0, goal.subset(todo), kind, max_iter,
                                                        input_range, residual, stop=0.1, tail=tail)
                x[todo.to(device)] = sol.x.detach().to(x.dtype)
                delta[todo], ok[todo] = d_t, ok_t
                learn.update(todo, sol.x, ok_t, sol.n_iter)
                iters[todo] += sol.n_iter.cpu()
                nonfinite[todo] = ~sol.finite.cpu()
                zero[todo] = sol.zero_grad.cpu() & ~ok_t
                if attempt == 0 and bool(zero[todo].all()):
                    break  # no start moves: new random starts would not either
                if attempt == 0:
                    stats["converged_first_start"] = int(ok_t.sum())
            stats["mean_iterations"] = float(iters.double().mean())
            learn.keep_best(x, delta, ok)
            reason = ("did not reach the target" + (f" inside input_range {input_range}" if input_range else "")
                      + f": {learn.report(max_iter, self.solver.escalation)}")
            bad = ("the model's Jacobian (or its residual) became NaN or infinite at the iterate of the "
                   "last start; check the model for non-finite outputs or gradients")
            flat = ("the model's output has exactly zero gradient with respect to its input at the start "
                    "(a non-differentiable step such as torch.round, argmax or a threshold, or a region "
                    "where every unit is saturated or dead), so no solver step can move it")
            return self._finish(x, ok, delta, count_reasons(["" if o else bad if nf else flat if z else reason
                                                             for o, nf, z in zip(ok.tolist(), nonfinite.tolist(),
                                                                                 zero.tolist())]),
                                allow_unverified, return_convergence_delta, "ForwardPassInversion",
                                goal, kind, input_range, reference)


def by_forward_pass(method: InversionMethod, inputs, goal, **kwargs):
    """Solve ``goal`` for ``method`` by :class:`ForwardPassInversion` on its adapter (the route
    of models that have no closed-form inverse); ``kwargs`` go to ``attribute``. Sets the
    method's ``last_stats`` (route ``'forward_pass'``) and clears its ``last_regions``."""
    inv = method._sibling(ForwardPassInversion, method.input_shape)
    out = inv.attribute(inputs, goal.labels.tolist() if goal.labels is not None else goal.dist, **kwargs)
    method.last_stats, method.last_regions = {"route": "forward_pass", **inv.last_stats}, None
    return out
