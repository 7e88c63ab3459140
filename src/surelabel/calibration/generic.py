"""A task-independent calibration for one model: honest confidences before any labelling.

A task calibration (``surelabel calibrate``) needs labelled rows of the task. Until a user
has them, :class:`GenericCalibration` maps what a label distribution looks like to the
probability that its top answer is right, learnt **across tasks** for one model: the top
probability, the margin to the runner-up, the entropy, the label mass, the number of
answers, and whether it is a multilabel yes/no. Fitted on the labelled shared sets
(``bench/bench_generic.py``, which also measures how it transfers to a task it was not
fitted on, leaving each set out in turn), and shipped in the package for the embedded model
(:func:`load_generic`); ``classify`` uses it when a task has no calibration of its own.

There are two maps, one for the answers of single-label tasks (binary and multiclass) and
one for the per-label yes/no answers of multilabel tasks: a model's yes/no answers behave
unlike its choices among labels (on the shared sets the embedded model says yes to about
half of all labels), so one map for both transferred badly. The yes/no map is strongly
regularized, as only a couple of multilabel tasks inform it.

Each map also has an accept **gate**: a confidence above the default accept threshold
(0.9) is kept only where, on every set it was fitted on, answers that confident were at
least 90 % right (with two pseudo-failures added per set); below the gate it is capped at
0.9, so the item goes to review. Leaving a task out, that kept every accepted answer right
on the shared sets, at the cost of accepting little.

Only the top answer's probability is replaced; the others keep their ratios, and the top
answer stays on top.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.resources
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surelabel._numeric import FloatArray
from surelabel.calibration._optim import newton
from surelabel.distribution import LabelDistribution
from surelabel.errors import CalibrationError
from surelabel.methods import LEGACY_MULTILABEL_MODE, MULTILABEL_KEY, SHORTLIST_KEY
from surelabel.task import YES_NO

FORMAT = "surelabel-generic-calibration"
VERSION = 2
#: Names of the features, in the order of :func:`features`.
FEATURES: tuple[str, ...] = (
    "logit_top", "margin", "entropy_ratio", "log_answers", "log_label_mass",
)
#: The two maps: answers among a task's labels, and multilabel yes/no answers.
KINDS: tuple[str, ...] = ("labels", "yes_no")
#: Default L2 penalties of the two maps (on standardized features). The yes/no map's is
#: strong: the shared data has two multilabel tasks, so leaving one out leaves one to learn
#: from, and a weak penalty fitted that one task's quirks (bench/bench_generic.py).
L2 = {"labels": 1e-2, "yes_no": 10.0}
#: The default accept threshold. A map's confidence above it is kept only past the map's
#: ``gate`` (see :func:`accept_gate`); below the gate it is capped here, so it routes to
#: review.
ACCEPT_CAP = 0.9
#: The accuracy the gate holds the answers above it to, on every set it was fitted on.
GATE_ACCURACY = 0.9
#: Pseudo-failures added to each set's count above a candidate gate: a gate that only a
#: handful of right answers pass is not trusted.
GATE_PSEUDO_ERRORS = 2
_EPS = 1e-6


def _logit(p: FloatArray) -> FloatArray:
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.asarray(np.log(q / (1 - q)), dtype=np.float64)


def features(probs: FloatArray, label_mass: FloatArray) -> FloatArray:
    """The features of ``(n, K)`` distributions (their label masses ``(n,)``)."""
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1]
    srt = np.sort(p, axis=1)
    top, second = srt[:, -1], srt[:, -2]
    entropy = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0), axis=1)
    mass = np.clip(np.asarray(label_mass, dtype=np.float64), 1e-12, 1.0)
    return np.stack([
        _logit(top),
        top - second,
        entropy / math.log(k),
        np.full(len(p), math.log(k)),
        np.log(mass),
    ], axis=1)


def _sigmoid(z: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1 + np.tanh(z / 2)), dtype=np.float64)


def fit_logistic(
    x: FloatArray, correct: NDArray[np.bool_], weights: FloatArray, l2: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Weighted, L2-penalized logistic regression of ``correct`` on standardized ``x``.

    Returns (coefficients, intercept-included, feature means, feature scales)."""
    mean = np.average(x, axis=0, weights=weights)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=weights))
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], axis=1)
    t = np.asarray(correct, dtype=np.float64)
    w = weights / weights.sum()
    pen = np.full(z.shape[1], l2)
    pen[-1] = 0.0

    def loss(beta: FloatArray) -> float:
        s = z @ beta
        return float(np.sum(w * (np.logaddexp(0.0, s) - t * s)) + 0.5 * pen @ beta**2)

    def grad_hess(beta: FloatArray) -> tuple[FloatArray, FloatArray]:
        p = _sigmoid(z @ beta)
        grad = z.T @ (w * (p - t)) + pen * beta
        hess = z.T @ (z * (w * p * (1 - p))[:, None]) + np.diag(pen) + 1e-9 * np.eye(len(beta))
        return grad, hess

    prior = float(np.clip(np.sum(w * t), 1e-3, 1 - 1e-3))
    beta0 = np.zeros(z.shape[1])
    beta0[-1] = math.log(prior / (1 - prior))
    beta = newton(loss, grad_hess, beta0, 100)
    return beta, mean, scale


@dataclasses.dataclass(frozen=True)
class LogisticMap:
    """A logistic map on standardized :data:`FEATURES` (``coef`` ends with the intercept)."""

    coef: list[float]
    mean: list[float]
    scale: list[float]
    gate: float = 1.0

    def __call__(self, x: FloatArray) -> FloatArray:
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        coef = np.asarray(self.coef)
        return self.capped(_sigmoid(z @ coef[:-1] + coef[-1]))

    def capped(self, conf: FloatArray) -> FloatArray:
        """Confidences above :data:`ACCEPT_CAP` kept only past the gate."""
        return np.asarray(np.where(conf > self.gate, conf, np.minimum(conf, ACCEPT_CAP)),
                          dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"coef": self.coef, "mean": self.mean, "scale": self.scale, "gate": self.gate}

    @classmethod
    def from_dict(cls, data: Any) -> LogisticMap:
        out = cls(coef=[float(v) for v in data["coef"]], mean=[float(v) for v in data["mean"]],
                  scale=[float(v) for v in data["scale"]], gate=float(data["gate"]))
        if not len(out.coef) == len(out.mean) + 1 == len(out.scale) + 1 == len(FEATURES) + 1:
            raise ValueError("coef, mean and scale do not match the features")
        return out


@dataclasses.dataclass
class GenericCalibration:
    """A cross-task confidence model for one model (see the module docstring).

    Implements the classifier's ``calibrate(distribution, label=None)`` hook.

    Attributes
    ----------
    model:
        The model it was fitted for (a generic calibration of another model is not used).
    scoring:
        How the distributions were scored (prompt style, label orders, debiasing).
    maps:
        The :class:`LogisticMap` of each kind of answer (:data:`KINDS`) it was fitted on;
        an answer of a kind without a map keeps its raw probability.
    fitted_on:
        The sets it was fitted on, with their answer counts.
    transfer:
        Leave-one-task-out figures measured when it was built (for the record).
    """

    model: str
    scoring: dict[str, Any]
    maps: dict[str, LogisticMap]
    fitted_on: dict[str, int] = dataclasses.field(default_factory=dict)
    transfer: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    source: str = dataclasses.field(default="the generic calibration", compare=False)
    #: Whether it serves a multilabel task (its answers are yes/no), once bound to a task
    #: with :meth:`for_task`; unbound, a distribution over ``true``/``false`` counts as one.
    multilabel: bool | None = dataclasses.field(default=None, compare=False)

    kind = "generic"

    def for_task(self, task: Any) -> GenericCalibration:
        """This map for ``task``: a binary yes/no question is a choice between two labels,
        a multilabel task's answers are yes/no answers."""
        return dataclasses.replace(self, multilabel=task.kind == "multilabel")

    @property
    def method(self) -> str:
        return "generic"

    @property
    def id(self) -> str:
        data = json.dumps({"maps": {k: m.to_dict() for k, m in self.maps.items()},
                           "model": self.model, "scoring": self.scoring}, sort_keys=True)
        return f"generic-{hashlib.sha256(data.encode()).hexdigest()[:10]}"

    def confidence(self, probs: FloatArray, label_mass: FloatArray, yes_no: bool) -> FloatArray:
        """P(top answer right) for ``(n, K)`` distributions (``yes_no``: multilabel yes/no
        answers)."""
        p = np.asarray(probs, dtype=np.float64)
        fitted = self.maps.get("yes_no" if yes_no else "labels")
        if fitted is None:
            return np.asarray(p.max(axis=1), dtype=np.float64)
        return fitted(features(p, label_mass))

    def predict_proba(self, probs: FloatArray, label_mass: FloatArray, yes_no: bool) -> FloatArray:
        """Calibrated ``(n, K)`` distributions: the top answer's probability replaced by its
        :meth:`confidence`, the others scaled to share the rest in their old ratios."""
        p = np.asarray(probs, dtype=np.float64)
        rows = np.arange(len(p))
        top = p.argmax(axis=1)
        p1 = p[rows, top]
        p2 = np.sort(p, axis=1)[:, -2]
        # The lowest confidence that keeps the top answer on top after rescaling.
        floor = p2 / np.maximum(1 - p1 + p2, 1e-12)
        conf = np.maximum(self.confidence(p, label_mass, yes_no), np.minimum(floor + 1e-9, 1.0))
        out = p * ((1 - conf) / np.maximum(1 - p1, 1e-12))[:, None]
        out[rows, top] = conf
        return np.asarray(out, dtype=np.float64)

    def calibrate(
        self, distribution: LabelDistribution, label: str | None = None
    ) -> LabelDistribution:
        del label
        p = np.asarray(distribution.probabilities, dtype=np.float64)[None, :]
        mass = np.array([distribution.label_mass if distribution.label_mass else 1.0])
        yes_no = (distribution.labels == YES_NO) if self.multilabel is None else self.multilabel
        out = self.predict_proba(p, mass, yes_no)[0]
        return distribution.with_probabilities(out.tolist())

    def missing_map(self, task: Any) -> str | None:
        """Why it has nothing for ``task``'s kind of answers (no map of that kind was
        shipped: one that did worse on left-out sets than none is not), or ``None``."""
        kind = "yes_no" if task.kind == "multilabel" else "labels"
        if kind in self.maps:
            return None
        what = "multilabel yes/no answers" if kind == "yes_no" else "single-label answers"
        return f"it has no map for {what}"

    def check(self, model: str, scoring: dict[str, Any]) -> str | None:
        """Why it does not apply to this run (another model or scoring), or ``None``."""
        if model != self.model:
            return f"it was fitted for model {self.model!r}, not {model!r}"
        for key, value in self.scoring.items():
            if key == MULTILABEL_KEY and key not in scoring:
                continue  # the run is not a multilabel task scored exactly: no such setting
            if key == SHORTLIST_KEY:
                # A shortlist leaves the scored labels exact and gives the cut ones an
                # estimate that errs high, so the top confidence is at most a little
                # above exact's, mostly below (docs/BENCHMARKS.md, "Many labels"): the
                # task-independent map applies with or without one.
                continue
            if scoring.get(key) != value:
                return f"it was fitted on {key} {value!r}, this run uses {scoring.get(key)!r}"
        # A map from before the multilabel mode was recorded was fitted on sequential scores.
        mode = scoring.get(MULTILABEL_KEY)
        if MULTILABEL_KEY not in self.scoring and mode not in (None, LEGACY_MULTILABEL_MODE):
            return (f"it was fitted on {MULTILABEL_KEY} {LEGACY_MULTILABEL_MODE!r}, this run "
                    f"uses {mode!r}")
        return None

    # -- persistence --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "created": self.created,
                "model": self.model, "scoring": self.scoring, "features": list(FEATURES),
                "maps": {k: m.to_dict() for k, m in self.maps.items()},
                "fitted_on": self.fitted_on, "transfer": self.transfer}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "generic calibration") -> GenericCalibration:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CalibrationError(f"{source}: not a surelabel generic calibration file")
        if data.get("version") != VERSION or data.get("features") != list(FEATURES):
            raise CalibrationError(f"{source}: made by another surelabel version; refit it "
                                   "with bench/bench_generic.py")
        try:
            maps = {str(k): LogisticMap.from_dict(m) for k, m in dict(data["maps"]).items()}
            if not maps or set(maps) - set(KINDS):
                raise ValueError(f"maps: expected some of {', '.join(KINDS)}")
            return cls(model=str(data["model"]), scoring=dict(data["scoring"]), maps=maps,
                       fitted_on=dict(data.get("fitted_on") or {}),
                       transfer=dict(data.get("transfer") or {}),
                       created=str(data.get("created", "")), source=source)
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{source}: malformed ({exc})") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")


def accept_gate(confidences: Sequence[tuple[FloatArray, NDArray[np.bool_]]]) -> float:
    """The lowest confidence ``t`` >= :data:`ACCEPT_CAP` such that, on every set, the
    answers with confidence above ``t`` were right at least :data:`GATE_ACCURACY` of the
    time, counting :data:`GATE_PSEUDO_ERRORS` more wrong ones; 1.0 when none qualifies.

    ``confidences``: per set, the map's confidences and whether each answer was right."""
    candidates = np.unique(np.concatenate(
        [np.asarray([ACCEPT_CAP])] + [np.asarray(c)[np.asarray(c) >= ACCEPT_CAP]
                                      for c, _ in confidences]))
    for t in candidates:
        if all(int(np.sum(ok[c > t])) >= GATE_ACCURACY * (int(np.sum(c > t)) + GATE_PSEUDO_ERRORS)
               or not np.any(c > t) for c, ok in confidences):
            return float(t)
    return 1.0


def fit_generic(
    model: str,
    scoring: dict[str, Any],
    sets: Sequence[tuple[str, FloatArray, FloatArray, NDArray[np.bool_], bool]],
    *,
    l2: float | None = None,
    l2_yes_no: float | None = None,
) -> GenericCalibration:
    """Fit the cross-task maps on labelled answers of several tasks.

    ``sets``: (name, ``(n, K)`` distributions, ``(n,)`` label masses, ``(n,)`` whether the
    top answer was right, whether these are multilabel yes/no answers). The single-label
    sets fit the ``labels`` map, the yes/no sets the ``yes_no`` map (L2 penalties ``l2``
    and ``l2_yes_no``, default :data:`L2`). Every set weighs the same in its map's fit,
    however many answers it has, so no task dominates.
    """
    penalty = {"labels": L2["labels"] if l2 is None else l2,
               "yes_no": L2["yes_no"] if l2_yes_no is None else l2_yes_no}
    maps = {}
    for kind in KINDS:
        xs: list[FloatArray] = []
        ts: list[NDArray[np.bool_]] = []
        ws: list[FloatArray] = []
        for _, probs, mass, correct, yes_no in sets:
            if yes_no != (kind == "yes_no"):
                continue
            xs.append(features(probs, mass))
            ts.append(np.asarray(correct, dtype=bool))
            ws.append(np.full(len(probs), 1.0 / max(1, len(probs))))
        if not xs:
            continue
        beta, mean, scale = fit_logistic(np.concatenate(xs), np.concatenate(ts),
                                         np.concatenate(ws), penalty[kind])
        ungated = LogisticMap(beta.tolist(), mean.tolist(), scale.tolist(), gate=0.0)
        gate = accept_gate([(ungated(x), t) for x, t in zip(xs, ts)])
        maps[kind] = dataclasses.replace(ungated, gate=gate)
    if not maps:
        raise CalibrationError("fit_generic: no labelled answers to fit on")
    return GenericCalibration(model=model, scoring=dict(scoring), maps=maps,
                              fitted_on={name: len(p) for name, p, *_ in sets})


def _file_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model) + ".json"


def load_generic(model: str) -> GenericCalibration | None:
    """The generic calibration shipped for ``model``, if there is one."""
    try:
        root = importlib.resources.files("surelabel.calibration") / "generic"
        resource = root / _file_name(model)
        if not resource.is_file():
            return None
        data = json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return GenericCalibration.from_dict(data, source=f"the generic calibration of {model}")


def shipped_path(model: str) -> Path:
    """Where the generic calibration of ``model`` is kept in this source tree."""
    return Path(__file__).parent / "generic" / _file_name(model)
