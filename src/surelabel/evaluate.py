"""Evaluation as a library: score labelled rows, then compare confidence methods on them.

The same code serves ``surelabel evaluate`` and ``surelabel calibrate``, the scikit-learn
estimator and the benchmarks:

1. :func:`read_labelled` reads rows with their true labels;
2. :func:`score_labelled` runs the model once per row: the full label distribution (the
   best method the backend allows, exact for a local model) and optionally the ``seed``
   method, plus content-free inputs for contextual calibration; or
   :func:`from_predictions` reads a ``surelabel classify`` output instead;
3. :func:`compare` computes every metric of each method side by side
   (:func:`surelabel.report.evaluate_probabilities`), including a calibrated column
   (a calibration file, else cross-fitted).

Arrays are in subtask shape (:mod:`surelabel.subtasks`): ``(n, S, K)``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surelabel import methods
from surelabel._numeric import safe_log, softmax
from surelabel.backends.base import Backend
from surelabel.calibration import CONTENT_FREE, Calibration, fit_calibration
from surelabel.calibration.base import distribution_logprobs
from surelabel.calibration.fit import MIN_ROWS
from surelabel.calibration.generic import load_generic
from surelabel.errors import BackendError, InputError
from surelabel.io import Row, read_rows
from surelabel.report import build_report, evaluate_probabilities
from surelabel.subtasks import (
    from_task_probabilities,
    label_indices,
    task_array,
    task_probabilities,
)
from surelabel.task import Task

FloatArray = NDArray[np.float64]

#: ``seed`` generates a whole answer per row: by default it is compared on up to this many.
SEED_DEFAULT_MAX_ROWS = 200
#: The columns :func:`compare` can show. ``exact`` stands for the full label distribution,
#: measured by the best method the backend allows (topk or sampling for an API); the column
#: is named after that method.
#: ``generic`` is the task-independent calibration shipped for the model (shown when one
#: applies to this model and scoring).
METHOD_NAMES = ("exact", "generic", "seed", "calibrated")


def read_labelled(
    path: str,
    task: Task,
    *,
    text_field: str = "text",
    label_field: str = "label",
    max_rows: int | None = None,
) -> tuple[list[Row], NDArray[Any]]:
    """Rows with their true labels (task-shaped targets, see :func:`label_indices`)."""
    rows = read_rows(path, text_field=text_field)
    if max_rows is not None:
        rows = rows[:max_rows]
    missing = [r for r in rows if label_field not in r.extra]
    if missing:
        raise InputError(f"{path}:{missing[0].line}: no {label_field!r} field "
                         "(choose one with --label-field)")
    if not rows:
        raise InputError(f"{path}: no rows")
    values = [r.extra[label_field] for r in rows]
    if task.kind == "multilabel":
        values = [json.loads(v) if isinstance(v, str) and v.startswith("[") else v
                  for v in values]
    try:
        y = label_indices(task, values)
    except Exception as exc:
        raise InputError(f"{path}: {exc}") from exc
    return rows, y


def result_logprobs(result: methods.MethodResult) -> FloatArray:
    """A method result as an ``(S, K)`` array of label log-probabilities."""
    return np.stack([distribution_logprobs(d) for d in result.distributions])


def text_logprobs(
    backend: Backend, task: Task, text: str, method: str = "exact"
) -> FloatArray:
    """Raw label log-probabilities of one text, task-shaped: ``(k,)``, or ``(L, 2)`` for a
    multilabel task. ``method`` is a full-distribution method (exact, topk, sampling)."""
    result = methods.METHODS[method](backend, task, text, False)
    x = result_logprobs(result)
    return x[0] if len(task.subtasks) == 1 else x


@dataclass
class Scored:
    """Model outputs for labelled rows, aligned with ``rows``.

    ``logprobs`` holds the full distribution's raw label log-probabilities ``(n, S, K)``,
    measured by ``method``; ``extra`` other methods' probabilities (``seed``), same shape.
    """

    rows: list[Row]
    y: NDArray[Any]
    logprobs: FloatArray
    method: str
    content_free: FloatArray | None = None
    extra: dict[str, FloatArray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: How ``logprobs`` were scored (:meth:`surelabel.methods.MethodOptions.scoring_key`).
    scoring: dict[str, Any] = field(default_factory=dict)
    #: For predictions read from a ``classify`` output: the model and method that made
    #: them, and whether they were calibrated already.
    model: str | None = None
    source_method: str | None = None
    calibrated: bool = False

    def task_logprobs(self, task: Task) -> FloatArray:
        """``logprobs`` in the task's shape, as :func:`fit_calibration` takes them."""
        return task_array(task, self.logprobs)

    def task_content_free(self, task: Task) -> FloatArray | None:
        return None if self.content_free is None else task_array(task, self.content_free)


def score_labelled(
    backend: Backend,
    task: Task,
    rows: Sequence[Row],
    y: NDArray[Any],
    *,
    with_seed: bool = False,
    quiet: bool = True,
    options: methods.MethodOptions | None = None,
    batch_size: int = 8,
) -> Scored:
    """Run the full-distribution method (and optionally ``seed``) on every row.

    A row that a method fails on is left out of every method, so all are compared on the
    same rows; a method that fails on *every* row is dropped with a note naming it (the
    others keep their results). Raises :class:`~surelabel.errors.InputError` when no row
    could be scored at all.
    """
    from tqdm import tqdm

    full = methods.full_distribution_method(backend.capabilities)
    texts = [r.text if isinstance(r.text, str) else str(r.text) for r in rows]
    n = len(texts)
    raw: list[FloatArray | None] = [None] * n
    seed: list[FloatArray | None] = [None] * n
    errors: dict[str, list[str]] = {full: [], "seed": []}
    bar = tqdm(total=n, file=sys.stderr, disable=quiet, delay=2.0, unit="item",
               dynamic_ncols=True)
    try:
        for start in range(0, n, batch_size):
            chunk = [i for i in range(start, min(n, start + batch_size)) if texts[i].strip()]
            for i in range(start, min(n, start + batch_size)):
                if not texts[i].strip():
                    errors[full].append("empty text")
            results = methods.run_batch(full, backend, task, [texts[i] for i in chunk],
                                        False, options)
            for i, res in zip(chunk, results):
                if isinstance(res, BackendError):
                    errors[full].append(f"{type(res).__name__}: {res}")
                else:
                    raw[i] = result_logprobs(res)
            if with_seed:
                for i in chunk:
                    try:
                        res = methods.seed(backend, task, texts[i], False, options)
                    except BackendError as exc:
                        errors["seed"].append(f"{type(exc).__name__}: {exc}")
                        continue
                    seed[i] = np.stack([np.asarray(d.probabilities, dtype=np.float64)
                                        for d in res.distributions])
            bar.update(min(n, start + batch_size) - start)
    finally:
        bar.close()
    notes: list[str] = []
    keep_raw = [i for i in range(n) if raw[i] is not None]
    if not keep_raw:
        why = errors[full][0] if errors[full] else "no rows"
        raise InputError(f"no row could be scored by the {full} method (first error: {why})")
    seed_ok = with_seed and any(seed[i] is not None for i in keep_raw)
    if with_seed and not seed_ok:
        first = errors["seed"][0] if errors["seed"] else "?"
        notes.append(f"seed method dropped: it failed on every row (first error: {first}); "
                     "the other methods are compared without it")
    keep = [i for i in keep_raw if not seed_ok or seed[i] is not None]
    for name, count in ((full, n - len(keep_raw)), ("seed", len(keep_raw) - len(keep))):
        if count:
            notes.append(f"{count} rows dropped: the {name} method failed on them "
                         "(every method is compared on the same rows)")
    cf = np.stack([result_logprobs(methods.METHODS[full](backend, task, t, False, options))
                   for t in CONTENT_FREE])
    scored = Scored(rows=[rows[i] for i in keep], y=y[keep],
                    logprobs=np.stack([raw[i] for i in keep]),  # type: ignore[misc]
                    method=full, content_free=cf, notes=notes,
                    scoring=(options or methods.DEFAULT_OPTIONS).scoring_key(full, task))
    if seed_ok:
        scored.extra["seed"] = np.stack([seed[i] for i in keep])  # type: ignore[misc]
    return scored


def from_predictions(path: str, task: Task, rows: list[Row], y: NDArray[Any]) -> Scored:
    """Read a ``surelabel classify`` output and align it with the labelled rows by id."""
    records = {}
    for r in read_rows(path, text_field="text", fmt="jsonl"):
        records[str(r.id)] = r.extra
    keep, probs = [], []
    missing = errors = 0
    seen: dict[str, set[Any]] = {"method": set(), "model": set(), "calibrated": set(),
                                 "debiased": set(), "permutations": set(),
                                 methods.MULTILABEL_KEY: set(), methods.SHORTLIST_KEY: set()}
    for i, row in enumerate(rows):
        rec = records.get(str(row.id))
        if rec is None:
            missing += 1
            continue
        p = rec.get("probabilities")
        if rec.get("error") or not isinstance(p, dict):
            errors += 1
            continue
        try:
            probs.append([float(p[name]) for name in task.label_names])
        except KeyError as exc:
            raise InputError(f"{path}: record {row.id!r} has no probability for label {exc}; "
                             "was it made for another task?") from exc
        keep.append(i)
        seen["method"].add(rec.get("method"))
        seen["model"].add(rec.get("model"))
        seen["calibrated"].add(bool(rec.get("calibrated")))
        seen["debiased"].add(bool(rec.get("debiased")))
        seen["permutations"].add(int(rec.get("permutations") or 1))
        # Only the exact method on a multilabel task has a mode; a record from before it
        # was recorded was scored sequentially.
        seen[methods.MULTILABEL_KEY].add(rec.get(methods.MULTILABEL_KEY)
                                         or methods.LEGACY_MULTILABEL_MODE)
        seen[methods.SHORTLIST_KEY].add(int(rec.get(methods.SHORTLIST_KEY) or 0))
    if not keep:
        raise InputError(f"{path}: no record matches a labelled row by id")
    for key, values in seen.items():
        if len(values) > 1:
            raise InputError(f"{path}: the records mix {key} values "
                             f"({', '.join(sorted(map(str, values)))}); use one run's output")
    method = next(iter(seen["method"])) or "?"
    calibrated = next(iter(seen["calibrated"]))
    notes = [f"predictions from {path} ({method}" + (" (calibrated)" if calibrated else "")
             + ")"]
    if missing or errors:
        notes.append(f"{missing} labelled rows had no prediction and {errors} had an error "
                     "record; they are left out")
    p3 = from_task_probabilities(task, np.asarray(probs, dtype=np.float64))
    p3 = p3 / p3.sum(axis=2, keepdims=True)
    # The records do not say the prompt style: the default is assumed.
    scoring = {**methods.DEFAULT_OPTIONS.scoring_key(method, task),
               "permutations": next(iter(seen["permutations"])),
               "debias": next(iter(seen["debiased"]))}
    for key in (methods.MULTILABEL_KEY, methods.SHORTLIST_KEY):
        if key in scoring:
            scoring[key] = next(iter(seen[key]))
    return Scored(rows=[rows[i] for i in keep], y=y[keep], logprobs=safe_log(p3),
                  method="predictions", notes=notes, scoring=scoring,
                  model=next(iter(seen["model"])), source_method=method,
                  calibrated=calibrated)


def probabilities(logprobs: FloatArray) -> FloatArray:
    """Normalized probabilities of ``(n, S, K)`` label log-probabilities."""
    return softmax(logprobs, axis=2)


def choose_methods(
    requested: Sequence[str] | None, n_rows: int, *, predictions: bool = False
) -> tuple[list[str], list[str]]:
    """The columns to compare, and notes on the ones left out.

    By default all of :data:`METHOD_NAMES`, but ``seed`` only up to
    :data:`SEED_DEFAULT_MAX_ROWS` rows; never ``seed`` from predictions (the model is not
    run).
    """
    notes = []
    if requested:
        chosen = [m.strip() for m in requested if m.strip()]
        bad = [m for m in chosen if m not in METHOD_NAMES]
        if bad:
            raise InputError(f"--methods: unknown method {bad[0]!r}; expected some of "
                             f"{', '.join(METHOD_NAMES)}")
    else:
        chosen = list(METHOD_NAMES)
        if n_rows > SEED_DEFAULT_MAX_ROWS and not predictions:
            chosen.remove("seed")
            notes.append(f"seed method skipped: {n_rows} rows > {SEED_DEFAULT_MAX_ROWS} and it "
                         "generates a whole answer per row (ask for it with --methods)")
    if predictions and "seed" in chosen:
        chosen.remove("seed")
        if requested:
            notes.append("seed method skipped: --predictions given, the model is not run")
    return chosen, notes


def compare(
    task: Task,
    model: str,
    scored: Scored,
    *,
    methods_: Sequence[str] = ("exact", "calibrated"),
    calibration: Calibration | None = None,
    calibration_source: str = "calibration file",
    requested_explicitly: Sequence[str] = (),
    folds: int = 5,
    n_bootstrap: int = 1000,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Every metric of each method on the scored rows, side by side (a report).

    ``calibrated`` is the calibration file's when given (its accept threshold sets the
    decision bands), else cross-fitted: each fold calibrated by a calibrator fitted on the
    other folds.
    """
    all_notes = [*scored.notes, *notes]
    results: dict[str, dict[str, Any]] = {}
    ev: dict[str, Any] = {"n_bootstrap": n_bootstrap}
    raw = probabilities(scored.logprobs)
    if "exact" in methods_ or scored.method == "predictions":
        results[scored.method] = evaluate_probabilities(
            task, task_probabilities(task, raw), scored.y, **ev)
    if "generic" in methods_ and scored.method != "predictions":
        generic = load_generic(model)
        why = (generic.check(model, scored.scoring) if generic is not None
               else "none is shipped for this model")
        if generic is None or why is not None:
            if "generic" in requested_explicitly:
                all_notes.append(f"generic: skipped, {why}")
        else:
            p3 = probabilities(scored.logprobs)
            n, s, k = p3.shape
            mass = np.exp(np.minimum(np.logaddexp.reduce(scored.logprobs, axis=2), 0.0))
            cal = generic.predict_proba(p3.reshape(n * s, k), mass.reshape(-1),
                                        task.kind == "multilabel").reshape(n, s, k)
            results["generic"] = evaluate_probabilities(
                task, task_probabilities(task, cal), scored.y, **ev)
            all_notes.append(f"generic: the task-independent calibration of {model} "
                             f"({generic.id}), fitted on {len(generic.fitted_on)} other tasks")
    if "seed" in methods_ and "seed" in scored.extra:
        results["seed"] = evaluate_probabilities(
            task, task_probabilities(task, scored.extra["seed"]), scored.y, **ev)
    if "calibrated" in methods_:
        probs = None
        thresholds = task.thresholds
        if calibration is not None:
            probs = from_task_probabilities(
                task, calibration.calibrator.predict_proba(scored.task_logprobs(task)))
            thresholds = calibration.thresholds(task.thresholds)
            all_notes.append(
                f"calibrated: {calibration_source} (method {calibration.method}, fitted on "
                f"{calibration.n_fitted} rows; accept when confidence > {thresholds.accept:g})")
        elif len(scored.y) >= MIN_ROWS:
            sel, oof = fit_calibration(task, model, scored.task_logprobs(task), scored.y,
                                       content_free=scored.task_content_free(task),
                                       folds=folds, confidence_method=scored.method,
                                       scoring=scored.scoring or None)
            probs = from_task_probabilities(task, oof)
            all_notes.append(f"calibrated: cross-fitted ({folds} folds; each row calibrated by "
                             f"a calibrator fitted on the other folds); "
                             f"{(sel.selection or {}).get('reason', '')}")
        else:
            all_notes.append(f"calibrated: skipped, fewer than {MIN_ROWS} rows to cross-fit on")
        if probs is not None:
            results["calibrated"] = evaluate_probabilities(
                task, task_probabilities(task, probs), scored.y, thresholds=thresholds, **ev)
    return build_report(task, model, results, notes=all_notes)
