"""Raw label scores of the shared sets, computed once and cached (bench_trust, bench_generic).

For a shared set, a seeded sample of its rows and the content-free inputs of
:mod:`surelabel.debias` are scored by the backend's full-distribution method (exact for a
local model, topk or sampling for an API) under one prompt style and label order, without
debiasing; the raw label log-probabilities are saved, in the task's own label order, as
``bench/results/trust/[MODEL/]SET.STYLE.oORDER.nROWS.npz`` (the embedded model's files sit
directly under ``trust/``). A rerun scores only what is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import random
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TASKS = REPO / "bench" / "tasks"
OUT = REPO / "bench" / "results" / "trust"
EMBEDDED = "SmolLM2-135M-Instruct.Q4_1"

#: shared set -> (data file, task file)
SETS = {
    "sst2": ("sst2_dev.jsonl", "sst2.yaml"),
    "subj": ("subj.jsonl", "subj.yaml"),
    "tweeteval_sentiment": ("tweeteval_sentiment_test.jsonl", "tweeteval_sentiment.yaml"),
    "ag_news": ("ag_news_test_2k.jsonl", "ag_news.yaml"),
    "trec": ("trec_coarse_test.jsonl", "trec.yaml"),
    "usda": ("usda_food_groups.jsonl", "usda.yaml"),
    "snips": ("snips_intents_test.jsonl", "snips.yaml"),
    "tweeteval_emoji": ("tweeteval_emoji_test.jsonl", "tweeteval_emoji.yaml"),
    "hwu64": ("hwu64.jsonl", "hwu64.yaml"),
    "clinc150": ("clinc150_test.jsonl", "clinc150.yaml"),
    "go_emotions": ("go_emotions_ekman_test.jsonl", "go_emotions.yaml"),
    "reuters10": ("reuters10_test.jsonl", "reuters10.yaml"),
}


#: Fewer rows for the sets with many labels: exact scoring of 64 and 150 labels takes
#: seconds per row on this CPU. ``--rows`` is capped at these.
ROWS_CAP = {"hwu64": 80, "clinc150": 60}


def rows_of(name: str, n: int) -> int:
    """The rows scored of set ``name`` when ``n`` are asked for."""
    return min(n, ROWS_CAP.get(name, n))


def sample_rows(name: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    n = rows_of(name, n)
    rows = [json.loads(line) for line in (DATA / SETS[name][0]).read_text().splitlines()
            if line.strip()]
    return random.Random(seed).sample(rows, min(n, len(rows)))


def load_task(name: str) -> Any:
    from surelabel.task import load_task as load

    return load(TASKS / SETS[name][1])


def targets(task: Any, rows: list[dict[str, Any]]) -> Any:
    from surelabel.subtasks import label_indices

    return label_indices(task, [r["label"] for r in rows])


def path_of(
    model: str, name: str, style: str, order: int, rows: int, mode: str | None = None
) -> Path:
    """The cache file of a pass. ``mode``: the exact method's multilabel mode, named in a
    multilabel set's file (``go_emotions.placeholder.independent.o0.n150.npz``); ``None``:
    the untagged files ``bench_trust.py`` makes, scored sequentially."""
    folder = OUT if model == EMBEDDED else OUT / re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    tag = f".{mode}" if mode is not None and load_task(name).kind == "multilabel" else ""
    return folder / f"{name}.{style}{tag}.o{order}.n{rows_of(name, rows)}.npz"


@contextlib.contextmanager
def cpu_lock() -> Iterator[None]:
    """Hold /tmp/surelabel-cpu.lock while the model runs (one heavy job at a time here)."""
    with open("/tmp/surelabel-cpu.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def in_task_order(task: Any, result: Any) -> Any:
    """A result of a task with reordered labels, back in the task's own label order."""
    from surelabel import methods

    dists = methods._in_task_order(task, task, result)
    return methods.MethodResult(tuple(dists), tuple(s.name for s in task.subtasks))


def ensure_scored(
    backend: Any, name: str, n_rows: int, style: str, order_index: int, batch: int = 8,
    mode: str | None = None,
) -> Path | None:
    """Score one (set, style, order) pass if it is not cached; its file (``None`` when the
    task has fewer label orders than ``order_index + 1``). ``mode``: the multilabel mode
    (:attr:`surelabel.methods.MethodOptions.multilabel_mode`), ``None``: sequential, in
    the untagged file."""
    from surelabel import methods
    from surelabel.debias import CONTENT_FREE_INPUTS
    from surelabel.evaluate import result_logprobs

    task = load_task(name)
    target = path_of(backend.model_name, name, style, order_index, n_rows, mode)
    orders = methods.label_orders(len(task.labels), 3)
    if order_index >= len(orders):
        return None
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    permuted = replace(task, labels=tuple(task.labels[i] for i in orders[order_index]))
    opts = methods.MethodOptions(prompt=style, debias=False,
                                 multilabel_mode=mode or "sequential")
    method = methods.full_distribution_method(backend.capabilities)
    texts = [str(r["text"]) for r in sample_rows(name, n_rows)]
    with cpu_lock():
        start = time.perf_counter()
        out = []
        for k in range(0, len(texts), batch):
            for r in methods.run_batch(method, backend, permuted, texts[k : k + batch], False,
                                       opts):
                if isinstance(r, Exception):
                    raise r
                out.append(result_logprobs(in_task_order(task, r)))
        seconds = time.perf_counter() - start
        cf = methods.run_batch(method, backend, permuted, list(CONTENT_FREE_INPUTS), False,
                               opts)
    cf_lp = [result_logprobs(in_task_order(task, r)) for r in cf if not isinstance(r, Exception)]
    np.savez_compressed(target, logprobs=np.stack(out), content_free=np.stack(cf_lp),
                        seconds=seconds, method=method)
    print(f"{name} {style} {mode or 'sequential'} order {order_index}: {len(texts)} rows in "
          f"{seconds:.0f} s ({seconds / len(texts):.2f} s/row)", flush=True)
    return target


def debiased(logprobs: np.ndarray, content_free: np.ndarray, task: Any) -> np.ndarray:
    """Label log-probabilities with the content-free prior divided out (as
    :func:`surelabel.methods.run_batch` does with debiasing on)."""
    from surelabel import debias
    from surelabel.distribution import LabelDistribution

    per_input = [[LabelDistribution.from_logprobs(task.subtasks[s].labels, row[s].tolist())
                  for s in range(row.shape[0])] for row in content_free]
    prior = np.stack(debias.estimate_prior(per_input))
    return np.asarray(logprobs - np.log(prior)[None], dtype=np.float64)
