"""Agreement between annotators: Cohen's kappa, Krippendorff's alpha, Wilson intervals.

Plain functions over labels (any hashable values), so the stats page needs no scikit-learn.
``tests/test_agreement.py`` checks them against scikit-learn's ``cohen_kappa_score`` and
the ``krippendorff`` package.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' labels for the same items (None when undefined: no
    items, or both raters always gave one and the same label)."""
    if len(a) != len(b):
        raise ValueError("the two raters must label the same items")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in ca.keys() | cb.keys()) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha(units: Sequence[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha for nominal data.

    ``units`` holds, per item, the labels its raters gave (any number of raters; a
    missing rating is simply absent). Items with fewer than two labels carry no
    information about agreement and are left out. None when undefined (fewer than two
    pairable values, or a single category in all of them).
    """
    coincidence: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, nc in counts.items():
            for k, nk in counts.items():
                pairs = nc * (nk - 1) if c == k else nc * nk
                coincidence[(c, k)] += pairs / (m - 1)
    totals: dict[Hashable, float] = defaultdict(float)
    for (c, _k), v in coincidence.items():
        totals[c] += v
    n = sum(totals.values())
    if n <= 1:
        return None
    disagree_expected = n * n - sum(v * v for v in totals.values())
    if disagree_expected <= 0:
        return None
    disagree_observed = n - sum(v for (c, k), v in coincidence.items() if c == k)
    return 1.0 - (n - 1) * disagree_observed / disagree_expected


def observed_agreement(units: Sequence[Sequence[Hashable]]) -> float | None:
    """Share of agreeing pairs of ratings within items (items with two ratings or more)."""
    agree = pairs = 0.0
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        agree += sum(c * (c - 1) for c in counts.values())
        pairs += m * (m - 1)
    return agree / pairs if pairs else None


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95 % by default); None without data."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
