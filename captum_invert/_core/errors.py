"""The error every method raises when samples do not verify."""
from __future__ import annotations

from typing import Dict, List, Optional

from torch import Tensor

__all__ = ["InversionError", "count_reasons"]


class InversionError(RuntimeError):
    """Raised when fewer samples verify than were requested.

    Attributes:
        n_verified (int): samples that did verify.
        n_requested (int): samples asked for.
        reasons (dict): ``reason -> number of samples`` for the failures (which layer, which
            constraint).
        partial (Tensor or None): the verified samples, ``(n_verified, *input_shape)``.
        verified (Tensor or None): bool mask ``(n_requested,)`` of which requested samples verified.
        result (Tensor or None): all samples, ``(n_requested, *input_shape)``, unverified ones
            included (their values are the last attempt).
        delta (Tensor or None): per-sample convergence delta of ``result``.
        diagnosis (list or None): one :class:`~captum_invert.SampleDiagnosis` per failed sample
            (best probability reached, input-gradient norm, saturated layers, whether the target
            is provably out of reach, and with ``reference=`` whether real inputs reach it).
        note (str): a last line of the message (how the model's output was read).
    """

    def __init__(self, message: str, n_verified: int = 0, n_requested: int = 0,
                 reasons: Optional[Dict[str, int]] = None, result: Optional[Tensor] = None,
                 verified: Optional[Tensor] = None, delta: Optional[Tensor] = None,
                 diagnosis: Optional[list] = None, min_prob: float = 0.9, note: str = "") -> None:
        self.n_verified, self.n_requested, self.note = n_verified, n_requested, note
        self.reasons = dict(reasons or {})
        self.result, self.verified, self.delta = result, verified, delta
        self.diagnosis = list(diagnosis) if diagnosis is not None else None
        self.partial = result[verified] if result is not None and verified is not None else None
        lines = [message, f"{n_verified} of {n_requested} samples verified."]
        for r, k in sorted(self.reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k} sample(s): {r}" if k else f"  {r}")
        if self.diagnosis:
            from .diagnosis import format_diagnosis

            lines.append("Diagnosis:")
            lines += [f"  {line}" for line in format_diagnosis(self.diagnosis, min_prob)]
        if note:
            lines.append(note)
        super().__init__("\n".join(lines))


def count_reasons(reasons: List[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for r in reasons:
        if r:
            out[r] = out.get(r, 0) + 1
    return out
