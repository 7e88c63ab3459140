"""LLMClassifier inside scikit-learn: CalibratedClassifierCV, cross_val_score, Pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from surelabel.errors import NotFittedError
from surelabel.sklearn import LLMClassifier
from surelabel.task import Task, load_task
from surelabel.testing import FakeBackend

REPO = Path(__file__).resolve().parents[1]
TASK = Task.from_dict({
    "name": "fruit_veg_herb",
    "instructions": "Classify the item.",
    "labels": ["fruit", "vegetable", "herb"],
})
WORDS = {
    "fruit": ("apple", "pear", "plum", "mango", "cherry", "grape"),
    "vegetable": ("carrot", "leek", "onion", "potato", "beet", "kale"),
    "herb": ("basil", "thyme", "mint", "dill", "sage", "parsley"),
}


def KeywordBackend() -> FakeBackend:
    """A fast fake backend: a label's log-probability grows with its keywords in the text,
    plus a fixed pseudo-random offset per text, so some answers are wrong."""
    return FakeBackend(model_name="keyword-fake", keywords=WORDS, weight=3.0, noise=2.5,
                       capabilities={"exact_scoring": True})


def dataset(n: int = 60) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for i in range(n):
        label = ["fruit", "vegetable", "herb"][i % 3]
        word = WORDS[label][int(rng.integers(0, 6))]
        texts.append(f"Fresh {word} number {i}")
        labels.append(label)
    return texts, labels


def test_fit_predict_proba_columns_in_classes_order() -> None:
    X, y = dataset()
    clf = LLMClassifier(task=TASK, backend=KeywordBackend())
    assert clf.fit(X, y) is clf
    assert list(clf.classes_) == ["fruit", "herb", "vegetable"]
    proba = clf.predict_proba(X)
    assert proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    pred = clf.predict(X)
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(axis=1)])
    assert clf.score(X, y) > 0.6
    assert clf.calibration_ is not None and clf.calibration_.selection is not None


def test_unfitted_and_bad_input() -> None:
    clf = LLMClassifier(task=TASK, backend=KeywordBackend())
    with pytest.raises(NotFittedError):
        clf.predict(["apple"])
    with pytest.raises(ValueError, match="task"):
        LLMClassifier(backend=KeywordBackend()).fit(["a"], ["fruit"])
    with pytest.raises(ValueError, match="shape"):
        LLMClassifier(task=TASK, backend=KeywordBackend(), calibration=None).fit(
            np.zeros((2, 2)), ["fruit", "herb"]
        )


def test_clone_shares_backend_and_cache() -> None:
    backend = KeywordBackend()
    clf = LLMClassifier(task=TASK, backend=backend, calibration=None)
    X, y = dataset(9)
    clf.fit(X, y).predict(X)
    calls = backend.calls
    twin = clone(clf)
    assert twin.backend is backend
    twin.fit(X, y).predict(X)
    assert backend.calls == calls  # every text was already scored


def test_cross_val_score() -> None:
    X, y = dataset()
    scores = cross_val_score(LLMClassifier(task=TASK, backend=KeywordBackend()), X, y, cv=3)
    assert scores.shape == (3,) and (scores > 0.5).all()


def test_calibrated_classifier_cv() -> None:
    X, y = dataset()
    base = LLMClassifier(task=TASK, backend=KeywordBackend(), calibration=None)
    cal = CalibratedClassifierCV(base, cv=3, method="sigmoid").fit(X, y)
    proba = cal.predict_proba(X)
    assert proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(cal.classes_) == ["fruit", "herb", "vegetable"]


def test_pipeline() -> None:
    X, y = dataset()
    pipe = make_pipeline(
        FunctionTransformer(lambda texts: [t.upper() for t in texts]),
        LLMClassifier(task=TASK, backend=KeywordBackend(), calibration="temperature"),
    )
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.6
    assert pipe.predict_proba(X[:2]).shape == (2, 3)


@pytest.mark.model
def test_real_model_cross_val_score(backend: Any, data_dir: Path) -> None:
    rows = [json.loads(line) for line in (data_dir / "sst2_dev.jsonl").open()][:12]
    X = [r["text"] for r in rows]
    y = [r["label"] for r in rows]
    task = load_task(REPO / "bench" / "tasks" / "sst2.yaml")
    clf = LLMClassifier(task=task, backend=backend, calibration=None)
    scores = cross_val_score(clf, X, y, cv=2)
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
    assert clf.fit(X, y).predict_proba(X[:3]).shape == (3, 2)
