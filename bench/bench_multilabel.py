"""Multilabel exact scoring, sequential vs independent per label: accuracy, calibration and
speed on the multilabel shared sets, with the embedded model.

``sequential``: each label's yes/no is scored after the answers already fixed (by argmax)
for the labels before it, one round of scoring per label. ``independent``: every label is
scored right after ``{"field": {``, all labels of all items in one round
(:attr:`surelabel.methods.MethodOptions.multilabel_mode`).

Two parts:

- ``--part score`` (takes /tmp/surelabel-cpu.lock itself while the model runs, so do not
  wrap it in ``flock``): the raw scores of a seeded sample of rows (and the content-free
  inputs) under each mode, cached as in ``bench_trust.py`` (``bench/results/trust/``, the
  file named with the mode: ``go_emotions.placeholder.independent.o0.n150.npz``; the
  untagged sequential files of ``bench_trust.py`` came from an older backend and are not
  reused). Then the speed: the first ``--timing-rows`` rows scored afresh under both
  modes in one process, two passes each in the order A B B A, ``--batch`` items a batch
  (as ``surelabel classify`` batches them), written to
  ``bench/results/trust/multilabel_timing.json`` with the load average.
- ``--part report`` (the default): the table of docs/CALIBRATION.md, "Multilabel:
  sequential or independent", raw and debiased.

    python bench/bench_multilabel.py --part score --rows 150
    python bench/bench_multilabel.py --part report --rows 150
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from _scores import (
    EMBEDDED,
    OUT,
    cpu_lock,
    debiased,
    ensure_scored,
    load_task,
    path_of,
    sample_rows,
    targets,
)

SETS = ("go_emotions", "reuters10")
MODES = ("sequential", "independent")
STYLE = "placeholder"
TIMING = OUT / "multilabel_timing.json"


def score(names: list[str], n_rows: int, batch: int, timing_rows: int) -> None:
    from surelabel import methods
    from surelabel.backends.llamacpp import LlamaCppBackend
    from surelabel.evaluate import result_logprobs

    backend = LlamaCppBackend()
    for name in names:
        for mode in MODES:
            ensure_scored(backend, name, n_rows, STYLE, 0, batch, mode)
    timing: dict[str, Any] = json.loads(TIMING.read_text()) if TIMING.exists() else {}
    for name in names if timing_rows > 0 else ():
        task = load_task(name)
        texts = [str(r["text"]) for r in sample_rows(name, n_rows)][:timing_rows]
        entry: dict[str, Any] = {"rows": len(texts), "batch": batch}
        seconds = dict.fromkeys(MODES, 0.0)
        out: dict[str, list[Any]] = {mode: [] for mode in MODES}
        with cpu_lock():
            before = _load_average()
            # Each mode scores all the rows twice, in the order A B B A, so a drift in the
            # machine's load falls on both alike. Whole passes, not batch by batch: the
            # backend keeps the last batch's items in its KV cache, so a mode that followed
            # the other on the same batch would find the items already evaluated.
            for mode in (*MODES, *reversed(MODES)):
                opts = methods.MethodOptions(prompt=STYLE, debias=False, multilabel_mode=mode)
                start = time.perf_counter()
                for k in range(0, len(texts), batch):
                    for r in methods.run_batch("exact", backend, task, texts[k : k + batch],
                                               False, opts):
                        if isinstance(r, Exception):
                            raise r
                        out[mode].append(result_logprobs(r))
                seconds[mode] += (time.perf_counter() - start) / 2
            entry["load_average"] = [before, _load_average()]
        for mode in MODES:
            # The fresh scores must be the cached ones (exact scoring is deterministic).
            cached = np.load(path_of(EMBEDDED, name, STYLE, 0, n_rows, mode))["logprobs"]
            fresh = np.stack(out[mode])
            drift = float(np.abs(fresh - np.concatenate([cached[: len(texts)]] * 2)).max())
            entry[mode] = {"seconds": seconds[mode], "s_per_item": seconds[mode] / len(texts),
                           "max_abs_diff_vs_cache": drift}
            print(f"{name} {mode}: {len(texts)} rows in {seconds[mode]:.1f} s "
                  f"({seconds[mode] / len(texts):.3f} s/item; |diff| vs cache {drift:.1e})",
                  flush=True)
        timing[name] = entry
    TIMING.write_text(json.dumps(timing, indent=1))
    backend.close()


def _load_average() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def metrics_of(task: Any, p3: np.ndarray, y: Any) -> dict[str, Any]:
    """The figures compared: per-label accuracy, macro-F1 over labels, subset accuracy, ECE
    of the yes/no answers and of P(yes), Brier, AUROC of P(yes) per label (mean)."""
    from surelabel import metrics
    from surelabel.report import evaluate_probabilities
    from surelabel.subtasks import task_probabilities

    p_yes = task_probabilities(task, p3)
    m = evaluate_probabilities(task, p_yes, y, n_bootstrap=0)
    yy = np.asarray(y).astype(int)
    aurocs = [v["auroc"] for v in m["per_label"].values() if v["auroc"] is not None]
    return {
        "label_accuracy": m["label_accuracy"],
        "macro_f1": m["macro_f1"],
        "subset_accuracy": m["accuracy"],
        "ece": m["ece"],
        "ece_yes": metrics.calibration_error(p_yes.ravel(), yy.ravel() == 1, 15, "uniform"),
        "brier": m["brier"],
        "auroc": float(np.mean(aurocs)) if aurocs else None,
        "yes_per_row": float((p_yes >= 0.5).sum(axis=1).mean()),
        "gold_per_row": float(yy.sum(axis=1).mean()),
    }


COLUMNS = (("label_accuracy", "label acc", True), ("macro_f1", "macro-F1", True),
           ("subset_accuracy", "subset acc", True), ("ece", "ECE (answers)", False),
           ("ece_yes", "ECE P(yes)", False), ("brier", "Brier", False),
           ("auroc", "AUROC", True))


def report(names: list[str], n_rows: int) -> dict[str, Any]:
    from surelabel._numeric import softmax

    timing = json.loads(TIMING.read_text()) if TIMING.exists() else {}
    header = ("| set | scores | mode | " + " | ".join(c[1] for c in COLUMNS)
              + " | yes per row (gold) | s/item |")
    lines = [header, "|" + "---|" * (len(COLUMNS) + 5)]
    summary: dict[str, Any] = {}
    for name in names:
        task = load_task(name)
        y = targets(task, sample_rows(name, n_rows))
        for variant in ("raw", "debiased"):
            for mode in MODES:
                d = np.load(path_of(EMBEDDED, name, STYLE, 0, n_rows, mode))
                lp = d["logprobs"]
                if variant == "debiased":
                    lp = debiased(lp, d["content_free"], task)
                m = metrics_of(task, softmax(lp, axis=2), y)
                summary.setdefault(name, {}).setdefault(variant, {})[mode] = m
                t = timing.get(name, {}).get(mode)
                speed = f"{t['s_per_item']:.3f}" if t else "-"
                cells = " | ".join("-" if m[k] is None else f"{m[k]:.3f}" for k, _, _ in COLUMNS)
                lines.append(f"| {name} | {variant} | {mode} | {cells} | "
                             f"{m['yes_per_row']:.1f} ({m['gold_per_row']:.1f}) | {speed} |")
    print("\n".join(lines))
    print()
    wins = {mode: 0 for mode in MODES}
    for name, by_variant in summary.items():
        for variant, by_mode in by_variant.items():
            a, b = by_mode["sequential"], by_mode["independent"]
            better = []
            for key, label, higher in COLUMNS:
                if a[key] is None or b[key] is None or round(a[key], 3) == round(b[key], 3):
                    continue  # a tie at the precision shown
                winner = "independent" if (b[key] > a[key]) == higher else "sequential"
                wins[winner] += 1
                better.append(f"{label}: {winner}")
            print(f"{name} {variant}: " + "; ".join(better))
    print(f"\nmetric wins over both sets, raw and debiased: {wins}")
    for name in names:
        t = timing.get(name)
        if t:
            print(f"{name}: {t['rows']} rows timed, batch {t['batch']}, passes A B B A; "
                  f"load average before {t['load_average'][0]}, after {t['load_average'][1]}; "
                  "|diff| vs cache " + ", ".join(f"{m} {t[m]['max_abs_diff_vs_cache']:.1e}"
                                                 for m in MODES))
    (OUT / f"multilabel.n{n_rows}.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("score", "report"), default="report")
    parser.add_argument("--rows", type=int, default=150)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--batch", type=int, default=8, help="items per scoring call")
    parser.add_argument("--timing-rows", type=int, default=40,
                        help="rows scored afresh under each mode for the speed (default: 40)")
    args = parser.parse_args()
    names = [s for s in args.sets.split(",") if s]
    if args.part == "score":
        score(names, args.rows, args.batch, args.timing_rows)
    else:
        report(names, args.rows)


if __name__ == "__main__":
    main()
