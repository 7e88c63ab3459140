"""Confidence methods: from a backend's log-probabilities to a label distribution.

- ``exact``: teacher-force every label's complete answer (local models). Every label's
  probability is exact; the reason, if wanted, is generated afterwards, conditioned on the
  chosen label, so it cannot change the label's probability.
- ``seed``: the source technique, kept for comparison. Generate the JSON answer at
  temperature 0 and take exp(logprob) of the first token of the label value (found by
  character offsets). It measures only the chosen label; the remaining probability is
  spread evenly over the other labels so the record keeps its shape.
- ``topk``: for APIs. One temperature-0 request per item with ``top_logprobs``; every
  label's probability is read from the alternatives at the label value's tokens
  (:mod:`surelabel.top_logprobs`); labels not seen there get a documented upper bound.
- ``sampling``: for servers without logprobs. ``n`` answers at a temperature (default 5 at
  0.7, :class:`MethodOptions`); probabilities are vote shares with add-one smoothing,
  ``confidence_source: "sampling"``. Never a made-up number.

Every method works on the task's subtasks (:attr:`surelabel.task.Task.subtasks`): one
decision for a binary or multiclass task, one yes/no per label for a multilabel task, so a
method result is a distribution per subtask whatever the kind. The pipeline picks a method
from the backend's declared capabilities (:func:`resolve`, :func:`plan`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surelabel import debias, prompt
from surelabel._numeric import safe_log
from surelabel.backends.base import (
    SAMPLES,
    SAMPLING_TEMPERATURE,
    Backend,
    Capabilities,
    Generation,
    ScoreRequest,
    ScoreResult,
)
from surelabel.distribution import LabelDistribution
from surelabel.errors import (
    BackendError,
    MissingLogprobsError,
    OffSchemaError,
    UnsupportedMethodError,
)
from surelabel.extract import locate_value, map_to_tokens
from surelabel.task import YES_NO, Subtask, Task

BINARY = YES_NO
REASON_MAX_TOKENS = 32
SEED_MAX_TOKENS = 160

#: How the exact method scores a multilabel task (:attr:`MethodOptions.multilabel_mode`).
MULTILABEL_MODES: tuple[str, ...] = ("sequential", "independent")
DEFAULT_MULTILABEL_MODE = "independent"
#: The scoring-key entry, and the record field, that say the multilabel mode; a
#: calibration file without it was fitted on ``sequential`` scores.
MULTILABEL_KEY = "multilabel_mode"
LEGACY_MULTILABEL_MODE = "sequential"
#: The scoring-key entry that says the shortlist (:attr:`MethodOptions.shortlist`).
SHORTLIST_KEY = "shortlist"


@dataclass(frozen=True)
class MethodOptions:
    """Settings of the confidence methods (not of the backend).

    Parameters
    ----------
    samples, sampling_temperature:
        Answers drawn per item by ``sampling``, and their temperature.
    prompt:
        How the answer format is shown (:data:`surelabel.prompt.PROMPT_STYLES`).
    permutations:
        Score each item under this many label orders (the order the labels are listed in
        the prompt) and average the distributions (:func:`label_orders`); costs that many
        times the scoring.
    debias:
        Divide out the model's prior over the labels, estimated from content-free inputs
        (:mod:`surelabel.debias`); ``None``: on for the exact method, off for the others.
    multilabel_mode:
        How ``exact`` scores a multilabel task's yes/no per label
        (:data:`MULTILABEL_MODES`): ``sequential``, each label after the answers already
        fixed for the labels before it (S rounds of scoring, one per label), or
        ``independent`` (the default), each label right after ``{"field": {`` with no
        earlier answer written (all labels of all items in one round). Measured on the
        two multilabel shared sets, independent had the lower ECE of the yes/no answers
        on both, raw and debiased, and was better on most other figures
        (docs/CALIBRATION.md, "Multilabel: sequential or independent").
        The other methods generate the whole answer, so it does not apply to them.
    shortlist:
        For ``exact`` on a single-label task: score only the labels under the most
        probable first tokens of the answer (of the labels' own, after the start they all
        share), read after the item, ``shortlist`` tokens a round, ranked as the label
        will be chosen (with debiasing, each token's probability divided by the smallest
        prior under it), until the best scored label beats the upper bound of every label
        left: so the label is the one scoring every label gives (up to the 1e-4 of the
        trie; with ``permutations``, per label order; a task calibration that weighs
        labels, such as ``dirichlet``, may still move it). ``0``, the default: every
        label.
        A cut label is not measured: the cut labels together get an estimate of their
        mass, ``cut_mass`` (their tokens' probability, ``cut_bound``, an upper bound,
        times the share of the kept tokens' probability that the scored labels hold),
        each label its token's part, split evenly; ``label_mass`` includes it, and the
        chosen label's confidence is computed with it (within 0.014 of scoring every
        label's on average, docs/BENCHMARKS.md). Records say ``shortlist`` (K),
        ``labels_scored``, ``cut_mass`` and ``cut_bound``; should a cut label still come
        out most probable (permutation averaging), the best scored one is chosen, with a
        warning. For hundreds of labels, where scoring every label costs most
        (docs/BENCHMARKS.md, "Many labels"); the debiasing prior is estimated with every
        label scored. Backends that cannot shortlist score every label and say so.
    """

    samples: int = SAMPLES
    sampling_temperature: float = SAMPLING_TEMPERATURE
    prompt: str = prompt.DEFAULT_PROMPT_STYLE
    permutations: int = 1
    debias: bool | None = None
    multilabel_mode: str = DEFAULT_MULTILABEL_MODE
    shortlist: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise UnsupportedMethodError("samples: must be at least 1")
        if self.sampling_temperature <= 0:
            raise UnsupportedMethodError("sampling temperature: must be above 0")
        if self.permutations < 1:
            raise UnsupportedMethodError("permutations: must be at least 1")
        if self.shortlist < 0:
            raise UnsupportedMethodError("shortlist: must be at least 0 (0: every label)")
        prompt.check_style(self.prompt)
        if self.multilabel_mode not in MULTILABEL_MODES:
            raise UnsupportedMethodError(
                f"multilabel mode: unknown mode {self.multilabel_mode!r}; expected one of "
                f"{', '.join(MULTILABEL_MODES)}")

    def shortlist_for(self, method: str, task: Task) -> int:
        """The shortlist that applies to ``method`` on ``task`` (exact on a single-label
        task; else 0, every label)."""
        return self.shortlist if method == "exact" and task.kind != "multilabel" else 0

    def debias_for(self, method: str) -> bool:
        """Whether debiasing applies to ``method`` (the default: exact only)."""
        return method == "exact" if self.debias is None else self.debias

    def scoring_key(self, method: str, task: Task | None = None) -> dict[str, Any]:
        """What changes the distributions a method gives (recorded in calibration files,
        which refuse distributions made otherwise).

        ``multilabel_mode`` is part of it for the exact method on a multilabel task, or
        with no ``task`` (a task-independent record such as a generic calibration); it
        changes nothing for a single-label task or another method. ``shortlist`` likewise,
        for the exact method on a single-label task (or with no ``task``).
        """
        key: dict[str, Any] = {"prompt": self.prompt, "permutations": self.permutations,
                               "debias": self.debias_for(method)}
        if method == "sampling":
            key.update(samples=self.samples, sampling_temperature=self.sampling_temperature)
        if method == "exact" and (task is None or task.kind == "multilabel"):
            key[MULTILABEL_KEY] = self.multilabel_mode
        if method == "exact" and (task is None or task.kind != "multilabel"):
            key[SHORTLIST_KEY] = self.shortlist
        return key


DEFAULT_OPTIONS = MethodOptions()


@dataclass(frozen=True)
class MethodResult:
    """What a method found for one item: a distribution per subtask, in task order."""

    distributions: tuple[LabelDistribution, ...]
    names: tuple[str, ...]
    reason: str | None = None
    warnings: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def distribution(self) -> LabelDistribution | None:
        """The distribution over the labels of a single-label task (else ``None``)."""
        return self.distributions[0] if len(self.distributions) == 1 else None

    @property
    def per_label(self) -> dict[str, LabelDistribution] | None:
        """Each label's (true, false) distribution, for a multilabel task (else ``None``)."""
        if len(self.distributions) == 1:
            return None
        return dict(zip(self.names, self.distributions))

    def with_distributions(self, distributions: Sequence[LabelDistribution]) -> MethodResult:
        return MethodResult(tuple(distributions), self.names, self.reason, self.warnings,
                            dict(self.info))


Method = Callable[..., MethodResult]


def _result(
    task: Task,
    dists: Sequence[LabelDistribution],
    reason: str | None,
    warnings: Sequence[str],
    info: dict[str, Any],
) -> MethodResult:
    names = tuple(s.name for s in task.subtasks)
    return MethodResult(tuple(dists), names, reason, tuple(warnings), info)


def chosen_answer(task: Task, dists: Sequence[LabelDistribution]) -> str | tuple[str, ...]:
    """The answer the distributions commit to: a label, or the labels that apply."""
    if task.kind == "multilabel":
        return tuple(s.name for s, d in zip(task.subtasks, dists) if d.label == "true")
    return dists[0].label


# -- exact ------------------------------------------------------------------------------


def exact_batch(
    backend: Backend,
    task: Task,
    texts: Sequence[str],
    want_reason: bool,
    options: MethodOptions | None = None,
    *,
    bias: Mapping[str, float] | None = None,
) -> list[MethodResult | BackendError]:
    """Exact probability of every label by teacher forcing, for several texts at once.

    Each round is one :meth:`~surelabel.backends.base.Backend.score_batch` call over all
    items, so a backend can evaluate several items (and all their labels) together. A
    single-label task takes one round. A multilabel task in ``sequential`` mode
    (:attr:`MethodOptions.multilabel_mode`) takes one round per label: a label is scored
    after the answers already fixed (by argmax) for the labels before it, the order in
    which the model itself writes them; in ``independent`` mode every label is scored
    right after ``{"field": {``, so all labels of all items go in one round. A text whose
    scoring fails gets its error in its place.

    ``bias`` (label name -> log weight; debiasing's minus log prior) is what the caller
    will add to each label's log-probability before choosing: a shortlist ranks by it and
    scores enough labels for the best to be a scored one.
    """
    opts = options or DEFAULT_OPTIONS
    n = len(texts)
    messages = [tuple(prompt.messages(task, t, opts.prompt)) for t in texts]
    dists: list[list[LabelDistribution]] = [[] for _ in range(n)]
    earlier: list[dict[str, bool]] = [{} for _ in range(n)]
    warnings: list[list[str]] = [[] for _ in range(n)]
    errors: list[BackendError | None] = [None] * n
    independent = task.kind == "multilabel" and opts.multilabel_mode == "independent"
    rounds = [task.subtasks] if independent else [(sub,) for sub in task.subtasks]
    caps = backend.capabilities
    shortlist = opts.shortlist_for("exact", task)
    shortlists: list[dict[str, Any]] = [{} for _ in range(n)]
    for subs in rounds:
        todo = [i for i in range(n) if errors[i] is None]
        if not todo:
            break
        requests = []
        for i in todo:
            for sub in subs:
                prefix, conts, closer = prompt.subtask_request(task, sub, earlier[i])
                short = shortlist if caps.shortlist else 0
                weights = tuple(bias[name] for name in sub.labels) if bias and short else ()
                requests.append(ScoreRequest(messages[i], prefix, tuple(conts), closer,
                                             short, weights))
        results = backend.score_batch(requests)
        for k, res in enumerate(results):
            i, sub = todo[k // len(subs)], subs[k % len(subs)]
            if errors[i] is not None:
                continue
            if isinstance(res, BaseException):
                if not isinstance(res, BackendError):
                    raise res
                errors[i] = res
                continue
            warnings[i].extend(w for w in res.warnings if w not in warnings[i])
            dist = LabelDistribution.from_logprobs(sub.labels, res.logprobs, bounded=res.cut)
            dists[i].append(dist)
            if shortlist:
                shortlists[i] = _shortlist_info(shortlist, res, caps, warnings[i])
            if task.kind == "multilabel" and not independent:
                earlier[i][sub.name] = dist.label == "true"
    info: dict[str, Any] = {"confidence_source": "logprobs"}
    if task.kind == "multilabel":
        info[MULTILABEL_KEY] = opts.multilabel_mode
    out: list[MethodResult | BackendError] = []
    for i in range(n):
        error = errors[i]
        if error is not None:
            out.append(error)
            continue
        reason = None
        if want_reason and caps.assistant_prefix:
            try:
                gen = backend.generate(
                    messages[i],
                    prefix=prompt.reason_prefix(task, chosen_answer(task, dists[i])),
                    max_tokens=REASON_MAX_TOKENS,
                    stop=['"'],
                )
            except BackendError as exc:
                out.append(exc)
                continue
            reason = prompt.trim_reason(gen.text)
        elif want_reason:
            warnings[i].append("no reason: the backend cannot continue a started answer")
        out.append(_result(task, dists[i], reason, warnings[i], {**info, **shortlists[i]}))
    return out


def _shortlist_info(
    k: int, res: ScoreResult, caps: Capabilities, warnings: list[str]
) -> dict[str, Any]:
    """The record fields that say how a shortlisted item was scored; warns when the
    backend scored every label."""
    if not caps.shortlist:
        warnings.append("no shortlist: the backend scores every label")
    return {SHORTLIST_KEY: k, "labels_scored": len(res.logprobs) - len(res.cut),
            "cut_mass": round(res.cut_mass, 6), "cut_bound": round(res.cut_bound, 6)}


def exact(
    backend: Backend, task: Task, text: str, want_reason: bool,
    options: MethodOptions | None = None,
) -> MethodResult:
    """Exact probability of every label of one text by teacher forcing."""
    return _one(exact_batch(backend, task, [text], want_reason, options)[0])


def _one(result: MethodResult | BackendError) -> MethodResult:
    if isinstance(result, BackendError):
        raise result
    return result


# -- seed and topk: read a generated answer ---------------------------------------------


def _first_token_probability(gen: Generation, path: Sequence[str]) -> tuple[Any, float]:
    span = locate_value(gen.text, list(path))
    span = map_to_tokens(span, gen.text, [t.token for t in gen.tokens])
    return span.value, math.exp(gen.tokens[span.first_token].logprob)


def _answer_schema(task: Task, want_reason: bool, caps: Capabilities) -> dict[str, Any] | None:
    """The JSON schema to constrain generation with; ``None`` when the backend cannot (the
    prompt still describes the format)."""
    if not caps.json_schema:
        return None
    schema = prompt.json_schema(task)
    if not want_reason:
        schema["properties"].pop("reason", None)
        schema["required"] = [k for k in schema["required"] if k != "reason"]
    return schema


def _reason(text: str, want_reason: bool) -> str | None:
    if not want_reason:
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return None
    reason = parsed.get("reason") if isinstance(parsed, dict) else None
    return prompt.trim_reason(reason) if isinstance(reason, str) else None


def _label_of(sub: Subtask, value: Any, many: bool) -> str:
    label = sub.label_of(value)
    if label is None:
        where = f"label {sub.name!r}: " if many else ""
        raise OffSchemaError(f"{where}model answered {value!r}, not one of "
                             f"{', '.join(sub.labels)}")
    return label


def seed(
    backend: Backend, task: Task, text: str, want_reason: bool,
    options: MethodOptions | None = None,
) -> MethodResult:
    """The source technique: exp(logprob) of the first token of the generated label value."""
    gen = backend.generate(
        prompt.messages(task, text, (options or DEFAULT_OPTIONS).prompt),
        schema=_answer_schema(task, want_reason, backend.capabilities),
        max_tokens=SEED_MAX_TOKENS,
        top_logprobs=1,
    )
    if not gen.tokens:
        raise MissingLogprobsError("the backend returned no token logprobs")
    many = len(task.subtasks) > 1
    dists = []
    for sub in task.subtasks:
        value, p = _first_token_probability(gen, sub.path)
        chosen = _label_of(sub, value, many)
        rest = (1.0 - p) / (len(sub.labels) - 1)
        probs = tuple(p if name == chosen else rest for name in sub.labels)
        dists.append(LabelDistribution(sub.labels, probs, chosen=chosen))
    info = {"confidence_source": "logprobs", "usage": gen.usage}
    return _result(task, dists, _reason(gen.text, want_reason),
                   tuple(gen.info.get("warnings", ())), info)


def topk(
    backend: Backend, task: Task, text: str, want_reason: bool,
    options: MethodOptions | None = None,
) -> MethodResult:
    """Every label's probability from the top-k alternatives of one generated answer."""
    from surelabel import top_logprobs as reader

    caps = backend.capabilities
    gen = backend.generate(
        prompt.messages(task, text, (options or DEFAULT_OPTIONS).prompt),
        schema=_answer_schema(task, want_reason, caps),
        max_tokens=SEED_MAX_TOKENS,
        top_logprobs=caps.max_top_logprobs,
    )
    if not gen.tokens and caps.sampling:
        result = sampling(backend, task, text, want_reason, options)
        note = "the server returned no logprobs; used sampling"
        return MethodResult(result.distributions, result.names, result.reason,
                            (note, *result.warnings), result.info)
    info: dict[str, Any] = {
        "confidence_source": "logprobs",
        "response_format": gen.info.get("response_format"),
        "usage": gen.usage,
    }
    warnings = list(gen.info.get("warnings", ()))
    many = len(task.subtasks) > 1
    dists = []
    for sub in task.subtasks:
        r = reader.read_value(gen, list(sub.path), dict(zip(sub.labels, sub.values)))
        dists.append(r.distribution)
        where = f"{sub.name}: " if many else ""
        warnings.extend(where + w for w in r.warnings)
        if sub.label_of(r.value) is None:
            warnings.append(f"{where}model answered {r.value!r}, not a label; "
                            "distribution from top-k")
        if not many:
            info["chosen_logprob"] = round(r.chosen_logprob, 6)
            if r.bounded:
                info["upper_bound_labels"] = list(r.bounded)
    return _result(task, dists, _reason(gen.text, want_reason), warnings, info)


# -- sampling ---------------------------------------------------------------------------


def _at(answer: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(answer, dict):
            return None
        answer = answer.get(key)
    return answer


def sampling(
    backend: Backend, task: Task, text: str, want_reason: bool,
    options: MethodOptions | None = None,
) -> MethodResult:
    """Self-consistency: vote shares of ``options.samples`` sampled answers, add-one smoothed.

    Answers that are not valid JSON or name no label count for no label; ``label_mass`` is
    the share of answers that named one.
    """
    opts = options or DEFAULT_OPTIONS
    n = opts.samples
    gens = backend.sample(
        prompt.messages(task, text, opts.prompt), n=n, temperature=opts.sampling_temperature,
        schema=_answer_schema(task, want_reason, backend.capabilities),
        max_tokens=SEED_MAX_TOKENS,
    )
    usage: dict[str, int] = {}
    for g in gens:
        for k, v in g.usage.items():
            usage[k] = usage.get(k, 0) + v
    info: dict[str, Any] = {
        "confidence_source": "sampling",
        "samples": n,
        "response_format": gens[0].info.get("response_format") if gens else None,
        "usage": usage,
    }
    answers: list[Any] = []
    for g in gens:
        try:
            parsed = json.loads(g.text)
        except json.JSONDecodeError:
            parsed = None
        answers.append(parsed if isinstance(parsed, dict) else None)
    valid = sum(a is not None for a in answers)
    dists = []
    picks: list[list[str | None]] = []
    for sub in task.subtasks:
        votes = [None if a is None else sub.label_of(_at(a, sub.path)) for a in answers]
        picks.append(votes)
        named = [v for v in votes if v is not None]
        counts = [named.count(name) for name in sub.labels]
        probs = tuple((c + 1) / (len(named) + len(sub.labels)) for c in counts)
        dists.append(LabelDistribution(sub.labels, probs,
                                       label_mass=len(named) / n if n else None))
    warnings: tuple[str, ...] = ()
    if valid < n:
        warnings = (f"{n - valid} of {n} samples were not valid JSON",)
    # The reason of the first sample that agrees with the chosen answer on every subtask.
    reason = None
    for j, g in enumerate(gens):
        if all(picks[s][j] == d.label for s, d in enumerate(dists)):
            reason = _reason(g.text, want_reason)
            break
    if reason is None and len(dists) > 1:
        reason = next((r for g in gens if (r := _reason(g.text, want_reason))), None)
    return _result(task, dists, reason, warnings, info)


# -- the registry -----------------------------------------------------------------------

METHODS: dict[str, Method] = {"exact": exact, "seed": seed, "topk": topk, "sampling": sampling}
# What each method needs from a backend.
REQUIRES: dict[str, Callable[[Capabilities], bool]] = {
    "exact": lambda c: c.exact_scoring,
    "seed": lambda c: c.logprobs,
    "topk": lambda c: c.logprobs,
    "sampling": lambda c: c.sampling,
}
#: ``auto`` takes the first of these the backend supports: the full distribution where the
#: model can be teacher-forced, else what an API's top-k or samples allow.
AUTO_ORDER = ("exact", "topk", "sampling")


def resolve(name: str, capabilities: Capabilities) -> str:
    """Pick the method for ``auto``, or check that the named one fits the backend."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            if REQUIRES[candidate](capabilities):
                return candidate
        raise UnsupportedMethodError("no confidence method fits this backend")
    if name not in METHODS:
        raise UnsupportedMethodError(
            f"unknown method {name!r}; expected auto or one of {', '.join(METHODS)}"
        )
    if not REQUIRES[name](capabilities):
        raise UnsupportedMethodError(f"method {name!r} is not supported by this backend")
    return name


def full_distribution_method(capabilities: Capabilities) -> str:
    """The best method that measures every label (exact, else topk, else sampling): what
    evaluation and calibration fit on."""
    return resolve("auto", capabilities)


@dataclass(frozen=True)
class Plan:
    """How a classifier runs a method on a backend.

    ``workers``: items in flight at once (an API's declared concurrency; 1 for a local
    model, which batches items into one evaluation instead, see :func:`run_batch`);
    ``batch_size``: items per :func:`run_batch` call (the backend's ``batch_items`` for the
    exact method, else 1).
    """

    method: str
    workers: int
    batch_size: int = 1


def plan(name: str, capabilities: Capabilities) -> Plan:
    """The method (as :func:`resolve`) and the parallelism the backend declares."""
    method = resolve(name, capabilities)
    batch = max(1, capabilities.batch_items) if method == "exact" else 1
    return Plan(method, max(1, capabilities.concurrency), batch)


def label_orders(n_labels: int, k: int) -> list[tuple[int, ...]]:
    """The ``k`` label orders of permutation averaging: the task's own, then its reverse
    (the first label last), then cyclic shifts spread evenly over the labels."""
    base = tuple(range(n_labels))
    orders: list[tuple[int, ...]] = [base]
    if k > 1:
        orders.append(tuple(reversed(base)))
    j = 1
    while len(orders) < k and j < n_labels:
        shift = round(j * n_labels / max(1, k - 1)) % n_labels
        candidate = base[shift:] + base[:shift]
        if candidate not in orders:
            orders.append(candidate)
        j += 1
    return orders[:k]


def _reordered(task: Task, order: Sequence[int]) -> Task:
    return dataclasses.replace(task, labels=tuple(task.labels[i] for i in order))


def _in_task_order(task: Task, permuted: Task, result: MethodResult) -> list[LabelDistribution]:
    """A permuted task's distributions, back in ``task``'s subtask and label order."""
    del permuted  # the result names its subtasks and labels
    by_name = dict(zip(result.names, result.distributions))
    out = []
    for sub in task.subtasks:
        dist = by_name[sub.name] if len(task.subtasks) > 1 else result.distributions[0]
        index = [dist.labels.index(name) for name in sub.labels]
        out.append(LabelDistribution(
            labels=sub.labels,
            probabilities=tuple(dist.probabilities[i] for i in index),
            logprobs=None if dist.logprobs is None else tuple(dist.logprobs[i] for i in index),
            label_mass=dist.label_mass,
            unseen=dist.unseen,
        ))
    return out


def _average(dists: Sequence[LabelDistribution]) -> LabelDistribution:
    """The mean of distributions over the same labels; the label mass is averaged too."""
    probs = np.mean([d.probabilities for d in dists], axis=0)
    masses = [d.label_mass for d in dists if d.label_mass is not None]
    mass = float(np.mean(masses)) if masses else None
    scale = math.log(mass) if mass else 0.0
    return LabelDistribution(
        labels=dists[0].labels,
        probabilities=tuple(float(p) for p in probs),
        logprobs=tuple(float(v) for v in safe_log(probs) + scale),
        label_mass=mass,
        unseen=tuple(sorted({u for d in dists for u in d.unseen})),
    )


def _run(
    method: str,
    backend: Backend,
    task: Task,
    texts: Sequence[str],
    want_reason: bool,
    options: MethodOptions,
    bias: Mapping[str, float] | None = None,
) -> list[MethodResult | BackendError]:
    if method == "exact":
        return exact_batch(backend, task, texts, want_reason, options, bias=bias)
    fn = METHODS[method]
    out: list[MethodResult | BackendError] = []
    for text in texts:
        try:
            out.append(fn(backend, task, text, want_reason, options))
        except BackendError as exc:
            out.append(exc)
    return out


def _permuted(
    method: str,
    backend: Backend,
    task: Task,
    texts: Sequence[str],
    want_reason: bool,
    options: MethodOptions,
    bias: Mapping[str, float] | None = None,
) -> list[MethodResult | BackendError]:
    """Permutation averaging: each label order scores every text (all texts under one order
    before the next, so each order's shared prompt is evaluated once per batch)."""
    orders = label_orders(len(task.labels), options.permutations)
    runs = []
    for j, order in enumerate(orders):
        permuted = _reordered(task, order) if j else task
        runs.append((permuted, _run(method, backend, permuted, texts, want_reason and j == 0,
                                    options, bias)))
    out: list[MethodResult | BackendError] = []
    for i in range(len(texts)):
        first = runs[0][1][i]
        failed = next((r[i] for _, r in runs if isinstance(r[i], BackendError)), None)
        if failed is not None:
            out.append(failed)
            continue
        assert isinstance(first, MethodResult)
        per_order = []
        for permuted, r in runs:
            res = r[i]
            assert isinstance(res, MethodResult)
            per_order.append(_in_task_order(task, permuted, res))
        dists = [_average([d[s] for d in per_order]) for s in range(len(task.subtasks))]
        warnings = list(first.warnings)
        info = {**first.info, "permutations": len(orders)}
        out.append(MethodResult(tuple(dists), first.names, first.reason, tuple(warnings), info))
    return out


_priors: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], list[Any]]] = (
    weakref.WeakKeyDictionary()
)
_priors_lock = threading.Lock()


def content_free_prior(
    method: str, backend: Backend, task: Task, options: MethodOptions
) -> list[Any]:
    """The model's prior over each subtask's answers for this task, prompt and method,
    from :data:`surelabel.debias.CONTENT_FREE_INPUTS` (scored once per backend, then
    cached for the backend's lifetime)."""
    # Every label is scored for the prior, with or without a shortlist.
    plain = dataclasses.replace(options, debias=False, shortlist=0)
    key = (task.fingerprint(), method, plain)
    with _priors_lock:
        cache = _priors.setdefault(backend, {})
        if key in cache:
            return cache[key]
    results = _score(method, backend, task, debias.CONTENT_FREE_INPUTS, False, plain)
    scored = [r.distributions for r in results if isinstance(r, MethodResult)]
    if not scored:
        first = next(r for r in results if isinstance(r, BackendError))
        raise BackendError(f"debiasing: no content-free input could be scored ({first})",
                           retryable=first.retryable)
    prior = debias.estimate_prior(scored)
    with _priors_lock:
        _priors.setdefault(backend, {})[key] = prior
    return prior


def _score(
    method: str,
    backend: Backend,
    task: Task,
    texts: Sequence[str],
    want_reason: bool,
    options: MethodOptions,
    bias: Mapping[str, float] | None = None,
) -> list[MethodResult | BackendError]:
    if options.permutations > 1:
        return _permuted(method, backend, task, texts, want_reason, options, bias)
    return _run(method, backend, task, texts, want_reason, options, bias)


def run_batch(
    method: str,
    backend: Backend,
    task: Task,
    texts: Sequence[str],
    want_reason: bool,
    options: MethodOptions | None = None,
) -> list[MethodResult | BackendError]:
    """Run a method on several texts; a text whose method fails gets its error in place.

    ``exact`` scores the texts together (:func:`exact_batch`); the others go one text at a
    time (an API's parallelism comes from the caller's workers). With
    ``options.permutations`` > 1 every label order scores the texts and the distributions
    are averaged; with debiasing on (:meth:`MethodOptions.debias_for`) the content-free
    prior is divided out and the result says ``"debiased": true``.
    """
    opts = options or DEFAULT_OPTIONS
    debiased = opts.debias_for(method) and bool(texts)
    if not debiased:
        results = _score(method, backend, task, texts, want_reason, opts)
        return [_settle_shortlist(r) for r in results]
    prior = content_free_prior(method, backend, task, opts)
    # A shortlist ranks the labels as debiasing will: by log-probability minus log prior.
    bias = ({name: -math.log(float(p)) for name, p in zip(task.subtasks[0].labels, prior[0])}
            if opts.shortlist_for(method, task) else None)
    results = _score(method, backend, task, texts, want_reason, opts, bias)
    out: list[MethodResult | BackendError] = []
    for r in results:
        if isinstance(r, BackendError):
            out.append(r)
            continue
        dists = [debias.apply_prior(d, p) for d, p in zip(r.distributions, prior)]
        out.append(MethodResult(tuple(dists), r.names, r.reason, r.warnings,
                                {**r.info, "debiased": True}))
    return [_settle_shortlist(r) for r in out]


def _settle_shortlist(result: MethodResult | BackendError) -> MethodResult | BackendError:
    """A shortlisted result whose most probable label is a cut one (its share of the
    bound, after debiasing and averaging) chooses the best scored label instead, and
    says so."""
    if isinstance(result, BackendError) or SHORTLIST_KEY not in result.info:
        return result
    dists = [d.choosing_measured() for d in result.distributions]
    warnings = list(result.warnings)
    for d in dists:
        if d.chosen is not None:
            warnings.append(f"shortlist: a cut label's share of the cut mass exceeds every "
                            f"scored label's probability; {d.chosen!r} is the best scored "
                            "one (raise --shortlist)")
    return MethodResult(tuple(dists), result.names, result.reason, tuple(warnings),
                        result.info)
