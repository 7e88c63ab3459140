"""Requests- and tokens-per-minute caps (``--max-rpm``, ``--max-tpm``).

The OpenAI SDK retries and waits when a server answers 429, but it does not pace requests
so that the 429 never comes; this module does, by hand, because no library the project
already depends on does.

A limiter is anything with ``acquire`` and ``settle`` (:class:`RateLimiter`): the backend
awaits ``acquire(estimated_tokens)`` before a request and calls ``settle`` with what the
request really used once it is done. :class:`MinuteWindow` keeps the count in this process;
one object may be shared by several backends (and event loops), and a limiter kept
elsewhere (Redis, a cluster service) can replace it behind the same two methods.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

WINDOW_S = 60.0


@runtime_checkable
class RateLimiter(Protocol):
    async def acquire(self, tokens: int) -> object:
        """Wait until a request of about ``tokens`` tokens may start; returns a ticket."""
        ...

    def settle(self, ticket: object, *, tokens: int, requests: int = 1) -> None:
        """Record what the request of ``ticket`` used: ``tokens`` in all (0: unknown, keep
        the estimate) over ``requests`` HTTP attempts (the SDK's retries included)."""
        ...


@dataclass
class _Event:
    at: float
    tokens: float


class MinuteWindow:
    """A sliding one-minute window over request starts and their tokens.

    Parameters
    ----------
    rpm, tpm:
        Requests and tokens per minute at most; ``None`` leaves that one uncapped. A single
        request larger than ``tpm`` still starts, alone in an empty window.
    """

    def __init__(self, rpm: int | None = None, tpm: int | None = None) -> None:
        if rpm is not None and rpm < 1:
            raise ValueError("requests per minute must be at least 1")
        if tpm is not None and tpm < 1:
            raise ValueError("tokens per minute must be at least 1")
        self.rpm = rpm
        self.tpm = tpm
        self._events: deque[_Event] = deque()
        self._lock = threading.Lock()  # the window may be shared across event loops

    def __repr__(self) -> str:
        return f"MinuteWindow(rpm={self.rpm!r}, tpm={self.tpm!r})"

    def _try(self, tokens: int) -> _Event | float:
        """The new event if the request may start now, else seconds to wait."""
        with self._lock:
            now = time.monotonic()
            while self._events and now - self._events[0].at >= WINDOW_S:
                self._events.popleft()
            used = sum(e.tokens for e in self._events)
            rpm_ok = self.rpm is None or len(self._events) < self.rpm
            tpm_ok = self.tpm is None or not self._events or used + tokens <= self.tpm
            if rpm_ok and tpm_ok:
                event = _Event(now, float(tokens))
                self._events.append(event)
                return event
            return max(0.01, self._events[0].at + WINDOW_S - now)

    async def acquire(self, tokens: int) -> object:
        if self.rpm is None and self.tpm is None:
            return None
        while True:
            got = self._try(tokens)
            if isinstance(got, _Event):
                return got
            await asyncio.sleep(got)

    def settle(self, ticket: object, *, tokens: int, requests: int = 1) -> None:
        if not isinstance(ticket, _Event):
            return
        with self._lock:
            if tokens > 0:
                ticket.tokens = float(tokens)
            # Retries the SDK made inside one acquire count against the cap afterwards.
            now = time.monotonic()
            for _ in range(max(0, requests - 1)):
                self._events.append(_Event(now, 0.0))
