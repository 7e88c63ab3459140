"""The pipeline for items: method -> distribution -> calibration -> decision -> record."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from surelabel import methods
from surelabel.backends.base import Backend
from surelabel.backends.registry import BackendSpec, as_spec, build_backend
from surelabel.calibration.file import Calibration
from surelabel.calibration.generic import GenericCalibration, load_generic
from surelabel.distribution import LabelDistribution
from surelabel.errors import BackendError, UserError
from surelabel.policy import Decision, decide, least_certain
from surelabel.task import Task, Thresholds

if TYPE_CHECKING:
    import jinja2
    import pandas


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

    def _repr_html_(self) -> str:
        """The record in a notebook: label, confidence, decision and a bar per label."""
        probs = sorted((self.probabilities or {}).items(), key=lambda kv: -kv[1])
        return _record_template().render(
            r=self, probs=probs, text=_clip(self.text, 300),
            chosen=set(self.labels or ([self.label] if self.label else [])),
        )


def _clip(text: Any, limit: int) -> str:
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


@lru_cache(maxsize=1)
def _record_template() -> jinja2.Template:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("surelabel", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("record.html")


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
        What makes the confidences honest. ``"auto"`` (default): the generic calibration
        shipped for the backend's model (:mod:`surelabel.calibration.generic`) when there
        is one for this model and these options, else none; ``None`` or ``"none"``: the
        raw probabilities; or a fitted calibrator, e.g. a
        :class:`~surelabel.calibration.Calibration` from ``surelabel calibrate``, which is
        checked against the task (and, once the backend is built, its model, method and
        scoring options): one fitted for another task, model or prompt is refused, as the
        CLI refuses it. Records say which applied (``"calibration": "task" | "generic" |
        "none"``).
    options:
        :class:`~surelabel.methods.MethodOptions`: prompt style, label orders, debiasing,
        the multilabel mode of ``exact``, and the samples and temperature of ``sampling``.
    """

    def __init__(
        self,
        task: Task,
        backend: Backend | BackendSpec | str,
        *,
        method: str = "auto",
        reason: bool | None = None,
        thresholds: Thresholds | None = None,
        calibrator: Calibrator | str | None = "auto",
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
        if isinstance(calibrator, str) and calibrator not in ("auto", "none"):
            raise UserError(f"calibrator: expected a calibrator, 'auto' or 'none', got "
                            f"{calibrator!r}")
        self._requested_calibrator = calibrator
        #: The calibrator in use (``"auto"`` is resolved once the backend is built).
        self.calibrator: Calibrator | None = None if isinstance(calibrator, str) else calibrator
        #: Why no generic calibration applies, when ``"auto"`` found none.
        self.generic_skipped: str | None = None
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
        scoring = self.options.scoring_key(self._plan.method, self.task)
        if self._requested_calibrator == "auto":
            generic = load_generic(backend.model_name)
            why = ("no generic calibration is shipped for this model" if generic is None
                   else generic.check(backend.model_name, scoring)
                   or generic.missing_map(self.task))
            self.calibrator = generic if why is None else None
            self.generic_skipped = why
        if isinstance(self.calibrator, GenericCalibration):
            self.calibrator = self.calibrator.for_task(self.task)
        if isinstance(self.calibrator, Calibration):
            source = self.calibrator.source
            self.calibrator.check(self.task, backend.model_name, source=source)
            self.calibrator.check_method(self._plan.method, source=source)
            self.calibrator.check_scoring(scoring, source=source)

    @property
    def calibration(self) -> str:
        """Which calibration makes the confidences: ``task``, ``generic`` or ``none``."""
        self.plan  # noqa: B018 - "auto" is resolved with the backend
        if self.calibrator is None:
            return "none"
        return "generic" if isinstance(self.calibrator, GenericCalibration) else "task"

    @property
    def calibration_id(self) -> str | None:
        """The id of the calibration file or generic map in use, if it has one."""
        cal = self.calibrator
        return cal.id if isinstance(cal, (Calibration, GenericCalibration)) else None

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
        extra["calibration"] = self.calibration
        if self.calibration_id is not None:
            extra["calibration_id"] = self.calibration_id
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
        """Classify ``(id, text)`` pairs in order, one at a time.

        For plain texts, dicts or a DataFrame, use :meth:`classify_many`.
        """
        for item in rows:
            if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
                raise TypeError(
                    f"classify() takes (id, text) pairs, got {type(item).__name__}"
                    f"{' ' + repr(_clip(item, 40)) if isinstance(item, str) else ''}; "
                    "for plain texts, dicts or a DataFrame use classify_many()"
                )
            id_, text = item
            yield self.classify_one(text, id_)

    # -- many items: lists, dicts, DataFrames; threads, async, progress ---------------------

    def _items(
        self, items: Any, ids: Sequence[Any] | None, text_column: str, id_column: str | None
    ) -> list[tuple[Any, Any, str | None]]:
        """``(id, text, problem)`` for every item; ``problem`` makes it an error record."""
        if isinstance(items, (str, bytes)):
            raise TypeError("classify_many() takes a sequence of texts (or dicts, or a "
                            "DataFrame), not one string; for one text use classify_one()")
        if _is_frame(items):
            if text_column not in items.columns:
                raise ValueError(
                    f"the DataFrame has no {text_column!r} column "
                    f"({', '.join(map(str, items.columns))}); pass text_column="
                )
            texts = items[text_column].tolist()
            if ids is None:
                ids = (items[id_column].tolist()
                       if id_column is not None and id_column in items.columns
                       else items.index.tolist())
            rows: list[Any] = texts
        elif _is_series(items):
            rows = items.tolist()
            if ids is None:
                ids = items.index.tolist()
        else:
            rows = list(items)
        if ids is not None:
            ids = list(ids)
            if len(ids) != len(rows):
                raise ValueError(f"{len(ids)} ids for {len(rows)} items")
        out: list[tuple[Any, Any, str | None]] = []
        for i, item in enumerate(rows):
            id_ = ids[i] if ids is not None else i
            text: Any = item
            problem = None
            if isinstance(item, Mapping):
                if id_column is not None and id_column in item and ids is None:
                    id_ = item[id_column]
                if text_column in item:
                    text = item[text_column]
                else:
                    text, problem = None, f"no {text_column!r} field"
            elif hasattr(item, "text") and hasattr(item, "id") and not isinstance(item, str):
                # surelabel.io.Row (from read_rows) or a Record
                text = item.text
                if ids is None:
                    id_ = item.id
            if problem is None and (text is None or (isinstance(text, float)
                                                    and math.isnan(text))):
                problem = "missing text"  # None, or a DataFrame's NaN
            out.append((id_, text, problem))
        return out

    def _chunks(
        self, items: list[tuple[Any, Any, str | None]], workers: int, batch_size: int | None
    ) -> list[list[int]]:
        size = 1 if workers > 1 else max(1, self.batch_size if batch_size is None else batch_size)
        return [list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size)]

    def _run_chunk(
        self, items: list[tuple[Any, Any, str | None]], chunk: list[int]
    ) -> list[Record]:
        todo = [i for i in chunk if items[i][2] is None]
        done = iter(self.classify_batch([(items[i][0], items[i][1]) for i in todo]))
        return [
            next(done) if items[i][2] is None
            else Record(**self._base(items[i][0], items[i][1]), error=items[i][2])
            for i in chunk
        ]

    def classify_many(
        self,
        items: Any,
        *,
        ids: Sequence[Any] | None = None,
        text_column: str = "text",
        id_column: str | None = "id",
        concurrency: int | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> list[Record]:
        """Classify many items; records in input order.

        Parameters
        ----------
        items:
            Plain strings; dicts (the text under ``text_column``, the id under
            ``id_column``); rows from :func:`~surelabel.io.read_rows`; a pandas Series;
            or a pandas DataFrame (its ``text_column``; ids from ``id_column`` if it has
            one, else its index).
        ids:
            Ids for the records (default: the above, else the position, from 0).
        concurrency:
            Items in flight at once (default: what the backend declares: an API's
            concurrency, 1 for a local model, which evaluates ``batch_size`` items together
            instead).
        progress:
            Show a progress bar (``tqdm.auto``: a widget in notebooks, stderr elsewhere);
            default: only in a notebook.

        A bad item (not a string, empty, a dict without the text field, a missing value)
        becomes an error record; the other items go on.
        """
        prepared = self._items(items, ids, text_column, id_column)
        workers = max(1, self.workers if concurrency is None else concurrency)
        chunks = self._chunks(prepared, workers, batch_size)
        records: list[Record] = []
        with _progress(progress, len(prepared), self.task.name) as bar:
            for chunk_records in _ordered_map(
                lambda chunk: self._run_chunk(prepared, chunk), chunks, workers
            ):
                records.extend(chunk_records)
                bar.update(len(chunk_records))
        return records

    async def aclassify_many(
        self,
        items: Any,
        *,
        ids: Sequence[Any] | None = None,
        text_column: str = "text",
        id_column: str | None = "id",
        concurrency: int | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> list[Record]:
        """:meth:`classify_many` for ``asyncio`` code: awaits the records, in input order,
        without blocking the event loop.

        ``concurrency`` items run at once on worker threads (default: the backend's
        declared concurrency, e.g. an API backend's ``concurrency``), each under the
        backend's own limits (an API backend's semaphore, rate caps, retries and cache).
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: self.plan)  # may load a model: not on the loop
        prepared = self._items(items, ids, text_column, id_column)
        workers = max(1, self.workers if concurrency is None else concurrency)
        chunks = self._chunks(prepared, workers, batch_size)
        results: list[list[Record] | None] = [None] * len(chunks)
        queue = iter(range(len(chunks)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="surelabel-async")
        with _progress(progress, len(prepared), self.task.name) as bar:

            async def worker() -> None:
                for j in queue:
                    got = await loop.run_in_executor(pool, self._run_chunk, prepared, chunks[j])
                    results[j] = got
                    bar.update(len(got))

            try:
                await asyncio.gather(*(worker() for _ in range(min(workers, len(chunks)))))
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        return [r for chunk in results if chunk is not None for r in chunk]

    def classify_frame(
        self,
        df: pandas.DataFrame,
        text_column: str = "text",
        *,
        id_column: str | None = None,
        prefix: str = "",
        concurrency: int | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> pandas.DataFrame:
        """Classify a DataFrame's ``text_column``; a copy of ``df`` (every column, same
        index) with the results added.

        Added columns (each name after ``prefix``): ``label``, ``confidence``,
        ``decision``, ``calibration`` (the calibration method applied, or ``None``), one
        ``p_<label>`` column per label, ``reason`` when reasons are generated, and
        ``error``. A multilabel task gives ``labels`` (the chosen ones) and one
        ``decision_<label>`` column per label instead of ``label``. A column that ``df``
        already has is refused (pass ``prefix="pred_"``), never overwritten.
        """
        import pandas as pd

        if not _is_frame(df):
            raise TypeError(f"classify_frame() takes a pandas DataFrame, got {type(df).__name__}")
        records = self.classify_many(
            df, text_column=text_column, id_column=id_column, concurrency=concurrency,
            batch_size=batch_size, progress=progress,
        )
        columns = self.result_columns(records)
        clash = [prefix + name for name in columns if prefix + name in df.columns]
        if clash:
            raise ValueError(
                f"the DataFrame already has column(s) {', '.join(map(repr, clash))}; pass "
                "prefix= (e.g. prefix='pred_') to name the new columns apart"
            )
        out = df.copy()
        for name, (kind, values) in columns.items():
            dtype = "float64" if kind == "float" else "object"
            out[prefix + name] = pd.Series(values, index=df.index, dtype=dtype)
        return out

    def _calibration_name(self) -> str | None:
        if self.calibrator is None:
            return None
        method = getattr(self.calibrator, "method", None)
        return str(method) if method is not None else type(self.calibrator).__name__

    def result_columns(self, records: Sequence[Record]) -> dict[str, tuple[str, list[Any]]]:
        """The columns :meth:`classify_frame` adds, as ``name -> (kind, values)`` with
        ``kind`` ``"float"`` (missing: NaN), ``"str"`` or ``"list"`` (of strings)."""
        names = self.task.label_names
        nan = float("nan")
        cols: dict[str, tuple[str, list[Any]]] = {}

        def num(x: float | None) -> float:
            return nan if x is None else float(x)

        multilabel = self.task.kind == "multilabel"
        if multilabel:
            cols["labels"] = ("list", [r.labels for r in records])
        else:
            cols["label"] = ("str", [r.label for r in records])
        cols["confidence"] = ("float", [num(r.confidence) for r in records])
        cols["decision"] = ("str", [r.decision for r in records])
        if multilabel:
            for name in names:
                cols[f"decision_{name}"] = ("str", [(r.decisions or {}).get(name)
                                                    for r in records])
        default = self._calibration_name()
        cols["calibration"] = ("str", [
            r.extra.get("calibration", default if r.error is None else None) for r in records
        ])
        for name in names:
            cols[f"p_{name}"] = ("float", [num((r.probabilities or {}).get(name))
                                           for r in records])
        if self.reason:
            cols["reason"] = ("str", [r.reason for r in records])
        cols["error"] = ("str", [r.error for r in records])
        return cols



def _is_frame(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and hasattr(obj, "columns")


def _is_series(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and type(obj).__name__ == "Series"


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (a notebook, JupyterLab, Colab): its shell
    has a kernel; a terminal IPython has none."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and getattr(shell, "kernel", None) is not None


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(show: bool | None, total: int, desc: str) -> Any:
    """A ``tqdm.auto`` bar (notebook widget or stderr), or a no-op one."""
    if show is None:
        show = _in_notebook()
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr)


def _ordered_map(fn: Any, jobs: Iterable[Any], workers: int) -> Iterator[Any]:
    """``fn(job)`` for every job, yielded in order, ``workers`` at once on threads; a
    bounded window of pending jobs keeps memory flat on long inputs."""
    if workers <= 1:
        for job in jobs:
            yield fn(job)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="surelabel-item")
    window: deque[Future[Any]] = deque()
    it = iter(jobs)
    try:
        for job in it:
            window.append(pool.submit(fn, job))
            if len(window) >= 2 * workers:
                break
        while window:
            result = window.popleft().result()
            nxt = next(it, _END)
            if nxt is not _END:
                window.append(pool.submit(fn, nxt))
            yield result
    finally:
        for fut in window:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def classify_pairs(
    classifier: Any, pairs: Iterable[tuple[Any, Any]], *, workers: int, batch_size: int = 1
) -> Iterator[Record]:
    """Classify ``(id, text)`` pairs, yielding records in input order.

    With ``workers`` > 1, that many ``classify_one`` calls are in flight at once (threads,
    for API backends); otherwise ``classify_batch`` gets ``batch_size`` pairs at a time (a
    local model evaluates them together).
    """
    if workers > 1:
        yield from _ordered_map(lambda pair: classifier.classify_one(pair[1], pair[0]),
                                pairs, workers)
        return
    chunk: list[tuple[Any, Any]] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) >= max(1, batch_size):
            yield from classifier.classify_batch(chunk)
            chunk = []
    if chunk:
        yield from classifier.classify_batch(chunk)

