"""Calibration files: a fitted calibrator plus routing settings, tied to task, model and prompt.

A calibration is only valid for the distributions it was fitted on, so the file records
the task fingerprint, the model name and a hash of the prompt format; :func:`load` refuses
a file made for another task, model or prompt with a message that says which differs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surelabel import prompt
from surelabel.calibration.registry import FittedCalibrator, calibrator_from_dict
from surelabel.distribution import LabelDistribution
from surelabel.errors import CalibrationError
from surelabel.methods import LEGACY_MULTILABEL_MODE, MULTILABEL_KEY, SHORTLIST_KEY
from surelabel.routing import RoutingResult, label_set
from surelabel.task import Task, Thresholds

FORMAT = "surelabel-calibration"
VERSION = 1


#: How files made before the scoring settings were recorded were scored. A setting added
#: later is read from here when a file lacks it: a multilabel file without
#: ``multilabel_mode`` was fitted on sequential scores.
LEGACY_SCORING: dict[str, Any] = {"prompt": "listed", "permutations": 1, "debias": False,
                                  MULTILABEL_KEY: LEGACY_MULTILABEL_MODE, SHORTLIST_KEY: 0}


def prompt_hash(task: Task, style: str = prompt.DEFAULT_PROMPT_STYLE) -> str:
    """A short hash of the prompt format: messages around a placeholder text and the answer
    prefix and continuations whose probabilities are measured."""
    payload = {
        "messages": [m.as_dict() for m in prompt.messages(task, "\x00TEXT\x00", style)],
        "prefix": prompt.answer_prefix(task),
        "continuations": prompt.continuations(task) if task.kind != "multilabel" else None,
    }
    data = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


@dataclass
class Calibration:
    """A fitted calibrator with the routing settings learned alongside it.

    Implements the classifier's ``calibrate(distribution, label=None)`` hook, so it can be
    passed as ``Classifier(..., calibrator=calibration)``.
    """

    calibrator: FittedCalibrator
    task_name: str
    task_fingerprint: str
    model: str
    prompt_hash: str
    kind: str
    labels: tuple[str, ...]
    n_fitted: int = 0
    confidence_method: str = "exact"
    #: How the distributions were scored (prompt style, label orders, debiasing):
    #: :meth:`surelabel.methods.MethodOptions.scoring_key`.
    scoring: dict[str, Any] = field(default_factory=lambda: dict(LEGACY_SCORING))
    #: What the labelled rows leave open (:mod:`surelabel.calibration.uncertainty`).
    uncertainty: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    routing: RoutingResult | None = None
    conformal: dict[str, Any] | None = None
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    #: Where it came from, for messages ("calibration file cal.json"); not saved.
    source: str = field(default="the calibration", compare=False)

    @property
    def method(self) -> str:
        return str(self.calibrator.method)

    def calibrate(
        self, distribution: LabelDistribution, label: str | None = None
    ) -> LabelDistribution:
        return self.calibrator.calibrate(distribution, label)

    @property
    def accept_threshold(self) -> float | None:
        """The guaranteed accept threshold, if routing was fitted (1.0: accept nothing)."""
        return None if self.routing is None else self.routing.accept_threshold

    @property
    def conformal_quantile(self) -> float | None:
        return None if self.conformal is None else float(self.conformal["quantile"])

    def label_set(self, distribution: LabelDistribution) -> list[str] | None:
        """The conformal prediction set of a calibrated distribution, if fitted."""
        q = self.conformal_quantile
        if q is None:
            return None
        return label_set(distribution.labels, distribution.probabilities, q)

    def thresholds(self, base: Thresholds, accept_given: bool = False) -> Thresholds:
        """Decision thresholds with the fitted accept threshold, unless one was given."""
        accept = self.accept_threshold
        if accept is None or accept_given:
            return base
        return Thresholds(accept=accept, clarify=min(base.clarify, accept))

    # -- persistence --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "task": {"name": self.task_name, "fingerprint": self.task_fingerprint,
                     "kind": self.kind, "labels": list(self.labels)},
            "model": self.model,
            "prompt_hash": self.prompt_hash,
            "n_fitted": self.n_fitted,
            "confidence_method": self.confidence_method,
            "scoring": self.scoring,
            "uncertainty": self.uncertainty,
            "calibrator": self.calibrator.to_dict(),
            "selection": self.selection,
            "routing": None if self.routing is None else self.routing.as_dict(),
            "conformal": self.conformal,
        }

    def save(self, path: str | Path) -> None:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=True)
        Path(path).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "calibration") -> Calibration:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CalibrationError(f"{source}: not a surelabel calibration file")
        version = data.get("version")
        if version != VERSION:
            raise CalibrationError(
                f"{source}: calibration file version {version!r} is not supported "
                f"(this surelabel reads version {VERSION}); refit with `surelabel calibrate`"
            )
        try:
            task = data["task"]
            routing = data.get("routing")
            return cls(
                calibrator=calibrator_from_dict(data["calibrator"]),
                task_name=str(task["name"]),
                task_fingerprint=str(task["fingerprint"]),
                model=str(data["model"]),
                prompt_hash=str(data["prompt_hash"]),
                kind=str(task["kind"]),
                labels=tuple(task["labels"]),
                n_fitted=int(data.get("n_fitted", 0)),
                confidence_method=str(data.get("confidence_method", "exact")),
                scoring=dict(data.get("scoring") or LEGACY_SCORING),
                uncertainty=data.get("uncertainty"),
                selection=data.get("selection"),
                routing=None if routing is None else RoutingResult.from_dict(routing),
                conformal=data.get("conformal"),
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{source}: malformed calibration file ({exc})") from exc

    def check_method(self, method: str, *, source: str = "calibration") -> None:
        """Refuse distributions from another confidence method than the one fitted on."""
        if method != self.confidence_method:
            raise CalibrationError(
                f"{source} was fitted on {self.confidence_method!r} distributions, but this run "
                f"uses --method {method}; their probabilities differ, so use --method "
                f"{self.confidence_method} or refit"
            )

    @property
    def id(self) -> str:
        """A short id of this calibration: a hash of its content."""
        data = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, default=str)
        return f"{self.method}-{hashlib.sha256(data.encode()).hexdigest()[:10]}"

    def check_scoring(self, scoring: dict[str, Any], *, source: str = "calibration") -> None:
        """Refuse distributions scored otherwise (another prompt style, number of label
        orders, debiasing on or off, multilabel mode)."""
        for key, value in scoring.items():
            mine = self.scoring.get(key, LEGACY_SCORING.get(key))
            if mine != value:
                raise CalibrationError(
                    f"{source} was fitted on distributions scored with {key} {mine!r}, but "
                    f"this run uses {key} {value!r}; their probabilities differ, so use the "
                    f"same setting (--{key.replace('_', '-')}) or refit"
                )

    def check(self, task: Task, model: str | None = None, *, source: str = "calibration") -> None:
        """Refuse to apply this calibration to another task, model or prompt."""
        if task.fingerprint() != self.task_fingerprint:
            what = (f"task {self.task_name!r}" if task.name != self.task_name
                    else f"a different version of task {task.name!r} (labels, instructions or "
                         "examples changed)")
            raise CalibrationError(
                f"{source} was made for {what}, not for this task file; "
                "refit it with `surelabel calibrate`"
            )
        if model is not None and model != self.model:
            raise CalibrationError(
                f"{source} was made for model {self.model!r}, not {model!r}; "
                "probabilities differ between models, so refit it with `surelabel calibrate`"
            )
        if prompt_hash(task, str(self.scoring.get("prompt", "listed"))) != self.prompt_hash:
            raise CalibrationError(
                f"{source} was made with a different prompt format (another surelabel "
                "version?); refit it with `surelabel calibrate`"
            )


def load(path: str | Path, task: Task | None = None, model: str | None = None) -> Calibration:
    """Read a calibration file; with ``task`` (and ``model``) also check it fits them."""
    p = Path(path)
    source = f"calibration file {p}"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CalibrationError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{source}: not valid JSON ({exc.msg})") from exc
    calibration = Calibration.from_dict(data, source=source)
    calibration.source = source
    if task is not None:
        calibration.check(task, model, source=source)
    return calibration
