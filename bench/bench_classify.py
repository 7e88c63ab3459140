"""Speed and quality of the exact method against the source technique (``seed``).

Run: ``make bench`` (or ``.venv/bin/python bench/bench_classify.py --rows 200``).

One process, one model load, the first N rows of SST-2 dev:

- ``seed``: JSON generation (label + reason) at temperature 0, confidence = exp(logprob) of
  the first token of the label value;
- ``exact``: every label's complete answer scored by teacher forcing, ``--no-reason``;
- ``seed`` as usually run: llama-cpp-python's ``create_chat_completion`` with a JSON
  schema and ``logprobs`` (``Llama(logits_all=True)``, no prefix reuse), on the first
  ``--naive-rows`` rows (it is slow);
- the prefill limit: item tokens (the part of the prompt not shared by all items) divided
  by the measured prefill speed; exact scoring cannot beat it, since it must at least read
  each item once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

from surelabel import prompt
from surelabel.backends.llamacpp import LlamaCppBackend, default_model_path
from surelabel.classifier import Classifier
from surelabel.errors import SurelabelError
from surelabel.extract import locate_value, map_to_tokens
from surelabel.task import Task, load_task

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sst2_dev.jsonl"
TASK = REPO / "bench" / "tasks" / "sst2.yaml"


def prefill_tokens_per_second(backend: LlamaCppBackend, tokens: list[int]) -> float:
    """Best-of-3 speed of evaluating ``tokens`` from an empty cache in one batch."""
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        backend.forward(tokens, all_logits=False)
        best = max(best, len(tokens) / (time.perf_counter() - start))
    return best


def run_method(clf: Classifier, rows: list[dict[str, str]]) -> dict[str, float]:
    start = time.perf_counter()
    records = [clf.classify_one(r["text"], i).to_dict() for i, r in enumerate(rows)]
    return summarize(records, rows, time.perf_counter() - start)


def run_naive_seed(task: Task, rows: list[dict[str, str]], threads: int) -> dict[str, float]:
    """The source technique on the stock llama-cpp-python chat-completion API."""
    from llama_cpp import Llama

    llm = Llama(str(default_model_path()), n_ctx=2048, logits_all=True, verbose=False,
                n_threads=threads)
    records: list[dict[str, object]] = []
    start = time.perf_counter()
    for row in rows:
        out = llm.create_chat_completion(
            [m.as_dict() for m in prompt.messages(task, row["text"])],
            response_format={"type": "json_object", "schema": prompt.json_schema(task)},
            temperature=0, logprobs=True, top_logprobs=1, max_tokens=160,
        )
        choice = out["choices"][0]  # type: ignore[index]
        text = choice["message"]["content"]
        tokens = [
            bytes(t["bytes"]) if t.get("bytes") is not None else t["token"].encode()
            for t in choice["logprobs"]["content"]
        ]
        try:
            span = map_to_tokens(locate_value(text, [task.field]), text, tokens)
            lp = choice["logprobs"]["content"][span.first_token]["logprob"]
            records.append({"label": span.value, "confidence": math.exp(lp), "error": None})
        except SurelabelError as exc:
            records.append({"label": None, "confidence": None, "error": str(exc)})
    return summarize(records, rows, time.perf_counter() - start)


def summarize(
    records: list[dict[str, object]], rows: list[dict[str, str]], seconds: float
) -> dict[str, float]:
    ok = [(r, row) for r, row in zip(records, rows) if r["error"] is None]
    correct = [int(r["label"] == row["label"]) for r, row in ok]
    conf = [float(r["confidence"]) for r, _ in ok]  # type: ignore[arg-type]
    auroc = roc_auc_score(correct, conf) if 0 < sum(correct) < len(correct) else float("nan")
    return {
        "items": len(rows),
        "errors": len(rows) - len(ok),
        "seconds": round(seconds, 2),
        "items_per_s": round(len(rows) / seconds, 3),
        "accuracy": round(sum(correct) / len(rows), 4),
        "auroc": round(float(auroc), 4),  # NaN when all right or all wrong
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--naive-rows", type=int, default=40,
                        help="rows for the slow stock create_chat_completion run (0: skip)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "classify.json"))
    args = parser.parse_args()

    rows = [json.loads(line) for line in DATA.read_text().splitlines()[: args.rows]]
    task = load_task(TASK)
    backend = LlamaCppBackend()

    # Item tokens: what exact scoring must evaluate per item beyond the shared prefix.
    shared = backend.prompt_tokens(prompt.messages(task, "")[:-1])
    answer = backend.count_tokens(prompt.answer_prefix(task))
    item_tokens = [
        len(backend.prompt_tokens(prompt.messages(task, r["text"]))) - len(shared) + answer
        for r in rows
    ]
    probe = backend.prompt_tokens(prompt.messages(task, " ".join(r["text"] for r in rows[:40])))
    tps = prefill_tokens_per_second(backend, probe[: min(len(probe), 512)])
    mean_item = statistics.mean(item_tokens)
    limit = tps / mean_item

    print(f"rows={len(rows)} mean item tokens={mean_item:.1f} prefill={tps:.0f} tok/s "
          f"-> prefill limit {limit:.2f} items/s", file=sys.stderr)
    exact = run_method(Classifier(task, backend, method="exact", reason=False), rows)
    print(f"exact: {exact}", file=sys.stderr)
    seed_task = dataclasses.replace(task, reason=True)
    seed = run_method(Classifier(seed_task, backend, method="seed", reason=True), rows)
    print(f"seed: {seed}", file=sys.stderr)
    naive = {}
    if args.naive_rows:
        naive = run_naive_seed(seed_task, rows[: args.naive_rows], backend.n_threads)
        print(f"seed via create_chat_completion: {naive}", file=sys.stderr)

    result = {
        "command": f"bench/bench_classify.py --rows {args.rows}",
        "model": backend.model_name,
        "rows": len(rows),
        "mean_item_tokens": round(mean_item, 1),
        "prefill_tokens_per_s": round(tps, 1),
        "prefill_limit_items_per_s": round(limit, 3),
        "exact_no_reason": exact,
        "seed_with_reason": seed,
        "seed_via_create_chat_completion": naive,
        "speedup_exact_over_seed": round(exact["items_per_s"] / seed["items_per_s"], 2),
        "prefill_limit_over_exact": round(limit / exact["items_per_s"], 3),
        "speedup_exact_over_stock_seed": (
            round(exact["items_per_s"] / naive["items_per_s"], 2) if naive else None
        ),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        "\n| method | items/s | accuracy | AUROC |\n|---|---|---|---|\n"
        + "".join(
            f"| {name} | {m['items_per_s']} | {m['accuracy']} | {m['auroc']} |\n"
            for name, m in (
                ("seed, stock create_chat_completion (first rows)", naive),
                ("seed (JSON + reason), surelabel", seed),
                ("exact (--no-reason)", exact),
            )
            if m
        )
        + "\n"
        f"\nexact / seed = {result['speedup_exact_over_seed']}x; exact / stock seed = "
        f"{result['speedup_exact_over_stock_seed']}x (target >= 8x); "
        f"prefill limit / exact = {result['prefill_limit_over_exact']} (target <= 1.3)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
