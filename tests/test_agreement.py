"""Inter-annotator agreement against reference implementations: Cohen's kappa against
scikit-learn's ``cohen_kappa_score``, Krippendorff's alpha (nominal) against the
``krippendorff`` package and a published worked example, and the Wilson interval."""

from __future__ import annotations

import math
import random

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from surelabel.store.agreement import (
    cohen_kappa,
    krippendorff_alpha,
    observed_agreement,
    wilson_interval,
)


@pytest.mark.parametrize("seed", range(20))
def test_cohen_kappa_matches_scikit_learn(seed: int) -> None:
    rng = random.Random(seed)
    labels = ["fruit", "vegetable", "herb", "spice"][: rng.randint(2, 4)]
    n = rng.randint(5, 80)
    a = [rng.choice(labels) for _ in range(n)]
    b = [x if rng.random() < 0.6 else rng.choice(labels) for x in a]
    want = cohen_kappa_score(a, b)
    got = cohen_kappa(a, b)
    if math.isnan(want):
        assert got is None
    else:
        assert got == pytest.approx(want, abs=1e-12)


def test_cohen_kappa_edge_cases() -> None:
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement is certain
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])


def _reliability(units: list[list[str | None]], raters: int, codes: list[str]) -> np.ndarray:
    """The krippendorff package's layout: raters x units, NaN where a rater gave nothing."""
    data = np.full((raters, len(units)), np.nan)
    for u, values in enumerate(units):
        for r, v in enumerate(values):
            if v is not None:
                data[r, u] = codes.index(v)
    return data


@pytest.mark.parametrize("seed", range(20))
def test_krippendorff_alpha_matches_the_reference_package(seed: int) -> None:
    rng = random.Random(seed)
    codes = ["cat", "dog", "bird", "fish"][: rng.randint(2, 4)]
    raters = rng.randint(2, 5)
    units: list[list[str | None]] = []
    for _ in range(rng.randint(4, 60)):
        truth = rng.choice(codes)
        units.append([
            None if rng.random() < 0.25 else (truth if rng.random() < 0.7 else rng.choice(codes))
            for _ in range(raters)
        ])
    data = _reliability(units, raters, codes)
    pairable = [[v for v in u if v is not None] for u in units]
    if sum(len(u) for u in pairable if len(u) >= 2) < 2 or len(
            {v for u in pairable if len(u) >= 2 for v in u}) < 2:
        pytest.skip("no pairable values of two categories in this draw")
    want = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert krippendorff_alpha(pairable) == pytest.approx(want, abs=1e-9)


def test_krippendorff_alpha_published_example() -> None:
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: four
    observers, twelve units, nominal data, missing values; alpha = 0.743."""
    rows = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[r[u] for r in rows if r[u] is not None] for u in range(12)]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)


def test_alpha_edge_cases_and_observed_agreement() -> None:
    assert krippendorff_alpha([]) is None
    assert krippendorff_alpha([["a"], ["b"]]) is None  # nothing pairable
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None  # one category only
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert observed_agreement([["a", "a", "b"], ["c", "c"]]) == pytest.approx(4 / 8)
    assert observed_agreement([["a"]]) is None


def test_wilson_interval() -> None:
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(8, 10)  # type: ignore[misc]
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(0, 5)  # type: ignore[misc]
    assert low == 0.0 and 0 < high < 0.5
    low, high = wilson_interval(5, 5)  # type: ignore[misc]
    assert high == pytest.approx(1.0) and low > 0.5
