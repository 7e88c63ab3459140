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
import json
import sys
from typing import Any

import numpy as np
from _scores import EMBEDDED, OUT, SETS, debiased, ensure_scored, path_of, sample_rows, targets
from _scores import load_task as load

#: (prompt style, label order) passes scored
PASSES = (("listed", 0), ("placeholder", 0), ("placeholder", 1), ("placeholder", 2))


def score(names: list[str], n_rows: int, batch: int, orders: int) -> None:
    from surelabel.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend()
    for name in names:
        for style, j in PASSES:
            if j < orders:
                ensure_scored(backend, name, n_rows, style, j, batch)
    backend.close()


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


def _share(m: dict[str, Any]) -> str:
    """The first-label share (multilabel: yes per row) of a metrics dict."""
    return f"{m['yes_per_row']:.1f} yes" if "yes_per_row" in m else f"{m['first_share']:.2f}"


def report(names: list[str], n_rows: int) -> None:
    from surelabel import debias, methods
    from surelabel._numeric import softmax

    lines_style = ["| set | labels | style | accuracy | macro-F1 | ECE | AUROC | first-label share "
                   "(multilabel: yes per row, gold) | s/row |", "|" + "---|" * 9]
    lines_perm = ["| set | orders | accuracy | macro-F1 | ECE | AUROC | cost |",
                  "|" + "---|" * 7]
    lines_debias = ["| set | accuracy raw | debiased | macro-F1 raw | debiased | ECE raw | "
                    "debiased | AUROC raw | debiased | debiased (3 classic inputs only): acc | "
                    "first-label share raw | debiased |",
                    "|" + "---|" * 12]
    summary: dict[str, Any] = {}
    for name in names:
        task = load(name)
        rows = sample_rows(name, n_rows)
        y = targets(task, rows)
        data = {}
        for style, j in PASSES:
            p = path_of(EMBEDDED, name, style, j, n_rows)
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
        deb = {label: softmax(debiased(d["logprobs"], cf, task), axis=2)
               for label, cf in (("all", d["content_free"]),
                                 ("classic", d["content_free"][: len(debias.CONTENT_FREE)]))}
        mr = metrics_of(task, raw, y, orders[0])
        md = metrics_of(task, deb["all"], y, orders[0])
        mc = metrics_of(task, deb["classic"], y, orders[0])
        lines_debias.append(
            f"| {name} | {mr['accuracy']:.3f} | {md['accuracy']:.3f} | {mr['macro_f1']:.3f} | "
            f"{md['macro_f1']:.3f} | {mr['ece']:.3f} | {md['ece']:.3f} | {_f(mr['auroc'])} | "
            f"{_f(md['auroc'])} | {mc['accuracy']:.3f} | {_share(mr)} | {_share(md)} |")
        summary[name]["debiased"] = md
        summary[name]["debiased_classic"] = mc
    print("\n".join(lines_style), "\n")
    print("\n".join(lines_perm), "\n")
    print("\n".join(lines_debias))
    (OUT / f"summary.n{n_rows}.json").write_text(json.dumps(summary, indent=1))


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("score", "report"), default="report")
    parser.add_argument("--rows", type=int, default=150)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--orders", type=int, default=3,
                        help="label orders scored with the placeholder prompt (default: 3)")
    args = parser.parse_args()
    names = [s for s in args.sets.split(",") if s]
    if args.part == "score":
        score(names, args.rows, args.batch, args.orders)
    else:
        report(names, args.rows)


if __name__ == "__main__":
    main()
