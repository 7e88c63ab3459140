"""Upload jobs: a file's rows classified into a task in the background, with progress.

A job feeds the rows to the same bounded classification queue as the API, one batch at a
time, so an upload of many thousand rows never fills the queue for API clients: it waits
for each batch before it submits the next (and retries while the queue is full).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from surelabel.server.worker import QueueFullError, WorkerPool

log = logging.getLogger("surelabel.server")


@dataclass
class Job:
    """One upload's progress (read by the progress page while the job runs)."""

    id: int
    task: str
    filename: str
    by: str
    total: int
    done: int = 0
    new: int = 0
    known: int = 0
    errors: int = 0
    state: str = "queued"
    message: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def percent(self) -> int:
        return 100 if not self.total else int(100 * self.done / self.total)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "percent": self.percent}


#: One batch's outcome per row: "new", "known" (stored before) or "error".
Outcome = str


class Jobs:
    """The upload jobs of one service (kept in memory; the items themselves are stored)."""

    def __init__(self, pool: WorkerPool, batch: int) -> None:
        self.pool = pool
        self.batch = max(1, batch)
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def recent(self, limit: int = 20) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: -j.id)[:limit]

    def start(
        self,
        task: str,
        rows: Sequence[Any],
        run: Callable[[Sequence[Any]], list[Outcome]],
        *,
        filename: str,
        by: str,
    ) -> Job:
        """Classify ``rows`` with ``run`` (one batch per call, on the worker pool)."""
        with self._lock:
            job = Job(next(self._ids), task, filename, by, len(rows))
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job, rows, run), daemon=True,
                         name=f"surelabel-upload-{job.id}").start()
        return job

    def stop(self) -> None:
        self._stop.set()

    def _run(self, job: Job, rows: Sequence[Any], run: Callable[[Sequence[Any]],
                                                                list[Outcome]]) -> None:
        job.state = "running"
        try:
            for start in range(0, len(rows), self.batch):
                chunk = rows[start:start + self.batch]
                outcomes = self._submit(chunk, run).result()
                job.new += outcomes.count("new")
                job.known += outcomes.count("known")
                job.errors += outcomes.count("error")
                job.done += len(chunk)
            job.state = "done"
            job.message = (f"{job.new} new, {job.known} already stored, "
                           f"{job.errors} could not be classified")
        except Exception as exc:
            job.state = "failed"
            job.message = f"{type(exc).__name__}: {exc}"
            log.exception("upload job %s failed", job.id)
        finally:
            job.finished_at = time.time()

    def _submit(self, chunk: Sequence[Any], run: Callable[[Sequence[Any]], list[Outcome]]
                ) -> Future[list[Outcome]]:
        while True:
            if self._stop.is_set():
                raise RuntimeError("the server is stopping")
            try:
                return self.pool.submit(lambda: run(chunk), weight=len(chunk))
            except QueueFullError:
                time.sleep(0.2)
