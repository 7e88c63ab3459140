"""Operations: Prometheus metrics and structured access logs.

Counters and the latency histogram live in one :class:`prometheus_client.CollectorRegistry`
per app (no global state); what the database knows (items per decision and status,
reviews, the active calibration version) is read when ``/metrics`` is scraped, so every
process of a deployment reports the same numbers. Access logs are one JSON object per line
on the ``surelabel.access`` logger.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

access_log = logging.getLogger("surelabel.access")

#: Latency buckets (seconds): page loads take milliseconds, classifications seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _StoreCollector(Collector):
    """Gauges read from the store and the queue at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read only when scraped: not while the app is being built

    def collect(self) -> Iterator[Metric]:
        data = self.read()
        depth = GaugeMetricFamily("surelabel_queue_depth",
                                  "Items waiting for the model (classification queue)")
        depth.add_metric([], data["queue_depth"])
        yield depth
        limit = GaugeMetricFamily("surelabel_queue_limit",
                                  "Most items that may wait for the model")
        limit.add_metric([], data["queue_limit"])
        yield limit
        by_decision = GaugeMetricFamily("surelabel_items", "Stored items per decision band",
                                        labels=["task", "decision"])
        by_status = GaugeMetricFamily("surelabel_items_by_status", "Stored items per status",
                                      labels=["task", "status"])
        answers = GaugeMetricFamily("surelabel_reviews", "Answers given by reviewers",
                                    labels=["task"])
        version = GaugeMetricFamily(
            "surelabel_calibration_version",
            "Active calibration version of a task (0: none)", labels=["task"])
        for task, t in data["tasks"].items():
            for decision in ("accept", "review", "clarify"):
                by_decision.add_metric([task, decision], t["counts"].get(decision, 0))
            for status in ("auto", "open", "disputed", "reviewed", "error"):
                by_status.add_metric([task, status], t["counts"].get(status, 0))
            answers.add_metric([task], t["answers"])
            version.add_metric([task], t["calibration"] or 0)
        yield from (by_decision, by_status, answers, version)


class Metrics:
    """The app's metrics registry and what feeds it."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "surelabel_http_requests", "HTTP requests answered",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "surelabel_http_request_duration_seconds", "Time to answer an HTTP request",
            ["route"], buckets=BUCKETS, registry=self.registry)
        self.classified = Counter(
            "surelabel_classified_items", "Items classified and stored", ["task", "decision"],
            registry=self.registry)
        self.answers = Counter(
            "surelabel_answers", "Answers recorded by this process", ["task", "role"],
            registry=self.registry)
        self.login_failures = Counter(
            "surelabel_login_failures", "Failed or throttled logins", ["outcome"],
            registry=self.registry)
        self.refits = Counter(
            "surelabel_refits", "Calibration refits", ["task", "outcome"],
            registry=self.registry)
        self.registry.register(_StoreCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)


def log_access(*, method: str, path: str, route: str, status: int, seconds: float,
               client: str | None, actor: str | None, request_id: str,
               length: str | None) -> None:
    """One structured access-log line."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    access_log.info(json.dumps({
        "ts": round(time.time(), 3), "request_id": request_id, "method": method,
        "path": path, "route": route, "status": status, "ms": round(1000 * seconds, 2),
        "client": client, "actor": actor, "bytes": None if length is None else int(length),
    }, ensure_ascii=True))


class JsonLineFormatter(logging.Formatter):
    """Log records as JSON lines (the access log is JSON already; other records are
    wrapped): what ``surelabel serve --log-format json`` uses."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == access_log.name:
            return message
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                               "logger": record.name, "message": message}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=True)


__all__: Sequence[str] = ["JsonLineFormatter", "Metrics", "log_access"]
