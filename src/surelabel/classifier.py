"""The pipeline for items: method -> distribution -> calibration -> decision -> record."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from surelabel import methods
from surelabel.backends.base import Backend
from surelabel.backends.registry import BackendSpec, as_spec, build_backend
from surelabel.calibration.file import Calibration
from surelabel.distribution import LabelDistribution
from surelabel.errors import BackendError
from surelabel.policy import Decision, decide, least_certain
from surelabel.task import Task, Thresholds


@runtime_checkable
class Calibrator(Protocol):
    """Anything that maps a raw label distribution to a calibrated one.

    A :class:`~surelabel.calibration.Calibration` (a calibration file) is one, and more:
    it is checked against the task, model and method, and its conformal label sets go into
    single-label records as ``label_set``.
    """

    def calibrate(
        self, distribution: LabelDistribution, label: str | None = None
    ) -> LabelDistribution:
        """``label`` names the subtask: a multilabel task's label whose (true, false)
        distribution this is (single-label calibrators ignore it)."""
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
        A :class:`~surelabel.backends.registry.BackendSpec` (or its string form, e.g.
        ``"llamacpp"``), built on first use; or a ready
        :class:`~surelabel.backends.base.Backend`. A classifier pickles when its backend
        has a spec (every built-in backend made from plain options does): the backend is
        rebuilt, lazily, in the process that unpickles it.
    method:
        ``auto`` (best the backend allows), ``exact``, ``seed``, ...
    reason:
        Generate a reason; default: the task's ``reason`` setting.
    thresholds:
        Decision thresholds; default: the task's.
    calibrator:
        Optional fitted calibrator applied before the decision. A
        :class:`~surelabel.calibration.Calibration` is checked against the task (and, once
        the backend is built, its model and the confidence method): one fitted for another
        task, model or prompt is refused, as the CLI refuses it.
    options:
        :class:`~surelabel.methods.MethodOptions` (samples and temperature of ``sampling``).
    """

    def __init__(
        self,
        task: Task,
        backend: Backend | BackendSpec | str,
        *,
        method: str = "auto",
        reason: bool | None = None,
        thresholds: Thresholds | None = None,
        calibrator: Calibrator | None = None,
        options: methods.MethodOptions | None = None,
    ) -> None:
        self.task = task
        self.spec = as_spec(backend)
        self._backend: Backend | None = (
            None if isinstance(backend, (BackendSpec, str)) else backend
        )
        self._requested_method = method
        self._plan: methods.Plan | None = None
        self.reason = task.reason if reason is None else reason
        self.thresholds = thresholds or task.thresholds
        self.calibrator = calibrator
        self.options = options or methods.DEFAULT_OPTIONS
        self._lock = threading.Lock()
        if isinstance(calibrator, Calibration):
            calibrator.check(task, source=calibrator.source)
        if self._backend is not None:
            self._resolve(self._backend)

    # -- the backend, built on first use ------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The backend (built from the spec on first use)."""
        backend = self._backend
        if backend is None:
            with self._lock:
                if self._backend is None:
                    assert self.spec is not None
                    built = build_backend(self.spec)
                    self._resolve(built)
                    self._backend = built
                backend = self._backend
        return backend

    def _resolve(self, backend: Backend) -> None:
        self._plan = methods.plan(self._requested_method, backend.capabilities)
        if isinstance(self.calibrator, Calibration):
            source = self.calibrator.source
            self.calibrator.check(self.task, backend.model_name, source=source)
            self.calibrator.check_method(self._plan.method, source=source)

    @property
    def method(self) -> str:
        """The confidence method in use (``auto`` resolved against the backend)."""
        return self.plan.method

    @property
    def workers(self) -> int:
        """Items worth classifying at once (the backend's declared concurrency)."""
        return self.plan.workers

    @property
    def batch_size(self) -> int:
        """Items worth passing to :meth:`classify_batch` together (the backend's
        ``batch_items`` for the exact method)."""
        return self.plan.batch_size

    @property
    def plan(self) -> methods.Plan:
        """How the method runs on this backend (:func:`surelabel.methods.plan`)."""
        if self._plan is None:
            self.backend  # noqa: B018 - builds and resolves
        assert self._plan is not None
        return self._plan

    def __getstate__(self) -> dict[str, Any]:
        if self.spec is None:
            raise TypeError(
                "this Classifier cannot be pickled: its backend has no BackendSpec (it was "
                "built from live objects); pass a BackendSpec, e.g. "
                "Classifier(task, BackendSpec('llamacpp', {...}))"
            )
        state = dict(self.__dict__)
        state["_backend"] = None
            self.calibrator.check_scoring(self.options.scoring_key(self._plan.method),
                                          source=source)
        state["_plan"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the backend if this classifier built it."""
        if self._backend is not None and self.spec is not None:
            self._backend.close()

    # -- classification -----------------------------------------------------------------

    def _base(self, id: Any, text: Any) -> dict[str, Any]:
        return {"id": id, "text": text, "method": self.method, "model": self.backend.model_name}

    def run_method(self, text: str) -> methods.MethodResult:
        """The raw (uncalibrated) result of the confidence method for one text."""
        result = methods.run_batch(
            self.method, self.backend, self.task, [text], self.reason, self.options
        )[0]
        if isinstance(result, BackendError):
            raise result
        return result

    def _input_error(self, text: Any) -> str | None:
        if not isinstance(text, str):
            return f"text must be a string, got {type(text).__name__}"
        if not text.strip():
            return "empty text"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"text is not valid Unicode ({exc.reason})"
        return None

    def classify_one(self, text: Any, id: Any = None) -> Record:
        """Classify one text. Problems with the item become an error record, not an exception."""
        return self.classify_batch([(id, text)])[0]

    def classify_batch(self, items: Sequence[tuple[Any, Any]]) -> list[Record]:
        """Classify ``(id, text)`` pairs together, in order; bad items become error records.

        A local model scores the batch's texts together (several items per evaluation);
        :class:`~surelabel.errors.UserError` (a mistake in the setup, not in an item) is
        raised.
        """
        records: list[Record | None] = [None] * len(items)
        todo: list[int] = []
        for i, (id_, text) in enumerate(items):
            problem = self._input_error(text)
            if problem is not None:
                records[i] = Record(**self._base(id_, text), error=problem)
            else:
                todo.append(i)
        if todo:
            results = methods.run_batch(
                self.method, self.backend, self.task, [items[i][1] for i in todo],
                self.reason, self.options,
            )
            for i, result in zip(todo, results):
                id_, text = items[i]
                if isinstance(result, BackendError):
                    records[i] = Record(**self._base(id_, text),
                                        error=f"{type(result).__name__}: {result}")
                else:
                    records[i] = self.to_record(result, id=id_, text=text)
        return [r for r in records if r is not None]

    def to_record(self, result: methods.MethodResult, *, id: Any, text: str) -> Record:
        """Calibrate, decide and package a method result."""
        base = self._base(id, text)
        warning = "; ".join(result.warnings) or None
        extra = dict(result.info)
        raw = result.distributions
        if self.calibrator is not None:
            extra["calibrated"] = True
            dists = tuple(self.calibrator.calibrate(d, name)
                          for d, name in zip(raw, result.names))
        else:
            dists = raw
        decisions = [decide(d.confidence, self.thresholds) for d in dists]
        if self.task.kind == "multilabel":
            return self._multilabel_record(result, dists, decisions, base, warning, extra)
        dist = dists[0]
        if self.calibrator is not None:
            extra["raw_confidence"] = _round(raw[0].confidence)
        if isinstance(self.calibrator, Calibration):
            members = self.calibrator.label_set(dist)
            if members is not None:
                extra["label_set"] = members
        return Record(
            **base,
            label=dist.label,
            confidence=dist.confidence,
            probabilities=dist.as_dict(),
            label_mass=raw[0].label_mass,
            entropy=dist.entropy,
            margin=dist.margin,
            decision=decisions[0],
            reason=result.reason,
            warning=warning,
            extra=extra,
        )

    def _multilabel_record(
        self,
        result: methods.MethodResult,
        dists: Sequence[LabelDistribution],
        decisions: Sequence[Decision],
        base: dict[str, Any],
        warning: str | None,
        extra: dict[str, Any],
    ) -> Record:
        names = result.names
        probs = {name: d.as_dict()["true"] for name, d in zip(names, dists)}
        confidences = {name: d.confidence for name, d in zip(names, dists)}
        chosen = [name for name, p in probs.items() if p >= 0.5]
        least = min(confidences, key=lambda n: confidences[n])
        entropy = sum(
            -p * math.log(p) - (1 - p) * math.log(1 - p) for p in probs.values() if 0 < p < 1
        )
        masses = [d.label_mass for d in result.distributions if d.label_mass is not None]
        return Record(
            **base,
            label=None,
            confidence=confidences[least],
            probabilities=probs,
            label_mass=min(masses) if masses else None,
            entropy=entropy,
            margin=abs(2 * probs[least] - 1),
            decision=least_certain(decisions),
            reason=result.reason,
            warning=warning,
            labels=chosen,
            decisions=dict(zip(names, decisions)),
            extra=extra,
        )

    def classify(self, rows: Iterable[tuple[Any, Any]]) -> Iterator[Record]:
        """Classify ``(id, text)`` pairs in order."""
        for id_, text in rows:
            yield self.classify_one(text, id_)

