"""Label distributions: every label's probability, and the summary figures drawn from it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def logsumexp(values: Sequence[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    m = max(finite)
    return m + math.log(sum(math.exp(v - m) for v in finite))


@dataclass(frozen=True)
class LabelDistribution:
    """The probability of every label for one item.

    Attributes
    ----------
    labels:
        Label names, in task order.
    probabilities:
        Normalized over the labels; sums to 1.
    logprobs:
        Un-normalized log-probability of each label's complete answer, where measured
        (``None`` for a label whose probability is only bounded, see ``unseen``).
    label_mass:
        Total probability the model put on the allowed labels before normalization, in
        (0, 1]; ``None`` where it cannot be measured. Low mass means the model wanted to
        answer something else.
    unseen:
        Labels whose probability was not observed (top-k APIs) and is an upper bound.
    chosen:
        The label a method committed to, when that is not simply the most probable one:
        ``seed`` measures only the generated label, and spreads the rest of the
        probability over the others, which can then exceed it.
    """

    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    logprobs: tuple[float | None, ...] | None = None
    label_mass: float | None = None
    unseen: tuple[str, ...] = ()
    chosen: str | None = None

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.probabilities):
            raise ValueError("labels and probabilities differ in length")
        if len(self.labels) < 2:
            raise ValueError("a distribution needs at least 2 labels")
        if self.chosen is not None and self.chosen not in self.labels:
            raise ValueError(f"chosen label {self.chosen!r} is not one of the labels")

    @classmethod
    def from_logprobs(
        cls, labels: Sequence[str], logprobs: Sequence[float], bounded: Sequence[int] = ()
    ) -> LabelDistribution:
        """Normalize joint log-probabilities of complete label answers.

        ``bounded``: indices of labels whose entry is not a measurement but their share of
        an upper bound (a shortlist's cut labels): they become ``unseen``, with no
        logprob. Should one of them be the most probable, ``chosen`` is the most probable
        measured label.
        """
        total = logsumexp(logprobs)
        if total == -math.inf:
            raise ValueError("every label has probability 0")
        probs = tuple(math.exp(lp - total) for lp in logprobs)
        cut = set(bounded)
        dist = cls(
            labels=tuple(labels),
            probabilities=probs,
            logprobs=tuple(None if i in cut else float(lp) for i, lp in enumerate(logprobs)),
            label_mass=min(1.0, math.exp(total)),
            unseen=tuple(labels[i] for i in sorted(cut)),
        )
        return dist.choosing_measured() if cut else dist

    def choosing_measured(self) -> LabelDistribution:
        """The distribution with ``chosen`` the most probable label whose probability was
        measured, when an ``unseen`` one (a bound) is the most probable; else none."""
        chosen = None
        measured = [i for i, name in enumerate(self.labels) if name not in self.unseen]
        best = max(range(len(self.labels)), key=lambda i: (self.probabilities[i], -i))
        if measured and self.labels[best] in self.unseen:
            chosen = self.labels[max(measured, key=lambda i: (self.probabilities[i], -i))]
        return dataclasses.replace(self, chosen=chosen)

    @classmethod
    def from_probabilities(
        cls, probabilities: Mapping[str, float], **kwargs: object
    ) -> LabelDistribution:
        total = sum(probabilities.values())
        if total <= 0:
            raise ValueError("probabilities sum to 0")
        return cls(
            labels=tuple(probabilities),
            probabilities=tuple(p / total for p in probabilities.values()),
            **kwargs,  # type: ignore[arg-type]
        )

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.labels, self.probabilities))

    @property
    def _index(self) -> int:
        if self.chosen is not None:
            return self.labels.index(self.chosen)
        return max(range(len(self.labels)), key=lambda i: (self.probabilities[i], -i))

    @property
    def label(self) -> str:
        """The chosen label: the most probable one (first in task order on ties), unless a
        method committed to another (see ``chosen``)."""
        return self.labels[self._index]

    @property
    def confidence(self) -> float:
        """Probability of the chosen label."""
        return self.probabilities[self._index]

    @property
    def margin(self) -> float:
        """Chosen label's probability minus the highest other one (top-1 minus top-2)."""
        i = self._index
        return self.probabilities[i] - max(p for j, p in enumerate(self.probabilities) if j != i)

    @property
    def entropy(self) -> float:
        """Shannon entropy in nats."""
        return -sum(p * math.log(p) for p in self.probabilities if p > 0)

    def with_probabilities(self, probabilities: Sequence[float]) -> LabelDistribution:
        """The same distribution with replaced (e.g. calibrated) probabilities."""
        return LabelDistribution(
            labels=self.labels,
            probabilities=tuple(float(p) for p in probabilities),
            logprobs=self.logprobs,
            label_mass=self.label_mass,
            unseen=self.unseen,
            chosen=self.chosen,
        )
