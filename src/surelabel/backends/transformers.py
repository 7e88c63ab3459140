"""Hugging Face transformers models in PyTorch (CPU or GPU), with exact, batched label scoring.

Any causal LM that ``transformers.AutoModelForCausalLM`` loads from a local directory runs
here, and so does a GGUF file through transformers' own GGUF loader (which dequantizes it
to float), so the embedded SmolLM2 GGUF runs through this backend too. Nothing is ever
downloaded: every load is ``local_files_only``.

What is scored (chat-template split, middle truncation, answer split, closing tokens, label
trie) comes from the shared core, :mod:`surelabel.backends._scoring`, exactly as for
llama.cpp; this module decides how the model is run:

- **The shared prompt prefix runs once.** Its keys and values (``past_key_values``) are
  kept between calls; a new call reuses the longest common prefix and runs only the rest.
- **Items and labels in one padded forward.** Each item of a :meth:`score_batch` call is one
  row: its tokens after the shared prefix, then its label trie (every label's fed tokens,
  a token that several labels share placed once). A 4D attention mask lets each token see
  the prefix, its own item up to itself and, for a trie token, only its ancestors in the
  trie; position ids place each trie token where it would sit in a full evaluation. So
  every label's logits are those of its own complete answer, while all items and labels
  of a batch cost one forward pass (or a few, :attr:`TransformersBackend.batch_size` items
  each). Only the positions whose logits are read go through the output layer, and only
  the few numbers each label needs leave the device.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import json
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

try:
    import torch
    import transformers
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"{exc.name} is not installed; the transformers backend needs torch and transformers "
        "(install torch for your machine first, e.g. `pip install torch==2.13.0` for the CPU "
        "build on this project's image, then `pip install 'surelabel[transformers]'`)"
    ) from exc

from surelabel.backends import _scoring
from surelabel.backends._scoring import common_prefix_len
from surelabel.backends.base import (
    SAMPLING_TEMPERATURE,
    BaseBackend,
    Capabilities,
    Generation,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
)
from surelabel.errors import BackendError, ModelLoadError
from surelabel.prompt import Message

#: Items per forward pass when ``batch_size`` is not given, by device type.
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}
#: Most positions (rows x padded length) of one scoring forward pass, by device type; a
#: batch of items whose rows are longer is split into several passes.
MAX_FORWARD_TOKENS = {"cpu": 16384, "cuda": 65536}
#: Positions sent through the output layer at once (bounds the logits' memory).
HEAD_CHUNK = {"cpu": 512, "cuda": 4096}
#: End-of-turn tokens of common chat formats, stopped at besides the model's EOS.
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>",
               "<|eom_id|>")
#: Configuration fields of models whose logits are more than the output layer's result
#: (soft-capping, scaling); the numeric check in ``_split_head`` backs this list up.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

KV = list[tuple[torch.Tensor, torch.Tensor]]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars while loading, then restore them.

    stderr is caught too: the GGUF loader draws its own tqdm bar, which transformers'
    switch for progress bars does not reach.
    """
    log: Any = transformers.utils.logging
    level = log.get_verbosity()
    bars = log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character that stands for each byte.

    Written out because transformers keeps it in a model module that moves between
    releases; it is a fixed, published table.
    """
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _token_bytes(tokenizer: Any, size: int) -> list[bytes]:
    """Each token's bytes as text (special tokens: empty, as llama.cpp gives them)."""
    names = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = set(tokenizer.all_special_ids)
    special.update(i for t, i in tokenizer.get_added_vocab().items()
                   if t in tokenizer.all_special_tokens)
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders") or ()}
    out: list[bytes] = []
    if "ByteLevel" in kinds:
        table = _byte_decoder()
        for i, name in enumerate(names):
            if name is None or i in special:
                out.append(b"")
            else:
                out.append(bytes(table[c] for c in name) if all(c in table for c in name)
                           else name.encode())
        return out
    for i, name in enumerate(names):  # sentencepiece-style: "▁" is a space, <0xNN> a byte
        if name is None or i in special:
            out.append(b"")
        elif (m := _BYTE_TOKEN.fullmatch(name)) is not None:
            out.append(bytes([int(m.group(1), 16)]))
        else:
            out.append(name.replace("▁", " ").encode())
    return out


@dataclass(frozen=True)
class _Layout:
    """A request's label trie laid out for a batched forward pass, as arrays; every item of
    a task has the same one, so it is built once (:func:`_layout`).

    Node ``k`` (``1..n``; 0 is the root, the item's last token) is the ``k``-th trie token
    of a row. ``sees[k-1, j-1]``: node ``k`` attends to node ``j`` (itself and its
    ancestors). Reads: label ``pick_label[r]``'s token ``pick_token[r]`` is read from the
    logits after node ``pick_at[r]``; label ``close_label[r]``'s closer after node
    ``close_at[r]``.
    """

    tokens: NDArray[np.int64]
    depths: NDArray[np.int64]
    sees: NDArray[np.bool_]
    pick_at: NDArray[np.int64]
    pick_token: NDArray[np.int64]
    pick_label: NDArray[np.int64]
    close_at: NDArray[np.int64]
    close_label: NDArray[np.int64]
    n_labels: int

    def __len__(self) -> int:
        return len(self.tokens)


@functools.lru_cache(maxsize=128)
def _layout(tails: tuple[tuple[int, ...], ...], closed: bool) -> _Layout:
    """The :class:`_Layout` of the shared core's :class:`~surelabel.backends._scoring.LabelTrie`
    of ``tails``."""
    trie = _scoring.LabelTrie(tails, closed)
    nodes = trie.nodes[1:]
    sees = np.zeros((len(nodes), len(nodes)), dtype=bool)
    for k, node in enumerate(nodes):  # a parent always comes before its children
        if node.parent > 0:
            sees[k] = sees[node.parent - 1]
        sees[k, k] = True
    picks: list[tuple[int, int, int]] = []
    closes: list[tuple[int, int]] = []
    for i, (tail, path) in enumerate(zip(trie.tails, trie.paths)):
        picks.append((0, tail[0], i))
        for j, node_id in enumerate(path):
            if j + 1 < len(tail):
                picks.append((node_id, tail[j + 1], i))
            else:
                closes.append((node_id, i))
    layout = _Layout(
        tokens=np.array([n.token for n in nodes], dtype=np.int64),
        depths=np.array([n.depth for n in nodes], dtype=np.int64),
        sees=sees,
        pick_at=np.array([p[0] for p in picks], dtype=np.int64),
        pick_token=np.array([p[1] for p in picks], dtype=np.int64),
        pick_label=np.array([p[2] for p in picks], dtype=np.int64),
        close_at=np.array([c[0] for c in closes], dtype=np.int64),
        close_label=np.array([c[1] for c in closes], dtype=np.int64),
        n_labels=len(trie.tails),
    )
    for value in vars(layout).values():  # shared by every caller: read-only
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return layout


@dataclass
class _Row:
    """One item of a scoring forward pass: its tokens after the shared prefix, then its
    label trie."""

    index: int
    context: list[int]
    layout: _Layout
    closer: str
    warnings: tuple[str, ...]

    def length(self, shared: int) -> int:
        return len(self.context) - shared + len(self.layout)


class TransformersBackend(_scoring.TokenScoring, BaseBackend):
    """A causal LM run by Hugging Face transformers in PyTorch, on the CPU or a GPU.

    Parameters
    ----------
    model:
        A model directory (``config.json`` and weights, as ``save_pretrained`` writes it), a
        ``.gguf`` file (read by transformers' GGUF loader, which needs the ``gguf`` package),
        or a directory holding one ``.gguf`` file; ``None``: the embedded
        SmolLM2-135M-Instruct GGUF. Local files only.
    device:
        ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    dtype:
        ``"auto"``: float32 on the CPU; on a GPU the dtype the checkpoint was saved in when
        it is 16-bit, else float32. Or ``"float32"``, ``"bfloat16"``, ``"float16"``. Exact
        scoring is exact to float rounding: 16-bit weights move log-probabilities more
        than float32 does.
    batch_size:
        Items scored in one forward pass (default 8 on the CPU, 64 on a GPU); also what
        the backend declares as ``batch_items``, so batch runs send that many at once.
    n_ctx:
        Context window in tokens (capped at the model's own); longer items are truncated
        from the middle, as with llama.cpp.
    n_threads:
        CPU threads for PyTorch (``torch.set_num_threads``, which is process-wide);
        default: PyTorch's own.
    attn_implementation:
        ``"sdpa"`` or ``"eager"``: both take the custom attention masks exact batched
        scoring needs (flash-attention kernels do not). ``"auto"``: sdpa where the
        architecture has it, else eager.
    seed:
        Seed of :meth:`sample`'s random draws (the same prompt gives the same samples).
    random_weights:
        Build the model from the directory's ``config.json`` with weights drawn from this
        seed instead of loading any: for benchmarks and tests on machines without the
        weights (the tokenizer still comes from the directory). The probabilities mean
        nothing; the speed and the numerics are those of the real architecture.
    """

    name = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        attn_implementation: str = "auto",
        seed: int = 0,
        random_weights: int | None = None,
    ) -> None:
        self._remember(model=model, device=device, dtype=dtype, batch_size=batch_size,
                       n_ctx=n_ctx, n_threads=n_threads,
                       attn_implementation=attn_implementation, seed=seed,
                       random_weights=random_weights)
        if attn_implementation not in ("auto", "sdpa", "eager"):
            raise ModelLoadError(f"attn_implementation {attn_implementation!r}: expected auto, "
                                 "sdpa or eager (exact batched scoring needs custom attention "
                                 "masks, which flash-attention kernels do not take)")
        if dtype != "auto" and dtype not in DTYPES:
            raise ModelLoadError(f"dtype {dtype!r}: expected auto or one of {', '.join(DTYPES)}")
        if batch_size is not None and batch_size < 1:
            raise ModelLoadError(f"batch_size {batch_size}: must be at least 1")
        if n_threads is not None:
            torch.set_num_threads(max(1, int(n_threads)))
        self.device = self._device(device)
        where, gguf_file = self._locate(model)
        self.model_path = where / gguf_file if gguf_file else where
        load = {"local_files_only": True, **({"gguf_file": gguf_file} if gguf_file else {})}
        with _quiet_transformers():
            try:
                self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(where), **load)
                config = transformers.AutoConfig.from_pretrained(str(where), **load)
            except Exception as exc:  # any failure of the third-party readers: unusable
                raise ModelLoadError(f"model {self.model_path}: cannot load its tokenizer or "
                                     f"configuration ({_first_line(exc)})") from exc
            self.dtype = self._dtype(dtype, config)
            self._model = self._load_model(where, load, config, attn_implementation,
                                           random_weights)
        self._config = self._model.config
        self._random_weights = random_weights
        text_config = self._config.get_text_config()
        limit = getattr(text_config, "max_position_embeddings", None) or n_ctx
        window = getattr(text_config, "sliding_window", None)
        if window and getattr(text_config, "use_sliding_window", True) is not False:
            # The custom masks do not apply a sliding window; a context that fits in the
            # window gives the same attention either way.
            limit = min(limit, int(window))
        self._n_ctx = min(n_ctx, int(limit))
        self._n_vocab = int(self._model.get_output_embeddings().weight.shape[0])
        self._batch_size = batch_size or DEFAULT_BATCH.get(self.device.type, 8)
        self._seed = seed
        tok = self._tokenizer
        self._bos_text = tok.bos_token or ""
        self._bos_id = tok.bos_token_id
        self._add_bos = self._adds_bos()
        self._template = _scoring.ChatTemplate(
            tok.chat_template if isinstance(tok.chat_template, str) else None,
            self._bos_text, tok.eos_token or "", where=f"model {self.model_path}",
        )
        self._pieces = _token_bytes(tok, min(len(tok), self._n_vocab))
        self._eog = self._end_tokens()
        self._pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        self._closers: dict[str, NDArray[np.int64]] = {}
        self._cached: list[int] = []  # tokens whose keys and values self._kv holds
        self._kv: KV = []
        self._lock = threading.RLock()
        self._decoder, self._head = self._split_head()
        body = self._decoder if self._decoder is not None else self._model
        params = inspect.signature(body.forward).parameters
        # transformers 5 renames past_key_values to cache (the old name warns).
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._check_tree_attention()

    # -- loading ----------------------------------------------------------------------

    @staticmethod
    def _device(device: str) -> torch.device:
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ModelLoadError(f"device {device!r}: {_first_line(exc)}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r}: this PyTorch sees no CUDA GPU "
                                 f"(torch {torch.__version__}); use --device cpu")
        return dev

    def _dtype(self, dtype: str, config: Any) -> torch.dtype:
        if dtype == "auto":
            if self.device.type == "cpu":
                return torch.float32
            saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            saved = DTYPES.get(str(saved).removeprefix("torch."), torch.float32)
            return saved if saved in (torch.float16, torch.bfloat16) else torch.float32
        return DTYPES[dtype]

    @staticmethod
    def _locate(model: str | os.PathLike[str] | None) -> tuple[Path, str | None]:
        """The directory to load from and the GGUF file in it (``None``: a model directory)."""
        if model is None:
            from surelabel.backends.llamacpp import default_model_path

            path = default_model_path()
        else:
            path = Path(model).expanduser()
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelLoadError(f"model {path}: a file must be a .gguf; otherwise give "
                                     "the model's directory")
            return path.parent, path.name
        if not path.is_dir():
            raise ModelLoadError(f"model {path}: not found (local files only: a model "
                                 "directory or a .gguf file)")
        if (path / "config.json").is_file():
            return path, None
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, ggufs[0]
        raise ModelLoadError(f"model {path}: no config.json"
                             + (f", and several .gguf files ({', '.join(ggufs)}): name one"
                                if ggufs else ""))

    def _load_model(self, where: Path, load: dict[str, Any], config: Any,
                    attn: str, random_weights: int | None) -> Any:
        if attn == "auto":
            try:
                return self._load_model(where, load, config, "sdpa", random_weights)
            except ModelLoadError as exc:
                if "scaled_dot_product_attention" not in str(exc):
                    raise
            return self._load_model(where, load, config, "eager", random_weights)
        auto: Any = transformers.AutoModelForCausalLM
        try:
            if random_weights is not None:
                # Drawn on the CPU in float32, so the same seed gives the same weights on
                # any device; the caller's random state is left as it was.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(random_weights)
                    model = auto.from_config(config, attn_implementation=attn,
                                             dtype=torch.float32)
            else:
                model = auto.from_pretrained(str(where), dtype=self.dtype,
                                             attn_implementation=attn, **load)
        except Exception as exc:  # any failure of the third-party loaders: unusable
            raise ModelLoadError(f"model {self.model_path}: cannot load ({_first_line(exc)})"
                                 ) from exc
        try:
            model = model.to(device=self.device, dtype=self.dtype)
        except RuntimeError as exc:
            raise ModelLoadError(f"model {self.model_path}: cannot move it to {self.device} "
                                 f"({_first_line(exc)})") from exc
        model.eval()
        return model

    def _adds_bos(self) -> bool:
        """Whether the tokenizer puts BOS before a text (its own rule, read off it)."""
        tok = self._tokenizer
        if self._bos_id is None:
            return False
        plain = tok("a", add_special_tokens=False)["input_ids"]
        full = tok("a", add_special_tokens=True)["input_ids"]
        return len(full) > len(plain) and full[0] == self._bos_id

    def _end_tokens(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self._tokenizer, self._model.config,
                       getattr(self._model, "generation_config", None)):
            value = getattr(source, "eos_token_id", None)
            values = value if isinstance(value, (list, tuple)) else [value]
            ids.update(int(v) for v in values if v is not None)
        vocab = self._tokenizer.get_vocab()
        ids.update(int(vocab[t]) for t in END_OF_TURN if t in vocab)
        return frozenset(ids)

    def _split_head(self) -> tuple[Any, Any]:
        """The model's body and output layer, when the logits are just the output layer
        applied to the body's last hidden state (so only the positions that are read need
        it); ``(None, None)`` for a model that does more (logit soft-capping, scaling)."""
        try:
            decoder = self._model.get_decoder()
            head = self._model.get_output_embeddings()
        except (AttributeError, ValueError, NotImplementedError):
            return None, None
        if decoder is None or head is None:
            return None, None
        config = self._model.config.get_text_config()
        if any(getattr(config, a, None) not in (None, 1, 1.0) for a in LOGIT_TRANSFORMS):
            return None, None
        ids = torch.tensor([[self._pad, *self._plain("a short check")]], device=self.device)
        with torch.inference_mode():
            full = self._model(input_ids=ids, use_cache=False).logits[0, -1].float()
            split = head(decoder(input_ids=ids, use_cache=False).last_hidden_state[0, -1]).float()
        if float((full - split).abs().max()) > self._tolerance(full):
            return None, None
        return decoder, head

    def _tolerance(self, logits: torch.Tensor | np.ndarray) -> float:
        """How far two evaluations of the same logits may differ by rounding alone (two
        batch shapes sum in other orders); a wrong mask or position moves them by whole
        units. Scaled with the logits' size."""
        base = 1e-2 if self.dtype == torch.float32 else 1.0
        size = float(logits.abs().max()) if isinstance(logits, torch.Tensor) \
            else float(np.abs(logits).max())
        return base * max(1.0, size / 20)

    def _check_tree_attention(self) -> None:
        """Refuse a model whose attention ignores a custom mask or position ids (then the
        batched scoring would not be exact): score a short trie and compare it with full
        evaluations."""
        tokens = [self._pad, *self._plain("one two three")]
        a, b = self._plain(" four five"), self._plain(" six")
        want = [self.forward([*tokens, *t])[-1] for t in (a, b)]
        layout = _layout((tuple(a), tuple(b)), True)
        row = _Row(0, tokens, layout, "", ())
        with self._lock, torch.inference_mode():
            kv = self._prefix_kv(tokens[:2])
            hidden = self._rows_forward([row], 2, kv)
            leaves = [len(tokens) - 2 + int(k) - 1 for k in layout.close_at]  # columns
            got = self._logits(hidden[0, leaves]).float().cpu().numpy()
        err = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
        if not err <= self._tolerance(np.stack(want)):
            raise ModelLoadError(
                f"model {self.model_path}: batched scoring with custom attention masks "
                f"differs from a full evaluation by {err:.3g}; this architecture "
                f"({type(self._model).__name__}) is not supported by the transformers backend"
            )

    # -- public interface -------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            exact_scoring=True,
            max_top_logprobs=self._n_vocab,
            assistant_prefix=True,
            json_schema=False,
            sampling=True,
            concurrency=1,
            batch_items=self._batch_size,
        )

    @property
    def model_name(self) -> str:
        """The GGUF file's name without ``.gguf`` (as llama.cpp names it), else the model
        directory's name; ``-random<seed>`` added for random weights."""
        name = self.model_path.name.removesuffix(".gguf")
        seed = self._random_weights
        return name if seed is None else f"{name}-random{seed}"

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def torch_model(self) -> Any:
        """The loaded ``transformers`` model (a ``torch.nn.Module``), e.g. for benchmarks."""
        return self._model

    def score(
        self,
        messages: Sequence[Message],
        prefix: str,
        continuations: Sequence[str],
        *,
        closer: str = "",
    ) -> ScoreResult:
        """Exact log-probability of each continuation (and ``closer``) after the prompt and
        ``prefix``: the same answer split and closing-token rule as the llama.cpp backend
        (:mod:`surelabel.backends._scoring`), evaluated in one batched forward pass."""
        result = self.score_batch([ScoreRequest(tuple(messages), prefix, tuple(continuations),
                                                closer)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult | Exception]:
        """:meth:`score` for several requests: up to :attr:`batch_size` items (each with all
        its labels) per forward pass, after the prefix they share. A request that cannot be
        scored (too long for the context) gets its error in its place."""
        out: list[ScoreResult | Exception | None] = [None] * len(requests)
        rows: list[_Row] = []
        with self._lock:
            for i, r in enumerate(requests):
                if not r.continuations:
                    raise ValueError("score: no continuations")
                try:
                    context, tails, warnings = self.answer_split(r.messages, r.prefix,
                                                                 r.continuations)
                except BackendError as exc:  # the prompt cannot fit even truncated
                    out[i] = exc
                    continue
                if len(context) + max(len(t) for t in tails) > self._n_ctx:
                    out[i] = BackendError("prompt and answer do not fit in the context window")
                    continue
                layout = _layout(tuple(tuple(t) for t in tails), bool(r.closer))
                rows.append(_Row(i, context, layout, r.closer, warnings))
            # Rows of similar length together: less padding.
            rows.sort(key=lambda r: r.length(0))
            for chunk in self._chunks(rows):
                try:
                    scored = self._score_rows(chunk)
                except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                    self._cached, self._kv = [], []
                    error = BackendError(f"forward pass failed: {_first_line(exc)}",
                                         retryable=isinstance(exc, torch.cuda.OutOfMemoryError))
                    for row in chunk:
                        out[row.index] = error
                    continue
                for row, logprobs in zip(chunk, scored):
                    out[row.index] = ScoreResult(tuple(logprobs), prompt_tokens=len(row.context),
                                                 warnings=row.warnings)
        return [r for r in out if r is not None]

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
        """Greedy generation of the assistant's answer, continuing ``prefix`` if given.

        ``schema`` is not enforced (``json_schema`` is false in the capabilities; the prompt
        describes the format). Each token's log-probability and ``top_logprobs``
        alternatives are read from the model's distribution.
        """
        del schema
        return self._generate(messages, prefix, max_tokens, stop, top_logprobs, n=1,
                              temperature=0.0)[0]

    def sample(
        self,
        messages: Sequence[Message],
        *,
        n: int,
        temperature: float = SAMPLING_TEMPERATURE,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
    ) -> list[Generation]:
        """``n`` answers drawn at ``temperature``, decoded side by side as ``n`` rows after
        one evaluation of the prompt. Draws are seeded (``seed``), so a prompt gives the
        same answers on every run. Token log-probabilities are the model's own
        (temperature 1), as :meth:`generate` reports them."""
        del schema
        if n < 1:
            raise ValueError("sample: n must be at least 1")
        if temperature <= 0:
            raise ValueError("sample: temperature must be above 0")
        return self._generate(messages, "", max_tokens, (), 0, n=n, temperature=temperature)

    def render(self, messages: Sequence[Message]) -> str:
        """The chat prompt as text, from the tokenizer's chat template."""
        return self._template.render(messages)

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        """Evaluate ``tokens`` from scratch with the model's own forward pass (no cache, no
        custom mask); the float32 logits at every position ``(len(tokens), n_vocab)``, or
        only at the last one. The reference evaluation and the benchmarks use it."""
        if not tokens or len(tokens) > self._n_ctx:
            raise ValueError(f"forward: 1 to {self._n_ctx} tokens, got {len(tokens)}")
        ids = torch.tensor([list(tokens)], device=self.device)
        with self._lock, torch.inference_mode():
            keep = {} if all_logits else {"logits_to_keep": 1}
            out = self._model(input_ids=ids, use_cache=False, **keep)
            logits: np.ndarray = out.logits[0].float().cpu().numpy()
        return logits

    def close(self) -> None:
        """Drop the model and the cached prefix (and free GPU memory). Safe to call twice."""
        with self._lock:
            self._kv, self._cached = [], []
            for attr in ("_model", "_decoder", "_head"):
                if getattr(self, attr, None) is not None:
                    setattr(self, attr, None)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # -- tokens -----------------------------------------------------------------------

    def _vocab_pieces(self) -> tuple[int, Callable[[int], bytes]]:
        return len(self._pieces), self._pieces.__getitem__

    def _tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        ids: list[int] = []
        if text:
            # split_special_tokens: "<|im_end|>" inside an item is text, not a turn marker.
            ids = list(self._tokenizer(text, add_special_tokens=False,
                                       split_special_tokens=not special)["input_ids"])
        if add_bos and self._bos_id is not None:
            ids.insert(0, int(self._bos_id))
        return ids

    # -- evaluation -------------------------------------------------------------------

    def _prefix_kv(self, tokens: list[int]) -> KV:
        """Keys and values of ``tokens`` (batch 1), reusing the longest common prefix with
        what was cached last; they become the new cache."""
        keep = common_prefix_len([self._cached, tokens])
        kv = [(k[:, :, :keep], v[:, :, :keep]) for k, v in self._kv] if keep else []
        if keep < len(tokens):
            cache = transformers.DynamicCache(ddp_cache_data=kv) if kv else \
                transformers.DynamicCache()
            ids = torch.tensor([tokens[keep:]], device=self.device)
            pos = torch.arange(keep, len(tokens), device=self.device)[None]
            self._body(ids, None, pos, cache)
            kv = _cache_tensors(cache)
        self._cached, self._kv = list(tokens), kv
        return kv

    def _body(self, ids: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor,
              cache: Any) -> torch.Tensor:
        """The last hidden states (or, for a model whose head is not split off, the
        logits) of ``ids`` after what ``cache`` holds; the cache is extended in place."""
        body = self._decoder if self._decoder is not None else self._model
        out = body(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                   **{self._cache_arg: cache})
        result: torch.Tensor = out.last_hidden_state if self._decoder is not None else out.logits
        return result

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from what :meth:`_body` returned, at the positions selected."""
        return self._head(hidden) if self._head is not None else hidden

    def _chunks(self, rows: list[_Row]) -> Iterator[list[_Row]]:
        """Consecutive groups of at most :attr:`batch_size` rows and about
        :data:`MAX_FORWARD_TOKENS` padded positions."""
        limit = MAX_FORWARD_TOKENS.get(self.device.type, MAX_FORWARD_TOKENS["cpu"])
        chunk: list[_Row] = []
        longest = 0
        for row in rows:
            size = row.length(0)
            if chunk and (len(chunk) >= self._batch_size
                          or (len(chunk) + 1) * max(longest, size) > limit):
                yield chunk
                chunk, longest = [], 0
            chunk.append(row)
            longest = max(longest, size)
        if chunk:
            yield chunk

    def _score_rows(self, rows: list[_Row]) -> list[list[float]]:
        """Every label's log-probability for a group of rows, in one forward pass after the
        prefix the rows share (at least one context token of each row stays in the row, so
        its logits are read there)."""
        contexts = [r.context for r in rows]
        shared = min(common_prefix_len(contexts), min(len(c) for c in contexts) - 1)
        with torch.inference_mode():
            kv = self._prefix_kv(contexts[0][:shared])
            hidden = self._rows_forward(rows, shared, kv)
            return self._read_labels(rows, shared, hidden)

    def _rows_forward(self, rows: list[_Row], shared: int, kv: KV) -> torch.Tensor:
        """One forward pass of every row after the shared prefix ``kv``: each row is its
        item's remaining context tokens then its trie nodes, padded to the longest row."""
        width = max(r.length(shared) for r in rows)
        ids = np.full((len(rows), width), self._pad, dtype=np.int64)
        pos = np.zeros((len(rows), width), dtype=np.int64)
        allowed = np.zeros((len(rows), width, shared + width), dtype=bool)
        allowed[:, :, :shared] = True  # everything sees the prefix
        for b, row in enumerate(rows):
            suffix = row.context[shared:]
            s = len(suffix)
            t = row.layout
            n = len(t)
            ids[b, :s] = suffix
            pos[b, :s] = np.arange(shared, shared + s)
            allowed[b, :s, shared : shared + s] = np.tril(np.ones((s, s), dtype=bool))
            # Trie node k sits at column s + k - 1 and position len(context) + depth - 1:
            # where its token would be in the label's own full answer.
            ids[b, s : s + n] = t.tokens
            pos[b, s : s + n] = len(row.context) + t.depths - 1
            allowed[b, s : s + n, shared : shared + s] = True
            allowed[b, s : s + n, shared + s : shared + s + n] = t.sees
            pad = np.arange(s + n, width)  # padding: sees itself only
            allowed[b, pad, shared + pad] = True
        dtype = self.dtype
        blocked = torch.from_numpy(~allowed).to(self.device)
        mask = torch.zeros(blocked.shape, dtype=dtype, device=self.device)
        mask.masked_fill_(blocked, torch.finfo(dtype).min)
        cache = transformers.DynamicCache(ddp_cache_data=[
            (k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1)) for k, v in kv
        ]) if kv else transformers.DynamicCache()
        return self._body(
            torch.from_numpy(ids).to(self.device),
            mask[:, None],
            torch.from_numpy(pos).to(self.device),
            cache,
        )

    def _read_labels(self, rows: list[_Row], shared: int, hidden: torch.Tensor
                     ) -> list[list[float]]:
        """Each label's log-probability: the sum, along its trie path, of each next token's
        log-softmax at its parent (the item's last token for the first), plus the closer's
        total probability at its leaf. Only these numbers leave the device."""
        cells: list[np.ndarray] = []  # (row, column) of each position read
        picks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # position, token, label
        closes: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # closer: position, label
        offsets = [0]
        first = 0
        for b, row in enumerate(rows):
            t = row.layout
            s = len(row.context) - shared
            cols = np.arange(s - 1, s + len(t))  # the root (item's last token), then nodes
            cells.append(np.stack([np.full_like(cols, b), cols], axis=1))
            base = offsets[-1]  # this row's first label
            picks.append((first + t.pick_at, t.pick_token, base + t.pick_label))
            if len(t.close_at):
                closes.setdefault(row.closer, []).append((first + t.close_at,
                                                          base + t.close_label))
            first += len(cols)
            offsets.append(base + t.n_labels)
        n_labels = offsets[-1]
        where = np.concatenate(cells)
        index = torch.from_numpy(where).to(self.device)
        selected = hidden[index[:, 0], index[:, 1]]
        # Reads sorted by position, so each slice of positions through the output layer
        # serves a contiguous run of them; the values stay on the device until the end.
        Reads = tuple[np.ndarray, np.ndarray | None, np.ndarray, torch.Tensor | None]
        reads: list[Reads] = [(np.concatenate([p[0] for p in picks]),
                               np.concatenate([p[1] for p in picks]),
                               np.concatenate([p[2] for p in picks]), None)]
        for closer, spots in closes.items():
            reads.append((np.concatenate([x[0] for x in spots]), None,
                          np.concatenate([x[1] for x in spots]),
                          torch.from_numpy(self.closing_token_ids(closer)).to(self.device)))
        reads = [(pos[o], None if tok is None else tok[o], lab[o], close)
                 for pos, tok, lab, close in reads for o in [np.argsort(pos, kind="stable")]]
        values: list[torch.Tensor] = []
        labels: list[np.ndarray] = []
        step = HEAD_CHUNK.get(self.device.type, HEAD_CHUNK["cpu"])
        for start in range(0, len(where), step):
            part = self._logits(selected[start : start + step]).float()
            lse = torch.logsumexp(part, dim=-1)
            for pos, tok, lab, close in reads:
                lo, hi = np.searchsorted(pos, [start, start + step])
                if lo == hi:
                    continue
                at = torch.from_numpy(pos[lo:hi] - start).to(self.device)
                if close is None:
                    assert tok is not None
                    got = part[at, torch.from_numpy(tok[lo:hi]).to(self.device)]
                else:
                    got = torch.logsumexp(part[at][:, close], dim=-1)
                values.append(got - lse[at])
                labels.append(lab[lo:hi])
        totals = np.zeros(n_labels, dtype=np.float64)
        np.add.at(totals, np.concatenate(labels), torch.cat(values).double().cpu().numpy())
        return [totals[offsets[b] : offsets[b + 1]].tolist() for b in range(len(rows))]

    def _generate(
        self,
        messages: Sequence[Message],
        prefix: str,
        max_tokens: int,
        stop: Sequence[str],
        top_logprobs: int,
        *,
        n: int,
        temperature: float,
    ) -> list[Generation]:
        """Decode ``n`` answers side by side: greedy at temperature 0, else sampled."""
        with self._lock, torch.inference_mode():
            prompt, warnings = self._prompt_tokens(messages)
            context = prompt + (self._plain(prefix) if prefix else [])
            if len(context) >= self._n_ctx:
                raise BackendError("prompt does not fit in the context window")
            kv = self._prefix_kv(context[:-1])
            cache = transformers.DynamicCache(ddp_cache_data=[
                (k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv
            ]) if kv else transformers.DynamicCache()
            step = torch.full((n, 1), context[-1], device=self.device)
            generator = None
            if temperature > 0:
                generator = torch.Generator(device=self.device).manual_seed(self._seed)
            produced: list[list[TokenLogprob]] = [[] for _ in range(n)]
            raw = [b""] * n
            finish = ["length"] * n
            done = [False] * n
            position = len(context) - 1
            for _ in range(max_tokens):
                if position + 1 >= self._n_ctx:
                    break
                pos = torch.full((n, 1), position, device=self.device)
                logits = self._logits(self._body(step, None, pos, cache)[:, -1]).float()
                lsm = torch.log_softmax(logits, dim=-1)
                if generator is None:
                    chosen = torch.argmax(logits, dim=-1)
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    chosen = torch.multinomial(probs, 1, generator=generator)[:, 0]
                tokens = chosen.tolist()
                chosen_lp = lsm.gather(1, chosen[:, None])[:, 0].tolist()
                top_ids = top_lp = None
                if top_logprobs > 0:
                    k = min(top_logprobs, self._n_vocab)
                    top_lp_t, top_ids_t = torch.topk(lsm, k, dim=-1)
                    top_ids, top_lp = top_ids_t.tolist(), top_lp_t.tolist()
                for r in range(n):
                    if done[r]:
                        continue
                    token = int(tokens[r])
                    if token in self._eog:
                        done[r], finish[r] = True, "stop"
                        continue
                    top: tuple[tuple[bytes, float], ...] = ()
                    if top_ids is not None and top_lp is not None:
                        top = tuple((self._piece(i), float(v))
                                    for i, v in zip(top_ids[r], top_lp[r]))
                    piece = self._piece(token)
                    produced[r].append(TokenLogprob(piece, float(chosen_lp[r]), top))
                    raw[r] += piece
                    if stop and any(s in raw[r].decode("utf-8", errors="ignore") for s in stop):
                        done[r], finish[r] = True, "stop"
                if all(done):
                    break
                step = chosen[:, None]
                position += 1
            out = []
            for r in range(n):
                text = raw[r].decode("utf-8", errors="replace")
                for s in stop:
                    cut = text.find(s)
                    if cut >= 0:
                        text = text[:cut]
                out.append(Generation(
                    text=text,
                    tokens=tuple(produced[r]),
                    finish_reason=finish[r],
                    usage={"prompt_tokens": len(prompt), "completion_tokens": len(produced[r])},
                    info={"warnings": list(warnings)} if warnings else {},
                ))
            return out

    def _piece(self, token: int) -> bytes:
        return self._pieces[token] if 0 <= token < len(self._pieces) else b""


def _cache_tensors(cache: Any) -> KV:
    """Each layer's (keys, values) of a transformers cache."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers < 4.56


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
