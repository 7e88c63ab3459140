"""Build and measure the generic (task-independent) calibration of a model.

Every shared set is scored once (cached, see ``_scores.py``) with the default prompt and
options (the multilabel sets in the library's default multilabel mode, or
``--multilabel-mode``); a cross-task confidence model
(:mod:`surelabel.calibration.generic`) is fitted on the answers, and its transfer
measured by leaving each task out in turn: fitted on the other sets, evaluated on the
left-out one (ECE of its answers; share of rows accepted at the task's threshold, and the
accuracy of those). The map fitted on all sets is written where the package ships it
(``--write``), or to ``--out``.

    python bench/bench_generic.py --rows 150 --write          # the embedded model
    python bench/bench_generic.py --backend 'openai:{"base_url": "http://127.0.0.1:8080/v1"}' \\
        --rows 150 --out my-model.json                         # build one for another model

Use the result with ``surelabel classify ... --calibration generic:my-model.json`` (the shipped
one for the embedded model is used by default).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from _scores import SETS, debiased, ensure_scored, load_task, sample_rows, targets

ACCEPT = 0.9


def answers(task: Any, logprobs: np.ndarray, cf: np.ndarray, y: Any, debias: bool) -> Any:
    """(probs (m, K), masses (m,), correct (m,), yes_no) over every (row, subtask) answer, and
    the row view: (row ids (m,), n rows)."""
    from surelabel._numeric import softmax
    from surelabel.subtasks import subtask_targets

    lp = debiased(logprobs, cf, task) if debias else logprobs
    p3 = softmax(lp, axis=2)
    raw_total = np.logaddexp.reduce(logprobs, axis=2)  # the model's mass on the labels
    mass = np.exp(np.minimum(raw_total, 0.0))
    y2 = subtask_targets(task, y)
    n, s, k = p3.shape
    probs = p3.reshape(n * s, k)
    correct = (p3.argmax(axis=2) == y2).reshape(-1)
    rows = np.repeat(np.arange(n), s)
    return probs, mass.reshape(-1), correct, task.kind == "multilabel", rows, n


def evaluate(cal: Any, data: Any) -> dict[str, Any]:
    from surelabel import metrics

    probs, mass, correct, yes_no, rows, n = data
    conf = cal.confidence(probs, mass, yes_no) if cal is not None else probs.max(axis=1)
    row_conf = np.full(n, np.inf)
    np.minimum.at(row_conf, rows, conf)
    row_ok = np.ones(n, dtype=bool)
    np.logical_and.at(row_ok, rows, correct)
    accepted = row_conf > ACCEPT
    return {
        "ece": metrics.calibration_error(conf, correct, 15, "uniform"),
        "smooth_ece": metrics.smooth_calibration_error(conf, correct),
        "mean_confidence": float(conf.mean()),
        "accuracy": float(correct.mean()),
        "accept_share": float(accepted.mean()),
        "accepted_accuracy": float(row_ok[accepted].mean()) if accepted.any() else None,
        "auroc": metrics.confidence_auroc_score(conf, correct),
    }


def task_means_transfer(data: dict[str, Any], names: list[str], l2: float) -> None:
    """Leave-one-task-out with three task-level features added: the mean over the task's
    rows of the top logit, margin and entropy ratio. They need no labels but do need the
    whole batch, so a classifier that sees one item at a time cannot use them; measured
    only, to show how much of the gap is the task's unknown difficulty."""
    from surelabel import metrics
    from surelabel.calibration.generic import L2, _sigmoid, features, fit_logistic

    def feats(name: str) -> tuple[np.ndarray, np.ndarray]:
        probs, mass, correct, _yes_no, _rows, _n = data[name]
        x = features(probs, mass)
        means = np.repeat(x[:, :3].mean(axis=0, keepdims=True), len(x), axis=0)
        return np.concatenate([x, means], axis=1), correct

    print("\nwith task-level means as features (measured only):\n")
    print("| left-out set | ECE | answers accepted (acc) |")
    print("|---|---|---|")
    eces = []
    for left in names:
        kind = data[left][3]  # the left-out set's kind of answers: yes/no or labels
        train = [feats(n) for n in names if n != left and data[n][3] == kind]
        xs = np.concatenate([x for x, _ in train])
        ts = np.concatenate([c for _, c in train])
        ws = np.concatenate([np.full(len(x), 1.0 / len(x)) for x, _ in train])
        beta, mean, scale = fit_logistic(xs, ts, ws, L2["yes_no"] if kind else l2)
        x, correct = feats(left)
        conf = _sigmoid(((x - mean) / scale) @ beta[:-1] + beta[-1])
        ece = metrics.calibration_error(conf, correct, 15, "uniform")
        eces.append(ece)
        accepted = conf > ACCEPT
        acc = f"{correct[accepted].mean():.2f}" if accepted.any() else "-"
        print(f"| {left} | {ece:.3f} | {accepted.mean():.1%} ({acc}) |")
    print(f"\nmean ECE {np.mean(eces):.3f}, largest {np.max(eces):.3f}")


def main() -> None:
    from surelabel.backends.registry import BackendSpec, build_backend
    from surelabel.calibration.generic import FEATURES, fit_generic, shipped_path
    from surelabel.methods import DEFAULT_OPTIONS, MULTILABEL_MODES, full_distribution_method

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="llamacpp", help="backend spec (default: llamacpp)")
    parser.add_argument("--rows", type=int, default=150)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--l2", type=float, default=None,
                        help="L2 penalty of the single-label map (default: the library's)")
    parser.add_argument("--l2-yes-no", type=float, default=None,
                        help="L2 penalty of the multilabel yes/no map (default: the library's)")
    parser.add_argument("--multilabel-mode", choices=MULTILABEL_MODES,
                        default=DEFAULT_OPTIONS.multilabel_mode,
                        help="how the multilabel sets are scored (default: the library's, "
                             f"{DEFAULT_OPTIONS.multilabel_mode})")
    parser.add_argument("--write", action="store_true",
                        help="write the map where the package ships it for this model")
    parser.add_argument("--out", type=Path, help="write the map here")
    parser.add_argument("--json", type=Path, help="write the transfer table as JSON")
    parser.add_argument("--task-means", action="store_true",
                        help="also measure (not ship) a variant that adds each task's mean "
                             "top logit, margin and entropy over its rows as features")
    args = parser.parse_args()
    backend = build_backend(BackendSpec.parse(args.backend))
    model = backend.model_name
    method = full_distribution_method(backend.capabilities)
    options = replace(DEFAULT_OPTIONS, multilabel_mode=args.multilabel_mode)
    scoring = options.scoring_key(method)
    debias = bool(scoring["debias"])
    names = [s for s in args.sets.split(",") if s]
    data = {}
    for name in names:
        path = ensure_scored(backend, name, args.rows, options.prompt, 0,
                             mode=options.multilabel_mode)
        assert path is not None
        d = np.load(path)
        task = load_task(name)
        y = targets(task, sample_rows(name, args.rows))
        data[name] = answers(task, d["logprobs"], d["content_free"], y, debias)
    backend.close()

    def sets_except(skip: str | None) -> list[Any]:
        return [(name, *data[name][:4]) for name in names if name != skip]

    print(f"model {model}, method {method}, scoring {scoring}, {args.rows} rows per set\n")
    print("| left-out set | answers | accuracy | ECE raw | ECE generic | smooth ECE | "
          "accepted raw (acc) | accepted generic (acc) | AUROC |")
    print("|---|---|---|---|---|---|---|---|---|")
    transfer = {}
    for name in names:
        cal = fit_generic(model, scoring, sets_except(name), l2=args.l2,
                          l2_yes_no=args.l2_yes_no)
        raw, gen = evaluate(None, data[name]), evaluate(cal, data[name])
        transfer[name] = {"raw": raw, "generic": gen}

        def acc(m: dict[str, Any]) -> str:
            a = m["accepted_accuracy"]
            return f"{m['accept_share']:.1%} ({'-' if a is None else f'{a:.2f}'})"

        print(f"| {name} | {len(data[name][0])} | {gen['accuracy']:.3f} | {raw['ece']:.3f} | "
              f"{gen['ece']:.3f} | {gen['smooth_ece']:.3f} | {acc(raw)} | {acc(gen)} | "
              f"{gen['auroc']:.3f} |")
    eces = [t["generic"]["ece"] for t in transfer.values()]
    print(f"\nECE of the generic map over the left-out sets: mean {np.mean(eces):.3f}, "
          f"largest {np.max(eces):.3f} (raw: mean "
          f"{np.mean([t['raw']['ece'] for t in transfer.values()]):.3f})")
    ece_met = [n for n, t in transfer.items() if t["generic"]["ece"] <= 0.10]
    accept_met = [n for n, t in transfer.items() if t["generic"]["accepted_accuracy"] is None
                  or t["generic"]["accepted_accuracy"] >= 0.9]
    print(f"\nECE <= 0.10 on {len(ece_met)} of {len(names)} left-out sets "
          f"({', '.join(ece_met) or 'none'}); accepted >= 90 % right (or none accepted) on "
          f"{len(accept_met)} of {len(names)}; both on "
          f"{len(set(ece_met) & set(accept_met))}")
    full = fit_generic(model, scoring, sets_except(None), l2=args.l2,
                       l2_yes_no=args.l2_yes_no)
    # A map ships only if it beats no map on the left-out sets of its kind: a lower mean
    # ECE, or accepted answers >= 90 % right (or none accepted) on more of them.
    def safe(m: dict[str, Any]) -> bool:
        return m["accepted_accuracy"] is None or m["accepted_accuracy"] >= 0.9

    for kind in list(full.maps):
        mine = [t for n, t in transfer.items() if data[n][3] == (kind == "yes_no")]
        gen_ece = float(np.mean([t["generic"]["ece"] for t in mine]))
        raw_ece = float(np.mean([t["raw"]["ece"] for t in mine]))
        gen_safe = sum(safe(t["generic"]) for t in mine)
        raw_safe = sum(safe(t["raw"]) for t in mine)
        verdict = (f"mean ECE {gen_ece:.3f} (none: {raw_ece:.3f}), accepted >= 90 % right on "
                   f"{gen_safe} of {len(mine)} (none: {raw_safe})")
        if gen_ece >= raw_ece and gen_safe <= raw_safe:
            del full.maps[kind]
            print(f"\nthe {kind} map is left out, no better than none on the left-out sets "
                  f"of its kind: {verdict}")
        else:
            print(f"\nthe {kind} map ships: on the left-out sets of its kind {verdict}")
    full.transfer = {n: {k: t["generic"][k] for k in ("ece", "accept_share",
                                                      "accepted_accuracy")}
                     for n, t in transfer.items()}
    print("\nthe map fitted on all sets, on each set (in-sample: what a run of that task "
          "gets by default): " + ", ".join(f"{n} ECE {evaluate(full, data[n])['ece']:.3f}"
                                           for n in names))
    print("\nstandardized weights of the map fitted on all sets (log-odds of 'right' per "
          "standard deviation of the feature):")
    print("| feature | " + " | ".join(full.maps) + " |")
    print("|---|" + "---|" * len(full.maps))
    for i, feature in enumerate(FEATURES):
        print(f"| {feature} | " + " | ".join(f"{m.coef[i]:+.3f}" for m in full.maps.values())
              + " |")
    print("| (intercept) | " + " | ".join(f"{m.coef[-1]:+.3f}" for m in full.maps.values())
          + " |")
    if args.task_means:
        task_means_transfer(data, names, args.l2 or 1e-2)
    if args.write or args.out:
        out = args.out or shipped_path(model)
        out.parent.mkdir(parents=True, exist_ok=True)
        full.save(out)
        print(f"\nwrote {out}")
    if args.json:
        args.json.write_text(json.dumps(transfer, indent=1))


if __name__ == "__main__":
    main()
