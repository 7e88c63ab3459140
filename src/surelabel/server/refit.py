"""The review loop that calibrates itself.

Each task's reviews of its **audit sample** (a random share of all items, accepted ones
too, so their accuracy is an unbiased estimate at every confidence level) are the labelled
rows of a refit: after ``refit_every`` newly settled items the manager fits a calibration
with the same code as ``surelabel calibrate`` (:func:`surelabel.calibration.fit_calibration`,
cross-validated, with the guaranteed-error accept threshold when the task sets a
``target_error``), stores it as a new version and makes it active. Uncertainty-ordered
reviews alone would bias the fit, so they are not used.

New items are classified by the classifier of the *active* version, read from the store
before each batch, so a rollback by another process (``surelabel calibrations rollback``)
takes effect at once. Each version gets its own :class:`~surelabel.classifier.Classifier`
(built once): a batch uses one classifier from start to end, so a switch in the middle of
concurrent requests never mixes one version's calibrator with another's thresholds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from surelabel._numeric import softmax
from surelabel.backends.base import Backend
from surelabel.calibration import Calibration, fit_calibration
from surelabel.calibration.fit import MIN_ROWS, calibration_view
from surelabel.classifier import Calibrator, Classifier
from surelabel.errors import CalibrationError
from surelabel.methods import MethodOptions
from surelabel.metrics import calibration_error
from surelabel.server.review_settings import ReviewSettings
from surelabel.store import Store
from surelabel.subtasks import label_indices, subtask_array, task_array, task_probabilities

log = logging.getLogger("surelabel.server")


@dataclass(frozen=True)
class RefitResult:
    version: int
    n: int
    heldout_ece: float
    raw_ece: float
    method: str
    accept_threshold: float | None
    message: str


class CalibrationManager:
    """The active calibration of every task, and refits from the audit sample."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        base: Mapping[str, Classifier],
        review: Mapping[str, ReviewSettings],
        *,
        method: str,
        reason: bool | None,
        options: MethodOptions | None,
        static: Mapping[str, tuple[Calibrator, str]] | None = None,
        on_refit: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.base = base
        self.review = review
        self._method, self._reason, self._options = method, reason, options
        self._static = dict(static or {})
        self._built: dict[tuple[str, int], Classifier] = {}
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._attempted: dict[str, float] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._on_refit = on_refit
        #: Per task, why the active version could not be applied (shown by /health).
        self.problems: dict[str, str] = {}

    # -- the active version -------------------------------------------------------------

    def classifier(self, task: str) -> tuple[Classifier, str | int | None]:
        """The classifier for new items of ``task`` and the version it applies."""
        if task in self._static:
            calibrator, name = self._static[task]
            return self._static_classifier(task, calibrator), name
        version = self.store.active_calibration_id(task)
        if version is None:
            self.problems.pop(task, None)
            return self.base[task], None
        key = (task, version)
        built = self._built.get(key)
        if built is None:
            with self._lock:
                built = self._built.get(key)
                if built is None:
                    try:
                        built = self._build(task, version)
                    except CalibrationError as exc:
                        self.problems[task] = str(exc)
                        log.error("task %s: cannot apply calibration version %s: %s",
                                  task, version, exc)
                        return self.base[task], None
                    self._built[key] = built
        self.problems.pop(task, None)
        return built, version

    def _build(self, task: str, version: int) -> Classifier:
        stored = self.store.get_calibration(task, version)
        calibration = Calibration.from_dict(
            stored.data, source=f"calibration version {version} of task {task!r}")
        return self._with(task, calibration)

    def _with(self, task: str, calibrator: Calibrator) -> Classifier:
        base = self.base[task]
        thresholds = (calibrator.thresholds(base.task.thresholds)
                      if isinstance(calibrator, Calibration) else base.task.thresholds)
        classifier = Classifier(base.task, self.backend, thresholds=thresholds,
                                calibrator=calibrator, method=self._method,
                                reason=self._reason, options=self._options)
        if isinstance(calibrator, Calibration):
            calibrator.check_method(classifier.method, source=calibrator.source)
        return classifier

    def _static_classifier(self, task: str, calibrator: Calibrator) -> Classifier:
        key = (task, -1)
        if key not in self._built:
            self._built[key] = self._with(task, calibrator)
        return self._built[key]

    # -- refits -------------------------------------------------------------------------

    def note_settled(self, task: str) -> None:
        """Called after an answer settled an item: start a refit in the background when
        ``refit_every`` items were settled since the last version (or the last try)."""
        settings = self.review[task]
        if settings.refit_every <= 0 or task in self._static or task in self._running:
            return
        since = self._attempted.get(task)
        if since is None:
            versions = self.store.list_calibrations(task)
            since = versions[-1].created_at if versions else 0.0
            self._attempted[task] = since
        if self.store.settled_since(task, since) < settings.refit_every:
            return
        with self._lock:
            if task in self._running:
                return
            self._running.add(task)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="surelabel-refit")
        self._executor.submit(self._background, task)

    def _background(self, task: str) -> None:
        try:
            result = self.refit(task, actor="refit every "
                                f"{self.review[task].refit_every} reviews")
            log.info("task %s: %s", task, result.message)
        except CalibrationError as exc:
            log.warning("task %s: refit skipped: %s", task, exc)
        except Exception:
            log.exception("task %s: refit failed", task)
            self._count(task, "failed")
        finally:
            with self._lock:
                self._running.discard(task)

    def _count(self, task: str, outcome: str) -> None:
        if self._on_refit is not None:
            self._on_refit(task, outcome)

    def refit(self, task: str, *, actor: str, activate: bool = True) -> RefitResult:
        """Fit a calibration from the task's reviewed audit sample now, store it as a new
        version and (by default) activate it. Raises
        :class:`~surelabel.errors.CalibrationError` when the sample is too small."""
        base = self.base[task]
        settings = self.review[task]
        self._attempted[task] = self.store.clock()
        rows = self.store.audit_rows(task, model=self.backend.model_name, method=base.method)
        if len(rows) < MIN_ROWS:
            self._count(task, "skipped")
            raise CalibrationError(
                f"{len(rows)} reviewed audit-sample items (a refit needs {MIN_ROWS})")
        the_task = base.task
        x = task_array(the_task, np.asarray([r.logprobs for r in rows], dtype=np.float64))
        y = label_indices(the_task, [r.label for r in rows])
        try:
            calibration, oof = fit_calibration(
                the_task, self.backend.model_name, x, y, method=settings.refit_method,
                folds=settings.folds, target_error=settings.target_error,
                delta=settings.delta, confidence_method=base.method)
        except (ValueError, FloatingPointError) as exc:
            self._count(task, "failed")
            raise CalibrationError(f"the refit failed: {exc}") from exc
        heldout = calibration_error(*calibration_view(the_task, oof, y))
        raw_probs = task_probabilities(
            the_task, softmax(np.maximum(subtask_array(the_task, x), -1e4), axis=2))
        raw = calibration_error(*calibration_view(the_task, raw_probs, y))
        routing = calibration.routing
        reason = (calibration.selection or {}).get("reason", "")
        version, _ = self.store.add_calibration(
            task, calibration.to_dict(), source="refit", actor=actor, activate=activate,
            method=calibration.method, n_fitted=len(rows), fit_on="audit sample",
            heldout_ece=_finite(heldout), raw_ece=_finite(raw),
            accept_threshold=None if routing is None else routing.accept_threshold,
            target_error=settings.target_error,
            error_bound=None if routing is None else routing.error_upper_bound,
            reviews_seen=self.store.settled_since(task, 0.0),
            note=reason + ("" if routing is None else f"; {routing.message}"),
        )
        self._count(task, "stored")
        message = (f"calibration version {version}: {calibration.method} fitted on {len(rows)} "
                   f"reviewed audit-sample items, held-out ECE {heldout:.3f} "
                   f"(uncalibrated {raw:.3f})")
        return RefitResult(version, len(rows), heldout, raw, calibration.method,
                           None if routing is None else routing.accept_threshold, message)

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _finite(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


__all__: Any = ["CalibrationManager", "RefitResult"]
