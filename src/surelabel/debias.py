"""Label-free debiasing: divide out the prior a model brings to every item of a task.

"Calibrate before use" (Zhao et al. 2021): a model asked to classify an input that says
nothing ("N/A", "", "[MASK]") still prefers some labels, and it carries that preference into
every real item. Its distribution over the labels for such content-free inputs estimates
the prior; dividing it out (``p(label | item) / p_cf(label)``, renormalized) removes it. No
labelled data is needed, so it can be on out of the box. The prior is per subtask (a
multilabel task's yes/no per label, where a small model's prior is to say yes).

The functions here are pure: :func:`surelabel.methods.run_batch` scores the content-free
inputs with the same method and options, estimates the prior once per (backend, task,
options) and applies it to every result.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from surelabel._numeric import log_softmax
from surelabel.distribution import LabelDistribution

FloatArray = NDArray[np.float64]

#: The content-free inputs of Zhao et al. (2021).
CONTENT_FREE: tuple[str, ...] = ("N/A", "", "[MASK]")

_WORDS = (
    "the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was",
    "at", "by", "this", "be", "from", "or", "have", "an", "are", "not", "but", "they",
    "which", "one", "you", "were", "all", "we", "there", "been", "has", "when", "who",
    "more", "will", "if", "no", "out", "so", "said", "what", "up", "its", "about", "than",
    "into", "them", "can", "only", "other", "new", "some", "could", "time", "these", "two",
    "may", "then",
)


def random_strings(n: int = 4, seed: int = 0) -> tuple[str, ...]:
    """``n`` strings of common function words in random order (3 to 12 words): shaped like
    text, saying nothing about any label."""
    rng = random.Random(seed)
    return tuple(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
                 for _ in range(n))


#: What the prior is estimated from: the classic three and four random word strings.
CONTENT_FREE_INPUTS: tuple[str, ...] = CONTENT_FREE + random_strings()

#: A label's prior is floored at this share of the uniform prior (``1 / K``), so a label the
#: model never gives a content-free input is not multiplied by an unbounded factor.
PRIOR_FLOOR = 0.01


def estimate_prior(per_input: Sequence[Sequence[LabelDistribution]]) -> list[FloatArray]:
    """The prior of each subtask: the mean distribution over the content-free inputs
    (``per_input[i][s]`` is input ``i``'s distribution for subtask ``s``), floored at
    :data:`PRIOR_FLOOR` / K and renormalized."""
    if not per_input:
        raise ValueError("no content-free input could be scored")
    priors = []
    for s in range(len(per_input[0])):
        mean = np.mean([np.asarray(d[s].probabilities, dtype=np.float64) for d in per_input],
                       axis=0)
        k = len(mean)
        floored = np.maximum(mean, PRIOR_FLOOR / k)
        priors.append(np.asarray(floored / floored.sum(), dtype=np.float64))
    return priors


def apply_prior(distribution: LabelDistribution, prior: FloatArray) -> LabelDistribution:
    """``distribution`` with ``prior`` divided out. The label mass (how much of the model's
    probability the labels got) is kept as measured."""
    lps = distribution.logprobs
    if lps is not None and all(v is not None for v in lps):
        lp = np.array([float(v) for v in lps if v is not None], dtype=np.float64)
    else:
        lp = np.log(np.maximum(np.asarray(distribution.probabilities, dtype=np.float64),
                               1e-300))
    shifted = lp - np.log(prior)
    probs = np.exp(log_softmax(shifted))
    return LabelDistribution(
        labels=distribution.labels,
        probabilities=tuple(float(p) for p in probs),
        logprobs=tuple(None if name in distribution.unseen else float(v)
                       for name, v in zip(distribution.labels, shifted)),
        label_mass=distribution.label_mass,
        unseen=distribution.unseen,
        chosen=distribution.chosen,
    )
