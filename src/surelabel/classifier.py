"""The pipeline for one item: method -> distribution -> calibration -> decision -> record."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from surelabel import methods
from surelabel.backends.base import Backend
from surelabel.distribution import LabelDistribution
from surelabel.errors import BackendError, UserError
from surelabel.policy import Decision, decide, least_certain
from surelabel.task import Task, Thresholds


class Calibrator(Protocol):
    """Anything that maps a raw label distribution to a calibrated one.

    A calibrator may also offer ``label_set(distribution) -> list[str] | None`` (a conformal
    prediction set of the calibrated distribution); single-label records then carry it as
    ``label_set``.
    """

    def calibrate(
        self, distribution: LabelDistribution, label: str | None = None
    ) -> LabelDistribution:
        """``label`` names the label of a multilabel task's (true, false) distribution."""
        ...


@dataclass(frozen=True)
class Record:
    """One output row. ``to_dict`` gives the JSON written by ``surelabel classify``."""

    id: Any
    text: Any
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    label_mass: float | None = None
    entropy: float | None = None
    margin: float | None = None
    decision: Decision | None = None
    reason: str | None = None
    method: str | None = None
    model: str | None = None
    error: str | None = None
    warning: str | None = None
    labels: list[str] | None = None
    decisions: dict[str, Decision] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "text": self.text,
            "label": self.label,
            "confidence": _round(self.confidence),
            "probabilities": (
                {k: _round(v) for k, v in self.probabilities.items()}
                if self.probabilities is not None
                else None
            ),
            "label_mass": _round(self.label_mass),
            "entropy": _round(self.entropy),
            "margin": _round(self.margin),
            "decision": self.decision,
            "reason": self.reason,
            "method": self.method,
            "model": self.model,
            "error": self.error,
        }
        if self.labels is not None:
            out["labels"] = self.labels
            out["decisions"] = self.decisions
        if self.warning is not None:
            out["warning"] = self.warning
        out.update(self.extra)
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


class Classifier:
    """Classify texts for a task with a backend.

    Parameters
    ----------
    task:
        The task.
    backend:
        Any :class:`~surelabel.backends.base.Backend`.
    method:
        ``auto`` (best the backend allows), ``exact``, ``seed``, ...
    reason:
        Generate a reason; default: the task's ``reason`` setting.
    thresholds:
        Decision thresholds; default: the task's.
    calibrator:
        Optional fitted calibrator applied before the decision.
    """

    def __init__(
        self,
        task: Task,
        backend: Backend,
        *,
        method: str = "auto",
        reason: bool | None = None,
        thresholds: Thresholds | None = None,
        calibrator: Calibrator | None = None,
    ) -> None:
        self.task = task
        self.backend = backend
        self.method = methods.resolve(method, backend.capabilities)
        self.reason = task.reason if reason is None else reason
        self.thresholds = thresholds or task.thresholds
        self.calibrator = calibrator

    def _base(self, id: Any, text: Any) -> dict[str, Any]:
        return {"id": id, "text": text, "method": self.method, "model": self.backend.model_name}

    def run_method(self, text: str) -> methods.MethodResult:
        """The raw (uncalibrated) result of the confidence method for one text."""
        return methods.METHODS[self.method](self.backend, self.task, text, self.reason)

    def classify_one(self, text: Any, id: Any = None) -> Record:
        """Classify one text. Problems with the item become an error record, not an exception."""
        base = self._base(id, text)
        if not isinstance(text, str):
            return Record(**base, error=f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            return Record(**base, error="empty text")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return Record(**base, error=f"text is not valid Unicode ({exc.reason})")
        try:
            result = self.run_method(text)
        except UserError:
            raise
        except BackendError as exc:
            return Record(**base, error=f"{type(exc).__name__}: {exc}")
        return self.to_record(result, id=id, text=text)

    def to_record(self, result: methods.MethodResult, *, id: Any, text: str) -> Record:
        """Calibrate, decide and package a method result."""
        base = self._base(id, text)
        warning = "; ".join(result.warnings) or None
        extra = dict(result.info)
        if self.calibrator is not None:
            extra["calibrated"] = True
        if result.per_label is not None:
            return self._multilabel_record(result, base, warning, extra)
        assert result.distribution is not None
        raw = result.distribution
        dist = self.calibrator.calibrate(raw) if self.calibrator is not None else raw
        if self.calibrator is not None:
            extra["raw_confidence"] = _round(raw.confidence)
            label_set = getattr(self.calibrator, "label_set", None)
            members = label_set(dist) if label_set is not None else None
            if members is not None:
                extra["label_set"] = members
        return Record(
            **base,
            label=dist.label,
            confidence=dist.confidence,
            probabilities=dist.as_dict(),
            label_mass=raw.label_mass,
            entropy=dist.entropy,
            margin=dist.margin,
            decision=decide(dist.confidence, self.thresholds),
            reason=result.reason,
            warning=warning,
            extra=extra,
        )

    def _multilabel_record(
        self,
        result: methods.MethodResult,
        base: dict[str, Any],
        warning: str | None,
        extra: dict[str, Any],
    ) -> Record:
        assert result.per_label is not None
        probs: dict[str, float] = {}
        decisions: dict[str, Decision] = {}
        confidences: dict[str, float] = {}
        for name, raw in result.per_label.items():
            dist = self.calibrator.calibrate(raw, name) if self.calibrator is not None else raw
            p_yes = dist.as_dict()["true"]
            probs[name] = p_yes
            confidences[name] = dist.confidence
            decisions[name] = decide(dist.confidence, self.thresholds)
        chosen = [name for name, p in probs.items() if p >= 0.5]
        least = min(confidences, key=lambda n: confidences[n])
        entropy = sum(
            -p * math.log(p) - (1 - p) * math.log(1 - p) for p in probs.values() if 0 < p < 1
        )
        masses = [d.label_mass for d in result.per_label.values() if d.label_mass is not None]
        return Record(
            **base,
            label=None,
            confidence=confidences[least],
            probabilities=probs,
            label_mass=min(masses) if masses else None,
            entropy=entropy,
            margin=abs(2 * probs[least] - 1),
            decision=least_certain(decisions.values()),
            reason=result.reason,
            warning=warning,
            labels=chosen,
            decisions=decisions,
            extra=extra,
        )

    def classify(self, rows: Iterable[tuple[Any, Any]]) -> Iterator[Record]:
        """Classify ``(id, text)`` pairs in order."""
        for id_, text in rows:
            yield self.classify_one(text, id_)
