"""Calibration quality of the embedded model on the shared labelled data sets.

For each set: shuffle with a fixed seed, split into two halves (fit / held out) of up to
``--max-rows`` rows each, score every row with the ``exact`` method (and a subset with the
``seed`` method), fit calibrators on the first half and measure on the second.

Model outputs are cached in ``bench/results/`` (one JSONL per set and method, appended as
rows finish), so an interrupted run resumes and the metrics can be recomputed for free.
Rows are scored alternately from the two halves, so any prefix of the cache is balanced.

    python bench/bench_quality.py --sets sst2,trec --max-rows 300 --seed-rows 100
    python bench/bench_quality.py --predict-only          # fill the cache only
    python bench/bench_quality.py --no-predict            # metrics from the cache only
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
RESULTS = HERE / "results"
TASKS = HERE / "tasks"
SPLIT_SEED = 20240611
CONTENT_FREE = ("N/A", "", "[MASK]")

SETS: dict[str, tuple[str, str]] = {
    "sst2": ("sst2.yaml", "sst2_dev.jsonl"),
    "ag_news": ("ag_news.yaml", "ag_news_test_2k.jsonl"),
    "trec": ("trec.yaml", "trec_coarse_test.jsonl"),
    "snips": ("snips.yaml", "snips_intents_test.jsonl"),
    "usda": ("usda.yaml", "usda_food_groups.jsonl"),
    "go_emotions": ("go_emotions.yaml", "go_emotions_ekman_test.jsonl"),
}


def split(n_rows: int, max_rows: int) -> tuple[list[int], list[int]]:
    """Row indices of the fit half and the held-out half."""
    order = list(range(n_rows))
    random.Random(SPLIT_SEED).shuffle(order)
    half = min(max_rows, n_rows // 2)
    return order[:half], order[half : 2 * half]


def interleave(a: list[int], b: list[int]) -> list[int]:
    out: list[int] = []
    for x, y in zip(a, b, strict=False):
        out += [x, y]
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run
    return rows


def cache_path(name: str, method: str, task: Any, model: str) -> Path:
    return RESULTS / f"{name}.{method}.{task.fingerprint()}.{model}.jsonl"


def raw_exact(backend: Any, task: Any, text: str) -> dict[str, Any]:
    from surelabel import methods

    result = methods.exact(backend, task, text, False)
    if result.per_label is not None:
        return {
            "per_label": {name: list(d.logprobs or ()) for name, d in result.per_label.items()}
        }
    assert result.distribution is not None
    return {"logprobs": list(result.distribution.logprobs or ())}


def raw_seed(backend: Any, task: Any, text: str) -> dict[str, Any]:
    from surelabel import methods
    from surelabel.errors import BackendError

    try:
        result = methods.seed(backend, task, text, False)
    except BackendError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if result.per_label is not None:
        return {"p_true": {name: d.probabilities[0] for name, d in result.per_label.items()}}
    assert result.distribution is not None
    return {"probabilities": list(result.distribution.probabilities)}


def predict(name: str, args: argparse.Namespace, backend: Any) -> None:
    from surelabel.task import load_task

    task_file, data_file = SETS[name]
    task = load_task(TASKS / task_file)
    data = read_jsonl(DATA / data_file)
    fit, held = split(len(data), args.max_rows)
    model = backend.model_name
    RESULTS.mkdir(parents=True, exist_ok=True)
    cf_path = RESULTS / f"{name}.contentfree.{task.fingerprint()}.{model}.json"
    if not cf_path.exists():
        cf = {text: raw_exact(backend, task, text) for text in CONTENT_FREE}
        cf_path.write_text(json.dumps(cf), encoding="utf-8")
    plan = [("exact", interleave(fit, held), raw_exact)]
    if args.seed_rows:
        plan.append(("seed", interleave(fit[: args.seed_rows], held[: args.seed_rows]), raw_seed))
    for method, wanted, fn in plan:
        path = cache_path(name, method, task, model)
        done = {row["i"] for row in read_jsonl(path)}
        todo = [i for i in wanted if i not in done]
        if not todo:
            continue
        print(f"{name}/{method}: scoring {len(todo)} rows ({len(done)} cached)", file=sys.stderr)
        start = time.perf_counter()
        with path.open("a", encoding="utf-8") as fh:
            for k, i in enumerate(todo, 1):
                row = {"i": i, "label": data[i]["label"], **fn(backend, task, data[i]["text"])}
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                if k % 50 == 0:
                    rate = (time.perf_counter() - start) / k
                    print(f"  {name}/{method}: {k}/{len(todo)} ({rate:.2f} s/row)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated set names")
    parser.add_argument("--max-rows", type=int, default=1000, help="rows per half (default 1000)")
    parser.add_argument("--seed-rows", type=int, default=100,
                        help="rows per half also scored with the slow seed method (default 100)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument("--predict-only", action="store_true", help="fill the cache, no metrics")
    parser.add_argument("--no-predict", action="store_true",
                        help="use cached predictions only (rows not cached are skipped)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--target-error", type=float, default=0.1)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--json", type=Path, default=RESULTS / "quality.json")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        parser.error(f"unknown set {unknown[0]!r}; expected some of {', '.join(SETS)}")
    if not args.no_predict:
        from surelabel.backends.llamacpp import LlamaCppBackend

        backend = LlamaCppBackend(n_threads=args.threads)
        for name in names:
            predict(name, args, backend)
    if args.predict_only:
        return 0
    from bench_quality_eval import evaluate_sets  # type: ignore[import-not-found]

    return int(evaluate_sets(names, args))


if __name__ == "__main__":
    _ = math  # keep the import for evaluate helpers below
    sys.exit(main())
