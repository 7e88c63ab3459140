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

from surelabel import errors
from surelabel.backends.registry import BackendSpec
from surelabel.sklearn import LLMClassifier, NotFittedError
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


# -- issue 11: label-encoded targets, scikit-learn's errors, defaults, pickling ---------------


def encoded(labels: list[str]) -> np.ndarray:
    return np.array([sorted(TASK.label_names).index(label) for label in labels])


def test_integer_targets_index_the_sorted_label_names() -> None:
    X, y = dataset()
    yi = encoded(y)
    clf = LLMClassifier(task=TASK, backend=KeywordBackend(), calibration=None).fit(X, yi)
    assert list(clf.classes_) == [0, 1, 2]
    named = LLMClassifier(task=TASK, backend=KeywordBackend(), calibration=None).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), named.predict_proba(X))
    np.testing.assert_array_equal(clf.predict(X), encoded(list(named.predict(X))))
    assert clf.score(X, yi) == named.score(X, y)
    with pytest.raises(ValueError, match="from 0 to 2"):
        clf.fit(X[:2], [0, 3])


def test_calibrated_classifier_cv_with_temperature_scaling() -> None:
    # It label-encodes y before fitting the base estimator ("label 1 is not one of the
    # task's labels" before).
    X, y = dataset()
    base = LLMClassifier(task=TASK, backend=KeywordBackend(), calibration=None)
    cal = CalibratedClassifierCV(base, cv=3, method="temperature").fit(X, y)
    proba = cal.predict_proba(X)
    assert proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(cal.classes_) == ["fruit", "herb", "vegetable"]
    assert cal.score(X, y) > 0.6


def test_boolean_targets_for_a_true_false_task() -> None:
    task = Task(name="p", instructions="Pineapple?", kind="binary", labels=("true", "false"))
    backend = FakeBackend(keywords={"true": ["pineapple"]}, capabilities={"exact_scoring": True})
    X = ["pineapple pizza", "cheese pizza"] * 5
    clf = LLMClassifier(task=task, backend=backend, calibration=None).fit(X, [True, False] * 5)
    assert list(clf.classes_) == [False, True]
    assert list(clf.predict(X[:2])) == [True, False]


def test_not_fitted_is_scikit_learns_error() -> None:
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError
    from sklearn.utils.validation import check_is_fitted

    clf = LLMClassifier(task=TASK, backend=KeywordBackend())
    for call in (clf.predict, clf.predict_proba):
        with pytest.raises(SklearnNotFittedError):
            call(["apple"])
    with pytest.raises(errors.NotFittedError):
        clf.predict(["apple"])
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(clf)
    check_is_fitted(clf.fit(*dataset(12)))


def test_the_default_method_is_auto_and_works_on_an_api_backend() -> None:
    assert LLMClassifier().method == "auto"
    api = FakeBackend(keywords=WORDS, capabilities="topk", concurrency=4)
    X, y = dataset(30)
    clf = LLMClassifier(task=TASK, backend=api, calibration=None).fit(X, y)
    assert clf.predict_proba(X).shape == (30, 3) and clf.score(X, y) > 0.5


def test_missing_texts_are_refused_not_read_as_the_word_none() -> None:
    clf = LLMClassifier(task=TASK, backend=KeywordBackend(), calibration=None)
    X, y = dataset(6)
    with pytest.raises(ValueError, match=r"X\[1\] is missing"):
        clf.fit([X[0], None, *X[2:]], y)
    clf.fit(X, y)
    with pytest.raises(ValueError, match="missing"):
        clf.predict(np.array(["apple", np.nan], dtype=object))
    with pytest.raises(ValueError, match="not a text"):
        clf.predict([3])


def test_a_fitted_estimator_pickles_without_its_model(tmp_path: Path) -> None:
    import pickle
    import subprocess
    import sys

    spec = BackendSpec("fake", {"keywords": {k: list(v) for k, v in WORDS.items()},
                                "capabilities": {"exact_scoring": True}})
    X, y = dataset()
    clf = LLMClassifier(task=TASK, backend=spec).fit(X, y)
    here = clf.predict_proba(X[:5])
    blob = tmp_path / "clf.pkl"
    blob.write_bytes(pickle.dumps(clf))
    code = ("import json, pickle, sys; clf = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "print(json.dumps(clf.predict_proba(json.loads(sys.argv[2])).tolist()))")
    out = subprocess.run([sys.executable, "-c", code, str(blob), json.dumps(X[:5])],
                         capture_output=True, text=True, check=True, timeout=120)
    np.testing.assert_allclose(np.array(json.loads(out.stdout)), here)
    assert "_backend_instance" not in pickle.loads(blob.read_bytes()).__dict__
