"""Classification off the event loop: worker threads fed by a bounded queue.

The model is loaded once per process and shared; llama.cpp runs one evaluation at a time,
so one worker thread is the default. The queue is bounded in *items* (a batch counts as
its size): when it is full the server answers 503 with ``Retry-After`` instead of holding
an unbounded backlog in memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class QueueFullError(Exception):
    """The classification queue holds its maximum number of items."""


_Job = tuple[Callable[[], Any], "Future[Any]", int]


class WorkerPool:
    """Run callables on ``workers`` threads with at most ``max_pending`` items waiting."""

    def __init__(self, *, workers: int = 1, max_pending: int = 64) -> None:
        if workers < 1 or max_pending < 1:
            raise ValueError("workers and max_pending must be at least 1")
        self.workers = workers
        self.max_pending = max_pending
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0
        self._threads: list[threading.Thread] = []

    @property
    def pending(self) -> int:
        """Items waiting for (or in) classification now."""
        return self._pending

    @property
    def alive(self) -> bool:
        """Whether the worker threads run (they start with the app, or on first use)."""
        return not self._threads or all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for i in range(self.workers):
                t = threading.Thread(target=self._run, name=f"surelabel-worker-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        for t in threads:
            t.join(timeout=30)

    def submit(self, fn: Callable[[], Any], *, weight: int = 1) -> Future[Any]:
        """Queue ``fn``; raises :class:`QueueFullError` when ``weight`` more items do not fit."""
        self.start()
        with self._lock:
            if self._pending + weight > self.max_pending:
                raise QueueFullError(
                    f"{self._pending} items waiting; the limit is {self.max_pending}"
                )
            self._pending += weight
        fut: Future[Any] = Future()
        self._jobs.put((fn, fut, weight))
        return fut

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, fut, weight = job
            try:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:
                        fut.set_exception(exc)
            finally:
                with self._lock:
                    self._pending -= weight
