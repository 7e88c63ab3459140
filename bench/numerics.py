"""Two numerical facts the code and docs rely on, measured with the embedded model.

1. Batch split (``--part split``). The same prompt is evaluated by llama.cpp in one batch
   and in batches of 8 tokens, with flash attention on and off; printed: the largest
   absolute difference of the final position's log-softmax over the vocabulary, and at the
   token ``" veget"`` (the first token of a label). Why the backend turns flash attention
   off (``src/surelabel/backends/llamacpp.py``, DEVELOPERS.md).

2. Repeated prompt (``--part repeat``). ``python -m llama_cpp.server`` on 127.0.0.1 is asked
   the same chat request twice in a row, after an unrelated one; printed, per item: whether
   the two answers are the same text, and the largest difference of a token logprob over
   the tokens both answers share from the start. Why the
   test proxy in ``tests/test_openai_server.py`` clears the server's cached prompt
   (docs/openai.md).

3. Unified KV buffer (``--part cells``). Several items of a multi-token, shared-prefix
   task (and one of clinc150's 150 intents) have their label tries decoded in ONE
   ``llama_decode`` call over a unified KV cache (``kv_unified``, a trie node's cell in the
   sequence of every label path through it, the context in sequence 0), with an F16 and an
   F32 cache; printed: the largest difference of a label probability and log-probability
   from the brute force on at most 16 labels of an item (each answer evaluated alone, from
   an empty cache of the same type, tokens in the cells numbered as their positions). Why
   the backend's ``trie`` scorer decodes one item per call, never several, and keeps a
   ``streams`` scorer that matches the brute force bit for bit (``backends/llamacpp.py``).

    python bench/numerics.py                 # all parts, a few minutes
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ITEMS = ["tomato", "basil leaves fresh from the garden", "lemon", "Hawaiian pizza with ham",
         "cucumber"]


def split_part() -> None:
    import llama_cpp

    from surelabel import prompt
    from surelabel.backends.llamacpp import LlamaCppBackend, default_model_path
    from surelabel.task import load_task

    task = load_task(REPO / "examples" / "fruit_veg_herb.yaml")
    backend = LlamaCppBackend(n_threads=1)
    tokens = backend.prompt_tokens(prompt.messages(task, "lemon"))
    tokens += backend.tokenize(prompt.answer_prefix(task) + ' "')  # the answer up to the value
    label_token = backend.tokenize(' "veget')[-1]
    backend.close()
    print(f"prompt of {len(tokens)} tokens (fruit_veg_herb, 'lemon', answer prefix)")
    for flash in (True, False):
        last = {}
        for n_batch in (512, 8):
            llm = llama_cpp.Llama(str(default_model_path()), n_ctx=1024, n_batch=n_batch,
                                  n_threads=1, flash_attn=flash, logits_all=True,
                                  verbose=False)
            llm.eval(tokens)
            x = np.asarray(llm.scores[len(tokens) - 1], dtype=np.float64)
            last[n_batch] = x - x.max() - np.log(np.exp(x - x.max()).sum())
            llm.close()
        gap = np.abs(last[512] - last[8])
        print(f"flash attention {'on ' if flash else 'off'}: one batch vs batches of 8: "
              f"largest log-softmax gap {gap.max():.2e}, at the label's first token "
              f"{gap[label_token]:.2e}")


def _context(model: Any, type_kv: int, unified: bool, n_seq: int) -> Any:
    import llama_cpp
    from llama_cpp import _internals

    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 4096, 1024, 1024
    params.n_threads = params.n_threads_batch = 2
    params.flash_attn_type = 0
    params.n_seq_max, params.kv_unified = n_seq, unified
    params.type_k = params.type_v = type_kv
    return _internals.LlamaContext(model=model, params=params, verbose=False)


def _run(ctx: Any, batch: Any, entries: list[tuple[int, int, list[int], bool]],
         n_vocab: int) -> list[np.ndarray]:
    import ctypes

    import llama_cpp

    for i, (tok, pos, seqs, want) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, len(seqs)
        for j, seq in enumerate(seqs):
            batch.seq_id[i][j] = seq
        batch.logits[i] = want
    batch.n_tokens = len(entries)
    if llama_cpp.llama_decode(ctx.ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")
    rows = []
    for i, (*_, want) in enumerate(entries):
        if want:
            ptr = llama_cpp.llama_get_logits_ith(ctx.ctx, i)
            rows.append(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                              shape=(n_vocab,)).astype(np.float64))
    return rows


def _lsm(x: np.ndarray) -> np.ndarray:
    m = x.max()
    out: np.ndarray = x - m - np.log(np.exp(x - m).sum())
    return out


def _rows_at(rows: list[np.ndarray], at: dict[int, int]) -> Any:
    def row(node: int) -> np.ndarray:
        return _lsm(rows[at[node]])
    return row


def cells_part() -> None:
    import llama_cpp

    from surelabel import prompt
    from surelabel.backends._scoring import LabelTrie, common_prefix_len
    from surelabel.backends.llamacpp import LlamaCppBackend
    from surelabel.task import Task, load_task

    shared = Task.from_dict({"name": "shared", "instructions": "Classify the diet of the dish.",
                             "field": "diet",
                             "labels": ["vegetable", "vegetarian", "vegan", "meat"]})
    clinc = load_task(REPO / "bench" / "tasks" / "clinc150.yaml")
    cases = [(shared, ["grilled tofu with rice", "beef stew", "carrot"]),
             (clinc, ["how do i set an alarm for 7 am"])]
    be = LlamaCppBackend(n_threads=2)
    n_vocab = be._n_vocab
    for task, texts in cases:
        pre, conts = prompt.answer_prefix(task), prompt.continuations(task)
        closer = prompt.closer(task)
        close = be.closing_token_ids(closer)
        items = [be.answer_split(prompt.messages(task, t), pre, conts)[:2] for t in texts]
        head = min(common_prefix_len([c for c, _ in items]), min(len(c) for c, _ in items) - 1)
        tries = [LabelTrie(tails, True) for _, tails in items]
        n_seq = 1 + sum(len(t.leaves()) for t in tries)
        for name, type_kv in (("F16", llama_cpp.GGML_TYPE_F16), ("F32", llama_cpp.GGML_TYPE_F32)):
            # Brute force: each answer alone, from an empty plain cache of the same type.
            plain = _context(be._model, type_kv, False, 1)
            pbatch = llama_cpp.llama_batch_init(1024, 0, 1)
            ctx = _context(be._model, type_kv, True, n_seq)
            batch = llama_cpp.llama_batch_init(1024, 0, n_seq)
            try:
                # The trie way: the shared head in sequence 0, then one call for every
                # item's remaining context and label trie, one sequence per label path.
                _run(ctx, batch, [(t, i, list(range(n_seq)), False)
                                  for i, t in enumerate(items[0][0][:head])], n_vocab)
                entries: list[tuple[int, int, list[int], bool]] = []
                where: list[dict[int, int]] = []
                seq = 1
                for (context, _), trie in zip(items, tries):
                    leaves = trie.leaves()
                    seqs = list(range(seq, seq + len(leaves)))
                    under: dict[int, list[int]] = {n: [] for n in range(len(trie.nodes))}
                    for s, leaf in zip(seqs, leaves):
                        node = leaf
                        while node > 0:
                            under[node].append(s)
                            node = trie.nodes[node].parent
                    seq += len(leaves)
                    want = trie.reads()
                    at: dict[int, int] = {}
                    for i in range(head, len(context)):
                        if i == len(context) - 1:
                            at[0] = sum(e[3] for e in entries)
                        entries.append((context[i], i, seqs, i == len(context) - 1))
                    for node in trie.preorder():
                        if node in want:
                            at[node] = sum(e[3] for e in entries)
                        entries.append((trie.nodes[node].token,
                                        len(context) + trie.nodes[node].depth - 1,
                                        under[node], node in want))
                    where.append(at)
                rows = _run(ctx, batch, entries, n_vocab)
                dp = dl = 0.0
                for (context, tails), trie, at in zip(items, tries, where):
                    fast = trie.logprobs(_rows_at(rows, at), close)
                    # The brute force costs a full evaluation per answer: at most 16 per item.
                    step = max(1, len(tails) // 16)
                    for tail, lp in list(zip(tails, fast))[::step]:
                        llama_cpp.llama_memory_clear(plain.memory, True)
                        full = [*context, *tail]
                        got = _run(plain, pbatch, [(t, i, [0], i >= len(context) - 1)
                                                   for i, t in enumerate(full)], n_vocab)
                        ref = sum(_lsm(got[k])[tail[k]] for k in range(len(tail)))
                        ref += float(np.log(np.exp(_lsm(got[len(tail)])[close]).sum()))
                        dp = max(dp, abs(np.exp(lp) - np.exp(ref)))
                        dl = max(dl, abs(lp - ref))
                print(f"{task.name} ({len(task.labels)} labels, {len(texts)} items in one call), "
                      f"{name} cache, unified trie vs brute force: largest label probability "
                      f"gap {dp:.2e}, log-probability gap {dl:.3f}")
            finally:
                llama_cpp.llama_batch_free(batch)
                llama_cpp.llama_batch_free(pbatch)
                ctx.close()
                plain.close()
    be.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ask(url: str, text: str) -> list[tuple[str, float]]:
    body = {
        "model": "smollm2", "temperature": 0, "max_tokens": 6, "logprobs": True,
        "top_logprobs": 10, "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": "You are a chef. Classify the item as a "
                      "fruit, vegetable, or herb. Answer in JSON."},
                     {"role": "user", "content": text}],
    }
    req = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        data: dict[str, Any] = json.load(resp)
    return [(t["token"], t["logprob"]) for t in data["choices"][0]["logprobs"]["content"]]


def repeat_part() -> None:
    from surelabel.backends.llamacpp import default_model_path

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
         "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/models", timeout=5)
                break
            except OSError:
                time.sleep(1)
        for i, text in enumerate(ITEMS):
            _ask(url, ITEMS[(i + 1) % len(ITEMS)])  # something else first
            first, again = _ask(url, text), _ask(url, text)
            # Compare the tokens both answers share from the start.
            same = 0
            while same < min(len(first), len(again)) and first[same][0] == again[same][0]:
                same += 1
            gap = max((abs(first[i][1] - again[i][1]) for i in range(same)), default=0.0)
            answers = "same answer" if first == again or [t for t, _ in first] == [
                t for t, _ in again] else "ANOTHER ANSWER"
            print(f"{text!r}: same request twice in a row: {answers}; largest logprob gap "
                  f"over the {same} tokens both share first: {gap:.4f}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("split", "repeat", "cells", "both", "all"),
                        default="all", help="both: split and repeat")
    args = parser.parse_args(argv)
    if args.part in ("split", "both", "all"):
        split_part()
    if args.part in ("repeat", "both", "all"):
        repeat_part()
    if args.part in ("cells", "all"):
        cells_part()
    return 0


if __name__ == "__main__":
    sys.exit(main())
