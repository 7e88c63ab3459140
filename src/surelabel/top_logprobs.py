"""Every label's probability from an API's ``top_logprobs``, read at the label's position.

An API returns, for each generated token, its log-probability and the ``k`` most likely
alternatives. The label distribution is read from them in four steps:

1. **Find the value by character offsets.** The answer is rebuilt from the token bytes,
   parsed as JSON, and the label field's value is located by offsets
   (:mod:`surelabel.extract`), then mapped onto the tokens covering it. Tokens that merge
   punctuation with the value (``":"``, `` "``, ``":"true``, ``"}``) and labels of several
   tokens are handled because nothing is matched on token identity.
2. **Match alternatives against a trie of labels, on decoded text.** The server's tokenizer
   is unknown, so each label is a string (its name for a JSON string value, ``true`` /
   ``false`` for a boolean) and each alternative at the value's first token is compared as
   text, after the part of that token that precedes the value (e.g. ``":"``). An alternative
   that *completes* a label's text (optionally followed by the closing quote and JSON
   punctuation, as in ``fruit"}``) adds its probability to that label; one that is a proper
   *prefix* of labels (``veget``) is followed into the next position when it is the token the
   model actually generated, and there the alternatives are matched again against the rest
   of the labels (so labels sharing first tokens, ``veget|able`` vs ``veget|arian``, are told
   apart). A label that is a prefix of another label (``herb`` / ``herbal``) needs its closing
   quote to be seen.
3. **Chosen label.** It is always on the followed path, so its probability includes the
   joint probability of its value tokens, exp(sum of their logprobs) (plus any other
   tokenization of it that the top-k alternatives show).
4. **Renormalize** over the labels. ``label_mass`` is the probability, at the value's first
   token, of the alternatives that begin some label: how much of the model's choice the
   labels cover.

Labels with only an upper bound (``unseen``):

- a label matched only by a prefix that is not the generated token (``f`` for ``fruit``),
  so its continuation is invisible, gets the prefix's probability: an upper bound;
- a label not matched by any alternative at the first position is *unseen*: it starts with a
  token outside the top-k, whose probability is at most that of the least likely listed
  alternative, ``p_k``, and at most the mass left outside the listed alternatives,
  ``1 - sum(top-k)``. It gets ``min(p_k, 1 - sum(top-k))``. (The rule assumes the label is
  reached through one token outside the top-k; several such tokens could together exceed
  ``p_k`` but never ``1 - sum(top-k)``.)

Bounded labels have ``logprobs[i] = None`` and are listed in ``LabelDistribution.unseen``;
their probability in the distribution is the bound, so the chosen label's confidence is
never overstated by ignoring them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from surelabel.backends.base import Generation, TokenLogprob
from surelabel.distribution import LabelDistribution, logsumexp
from surelabel.errors import MissingLogprobsError, OffSchemaError
from surelabel.extract import ValueSpan, locate_value, map_to_tokens

_JSON_PUNCT = frozenset(b" \t\r\n,}]")


@dataclass(frozen=True)
class TopkReading:
    """What the top-k alternatives say about one JSON value.

    ``value`` is what the model wrote; ``chosen_logprob`` the sum of the logprobs of the
    tokens covering the value's text (the joint probability of the generated label).
    ``bounded`` labels have only an upper bound (seen as a prefix, or not at all); the
    ``unseen`` ones among them were not among the top-k alternatives at all.
    """

    distribution: LabelDistribution
    value: Any
    chosen_logprob: float
    first_token: int
    bounded: tuple[str, ...] = ()
    unseen: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())


def rebuild(tokens: Sequence[TokenLogprob]) -> str:
    """The answer text as the tokens spell it (their bytes joined, then decoded)."""
    return b"".join(t.token for t in tokens).decode("utf-8", errors="replace")


def _strip_lead(alt: bytes, lead: bytes, bare: bool) -> bytes | None:
    """What ``alt`` holds of the value once the text before the value (``lead``) is matched.

    Whitespace is not significant around JSON punctuation, so it is skipped on both sides
    (``":"`` and ``": "`` both lead into a string value). Returns ``None`` when ``alt`` does
    not continue into the value (it diverges from ``lead`` or ends inside it).
    """
    if not lead:
        return (alt.lstrip(b" \t\r\n") if bare else alt) or None
    i = j = 0
    while j < len(lead):
        if lead[j] in b" \t\r\n":
            j += 1
            continue
        while i < len(alt) and alt[i] in b" \t\r\n":
            i += 1
        if i >= len(alt) or alt[i] != lead[j]:
            return None
        i += 1
        j += 1
    rest = alt[i:]
    if bare:
        rest = rest.lstrip(b" \t\r\n")
    return rest or None


class _Walk:
    """Matches alternatives against the label strings, following the generated path."""

    def __init__(
        self,
        tokens: Sequence[TokenLogprob],
        surfaces: Mapping[str, bytes],
        closer: bytes,
    ) -> None:
        self.tokens = tokens
        self.surfaces = surfaces
        self.closer = closer
        # A label that is a proper prefix of another needs its closer to be told apart.
        self.needs_closer = {
            name: any(o != s and o.startswith(s) for o in surfaces.values())
            for name, s in surfaces.items()
        }
        self.complete: dict[str, list[float]] = {name: [] for name in surfaces}
        self.partial: dict[str, list[float]] = {name: [] for name in surfaces}

    def _alternatives(self, i: int) -> list[tuple[bytes, float]]:
        tok = self.tokens[i]
        alts = list(tok.top)
        # A grammar-constrained server may report the raw distribution, in which the token it
        # emitted is not among the top-k; it is always an alternative.
        if not any(a == tok.token for a, _ in alts):
            alts.append((tok.token, tok.logprob))
        return alts

    def _ends_label(self, tail: bytes) -> bool:
        """``tail`` is what an alternative holds after a label's text: closer + punctuation."""
        if self.closer:
            if not tail.startswith(self.closer):
                return False
            tail = tail[len(self.closer) :]
        return all(b in _JSON_PUNCT for b in tail)

    def _closer_logprob(self, i: int) -> float | None:
        """Log-probability that position ``i`` starts with the closer (then punctuation)."""
        if i >= len(self.tokens):
            return None
        lps = [lp for alt, lp in self._alternatives(i) if self.closer and self._ends_label(alt)]
        return logsumexp(lps) if lps else None

    def walk(self, i: int, consumed: bytes, acc: float, lead: bytes, bare: bool) -> float:
        """Attribute the alternatives at position ``i``; returns the mass that began a label."""
        covered: list[float] = []
        actual = self.tokens[i].token
        for alt, lp in self._alternatives(i):
            rest = _strip_lead(alt, lead, bare)
            if not rest:
                continue
            follow = False
            began = False
            for name, surface in self.surfaces.items():
                if not surface.startswith(consumed):
                    continue
                remaining = surface[len(consumed) :]
                if not remaining:
                    continue  # ended at the previous token; its closer was read there
                if rest.startswith(remaining):
                    tail = rest[len(remaining) :]
                    if tail == b"" and self.needs_closer[name]:
                        began = True
                        close = self._closer_logprob(i + 1) if alt == actual else None
                        if close is not None:
                            self.complete[name].append(acc + lp + close)
                        else:
                            self.partial[name].append(acc + lp)
                    elif tail == b"" or self._ends_label(tail):
                        began = True
                        self.complete[name].append(acc + lp)
                elif remaining.startswith(rest):
                    began = True
                    if alt == actual and i + 1 < len(self.tokens):
                        follow = True
                    else:
                        self.partial[name].append(acc + lp)
            if follow:
                self.walk(i + 1, consumed + rest, acc + lp, b"", False)
            if began:
                covered.append(lp)
        return math.exp(logsumexp(covered)) if covered else 0.0


def read_value(
    gen: Generation,
    path: Sequence[str],
    labels: Mapping[str, Any],
) -> TopkReading:
    """Read the distribution over ``labels`` of the JSON value at ``path`` in ``gen``.

    Parameters
    ----------
    gen:
        A generation with per-token ``top`` alternatives.
    path:
        The field path of the value, e.g. ``["type"]`` or ``["emotions", "joy"]``.
    labels:
        Label name -> the JSON value that stands for it (``"fruit"``, ``True``).
    """
    if not gen.tokens:
        raise MissingLogprobsError("the server returned no token logprobs")
    if not any(t.top for t in gen.tokens):
        raise MissingLogprobsError("the server returned no top_logprobs alternatives")
    text = rebuild(gen.tokens)
    span: ValueSpan = locate_value(text, path)
    span = map_to_tokens(span, text, [t.token for t in gen.tokens])
    string = isinstance(span.value, str)
    surfaces: dict[str, bytes] = {}
    for name, value in labels.items():
        if string:
            # Booleans answered as strings ("true") are read as the label's text.
            surfaces[name] = (value if isinstance(value, str) else json.dumps(value)).encode()
        else:
            surfaces[name] = json.dumps(value).encode()
    first = span.first_token
    token_start = sum(len(t.token) for t in gen.tokens[:first])
    content_byte = len(text[: span.content_start].encode("utf-8"))
    lead = b"".join(t.token for t in gen.tokens)[token_start:content_byte]
    walker = _Walk(gen.tokens, surfaces, b'"' if string else b"")
    mass = walker.walk(first, b"", 0.0, lead, not string)

    # The joint probability of the generated value: its tokens' logprobs summed.
    chosen_logprob = sum(t.logprob for t in gen.tokens[first : span.last_token + 1])

    top_first = [lp for _, lp in walker._alternatives(first)]
    listed = sum(math.exp(lp) for lp in top_first)
    unseen_bound = max(0.0, min(math.exp(min(top_first)), 1.0 - listed))

    names = list(labels)
    probs: list[float] = []
    logprobs: list[float | None] = []
    bounded: list[str] = []
    unseen: list[str] = []
    warnings: list[str] = []
    for name in names:
        if walker.complete[name]:
            lp = logsumexp(walker.complete[name])
            probs.append(math.exp(lp))
            logprobs.append(lp)
        elif walker.partial[name]:
            probs.append(math.exp(logsumexp(walker.partial[name])))
            logprobs.append(None)
            bounded.append(name)
        else:
            probs.append(unseen_bound)
            logprobs.append(None)
            bounded.append(name)
            unseen.append(name)
    total = sum(probs)
    if total <= 0.0 or mass == 0.0:
        raise OffSchemaError(
            f"no label among the top-{len(top_first)} alternatives of the answer's value"
        )
    if unseen:
        warnings.append(
            f"{', '.join(unseen)} not among the top-{len(top_first)} alternatives; "
            "probability is an upper bound"
        )
    dist = LabelDistribution(
        labels=tuple(names),
        probabilities=tuple(p / total for p in probs),
        logprobs=tuple(logprobs),
        label_mass=min(1.0, mass) if mass > 0 else None,
        unseen=tuple(bounded),
    )
    return TopkReading(
        distribution=dist,
        value=span.value,
        chosen_logprob=chosen_logprob,
        first_token=first,
        bounded=tuple(bounded),
        unseen=tuple(unseen),
        warnings=tuple(warnings),
    )
