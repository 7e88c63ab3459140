"""The backend interface: what a model can do, declared as data.

A backend turns chat messages into token log-probabilities. It declares its
:class:`Capabilities`, and the pipeline picks the confidence method from them (never from
``isinstance``):

- ``exact_scoring``: the backend can score any continuation by teacher forcing
  (:meth:`Backend.score`); every label's probability is then exact.
- ``max_top_logprobs``: how many alternatives per generated token it reports (0: none).
- ``assistant_prefix``: generation can continue a given start of the assistant's answer
  (the exact method generates its reason that way, after the chosen label).
- ``json_schema``: generation can be constrained to a JSON schema; without it the schema is
  only described in the prompt.
- ``sampling``: the backend can draw samples at a temperature (:meth:`Backend.sample`), for
  self-consistency where logprobs are missing.
- ``concurrency``: how many requests are worth running at once (an API's connection
  limit); 1 for a local model that evaluates one thing at a time.
- ``batch_items``: how many items are worth sending to one :meth:`Backend.score_batch` call
  (a local model that evaluates several items together); 1 when batching gains nothing.

Every operation is in the :class:`Backend` protocol; one a backend cannot do raises
:class:`~surelabel.errors.UnsupportedMethodError`. :class:`BaseBackend` gives those
defaults, a batch ``score_batch`` that loops over ``score``, and pickling through the
backend's :class:`~surelabel.backends.registry.BackendSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from surelabel.errors import UnsupportedMethodError
from surelabel.prompt import Message

if TYPE_CHECKING:
    from surelabel.backends.registry import BackendSpec

#: Self-consistency defaults (``--method sampling``): answers per item and their temperature.
SAMPLES = 5
SAMPLING_TEMPERATURE = 0.7


@dataclass(frozen=True)
class Capabilities:
    exact_scoring: bool = False
    max_top_logprobs: int = 0
    assistant_prefix: bool = False
    json_schema: bool = False
    sampling: bool = False
    concurrency: int = 1
    batch_items: int = 1
    #: Whether :attr:`ScoreRequest.shortlist` is honoured (else every label is scored).
    shortlist: bool = False

    @property
    def logprobs(self) -> bool:
        return self.max_top_logprobs > 0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its bytes, log-probability and the top alternatives."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()

    @property
    def text(self) -> str:
        return self.token.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Generation:
    """A generated answer. ``tokens`` is empty when the backend gives no logprobs."""

    text: str
    tokens: tuple[TokenLogprob, ...] = ()
    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreRequest:
    """One teacher-forcing request: ``log P(continuation + closer | messages, prefix)`` for
    every continuation (see :meth:`Backend.score`)."""

    messages: tuple[Message, ...]
    prefix: str
    continuations: tuple[str, ...]
    closer: str = ""
    #: Score only the continuations under the most probable first tokens (read after the
    #: context), ``shortlist`` tokens at a time: the ``shortlist`` first, then the next
    #: ``shortlist`` until the best scored continuation (its log-probability plus its
    #: ``shortlist_bias``) beats every cut token's probability (plus the largest bias
    #: under it), an upper bound of each cut continuation's; so the continuation the
    #: caller chooses is a scored one. ``0``: all of them. Honoured where
    #: :attr:`Capabilities.shortlist` says so; see :attr:`ScoreResult.cut`.
    shortlist: int = 0
    #: Per continuation, what the caller adds to its log-probability before choosing
    #: (debiasing: minus the log of its prior); the shortlist ranks first tokens by their
    #: log-probability plus the largest bias under them. ``()``: no bias.
    shortlist_bias: tuple[float, ...] = ()


@dataclass(frozen=True)
class ScoreResult:
    """Log-probabilities of continuations given the same context.

    With a shortlist (:attr:`ScoreRequest.shortlist`), ``cut`` lists the continuations not
    scored. ``cut_bound`` is the probability of their first tokens of their own: an upper
    bound of their total probability. ``cut_mass`` is an estimate, the bound times the
    share of the kept tokens' probability that the scored continuations hold; each cut
    continuation's ``logprobs`` entry is its part of that estimate (its token's share,
    split evenly among the continuations under it), not a measurement.
    """

    logprobs: tuple[float, ...]
    prompt_tokens: int = 0
    warnings: tuple[str, ...] = ()
    cut: tuple[int, ...] = ()
    cut_mass: float = 0.0
    cut_bound: float = 0.0


@runtime_checkable
class Backend(Protocol):
    """What every backend provides. Optional operations raise ``UnsupportedMethodError``."""

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def model_name(self) -> str: ...

    @property
    def spec(self) -> BackendSpec | None:
        """How to build this backend again (in another process); ``None`` if it cannot be."""
        ...

    def score(
        self,
        messages: Sequence[Message],
        prefix: str,
        continuations: Sequence[str],
        *,
        closer: str = "",
    ) -> ScoreResult:
        """Exact ``log P(continuation, closer | messages, answer starts with prefix)``."""
        ...

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult | Exception]:
        """:meth:`score` for several requests at once, in order; a request that fails gives
        its exception in its place (the others still count)."""
        ...

    def generate(
        self,
        messages: Sequence[Message],
        *,
        prefix: str = "",
        schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
    ) -> Generation:
        """Greedy (temperature 0) generation of the assistant's answer."""
        ...

    def sample(
        self,
        messages: Sequence[Message],
        *,
        n: int,
        temperature: float = SAMPLING_TEMPERATURE,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
    ) -> list[Generation]:
        """``n`` answers drawn at ``temperature``."""
        ...

    def close(self) -> None:
        """Free what the backend holds (model, connections). Safe to call twice."""
        ...


class BaseBackend:
    """Defaults for the optional parts of :class:`Backend`.

    A subclass sets :attr:`name` (its registry name) and calls :meth:`_remember` with the
    options it was built from, so the backend has a :attr:`spec` and pickles as that spec
    (the model is loaded again on the other side).
    """

    #: The name this backend is registered under (entry-point group ``surelabel.backends``).
    name: ClassVar[str] = ""
    _spec: BackendSpec | None = None

    def _remember(self, **options: Any) -> None:
        """Record the options this backend was built from (``None`` values are dropped)."""
        from surelabel.backends.registry import BackendSpec

        try:
            self._spec = BackendSpec(self.name, options)
        except (TypeError, ValueError):
            self._spec = None  # built from a live object (a client, a callable): not portable

    @property
    def spec(self) -> BackendSpec | None:
        return self._spec

    def score(
        self,
        messages: Sequence[Message],
        prefix: str,
        continuations: Sequence[str],
        *,
        closer: str = "",
    ) -> ScoreResult:
        raise UnsupportedMethodError(
            f"the {self.name or type(self).__name__} backend cannot score given answers "
            "(no exact scoring); use --method topk or sampling"
        )

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult | Exception]:
        from surelabel.errors import BackendError

        out: list[ScoreResult | Exception] = []
        for r in requests:
            try:
                out.append(self.score(r.messages, r.prefix, r.continuations, closer=r.closer))
            except BackendError as exc:
                out.append(exc)
        return out

    def generate(
        self,
        messages: Sequence[Message],
        *,
        prefix: str = "",
        schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
    ) -> Generation:
        raise UnsupportedMethodError(
            f"the {self.name or type(self).__name__} backend cannot generate text"
        )

    def sample(
        self,
        messages: Sequence[Message],
        *,
        n: int,
        temperature: float = SAMPLING_TEMPERATURE,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
    ) -> list[Generation]:
        raise UnsupportedMethodError(
            f"the {self.name or type(self).__name__} backend cannot sample answers; "
            "use another --method"
        )

    def close(self) -> None:
        return None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        spec = self.spec
        if spec is None:
            raise TypeError(
                f"this {type(self).__name__} cannot be pickled: it was built from live objects "
                "(a client or callable), not from plain options; build it from a BackendSpec"
            )
        from surelabel.backends.registry import build_backend

        return (build_backend, (spec,))
