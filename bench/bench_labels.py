"""Seconds per item against the number of labels: exact scoring vs the source technique.

Run: ``make bench`` (or ``.venv/bin/python bench/bench_labels.py --rows 100``).

One process, one model load, the same first N texts of clinc150's test set classified
with label sets of 2, 8, 32, 64 and 150 of clinc150's intents (the first k in the task
file's order) and 213 (then hwu64's intents that clinc150 lacks), plus a "long
descriptions" case (77 intents, each with a short description: a prompt of about 1,300
tokens, like a 77-class banking task's), by ``exact`` (batch runs, ``--no-reason``) and
``seed`` (generation with a JSON-schema grammar, no reason). Also
printed, measured in the same run at the same thread count: the prefill limit of the
binary task (item tokens / best prefill tokens per second), and for each label set the
label trie's size (tokens after the shared answer prefix, each shared token once).
``exact`` is the llama.cpp backend's default ``trie`` scorer (each item's label trie in one
decode call); ``streams`` is exact with its ``streams`` scorer (bit for bit the brute
force, items side by side, hundreds of small calls per item at 150 labels);
``shortlist`` is exact with ``--shortlist K`` (default 16: only the labels under the K
most probable first tokens scored), printed with how often it gives exact's label, the
labels it scored and the estimated cut mass (means over the items).

Prints a Markdown table; ``--json`` writes the figures, ``--plot`` draws seconds per item
against the number of labels (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

from surelabel import prompt
from surelabel.backends._scoring import LabelTrie
from surelabel.backends.llamacpp import LlamaCppBackend, default_threads
from surelabel.classifier import Classifier, Record
from surelabel.methods import MethodOptions
from surelabel.task import Task, load_task

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "clinc150_test.jsonl"
TASK = REPO / "bench" / "tasks" / "clinc150.yaml"
#: Beyond 150: clinc150's intents, then hwu64's that clinc150 does not have (213 in all).
MORE = REPO / "bench" / "tasks" / "hwu64.yaml"
SIZES = (2, 8, 32, 64, 150, 213)


def label_task(k: int, long: bool = False) -> Task:
    base = load_task(TASK)
    pool = list(base.label_names)
    pool += [n for n in load_task(MORE).label_names if n not in pool]
    if k > len(pool):
        raise SystemExit(f"--sizes: at most {len(pool)} labels")
    names = pool[:k]
    labels: Any = names
    if long:
        labels = {n: f"the user asks for {n.replace('_', ' ')} or how it works" for n in names}
    return Task.from_dict({"name": f"clinc{k}{'_long' if long else ''}",
                           "instructions": base.instructions, "field": "intent",
                           "labels": labels})


def trie_tokens(backend: LlamaCppBackend, task: Task) -> int:
    _, tails, _ = backend.answer_split(prompt.messages(task, "x"), prompt.answer_prefix(task),
                                       prompt.continuations(task))
    return len(LabelTrie(tails, closed=True)) + 1


def run(
    backend: LlamaCppBackend, task: Task, method: str, texts: list[str], shortlist: int = 0
) -> tuple[float, list[Record]]:
    """Seconds per item, and the records."""
    clf = Classifier(task, backend, method="seed" if method == "seed" else "exact",
                     reason=False,
                     options=MethodOptions(shortlist=shortlist if method == "shortlist" else 0))
    clf.classify_many(texts[:1], progress=False)  # warm: debiasing prior, cached head
    start = time.perf_counter()
    records = clf.classify_many(texts, progress=False)
    elapsed = time.perf_counter() - start
    errors = [r.error for r in records if r.error]
    if len(errors) == len(records):
        raise SystemExit(f"{task.name} {method}: every row failed ({errors[0]})")
    return elapsed / len(texts), records


def shortlist_figures(short: list[Record], exact: list[Record] | None) -> dict[str, float]:
    """How the shortlist's records compare: the share giving exact's label, the mean
    labels scored and estimated cut mass, and the mean confidence gap to exact."""
    out = {"labels_scored": mean(float(r.extra.get("labels_scored") or 0) for r in short),
           "cut_mass": mean(float(r.extra.get("cut_mass") or 0.0) for r in short)}
    if exact is not None:
        pairs = [(s, e) for s, e in zip(short, exact) if not s.error and not e.error]
        out["same_label"] = mean(float(s.label == e.label) for s, e in pairs)
        out["confidence_gap"] = mean((s.confidence or 0.0) - (e.confidence or 0.0)
                                     for s, e in pairs)
    return out


def prefill_limit(backend: LlamaCppBackend, task: Task, texts: list[str]) -> dict[str, float]:
    """Item tokens (what one item adds to the prompt all items share) / best prefill speed."""
    prompts = [backend.prompt_tokens(prompt.messages(task, t)) for t in texts]
    shared = min(len(p) for p in prompts)
    for i in range(shared):
        if any(p[i] != prompts[0][i] for p in prompts):
            shared = i
            break
    item = sum(len(p) - shared for p in prompts) / len(prompts)
    probe = (prompts[0] * 4)[:512]
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        backend.forward(probe, all_logits=False)
        best = max(best, len(probe) / (time.perf_counter() - start))
    return {"item_tokens": item, "prefill_tokens_per_s": best, "limit_s": item / best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--methods", default="exact,seed,shortlist",
                        help="exact (trie scorer), streams (exact, streams scorer), seed, "
                             "shortlist (exact with --shortlist)")
    parser.add_argument("--shortlist", type=int, default=16, metavar="K",
                        help="first tokens the shortlist method keeps (default: 16)")
    parser.add_argument("--no-long", action="store_true", help="skip the long-descriptions case")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.threads < 1:
        parser.error("--rows and --threads: at least 1")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes: comma-separated integers")
    methods = args.methods.split(",")
    if any(m not in ("exact", "streams", "seed", "shortlist") for m in methods):
        parser.error("--methods: exact, streams, seed and/or shortlist")
    if args.shortlist < 1:
        parser.error("--shortlist: at least 1")
    with open(DATA) as fh:
        texts = [json.loads(line)["text"] for line in fh][: args.rows]
    backend = LlamaCppBackend(n_threads=args.threads)
    streams = (LlamaCppBackend(n_threads=args.threads, scorer="streams")
               if "streams" in methods else None)
    cases = [(k, False) for k in sizes] + ([] if args.no_long else [(77, True)])
    out: dict[str, Any] = {"rows": len(texts), "threads": args.threads,
                           "load_before": os.getloadavg(), "cases": []}
    out["prefill"] = prefill_limit(backend, label_task(2), texts)
    print(f"# {len(texts)} rows, {args.threads} threads, load {out['load_before']}",
          file=sys.stderr)
    for k, long in cases:
        task = label_task(k, long)
        row: dict[str, Any] = {"labels": k, "long": long, "trie_tokens": trie_tokens(backend, task),
                               "prompt_tokens": len(backend.prompt_tokens(
                                   prompt.messages(task, "")))}
        records: dict[str, list[Record]] = {}
        for m in methods:
            row[m], records[m] = run(streams if m == "streams" and streams else backend,
                                     task, m, texts, args.shortlist)
            print(f"{task.name} {m}: {row[m]:.3f} s/item", file=sys.stderr)
        if "shortlist" in records:
            row["shortlist_figures"] = shortlist_figures(records["shortlist"],
                                                         records.get("exact"))
        out["cases"].append(row)
    out["load_after"] = os.getloadavg()
    backend.close()
    if streams is not None:
        streams.close()
    pre = out["prefill"]
    out["shortlist_k"] = args.shortlist
    print(f"prefill: {pre['prefill_tokens_per_s']:.0f} tokens/s; binary item "
          f"{pre['item_tokens']:.1f} tokens -> prefill limit {pre['limit_s']:.3f} s/item; "
          f"load {out['load_before']} -> {out['load_after']}")
    print("\n| labels | prompt tokens | trie tokens | " + " | ".join(
        f"{m} s/item" for m in methods) + " | exact / 2-label exact | seed / exact |")
    print("|---|---|---|" + "---|" * len(methods) + "---|---|")
    base = out["cases"][0].get("exact")
    for row in out["cases"]:
        name = f"{row['labels']}{' (long descriptions)' if row['long'] else ''}"
        cells = " | ".join(f"{row[m]:.3f}" for m in methods)
        rel = f"{row['exact'] / base:.1f}x" if base and "exact" in row else "-"
        seed_x = f"{row['seed'] / row['exact']:.2f}x" if "seed" in row and "exact" in row else "-"
        print(f"| {name} | {row['prompt_tokens']} | {row['trie_tokens']} | {cells} | {rel} "
              f"| {seed_x} |")
    if "shortlist" in methods:
        print(f"\nshortlist, K = {args.shortlist} first tokens (means over the items):\n")
        print("| labels | labels scored | estimated cut mass | same label as exact "
              "| confidence - exact's |")
        print("|---|---|---|---|---|")
        for row in out["cases"]:
            f = row["shortlist_figures"]
            name = f"{row['labels']}{' (long descriptions)' if row['long'] else ''}"
            same = f"{f['same_label']:.0%}" if "same_label" in f else "-"
            gap = f"{f['confidence_gap']:+.3f}" if "confidence_gap" in f else "-"
            print(f"| {name} | {f['labels_scored']:.1f} | {f['cut_mass']:.4f} | {same} "
                  f"| {gap} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        plain = [r for r in out["cases"] if not r["long"]]
        for m in methods:
            ax.plot([r["labels"] for r in plain], [r[m] for r in plain], marker="o", label=m)
            ax.scatter([r["labels"] for r in out["cases"] if r["long"]],
                       [r[m] for r in out["cases"] if r["long"]], marker="x",
                       label=f"{m}, long descriptions")
        ax.axhline(pre["limit_s"], linestyle=":", color="grey", label="binary prefill limit")
        ax.set_xlabel("labels")
        ax.set_ylabel("seconds per item")
        ax.set_title(f"{len(texts)} clinc150 texts, {args.threads} threads")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
