"""The backend interface: what a model can do, declared as data.

A backend turns chat messages into token log-probabilities. It declares its
:class:`Capabilities`, and the pipeline picks the confidence method from them (never from
``isinstance``):

- ``exact_scoring``: the backend can score any continuation by teacher forcing
  (:meth:`Backend.score`); every label's probability is then exact.
- ``max_top_logprobs``: how many alternatives per generated token it reports (0: none).
- ``assistant_prefix``: generation can continue a given start of the assistant's answer.
- ``json_schema``: generation can be constrained to a JSON schema.
- ``sampling``: the backend can draw samples at a temperature (``sample(messages, n=,
  temperature=, schema=, max_tokens=)``), for self-consistency where logprobs are missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from surelabel.prompt import Message

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
class ScoreResult:
    """Log-probabilities of continuations given the same context."""

    logprobs: tuple[float, ...]
    prompt_tokens: int = 0
    warnings: tuple[str, ...] = ()


@runtime_checkable
class Backend(Protocol):
    """What every backend provides. Optional operations raise ``UnsupportedMethodError``."""

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def model_name(self) -> str: ...

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
