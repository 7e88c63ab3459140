"""Decisions: accept, send to review, or ask for clarification."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from surelabel.task import Thresholds

Decision = Literal["accept", "review", "clarify"]
# From least to most certain: a multilabel row takes its least certain label's decision.
_RANK: dict[str, int] = {"clarify": 0, "review": 1, "accept": 2}


def decide(confidence: float, thresholds: Thresholds) -> Decision:
    """``accept`` if confidence > accept, ``clarify`` if < clarify, else ``review``."""
    if confidence > thresholds.accept:
        return "accept"
    if confidence < thresholds.clarify:
        return "clarify"
    return "review"


def least_certain(decisions: Iterable[Decision]) -> Decision:
    """The least certain of several decisions (clarify < review < accept)."""
    return min(decisions, key=lambda d: _RANK[d])
