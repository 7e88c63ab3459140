"""Trust out of the box: the prompt study, permutation averaging and label-free debiasing on
every shared set, with the embedded model and no task calibration.

Two parts:

- ``--part score`` runs the model: for each shared set, a seeded sample of rows (and the
  content-free inputs of :mod:`surelabel.debias`) scored by the exact method under each
  prompt style and label order, saved as raw label log-probabilities (in the task's own
  label order) under ``bench/results/trust/``. Cached: a rerun scores only what is missing.
- ``--part report`` reads them and prints the tables of docs/CALIBRATION.md: accuracy,
  macro-F1, ECE, AUROC and the share of rows given the first-listed label, for each prompt
  style, for 1 to 3 label orders averaged, and raw vs debiased.

    python bench/bench_trust.py --part score --rows 150
    python bench/bench_trust.py --part report --rows 150
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import random
import sys
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

#: shared set -> task file
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
#: (prompt style, label order) passes scored
PASSES = (("listed", 0), ("placeholder", 0), ("placeholder", 1), ("placeholder", 2))


def sample_rows(name: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (DATA / SETS[name][0]).read_text().splitlines()
            if line.strip()]
    rng = random.Random(seed)
    return rng.sample(rows, min(n, len(rows)))


def load(name: str) -> Any:
    from surelabel.task import load_task

    return load_task(TASKS / SETS[name][1])


def path_of(name: str, style: str, order: int, rows: int) -> Path:
    return OUT / f"{name}.{style}.o{order}.n{rows}.npz"


def score(names: list[str], n_rows: int, batch: int) -> None:
    from surelabel import methods
    from surelabel.backends.llamacpp import LlamaCppBackend

    OUT.mkdir(parents=True, exist_ok=True)
    backend = LlamaCppBackend()
    for name in names:
        task = load(name)
        rows = sample_rows(name, n_rows)
        texts = [str(r["text"]) for r in rows]
        for style, j in PASSES:
            target = path_of(name, style, j, n_rows)
            orders = methods.label_orders(len(task.labels), 3)
            if target.exists() or j >= len(orders):
                continue
            order = orders[j]
            permuted = replace(task, labels=tuple(task.labels[i] for i in order))
            opts = methods.MethodOptions(prompt=style, debias=False)
            with cpu_lock():
                out, seconds, cf_lp = _score_pass(backend, task, permuted, texts, opts, batch)
            np.savez_compressed(target, logprobs=np.stack(out), content_free=np.stack(cf_lp),
                                seconds=seconds)
            print(f"{name} {style} order {j}: {len(texts)} rows in {seconds:.0f} s "
                  f"({seconds / len(texts):.2f} s/row)", flush=True)
    backend.close()


@contextlib.contextmanager
def cpu_lock() -> Iterator[None]:
    """Hold /tmp/surelabel-cpu.lock while the model runs (one heavy job at a time here)."""
    with open("/tmp/surelabel-cpu.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _score_pass(backend: Any, task: Any, permuted: Any, texts: list[str], opts: Any,
                batch: int) -> tuple[list[Any], float, list[Any]]:
    from surelabel import methods
    from surelabel.debias import CONTENT_FREE_INPUTS
    from surelabel.evaluate import result_logprobs

    start = time.perf_counter()
    out = []
    for k in range(0, len(texts), batch):
        res = methods.run_batch("exact", backend, permuted, texts[k : k + batch], False, opts)
        for r in res:
            if isinstance(r, Exception):
                raise r
            out.append(result_logprobs(_original(task, permuted, r)))
    seconds = time.perf_counter() - start
    cf = methods.run_batch("exact", backend, permuted, list(CONTENT_FREE_INPUTS), False, opts)
    cf_lp = [result_logprobs(_original(task, permuted, r)) for r in cf
             if not isinstance(r, Exception)]
    return out, seconds, cf_lp


def _original(task: Any, permuted: Any, result: Any) -> Any:
    from surelabel import methods

    dists = methods._in_task_order(task, permuted, result)
    return methods.MethodResult(tuple(dists), tuple(s.name for s in task.subtasks))


def targets(name: str, task: Any, rows: list[dict[str, Any]]) -> Any:
    from surelabel.subtasks import label_indices

    return label_indices(task, [r["label"] for r in rows])


def metrics_of(task: Any, p3: np.ndarray, y: Any, order: tuple[int, ...]) -> dict[str, Any]:
    from surelabel.report import evaluate_probabilities
    from surelabel.subtasks import task_probabilities

    m = evaluate_probabilities(task, task_probabilities(task, p3), y, n_bootstrap=0)
    out = {k: m[k] for k in ("accuracy", "macro_f1", "ece", "auroc")}
    if task.kind == "multilabel":
        out["yes_per_row"] = float((p3[:, :, 0] >= 0.5).sum(axis=1).mean())
        out["gold_per_row"] = float(np.asarray(y).sum(axis=1).mean())
    else:
        out["first_share"] = float(np.mean(p3[:, 0, :].argmax(axis=1) == order[0]))
    return out


def report(names: list[str], n_rows: int) -> None:
    from surelabel import debias, methods
    from surelabel._numeric import softmax

    lines_style = ["| set | labels | style | accuracy | macro-F1 | ECE | AUROC | first-label share "
                   "(multilabel: yes per row, gold) | s/row |", "|" + "---|" * 10]
    lines_perm = ["| set | orders | accuracy | macro-F1 | ECE | AUROC | cost |",
                  "|" + "---|" * 7]
    lines_debias = ["| set | accuracy raw | debiased | macro-F1 raw | debiased | ECE raw | "
                    "debiased | AUROC raw | debiased | debiased (3 classic inputs only): acc |",
                    "|" + "---|" * 11]
    summary: dict[str, Any] = {}
    for name in names:
        task = load(name)
        rows = sample_rows(name, n_rows)
        y = targets(name, task, rows)
        data = {}
        for style, j in PASSES:
            p = path_of(name, style, j, n_rows)
            if p.exists():
                data[(style, j)] = np.load(p)
        if ("placeholder", 0) not in data:
            print(f"{name}: not scored yet", file=sys.stderr)
            continue
        orders = methods.label_orders(len(task.labels), 3)
        k = len(task.labels)
        for style in ("listed", "placeholder"):
            if (style, 0) not in data:
                continue
            d = data[(style, 0)]
            m = metrics_of(task, softmax(d["logprobs"], axis=2), y, orders[0])
            extra = (f"{m['yes_per_row']:.1f} yes, gold {m['gold_per_row']:.1f}"
                     if "yes_per_row" in m else f"{m['first_share']:.2f}")
            lines_style.append(
                f"| {name} | {k} | {style} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | "
                f"{m['ece']:.3f} | {_f(m['auroc'])} | {extra} | "
                f"{float(d['seconds']) / len(rows):.2f} |")
            summary.setdefault(name, {})[style] = m
        probs = []
        for j in range(3):
            if ("placeholder", j) in data:
                probs.append(softmax(data[("placeholder", j)]["logprobs"], axis=2))
                avg = np.mean(probs, axis=0)
                m = metrics_of(task, avg, y, orders[0])
                lines_perm.append(f"| {name} | {j + 1} | {m['accuracy']:.3f} | "
                                  f"{m['macro_f1']:.3f} | {m['ece']:.3f} | {_f(m['auroc'])} | "
                                  f"{j + 1}x |")
                summary[name][f"perm{j + 1}"] = m
        d = data[("placeholder", 0)]
        raw = softmax(d["logprobs"], axis=2)
        deb = {}
        for label, cf in (("all", d["content_free"]),
                          ("classic", d["content_free"][: len(debias.CONTENT_FREE)])):
            prior = np.stack(debias.estimate_prior(
                [[_dist(task, s, cf[i, s]) for s in range(cf.shape[1])]
                 for i in range(len(cf))]))
            deb[label] = softmax(d["logprobs"] - np.log(prior)[None], axis=2)
        mr = metrics_of(task, raw, y, orders[0])
        md = metrics_of(task, deb["all"], y, orders[0])
        mc = metrics_of(task, deb["classic"], y, orders[0])
        lines_debias.append(
            f"| {name} | {mr['accuracy']:.3f} | {md['accuracy']:.3f} | {mr['macro_f1']:.3f} | "
            f"{md['macro_f1']:.3f} | {mr['ece']:.3f} | {md['ece']:.3f} | {_f(mr['auroc'])} | "
            f"{_f(md['auroc'])} | {mc['accuracy']:.3f} |")
        summary[name]["debiased"] = md
        summary[name]["debiased_classic"] = mc
    print("\n".join(lines_style), "\n")
    print("\n".join(lines_perm), "\n")
    print("\n".join(lines_debias))
    (OUT / f"summary.n{n_rows}.json").write_text(json.dumps(summary, indent=1))


def _dist(task: Any, s: int, lp: np.ndarray) -> Any:
    from surelabel.distribution import LabelDistribution

    return LabelDistribution.from_logprobs(task.subtasks[s].labels, lp.tolist())


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("score", "report"), default="report")
    parser.add_argument("--rows", type=int, default=150)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    names = [s for s in args.sets.split(",") if s]
    if args.part == "score":
        score(names, args.rows, args.batch)
    else:
        report(names, args.rows)


if __name__ == "__main__":
    main()
