"""Scale-out on Ray Data (``pip install 'surelabel[ray]'``).

:func:`classify_dataset` adds the classifier's columns to a :class:`ray.data.Dataset`;
:func:`classify_rows` is what ``surelabel classify --engine ray`` runs. Both are
``map_batches`` over a callable class, so each Ray actor builds the backend from the
classifier's :class:`~surelabel.backends.registry.BackendSpec` once (the model loads once
per actor, never travels) and applies the same calibration, thresholds and method as a
single-process run. Ray schedules the batches and retries them when a worker dies; the
rows come back exactly once.

For API backends, ``max_rpm``/``max_tpm`` hold for the whole cluster: one
:class:`RateWindow` actor keeps the count and every worker's backend asks it before each
request (:class:`SharedRateLimiter`). The response cache is a SQLite file per machine
(``$SURELABEL_CACHE_DIR``): workers on one machine share it, each machine has its own.

Ray is imported only when these functions are called.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from surelabel.backends.registry import BackendSpec, as_spec
from surelabel.classifier import Calibrator, Classifier, Record, classify_pairs
from surelabel.errors import BackendError, SurelabelError, UserError
from surelabel.io import Row, merge_columns
from surelabel.task import Task, Thresholds

if TYPE_CHECKING:
    import pyarrow
    import ray.data

__all__ = [
    "RateWindow",
    "SharedRateLimiter",
    "classify_dataset",
    "classify_rows",
    "describe",
    "init",
]


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise UserError("the Ray engine needs Ray: pip install 'surelabel[ray]'") from exc
    return ray


def init(address: str | None = None, *, quiet: bool = True) -> bool:
    """Connect to a Ray cluster (``address``; default ``$RAY_ADDRESS``, else a new local
    one). Returns whether this call connected (and so should call ``ray.shutdown()``).

    ``quiet`` keeps Ray's own logs and progress bars to errors only (the command line
    shows its own progress bar).
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    import logging

    if quiet:
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=not quiet,
                 logging_level=logging.ERROR if quiet else logging.INFO)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
        raise UserError(f"cannot start or reach Ray at {where}: {_first_line(exc)}") from exc
    ctx = ray.data.DataContext.get_current()
    if quiet:
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    return True


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- a rate limiter for the whole cluster -----------------------------------------------


class RateWindow:
    """The cluster's one request/token window (``max_rpm``/``max_tpm``), as a Ray actor.

    It wraps the same :class:`~surelabel.backends._ratelimit.MinuteWindow` a single
    process uses; tickets stay here and travel as numbers.
    """

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        from surelabel.backends._ratelimit import MinuteWindow

        self.window = MinuteWindow(rpm, tpm)
        self.tickets: dict[int, object] = {}
        self.next = 0

    async def acquire(self, tokens: int) -> int:
        ticket = await self.window.acquire(tokens)
        self.next += 1
        self.tickets[self.next] = ticket
        return self.next

    def settle(self, ticket: int, tokens: int, requests: int = 1) -> None:
        got = self.tickets.pop(ticket, None)
        self.window.settle(got, tokens=tokens, requests=requests)

    def requests(self) -> int:
        """Requests counted in the current minute."""
        return len(self.window._events)


class SharedRateLimiter:
    """A backend's limiter (``acquire``/``settle``) that asks a :class:`RateWindow` actor,
    so every worker draws from the one cluster-wide budget."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def acquire(self, tokens: int) -> object:
        return await self.actor.acquire.remote(tokens)

    def settle(self, ticket: object, *, tokens: int, requests: int = 1) -> None:
        if isinstance(ticket, int):
            self.actor.settle.remote(ticket, tokens, requests)


def _shared_limiter(spec: BackendSpec | None) -> Any:
    """A :class:`RateWindow` actor for a spec with rate caps, else ``None``."""
    if spec is None:
        return None
    rpm, tpm = spec.options.get("max_rpm"), spec.options.get("max_tpm")
    if rpm is None and tpm is None:
        return None
    ray = _ray()
    # Many workers wait in acquire() at once: an async actor serves them concurrently.
    return ray.remote(num_cpus=0, max_concurrency=10_000)(RateWindow).remote(rpm, tpm)


# -- the worker -------------------------------------------------------------------------


class ClassifyBatches:
    """The callable class ``map_batches`` runs: one instance per Ray actor.

    ``mode="columns"`` appends the classifier's columns to each input batch (as
    :meth:`Classifier.result_columns`); ``mode="rows"`` takes ``_row``/``_payload`` batches
    (pickled :class:`~surelabel.io.Row` values) and gives ``_row``/``_record`` (the pickled
    output record, input columns passed through when ``keep_columns``).
    """

    def __init__(
        self,
        classifier: Classifier,
        *,
        mode: str = "columns",
        text_column: str = "text",
        id_column: str | None = "id",
        prefix: str = "",
        keep_columns: bool = True,
        limiter: Any = None,
    ) -> None:
        start = time.perf_counter()
        self.classifier = classifier
        backend = classifier.backend  # builds the backend: once per actor
        if limiter is not None and hasattr(backend, "limiter"):
            backend.limiter = SharedRateLimiter(limiter)
        classifier.plan  # noqa: B018 - resolves the method (and checks the calibration)
        #: Seconds this worker took to build its backend (the model load).
        self.load_s = time.perf_counter() - start
        self.mode = mode
        self.text_column = text_column
        self.id_column = id_column
        self.prefix = prefix
        self.keep_columns = keep_columns

    def _classify(self, pairs: Sequence[tuple[Any, Any]]) -> list[Record]:
        clf = self.classifier
        return list(classify_pairs(clf, pairs, workers=clf.workers, batch_size=clf.batch_size))

    def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        import pyarrow as pa

        if self.mode == "rows":
            start = time.perf_counter()
            rows: list[Row] = [pickle.loads(b) for b in batch.column("_payload").to_pylist()]
            records = self._classify([(r.id, r.text) for r in rows])
            out = [
                merge_columns(rec.to_dict(), row.extra) if self.keep_columns else rec.to_dict()
                for rec, row in zip(records, rows)
            ]
            n = len(out)
            # How this worker is doing, for classify_rows(stats=...): per batch, on its rows.
            facts = {"_worker": os.getpid(), "_load_s": self.load_s,
                     "_busy_s": (time.perf_counter() - start) / max(1, n),
                     "_max_rss_mib": _max_rss_mib()}
            return pa.table({
                "_row": batch.column("_row"),
                "_record": pa.array([pickle.dumps(d) for d in out], type=pa.binary()),
                **{k: pa.array([v] * n) for k, v in facts.items()},
            })
        texts = batch.column(self.text_column).to_pylist()
        names = batch.column_names
        ids = (batch.column(self.id_column).to_pylist()
               if self.id_column is not None and self.id_column in names
               else [None] * len(texts))
        records = self._classify(list(zip(ids, texts)))
        for name, (kind, values) in self.classifier.result_columns(records).items():
            column = self.prefix + name
            if column in names:
                raise UserError(f"the dataset already has a {column!r} column; pass prefix=")
            batch = batch.append_column(column, pa.array(values, type=_ARROW[kind](pa)))
        return batch


def _max_rss_mib() -> float:
    """This process's peak resident memory, MiB (Linux reports KiB)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) / (1024 * 1024 if sys.platform == "darwin" else 1024)


_ARROW: dict[str, Any] = {
    "float": lambda pa: pa.float64(),
    "str": lambda pa: pa.string(),
    "list": lambda pa: pa.list_(pa.string()),
}


def _classifier(
    task: Task | Classifier,
    backend: BackendSpec | str | None,
    calibration: Calibrator | str | os.PathLike[str] | None,
    method: str,
    reason: bool | None,
    thresholds: Thresholds | None,
) -> Classifier:
    if isinstance(task, Classifier):
        if task.spec is None:
            raise UserError("the classifier's backend has no BackendSpec, so it cannot be "
                            "rebuilt on Ray workers; build it from a BackendSpec")
        return task
    spec = as_spec(backend or "llamacpp")
    if spec is None:
        raise UserError("Ray workers build their backend from a spec: pass a BackendSpec "
                        "(or a backend name), not a live backend")
    if isinstance(calibration, (str, os.PathLike)):
        from surelabel.calibration import load as load_calibration

        calibration = load_calibration(os.fspath(calibration), task)
    return Classifier(task, spec, method=method, reason=reason, thresholds=thresholds,
                      calibrator=calibration)


def _cpus_per_worker(spec: BackendSpec | None) -> float:
    """CPUs a worker reserves: the backend's ``n_threads`` (a llama.cpp model), else 1."""
    threads = spec.options.get("n_threads") if spec is not None else None
    return float(threads) if isinstance(threads, int) and threads > 0 else 1.0


def _workers(concurrency: int | None, cpus: float) -> int:
    ray = _ray()
    available = float(ray.cluster_resources().get("CPU", 1))
    if concurrency is None:
        return max(1, int(available // cpus))
    if concurrency < 1:
        raise UserError("--workers must be at least 1")
    if concurrency * cpus > available:
        raise UserError(
            f"{concurrency} workers of {cpus:g} CPU each need {concurrency * cpus:g} CPUs; "
            f"the Ray cluster has {available:g}"
        )
    return concurrency


def classify_dataset(
    ds: ray.data.Dataset,
    task: Task | Classifier,
    backend: BackendSpec | str | None = None,
    *,
    calibration: Calibrator | str | os.PathLike[str] | None = None,
    method: str = "auto",
    reason: bool | None = None,
    thresholds: Thresholds | None = None,
    concurrency: int | None = None,
    batch_size: int = 16,
    text_column: str = "text",
    id_column: str | None = "id",
    prefix: str = "",
) -> ray.data.Dataset:
    """Classify a Ray Dataset's ``text_column``: the dataset with the classifier's columns
    added (lazy, like every Ray Data transform).

    The added columns are those of :meth:`Classifier.classify_frame`: ``label``,
    ``confidence``, ``decision``, ``calibration``, ``p_<label>`` per label, ``reason``
    (with reasons), ``error`` (multilabel: ``labels`` and ``decision_<label>``).

    Parameters
    ----------
    task:
        The task, or a ready :class:`~surelabel.classifier.Classifier` built from a spec.
    backend:
        A :class:`~surelabel.backends.registry.BackendSpec` or its string form (default
        ``llamacpp``); each worker builds its own backend from it.
    calibration:
        A fitted calibrator or a calibration file, applied on every worker.
    concurrency:
        Ray actors (workers); default: the cluster's CPUs divided by the CPUs a worker
        reserves (a llama.cpp backend's ``n_threads``, else 1).
    batch_size:
        Rows per ``map_batches`` call.
    """
    clf = _classifier(task, backend, calibration, method, reason, thresholds)
    return _map(ds, clf, concurrency, batch_size, mode="columns", text_column=text_column,
                id_column=id_column, prefix=prefix)


def _map(
    ds: ray.data.Dataset, classifier: Classifier, workers: int | None, batch_size: int,
    **options: Any,
) -> ray.data.Dataset:
    """``map_batches`` over a pool of :class:`ClassifyBatches` actors, each reserving the
    CPUs its backend uses."""
    ray = _ray()
    cpus = _cpus_per_worker(classifier.spec)
    return ds.map_batches(
        ClassifyBatches,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=_workers(workers, cpus)),
        num_cpus=cpus,
        fn_constructor_kwargs={"classifier": classifier,
                               "limiter": _shared_limiter(classifier.spec), **options},
    )


def _describe(classifier: Classifier) -> dict[str, Any]:
    return {"method": classifier.method, "model": classifier.backend.model_name,
            "calibration": classifier.calibration,
            "generic_skipped": classifier.generic_skipped}


def describe(classifier: Classifier) -> dict[str, Any]:
    """The confidence method and model a worker's classifier resolves to, found on the
    cluster (so the driver never loads the model); a setup mistake (a calibration for
    another model, a missing model file) is raised here, before the job starts."""
    ray = _ray()
    probe = ray.remote(num_cpus=_cpus_per_worker(classifier.spec), max_retries=0)(_describe)
    try:
        result: dict[str, Any] = ray.get(probe.remote(classifier))
    except Exception as exc:
        raise _unwrap(exc) from None
    return result


def _unwrap(exc: BaseException) -> BaseException:
    """The surelabel error inside a Ray error (one line for the CLI), else a
    :class:`~surelabel.errors.BackendError` naming the first line of the failure."""
    seen: BaseException | None = exc
    while seen is not None:
        cause = getattr(seen, "cause", None)
        if isinstance(seen, SurelabelError) and type(seen).__module__.startswith("surelabel"):
            return seen
        if isinstance(cause, SurelabelError):
            return cause
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    return BackendError(f"the Ray job failed: {_first_line(exc)}")


def _tally(stats: dict[str, Any], pid: int, load: float, busy: float, rss: float) -> None:
    for key in ("workers", "load_s", "busy_s", "max_rss_mib"):
        stats.setdefault(key, {})
    stats["workers"][pid] = stats["workers"].get(pid, 0) + 1
    stats["busy_s"][pid] = stats["busy_s"].get(pid, 0.0) + busy
    stats["load_s"][pid] = load
    stats["max_rss_mib"][pid] = max(stats["max_rss_mib"].get(pid, 0.0), rss)


def classify_rows(
    rows: Sequence[Row],
    classifier: Classifier,
    *,
    workers: int | None = None,
    batch_size: int = 16,
    keep_columns: bool = True,
    stats: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Classify rows on the Ray cluster; output records (``Record.to_dict()``, input
    columns passed through with :func:`~surelabel.io.merge_columns`) in input order,
    each row exactly once even when a worker dies and Ray retries its batch.

    ``stats``, when given, is filled per worker process (by pid): ``workers`` (rows done),
    ``load_s`` (seconds to build the backend), ``busy_s`` (seconds spent classifying) and
    ``max_rss_mib`` (peak resident memory).
    """
    ray = _ray()
    import pyarrow as pa

    if not rows:
        return
    # One block per batch, made here: a repartition would need CPUs that the workers hold.
    blocks = [
        pa.table({
            "_row": pa.array(range(start, min(start + batch_size, len(rows))), type=pa.int64()),
            "_payload": pa.array([pickle.dumps(r) for r in rows[start : start + batch_size]],
                                 type=pa.binary()),
        })
        for start in range(0, len(rows), batch_size)
    ]
    ds: Any = _map(ray.data.from_arrow(blocks), classifier, workers, batch_size, mode="rows",
                   keep_columns=keep_columns)
    # Batches may arrive out of order; hold them until the next row's turn.
    pending: dict[int, dict[str, Any]] = {}
    done = 0
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            index = batch.column("_row").to_pylist()
            blobs = batch.column("_record").to_pylist()
            facts = zip(*(batch.column(c).to_pylist()
                          for c in ("_worker", "_load_s", "_busy_s", "_max_rss_mib")))
            for i, blob, (pid, load, busy, rss) in zip(index, blobs, facts):
                if i < done or i in pending:
                    raise BackendError(f"the Ray job gave row {i + 1} twice")
                pending[i] = pickle.loads(blob)
                if stats is not None:
                    _tally(stats, pid, load, busy, rss)
            while done in pending:
                yield pending.pop(done)
                done += 1
    except SurelabelError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith(("ray", "pyarrow")):
            raise _unwrap(exc) from None
        raise
    if done != len(rows):
        raise BackendError(f"the Ray job gave {done} of {len(rows)} rows")
