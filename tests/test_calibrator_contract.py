"""The contract every registered calibrator keeps (scikit-learn's ``parametrize_with_checks``).

The cases come from the registry, so a calibrator registered anywhere is checked here
without editing this file: binary-only methods on two-label data, ``contextual`` fitted
with ``y=None``, and each wrapper once per base it can wrap.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from surelabel._numeric import softmax
from surelabel.calibration.base import BaseCalibrator
from surelabel.calibration.registry import (
    BINARY_ONLY,
    CALIBRATORS,
    WRAPPERS,
    calibrator_from_dict,
)
from surelabel.distribution import LabelDistribution
from surelabel.errors import NotFittedError


@dataclass(frozen=True)
class Case:
    """One calibrator to check: its method, constructor arguments and data shape."""

    method: str
    params: dict[str, Any]
    n_labels: int

    @property
    def cls(self) -> type[BaseCalibrator]:
        return CALIBRATORS[self.method]

    def make(self) -> BaseCalibrator:
        return self.cls(**self.params)

    def data(self, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """Overconfident log-probabilities and true labels (``None`` where fit takes none)."""
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=(n, self.n_labels)) * 1.5
        y = np.array([rng.choice(self.n_labels, p=row) for row in softmax(logits)])
        return logits * 3.0, (y if self.cls.needs_labels else None)

    def fitted(self) -> BaseCalibrator:
        return self.make().fit(*self.data())

    def __str__(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.method}({args})"


def _cases() -> list[Case]:
    cases = []
    for method, cls in CALIBRATORS.items():
        n_labels = 2 if method in BINARY_ONLY else 3
        cases.append(Case(method, {}, n_labels))
        if method in WRAPPERS:
            cases.extend(
                Case(method, {"base": base}, 2 if base in BINARY_ONLY else 3)
                for base, inner in CALIBRATORS.items()
                if inner.needs_labels and base not in WRAPPERS
            )
        assert cls.method == method
    return cases


CASES = _cases()
checks = pytest.mark.parametrize("case", CASES, ids=str)


@checks
def test_init_stores_arguments_only(case: Case) -> None:
    est = case.make()
    assert set(vars(est)) == set(est.get_params())
    assert not [k for k in vars(est) if k.endswith("_")]
    clone = type(est)(**est.get_params())
    assert clone.get_params() == est.get_params()
    assert repr(clone) == repr(est) and repr(est).startswith(type(est).__name__)


@checks
def test_unfitted_use_raises_not_fitted(case: Case) -> None:
    est = case.make()
    with pytest.raises(NotFittedError, match="not fitted"):
        est.predict_proba(np.zeros((1, case.n_labels)))
    with pytest.raises(NotFittedError, match="not fitted"):
        est.calibrate(LabelDistribution.from_logprobs(["a", "b"], [-0.1, -2.0]))
    with pytest.raises(NotFittedError):
        est.to_dict()


@checks
def test_fit_returns_self_and_learns_trailing_underscore_state(case: Case) -> None:
    est = case.make()
    params = set(vars(est))
    assert est.fit(*case.data()) is est
    learned = set(vars(est)) - params
    assert learned and all(name.endswith("_") for name in learned), learned
    assert est.n_classes_ == case.n_labels
    assert est.get_params() == case.make().get_params()  # fit leaves the arguments alone


@checks
def test_predict_proba_gives_probabilities(case: Case) -> None:
    est = case.fitted()
    x, _ = case.data(n=50, seed=1)
    p = est.predict_proba(x)
    assert p.shape == x.shape
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    # Unnormalized log-probabilities (any shift per row) mean the same distribution.
    np.testing.assert_allclose(est.predict_proba(x + 7.0), p, atol=1e-12)


@checks
def test_calibrate_hook_keeps_the_labels(case: Case) -> None:
    est = case.fitted()
    labels = [f"l{i}" for i in range(case.n_labels)]
    dist = LabelDistribution.from_logprobs(labels, [-1.5 * i for i in range(case.n_labels)])
    out = est.calibrate(dist)
    assert isinstance(out, LabelDistribution) and out.labels == dist.labels
    assert sum(out.probabilities) == pytest.approx(1.0)


@checks
def test_to_dict_from_dict_round_trip(case: Case) -> None:
    est = case.fitted()
    data = json.loads(json.dumps(est.to_dict(), allow_nan=False))
    again = calibrator_from_dict(data)
    assert type(again) is type(est)
    assert json.dumps(again.to_dict()) == json.dumps(est.to_dict())
    x, _ = case.data(n=50, seed=2)
    np.testing.assert_array_equal(again.predict_proba(x), est.predict_proba(x))
    np.testing.assert_array_equal(type(est).from_dict(data).predict_proba(x), est.predict_proba(x))


@checks
def test_pickles(case: Case) -> None:
    est = case.fitted()
    again = pickle.loads(pickle.dumps(est))
    x, _ = case.data(n=50, seed=3)
    np.testing.assert_array_equal(again.predict_proba(x), est.predict_proba(x))
    unfitted = pickle.loads(pickle.dumps(case.make()))
    assert unfitted.get_params() == case.make().get_params()


def _shape_errors(case: Case) -> list[tuple[str, Callable[[], object]]]:
    x, y = case.data(n=40)
    est = case.make()
    errors: list[tuple[str, Callable[[], object]]] = [
        ("3-d log-probabilities", lambda: est.fit(x[:, :, None], y)),
        ("one label per row", lambda: est.fit(x[:, :1], y)),
    ]
    if y is not None:
        errors.append(("too few true labels", lambda: case.make().fit(x, y[:-1])))
    fitted = case.make().fit(x, y)
    wrong = np.zeros((2, case.n_labels + 1))
    errors.append(("another number of labels", lambda: fitted.predict_proba(wrong)))
    return errors


@checks
def test_shape_errors_are_value_errors_with_a_message(case: Case) -> None:
    for what, call in _shape_errors(case):
        with pytest.raises(ValueError) as info:
            call()
        assert not isinstance(info.value, NotFittedError), what
        assert "expected" in str(info.value) or "binary" in str(info.value), (what, info.value)


@pytest.mark.parametrize("method", BINARY_ONLY)
def test_binary_only_calibrators_refuse_more_labels(method: str) -> None:
    x, y = Case(method, {}, 3).data(n=50)
    with pytest.raises(ValueError, match="binary"):
        CALIBRATORS[method]().fit(x, y)


def test_every_method_is_checked() -> None:
    assert {case.method for case in CASES} == set(CALIBRATORS)
    assert set(BINARY_ONLY) | set(WRAPPERS) <= set(CALIBRATORS)


def test_registration_by_method_name() -> None:
    temperature = CALIBRATORS["temperature"]

    class Tweaked(temperature):
        """Inherits ``method``: must not take over the parent's name."""

    assert CALIBRATORS["temperature"] is temperature
    with pytest.raises(TypeError, match="already registered"):

        class Clash(BaseCalibrator):
            method = "temperature"

    assert CALIBRATORS["temperature"] is temperature
    with pytest.raises(TypeError):
        CALIBRATORS["mine"] = temperature
