"""The exact-scoring core, shared by every backend that can teacher-force answers.

Nothing here knows llama.cpp or PyTorch: a backend gives its tokenizer (text -> token ids,
token id -> bytes) and its logits, and this module decides what is evaluated and how the
label probabilities are read from the logits:

- **The chat prompt, safely split** (:class:`ChatTemplate`): the model's own chat template
  is rendered with a placeholder per message, so template markup is tokenized with special
  tokens and message content without them: an item containing ``<|im_end|>`` cannot forge a
  turn.
- **Middle truncation** (:func:`prompt_tokens`): an item too long for the context keeps its
  head and tail with ``[...]`` between, and the record says so.
- **The answer split** (:func:`split_answers`): each label's full answer (``{"type": "veg``
  ``etable``) is tokenized on its own, as the model would write it; the tokens every answer
  shares join the context and each answer's remaining tokens (its *tail*) are scored. So
  labels that share first tokens are told apart, and a token that merges the prefix's end
  with the label's start is scored too.
- **The closing token** (:func:`closing_tokens`): a string label is complete only with its
  closing quote (else ``"herb`` would also count ``"herbal``); the quote's probability is
  summed over every token that is the quote followed only by JSON punctuation or spaces
  (``"``, ``",``, ``"}``), because which of them the model writes depends on what follows,
  not on the label.
- **The label trie** (:class:`LabelTrie`): the tails as a token trie. Tokens that several
  labels share are evaluated once; a label's log-probability is the sum, along its path, of
  each token's log-softmax at its parent node, plus the closer at its leaf.
- **A reference** (:func:`reference_logprobs`): every answer evaluated from scratch, in
  full, one at a time; the tests hold each backend to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from surelabel._numeric import log_softmax, logsumexp_at
from surelabel.errors import BackendError, ModelLoadError
from surelabel.prompt import Message

#: Tokens kept free after the prompt for label continuations and generated reasons.
GENERATION_RESERVE = 160
#: What replaces the middle of an item too long for the context.
TRUNCATION_MARK = " [...] "
#: Used when a model carries no chat template: plain ChatML.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

Tokenize = Callable[[str], list[int]]


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix shared by every sequence."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        tok = first[i]
        if any(s[i] != tok for s in seqs[1:]):
            return i
    return n


class ChatTemplate:
    """A model's Jinja chat template, rendered in a sandbox and split into markup and content.

    Parameters
    ----------
    source:
        The template (``None``: plain ChatML).
    bos_text, eos_text:
        The model's BOS and EOS tokens as text (templates refer to them).
    where:
        Names the model in error messages.
    """

    def __init__(self, source: str | None, bos_text: str, eos_text: str, where: str) -> None:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            self._template = env.from_string(source or FALLBACK_TEMPLATE)
        except TemplateError as exc:
            raise ModelLoadError(f"{where}: its chat template does not compile: {exc}") from exc
        self.bos_text = bos_text
        self.eos_text = eos_text
        self.where = where

    def parts(self, messages: Sequence[Message]) -> list[tuple[str, bool]]:
        """The rendered prompt as ``(text, is_markup)`` pieces, ending with the assistant's
        turn opening (the generation prompt)."""
        marks = [f"\x00{i}\x00" for i in range(len(messages))]
        rendered = self._template.render(
            messages=[{"role": m.role, "content": mark} for m, mark in zip(messages, marks)],
            add_generation_prompt=True,
            bos_token=self.bos_text,
            eos_token=self.eos_text,
        )
        parts: list[tuple[str, bool]] = []
        rest = rendered
        for msg, mark in zip(messages, marks):
            head, found, rest = rest.partition(mark)
            if not found:
                raise ModelLoadError(f"{self.where}: its chat template drops a {msg.role} message")
            parts.append((head, True))
            parts.append((msg.content, False))
        parts.append((rest, True))
        return parts

    def render(self, messages: Sequence[Message]) -> str:
        return "".join(text for text, _ in self.parts(messages))


def prompt_tokens(
    parts: Sequence[tuple[str, bool]],
    tokenize: Callable[[str, bool, bool], list[int]],
    *,
    add_bos: bool,
    bos_text: str,
    n_ctx: int,
) -> tuple[list[int], tuple[str, ...]]:
    """Token ids of a split chat prompt that leaves :data:`GENERATION_RESERVE` tokens of an
    ``n_ctx`` context free, truncating the item in the middle when needed.

    ``tokenize(text, special, add_bos)``: ``special`` is true for template markup. The item
    is the last content piece; when the prompt is too long the item keeps its head and
    tail and :data:`TRUNCATION_MARK` between, and a warning says so.
    """
    budget = n_ctx - GENERATION_RESERVE
    chunks: list[list[int]] = []
    for i, (text, special) in enumerate(parts):
        bos = i == 0 and add_bos and not text.startswith(bos_text)
        chunks.append(tokenize(text, special, bos) if text or bos else [])
    total = sum(len(c) for c in chunks)
    warnings: tuple[str, ...] = ()
    if total > budget:
        item = chunks[-2]
        mark = tokenize(TRUNCATION_MARK, False, False)
        keep = len(item) - (total - budget) - len(mark)
        if keep < 2:
            raise BackendError(
                f"prompt without the item already needs {total - len(item)} tokens; "
                f"context is {n_ctx}"
            )
        head = keep // 2
        chunks[-2] = item[:head] + mark + item[len(item) - (keep - head) :]
        warnings = (
            f"text truncated from the middle: {len(item)} -> {len(chunks[-2])} tokens "
            f"to fit the {n_ctx}-token context",
        )
    return [t for c in chunks for t in c], warnings


def split_answers(
    tokenize: Tokenize, prefix: str, continuations: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """The answer tokens every continuation shares, and each one's remaining tail.

    ``tokenize`` turns answer text into token ids (no special tokens).
    """
    base = tokenize(prefix)
    answers = [tokenize(prefix + c) for c in continuations]
    k = common_prefix_len([base, *answers])
    tails = [a[k:] for a in answers]
    for cont, tail in zip(continuations, tails):
        if not tail:
            raise ValueError(f"score: continuation {cont!r} is empty after tokenization")
    return base[:k], tails


def closing_tokens(n_vocab: int, piece: Callable[[int], bytes], closer: str) -> NDArray[np.int64]:
    """Ids of the tokens that are ``closer`` followed only by JSON punctuation or spaces."""
    want = closer.encode()
    ids = [
        tok
        for tok in range(n_vocab)
        if (p := piece(tok)).startswith(want) and not p[len(want) :].strip(b",}] \t\r\n")
    ]
    return np.array(ids, dtype=np.int64)


class TokenScoring:
    """The token-level part of the backend interface that every exact-scoring backend
    shares (llama.cpp, transformers): tokenizing, the chat prompt with truncation, the
    answer split and the closing tokens, all through the functions above. A backend
    provides the hooks: ``_tokenize(text, add_bos=, special=)``, ``_vocab_pieces()``,
    and the attributes ``_template``, ``_add_bos``, ``_bos_text``, ``_n_ctx``, ``_lock``
    and ``_closers`` (a dict)."""

    _template: ChatTemplate
    _add_bos: bool
    _bos_text: str
    _n_ctx: int
    _lock: Any
    _closers: dict[str, NDArray[np.int64]]

    def _tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        raise NotImplementedError

    def _vocab_pieces(self) -> tuple[int, Callable[[int], bytes]]:
        """The vocabulary size and each token's bytes (for :func:`closing_tokens`)."""
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as message content or answer text (no special tokens)."""
        return self._plain(text)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as message content or answer text."""
        return len(self._plain(text))

    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        """The chat prompt's tokens, as evaluated (after any truncation)."""
        with self._lock:
            return self._prompt_tokens(messages)[0]

    def answer_split(
        self, messages: Sequence[Message], prefix: str, continuations: Sequence[str]
    ) -> tuple[list[int], list[list[int]], tuple[str, ...]]:
        """The context every answer shares (prompt + common answer tokens), each answer's
        remaining tokens, and any truncation warning (see :func:`split_answers`)."""
        prompt, warnings = self._prompt_tokens(messages)
        shared, tails = split_answers(self._plain, prefix, continuations)
        return prompt + shared, tails, warnings

    def closing_token_ids(self, closer: str) -> NDArray[np.int64]:
        """Ids of the tokens that close a label (``closer`` then JSON punctuation), cached."""
        if closer not in self._closers:
            self._closers[closer] = closing_tokens(*self._vocab_pieces(), closer)
        return self._closers[closer]

    def _plain(self, text: str) -> list[int]:
        return self._tokenize(text, add_bos=False, special=False)

    def _prompt_tokens(self, messages: Sequence[Message]) -> tuple[list[int], tuple[str, ...]]:
        return prompt_tokens(
            self._template.parts(messages),
            lambda text, special, bos: self._tokenize(text, add_bos=bos, special=special),
            add_bos=self._add_bos,
            bos_text=self._bos_text,
            n_ctx=self._n_ctx,
        )


def fed_tokens(tail: Sequence[int], closed: bool) -> list[int]:
    """The tokens of a tail that must be fed to read its probability: all but the last,
    plus the last when the closer is read after it."""
    return list(tail[: len(tail) - 1 + closed])


def tail_logprob(
    tail: Sequence[int], rows: Sequence[np.ndarray], close: NDArray[np.int64] | None
) -> float:
    """log P(tail[1:], closer | tail[0]) from the logits read after each fed token."""
    total = 0.0
    for j, row in enumerate(rows):
        lsm = log_softmax(row)
        if j + 1 < len(tail):
            total += float(lsm[tail[j + 1]])
        else:
            assert close is not None
            total += logsumexp_at(lsm, close)
    return total


@dataclass
class TrieNode:
    """One token of a trie: its parent's index, its depth (the root is 0), the sequences
    that pass through it (by insertion index), and its children by token."""

    token: int
    parent: int
    depth: int
    labels: list[int] = field(default_factory=list)
    children: dict[int, int] = field(default_factory=dict)


class TokenTrie:
    """Token sequences as a trie: each distinct prefix is one node, evaluated once.

    Node 0 is the root (the empty sequence). :meth:`insert` adds a sequence and returns its
    node path; nodes are numbered in the order they are created, so a parent always comes
    before its children.
    """

    def __init__(self) -> None:
        self.nodes: list[TrieNode] = [TrieNode(token=-1, parent=-1, depth=0)]
        self._count = 0

    def __len__(self) -> int:
        """Nodes to evaluate (the root is not one)."""
        return len(self.nodes) - 1

    def insert(self, tokens: Sequence[int]) -> list[int]:
        """Add a sequence; its nodes, one per token."""
        index = self._count
        self._count += 1
        node = 0
        path = []
        for tok in tokens:
            child = self.nodes[node].children.get(tok)
            if child is None:
                child = len(self.nodes)
                self.nodes.append(TrieNode(tok, node, self.nodes[node].depth + 1))
                self.nodes[node].children[tok] = child
            node = child
            self.nodes[node].labels.append(index)
            path.append(node)
        return path

    def preorder(self) -> list[int]:
        """Every node but the root, depth first: a parent before its children, and each
        subtree contiguous (so a batch cut anywhere splits few paths)."""
        out: list[int] = []
        stack = list(reversed(self.nodes[0].children.values()))
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(self.nodes[node].children.values()))
        return out

    def leaves(self) -> list[int]:
        """Nodes without children, in preorder."""
        return [n for n in self.preorder() if not self.nodes[n].children]


def read_points(
    path: Sequence[int], context_end: int, tail: Sequence[int], closed: bool
) -> list[int]:
    """The nodes whose logits score an answer, given its node ``path`` (whatever context
    nodes come first, then one node per fed tail token) and the node of the last context
    token: the node before each tail token (``context_end`` for the first), then, when
    ``closed``, the node after the last token, where the closer is read."""
    n_fed = len(fed_tokens(tail, closed))
    return [context_end, *path[len(path) - n_fed :]]


def reads_of(
    tails: Sequence[Sequence[int]], points: Sequence[Sequence[int]]
) -> dict[int, list[int]]:
    """For each node some answer is read at, the tokens read there (see
    :func:`read_points`)."""
    want: dict[int, list[int]] = {}
    for tail, at in zip(tails, points):
        for node in at:
            want.setdefault(node, [])
        for k, tok in enumerate(tail):
            if tok not in want[at[k]]:
                want[at[k]].append(tok)
    return want


def closes_of(tails: Sequence[Sequence[int]], points: Sequence[Sequence[int]]) -> set[int]:
    """The nodes where some answer's closer is read."""
    return {at[len(tail)] for tail, at in zip(tails, points) if len(at) > len(tail)}


@dataclass(frozen=True)
class Reading:
    """What one node's logits say: the log-softmax at the tokens read there, and the log
    of the closer's total probability (``None`` where no answer closes)."""

    tokens: dict[int, float]
    closer: float | None = None


def read_logits(
    logits: np.ndarray, tokens: Sequence[int], close: NDArray[np.int64] | None
) -> Reading:
    """A :class:`Reading` of one row of logits, computed as :func:`log_softmax` would (in
    float64) without materialising the whole normalized row."""
    x = np.asarray(logits, dtype=np.float64)
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m).sum()))
    values = {int(t): float(x[t]) - lse for t in tokens}
    closer = None
    if close is not None:
        sel = x[close]
        cm = float(sel.max())
        closer = cm + float(np.log(np.exp(sel - cm).sum())) - lse
    return Reading(values, closer)


def answer_logprob(
    tail: Sequence[int], points: Sequence[int], readings: Mapping[int, Reading]
) -> float:
    """log P(tail, closer) from the :class:`Reading` at each of its :func:`read_points`."""
    total = sum(readings[points[k]].tokens[tok] for k, tok in enumerate(tail))
    if len(points) > len(tail):
        closer = readings[points[len(tail)]].closer
        assert closer is not None
        total += closer
    return total


class LabelTrie(TokenTrie):
    """The tails of one score request as a token trie.

    The root stands for the last context token, whose logits every label's first token is
    read from. Each other node is one fed token (:func:`fed_tokens`); ``paths[i]`` is label
    ``i``'s nodes. Tokens that several labels share are evaluated once; a label's
    log-probability is the sum, along its path, of each token's log-softmax at its parent
    node, plus the closer at its last node.
    """

    def __init__(self, tails: Sequence[Sequence[int]], closed: bool) -> None:
        super().__init__()
        self.tails = [list(t) for t in tails]
        self.closed = closed
        self.paths: list[list[int]] = [self.insert(fed_tokens(t, closed)) for t in self.tails]
        self.points = [read_points(p, 0, t, closed) for p, t in zip(self.paths, self.tails)]

    def reads(self) -> dict[int, list[int]]:
        """For each node whose logits are needed (the root included), the tokens read there."""
        return reads_of(self.tails, self.points)

    def logprobs(
        self, logsoftmax_at: Callable[[int], np.ndarray], close: NDArray[np.int64] | None
    ) -> list[float]:
        """Each label's log-probability, given the log-softmax row after each node
        (``logsoftmax_at(0)`` is the row after the context)."""
        closing = closes_of(self.tails, self.points)
        readings = {}
        for node, tokens in self.reads().items():
            row = logsoftmax_at(node)
            closer = logsumexp_at(row, close) if close is not None and node in closing else None
            readings[node] = Reading({t: float(row[t]) for t in tokens}, closer)
        return [answer_logprob(t, p, readings) for t, p in zip(self.tails, self.points)]


def reference_logprobs(
    context: Sequence[int],
    tails: Sequence[Sequence[int]],
    close: NDArray[np.int64] | None,
    all_logits: Callable[[list[int]], Any],
) -> list[float]:
    """Every answer evaluated in full from scratch, one at a time: the slow, simple
    definition that the fast paths are tested against.

    ``all_logits(tokens)`` evaluates ``tokens`` from an empty cache and returns the logits
    at every position (an array of shape ``(len(tokens), n_vocab)``).
    """
    out = []
    start = len(context)
    for tail in tails:
        full = [*context, *tail]
        fed = full if close is not None else full[:-1]
        logits = all_logits(fed)
        total = 0.0
        for pos in range(start - 1, len(fed)):
            lsm = log_softmax(logits[pos])
            if pos + 1 < len(full):
                total += float(lsm[full[pos + 1]])
            else:
                assert close is not None
                total += logsumexp_at(lsm, close)
        out.append(total)
    return out


class TeacherForcing(Protocol):
    """What a backend built on this core exposes for checking it against the reference."""

    def answer_split(
        self, messages: Sequence[Message], prefix: str, continuations: Sequence[str]
    ) -> tuple[list[int], list[list[int]], tuple[str, ...]]: ...

    def closing_token_ids(self, closer: str) -> NDArray[np.int64]: ...

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> Any: ...


def reference_score(
    backend: TeacherForcing,
    messages: Sequence[Message],
    prefix: str,
    continuations: Sequence[str],
    *,
    closer: str = "",
) -> list[float]:
    """:func:`reference_logprobs` of a score request on ``backend`` (no prefix reuse, no
    batching): what :meth:`~surelabel.backends.base.Backend.score` must equal."""
    context, tails, _ = backend.answer_split(messages, prefix, continuations)
    close = backend.closing_token_ids(closer) if closer else None
    return reference_logprobs(context, tails, close, lambda toks: backend.forward(toks))
