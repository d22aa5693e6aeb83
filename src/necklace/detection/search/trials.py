"""One search trial as plain data: :class:`TrialRecord`, read back from the study's stored trials.

Every trial of the study (Optuna's ``FrozenTrial``) carries user attributes written by the search: what it was
(``kind``: ``hand-made`` or ``searched``; the registered ``neck`` and its ``options``; a ``label``), its latency, the
metrics after each rung of its short training, and why it stopped. :func:`records_from_trials` turns them into
:class:`TrialRecord` objects for the table, the picture and the verdict.

Example:
    >>> r = TrialRecord(3, "searched", "fpn P2-P6 w32", "searched", {"template": "fpn"}, "pruned",
    ...                 latency_ms=0.9, rungs=({"rung": 0, "step": 40, "ap": 0.05},), value=0.05, pruned_at=0)
    >>> r.outcome, r.trained, r.choice("t3").name
    ('pruned at rung 1 (step 40)', True, 'searched')
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from necklace.detection.compare import NeckChoice

__all__ = ["STATUSES", "TrialRecord", "records_from_trials"]

#: ``complete``: trained to the last rung; ``pruned``: stopped at a rung; ``rejected``: over the latency budget
#: (never trained); ``failed``: an error (the reason says which); ``running``: in flight (resumed on the next run)
STATUSES = ("complete", "pruned", "rejected", "failed", "running")


@dataclass(frozen=True)
class TrialRecord:
    """What one trial was and what happened to it (see the module docstring).

    Example:
        >>> r = TrialRecord(0, "hand-made", "fpn", "fpn", {"width": 32}, "rejected", latency_ms=2.0)
        >>> r.outcome, r.trained, r.metric("ap")
        ('rejected: over the latency budget', False, None)
    """

    number: int
    kind: str
    label: str
    neck: str
    options: dict[str, Any]
    status: str
    latency_ms: float | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    rungs: tuple[dict[str, Any], ...] = ()
    value: float | None = None
    pruned_at: int | None = None
    reason: str = ""
    duplicate_of: int | None = None
    seconds: float = 0.0
    finest_stride: int = 0

    @property
    def trained(self) -> bool:
        """Whether a short training ran (or its result was reused from an identical trial)."""
        return self.status in ("complete", "pruned")

    @property
    def outcome(self) -> str:
        if self.status == "pruned" and self.pruned_at is not None:
            step = self.rungs[self.pruned_at]["step"] if self.pruned_at < len(self.rungs) else "?"
            return f"pruned at rung {self.pruned_at + 1} (step {step})"
        if self.status == "rejected":
            return "rejected: over the latency budget"
        if self.status == "failed":
            return f"failed: {self.reason}" if self.reason else "failed"
        return self.status

    def metric(self, name: str) -> float | None:
        """``name`` (``ap``, ``ap_small``, ...) after the trial's last rung, ``None`` when it never trained."""
        if not self.rungs:
            return None
        v = self.rungs[-1].get(name)
        return None if v is None or v < 0 else float(v)

    def choice(self, label: str | None = None) -> NeckChoice:
        """The trial's neck as a :class:`~necklace.detection.compare.NeckChoice` (for ``compare``)."""

        return NeckChoice(self.neck, dict(self.options), label=label or "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "kind": self.kind,
            "label": self.label,
            "neck": self.neck,
            "options": self.options,
            "status": self.status,
            "outcome": self.outcome,
            "latency_ms": self.latency_ms,
            "latency": self.latency,
            "rungs": list(self.rungs),
            "value": self.value,
            "pruned_at": self.pruned_at,
            "reason": self.reason,
            "duplicate_of": self.duplicate_of,
            "seconds": self.seconds,
            "finest_stride": self.finest_stride,
        }


def _state_name(trial: Any) -> str:
    state = getattr(trial, "state", None)
    return str(getattr(state, "name", state)).lower()


def records_from_trials(trials: Iterable[Any]) -> list[TrialRecord]:
    """:class:`TrialRecord` of each stored trial (Optuna ``FrozenTrial`` objects, or anything with ``number``,
    ``state``, ``value``, ``user_attrs`` and ``duration``); trials the search did not start (``waiting``) are left
    out."""
    out = []
    for t in trials:
        state = _state_name(t)
        if state == "waiting":
            continue
        attrs: Mapping[str, Any] = getattr(t, "user_attrs", {}) or {}
        status = attrs.get("status") or {"complete": "complete", "pruned": "pruned", "fail": "failed"}.get(
            state, "running"
        )
        if state == "running":
            status = "running"
        latency = dict(attrs.get("latency") or {})
        rungs = tuple(dict(r) for r in attrs.get("rungs", ()))
        value = getattr(t, "value", None)
        if value is not None and (not isinstance(value, (int, float)) or math.isnan(value)):
            value = None
        duration = getattr(t, "duration", None)
        seconds = float(attrs.get("seconds", duration.total_seconds() if duration is not None else 0.0))
        options = attrs.get("options", {})
        if isinstance(options, str):
            options = json.loads(options)
        out.append(
            TrialRecord(
                number=int(t.number),
                kind=str(attrs.get("kind", "searched")),
                label=str(attrs.get("label", f"trial {t.number}")),
                neck=str(attrs.get("neck", "searched")),
                options=dict(options),
                status=status,
                latency_ms=latency.get("ms"),
                latency=latency,
                rungs=rungs,
                value=float(value) if value is not None else None,
                pruned_at=attrs.get("pruned_at"),
                reason=str(attrs.get("reason", "")),
                duplicate_of=attrs.get("duplicate_of"),
                seconds=seconds,
                finest_stride=int(attrs.get("finest_stride", 0)),
            )
        )
    return out
