"""The checks an answer passes before it is stored, the same for the API and the pages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException

from surelabel.classifier import Classifier
from surelabel.store import Item


def classifier_for(classifiers: Mapping[str, Classifier], task: str) -> Classifier:
    """The classifier of ``task``; 404 when this service does not serve it."""
    classifier = classifiers.get(task)
    if classifier is None:
        raise HTTPException(404, f"no task {task!r}")
    return classifier


def check_answer(
    classifiers: Mapping[str, Classifier], item: Item, label: Any, clarify: bool
) -> Any:
    """The validated final label of an answer (None for clarify); 422 when it is not valid."""
    if clarify:
        if label is not None:
            raise HTTPException(422, "give either a label or clarify, not both")
        return None
    if label is None:
        raise HTTPException(422, "an answer needs a label, or clarify: true with a note")
    classifier = classifiers.get(item.task)
    if classifier is None:
        raise HTTPException(409, f"item {item.id} belongs to task {item.task!r}, not served here")
    names = classifier.task.label_names
    if classifier.task.kind == "multilabel":
        given = [label] if isinstance(label, str) else list(label)
        unknown = [x for x in given if x not in names]
        if unknown:
            raise HTTPException(422, f"unknown label(s) {unknown}; expected some of {list(names)}")
        return [x for x in names if x in given]
    if not isinstance(label, str) or label not in names:
        raise HTTPException(422, f"unknown label {label!r}; expected one of {list(names)}")
    return label


def parse_confidence_band(band: str | None) -> tuple[float | None, float | None]:
    """``"0.5-0.6"`` -> (0.5, 0.6); empty -> no bounds; 422 when malformed."""
    if not band:
        return None, None
    low, sep, high = band.partition("-")
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        raise HTTPException(422, f"confidence band {band!r}: expected LOW-HIGH") from None
    if not sep or not 0.0 <= lo < hi <= 1.0:
        raise HTTPException(422, f"confidence band {band!r}: expected 0 <= LOW < HIGH <= 1")
    # The top band includes confidence 1.0 itself.
    return lo, (None if hi >= 1.0 else hi)
