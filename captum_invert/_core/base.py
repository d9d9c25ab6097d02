"""What every inversion method shares: the model adapter, the solver settings, verification by
the caller's model, the convergence delta and the result or :class:`InversionError`.

The parts live in modules named for what they do: :mod:`.model` (the adapter, the only code that
calls the model), :mod:`.goal` (targets and their residuals), :mod:`.reachability` (proofs that a
target is out of reach), :mod:`.solve` (the solvers' loop) and :mod:`.errors`."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from captum.attr import Attribution
from torch import Tensor

from .errors import InversionError, count_reasons
from .goal import (Goal, TargetType, check_analytic_args, check_inputs, check_range, check_solver_args,
                   parse_target)
from .model import ModelAdapter, Selector
from .reachability import check_reachable, output_tail, prob_bounds
from .solve import Restarts, SolverSettings, make_generator, random_starts, shaped_starts, solve_to_goal, verify

__all__ = ["InversionError", "Goal", "InversionMethod", "SolverSettings", "make_generator", "random_starts",
           "count_reasons"]


class InversionMethod(Attribution):
    """Base of the inversion methods (a Captum ``Attribution``).

    Args:
        forward_func (nn.Module or callable): the classifier. TorchScript and ``torch.export``
            modules are run as opaque functions.
        input_shape (tuple of int, optional): shape of one input without the batch dimension.
            Default: ``forward_func.input_shape`` if present, timm's ``pretrained_cfg``, else
            ``(in_features,)`` of its first ``nn.Linear``. For a model of several inputs, a tuple
            of shapes, e.g. ``((1, 28, 28), (10,))``: the inputs are inverted jointly, ``inputs``
            and the result are tuples of tensors (as Captum's tuple inputs), and ``input_range``
            applies to all.
        output (str, optional): ``'logits'``, ``'probs'`` or ``'log_probs'``: how to read the
            model's output. Default: read from the output (rows of probabilities or of
            log-probabilities), else logits. A single output is a binary classifier (class 1 is
            the positive one).
        select (int or str, optional): which output of a model that returns several: an index
            (``select=2``), a dict key (``select='logits'``) or an attribute
            (``select='.logits'``). Default: a tensor as is, and the ``logits`` of a Hugging Face
            ``ModelOutput``.
        solver (SolverSettings, optional): escalation, Jacobian averaging and LP routing
            (:class:`~captum_invert.SolverSettings`); default ``SolverSettings()``.
        normalize (tuple or str, optional): ``(mean, std)`` (one value or one per channel) of a
            model that expects normalised inputs ``(x - mean) / std``, as timm and torchvision
            models do; ``'auto'`` reads them from timm's ``pretrained_cfg``. Inputs,
            ``input_range``, priors and results are then in pixel space, and the model sees
            them normalised. Default: none.
    """

    def __init__(self, forward_func, input_shape=None, *, output: Optional[str] = None,
                 select: Selector = None, solver: Optional[SolverSettings] = None, normalize=None) -> None:
        if solver is not None and not isinstance(solver, SolverSettings):
            raise ValueError(f"`solver` must be a captum_invert.SolverSettings or None, got {type(solver).__name__}")
        #: the model as the methods see it (:class:`~captum_invert._core.model.ModelAdapter`)
        self.adapter = ModelAdapter(forward_func, input_shape, output=output, select=select, normalize=normalize)
        super().__init__(forward_func)
        self.input_shape: Tuple[int, ...] = self.adapter.input_shape
        self.solver = solver if solver is not None else SolverSettings()
        self.last_stats: Dict[str, Any] = {}

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def model(self):
        return self.forward_func

    def _sibling(self, cls, *args, **kwargs) -> "InversionMethod":
        """A method of class ``cls`` on this method's adapter (extra forward arguments and
        joined inputs included) and solver settings."""
        inv = cls(self.forward_func, *args, solver=self.solver, **kwargs)
        inv.adapter = self.adapter.flattened()
        inv.input_shape = inv.adapter.input_shape
        return inv

    # --- the parts every method uses -------------------------------------------------------
    def _probe(self) -> Tuple[str, int, Any]:
        """``(kind, n_classes, trace)`` of the model (see :meth:`ModelAdapter.probe`)."""
        p = self.adapter.probe()
        self._last_probe = p
        return p.kind, p.n_classes, p.trace

    _parse_target = staticmethod(parse_target)
    _check_solver_args = staticmethod(check_solver_args)
    _check_analytic_args = staticmethod(check_analytic_args)
    _check_range = staticmethod(check_range)
    _output_tail = staticmethod(output_tail)
    _prob_bounds = staticmethod(prob_bounds)

    def _check_inputs(self, inputs) -> Optional[int]:
        return check_inputs(inputs, self.input_shape)

    def _check_reachable(self, goal: Goal, tail, what: str, allow_unverified: bool = False, trace=None,
                         kind: Optional[str] = None, input_range=None) -> None:
        check_reachable(self.adapter, goal, tail, what, allow_unverified, trace, kind, input_range)

    def _verify(self, x: Tensor, goal: Goal, kind: str, input_range=None) -> Tuple[Tensor, Tensor, Tensor]:
        return verify(self.adapter, x, goal, kind, input_range)

    def _solve_to_goal(self, x0: Tensor, goal: Goal, kind: str, max_iter: int, input_range,
                       residual: str = "log_prob", stop: float = 0.5, tail=None):
        return solve_to_goal(self.adapter, self.solver, self.last_stats, x0, goal, kind, max_iter, input_range,
                             residual, stop, tail)

    def _restarts(self, goal: Goal, kind: str, input_range, gen, init_std: float, max_iter: int) -> Restarts:
        return Restarts(self.adapter, goal, kind, self.input_shape, input_range, gen, init_std, max_iter,
                        self.solver.ranked_restarts)

    def _shaped_starts(self, prior, goal: Goal, kind: str, input_range, gen, inputs: Optional[Tensor] = None):
        return shaped_starts(self.adapter, self.last_stats, prior, goal, kind, input_range, gen, inputs)

    @staticmethod
    def _need_softmax(kind: str, what: str) -> None:
        """ValueError for a single-output (binary sigmoid) model in a method that inverts a
        softmax over several outputs."""
        if kind.startswith("binary"):
            raise ValueError(f"{what} inverts a softmax over several outputs, but this model has a single "
                             "output (a binary sigmoid classifier): use ForwardPassInversion or "
                             "GeneralizedInversion, with target 1 (sigmoid >= min_prob) or 0 (<= 1 - min_prob)")

    def compute_convergence_delta(self, attributions: Tensor, target: TargetType = None, *,
                                  min_prob: float = 0.9, atol: float = 0.02) -> Tensor:
        """Per-sample max-abs gap between the model's probabilities on ``attributions`` and the
        aimed-at distribution (for a class target: ``1 - p_target``).

        Args:
            attributions (Tensor): inputs, ``(N, *input_shape)`` (a tuple of tensors for a model
                of several inputs).
            target: as in ``attribute``.
            min_prob (float): as in ``attribute`` (checked, not used by the gap).
            atol (float): as in ``attribute`` (checked, not used by the gap).

        Returns:
            Tensor: ``(N,)`` float64.
        """
        x = self.adapter.flat(attributions)
        kind, n_classes, _ = self._probe()
        goal = self._parse_target(target, None, n_classes, min_prob, atol, n_inputs=len(x))
        with self.adapter.guard():
            return self._verify(x, goal, kind)[1]

    def _finish(self, x: Tensor, ok: Tensor, delta: Tensor, reasons: Dict[str, int],
                allow_unverified: bool, return_convergence_delta: bool, what: str,
                goal: Optional[Goal] = None, kind: Optional[str] = None, input_range=None,
                reference=None):
        """Return the result, or raise InversionError when some samples did not verify; with
        ``goal`` and ``kind`` the error carries the diagnosis of each failed sample (see
        :class:`~captum_invert.SampleDiagnosis`) and says how the model's output was read."""
        x = self.adapter.cast(x)
        n_ok = int(ok.sum())
        if n_ok < len(x) and not allow_unverified:
            diag = None
            if goal is not None and kind is not None:
                from .diagnosis import diagnose

                bad = (~ok).nonzero().squeeze(1)
                try:
                    diag = diagnose(self, x[bad.to(x.device)], bad, goal.subset(bad), kind, input_range,
                                    reference)
                except Exception as e:  # noqa: BLE001 - a diagnosis never hides the error itself
                    diag = None
                    reasons = {**reasons, f"(no diagnosis: {type(e).__name__}: {e})": 0}
            probe = getattr(self, "_last_probe", None)
            note = self.adapter.describe_kind(probe) if probe is not None else ""
            raise InversionError(
                f"{what}: {len(x) - n_ok} sample(s) did not verify (pass allow_unverified=True to "
                "get them anyway, or relax min_prob / atol / input_range).",
                n_ok, len(x), reasons, x, ok.clone(), delta, diag,
                goal.min_prob if goal is not None else 0.9, note,
            )
        return (x, delta) if return_convergence_delta else x

