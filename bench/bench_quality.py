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
import random
import sys
import time
from pathlib import Path
from typing import Any

from _scores import SETS as SHARED_SETS

from surelabel.debias import CONTENT_FREE  # the classic three; cached results are keyed by them

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
RESULTS = HERE / "results"
TASKS = HERE / "tasks"
SPLIT_SEED = 20240611
#: The sets this benchmark measures: (task file, data file), from the one list in _scores.
SETS: dict[str, tuple[str, str]] = {
    name: (SHARED_SETS[name][1], SHARED_SETS[name][0])
    for name in ("sst2", "ag_news", "trec", "snips", "usda", "go_emotions")
}


def split(n_rows: int, max_rows: int) -> tuple[list[int], list[int]]:
    """Row indices of the fit half and the held-out half.

    Shuffled rows alternate between the halves, so a smaller ``max_rows`` takes a prefix of
    each half and cached predictions stay valid when it grows.
    """
    order = list(range(n_rows))
    random.Random(SPLIT_SEED).shuffle(order)
    half = min(max_rows, n_rows // 2)
    return order[0 : 2 * half : 2], order[1 : 2 * half : 2]


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
    parser.add_argument("--target-error", default="0.05,0.1,0.2",
                        help="comma-separated target error rates for routing")
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--method", default="auto",
                        help="calibration method (default auto; e.g. top_label)")
    parser.add_argument("--alpha", type=float, default=0.1)
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
    return evaluate_sets(names, args)


# -- metrics ------------------------------------------------------------------------------


def _ci(fn: Any, conf: Any, ok: Any, n: int) -> list[float]:
    from surelabel import metrics

    lo, hi = metrics.bootstrap_ci(fn, conf, ok, n_resamples=n)
    return [round(lo, 4), round(hi, 4)]


def measure(conf: Any, ok: Any, n_boot: int) -> dict[str, Any]:
    from surelabel import metrics

    def ece(c: Any, o: Any) -> float:
        return metrics.calibration_error(c, o, 10, "quantile")

    return {
        "n": len(conf),
        "accuracy": round(float(ok.mean()), 4),
        "ece": round(ece(conf, ok), 4),
        "ece_ci95": _ci(ece, conf, ok, n_boot),
        # The ECE a perfectly calibrated model with these confidences shows: mean, 95th pct.
        "ece_noise_floor": [round(v, 4) for v in
                            metrics.calibration_error_noise_floor(conf, 10, "quantile")],
        "debiased_ece": round(metrics.debiased_calibration_error(conf, ok, 10), 4),
        "smooth_ece": round(metrics.smooth_calibration_error(conf, ok), 4),
        "auroc": round(metrics.confidence_auroc_score(conf, ok), 4),
        "auroc_ci95": _ci(metrics.confidence_auroc_score, conf, ok, n_boot),
    }


def evaluate_set(name: str, args: argparse.Namespace, model: str) -> dict[str, Any] | None:
    import numpy as np

    from surelabel.calibration import (
        calibration_view,
        fit_calibration,
        label_indices,
        top_label_view,
    )
    from surelabel.calibration.base import softmax
    from surelabel.routing import clopper_pearson_upper
    from surelabel.task import load_task

    task_file, data_file = SETS[name]
    task = load_task(TASKS / task_file)
    n_data = sum(1 for line in (DATA / data_file).open(encoding="utf-8") if line.strip())
    fit_idx, held_idx = split(n_data, args.max_rows)
    cached = {r["i"]: r for r in read_jsonl(cache_path(name, "exact", task, model))}
    fit_rows = [cached[i] for i in fit_idx if i in cached]
    held_rows = [cached[i] for i in held_idx if i in cached]
    if len(fit_rows) < 20 or len(held_rows) < 20:
        print(f"{name}: too few cached rows ({len(fit_rows)}/{len(held_rows)}); "
              "run without --no-predict", file=sys.stderr)
        return None
    multilabel = task.kind == "multilabel"

    def arrays(rows: list[dict[str, Any]]) -> tuple[Any, Any]:
        if multilabel:
            x = np.array([[r["per_label"][n] for n in task.label_names] for r in rows])
        else:
            x = np.array([r["logprobs"] for r in rows])
        return x, label_indices(task, [r["label"] for r in rows])

    def probs_of(x: Any) -> Any:
        if multilabel:
            return np.stack([softmax(x[:, j, :])[:, 0] for j in range(x.shape[1])], axis=1)
        return softmax(x)

    cf_data = json.loads(
        (RESULTS / f"{name}.contentfree.{task.fingerprint()}.{model}.json").read_text()
    )
    cf = np.array([cf_data[t]["per_label" if multilabel else "logprobs"] for t in CONTENT_FREE])
    if multilabel:
        cf = np.array([[cf_data[t]["per_label"][n] for n in task.label_names]
                       for t in CONTENT_FREE])
    x_fit, y_fit = arrays(fit_rows)
    x_held, y_held = arrays(held_rows)
    targets = [float(t) for t in str(args.target_error).split(",")]
    calibration, _ = fit_calibration(
        task, model, x_fit, y_fit, content_free=cf, alpha=None if multilabel else args.alpha,
        method="auto" if multilabel and args.method == "top_label" else args.method,
    )
    raw = probs_of(x_held)
    cal = calibration.calibrator.predict_proba(x_held)
    # Multilabel: calibration is measured over every (item, label) answer.
    conf_raw, ok_raw = calibration_view(task, raw, y_held)
    conf_cal, ok_cal = calibration_view(task, cal, y_held)
    out: dict[str, Any] = {
        "set": name, "kind": task.kind, "n_fit": len(fit_rows), "n_held": len(held_rows),
        "method": (f"{calibration.selection['method']} + top_label"
                   if calibration.method == "top_label" and calibration.selection
                   else calibration.method),
        "selection": (calibration.selection or {}).get("reason"),
        "raw": measure(conf_raw, ok_raw, args.bootstrap),
        "calibrated": measure(conf_cal, ok_cal, args.bootstrap),
        "routing": [],
    }
    for target in targets:
        # Same calibrator choice; the threshold is set on its out-of-fold probabilities.
        routed, _ = fit_calibration(
            task, model, x_fit, y_fit, method=calibration.method, content_free=cf,
            target_error=target, delta=args.delta,
        )
        routing = routed.routing
        assert routing is not None
        conf_r, ok_r = top_label_view(task, routed.calibrator.predict_proba(x_held), y_held)
        accepted = conf_r > routing.accept_threshold
        held_error = float((~ok_r[accepted]).mean()) if accepted.any() else None
        n_acc, n_err = int(accepted.sum()), int((~ok_r[accepted]).sum())
        out["routing"].append({
            "held_accepted": n_acc, "held_errors": n_err,
            # Two-sided 95% Clopper-Pearson interval of the held-out error among accepted.
            "held_error_ci95": [round(1 - clopper_pearson_upper(n_acc - n_err, n_acc, 0.025), 4)
                                if n_acc else None,
                                round(clopper_pearson_upper(n_err, n_acc, 0.025), 4)
                                if n_acc else None],
            "target_error": target, "delta": args.delta,
            "threshold": routing.threshold, "fit_accept_share": round(routing.accept_share, 4),
            "held_accept_share": round(float(accepted.mean()), 4),
            "held_error_among_accepted": None if held_error is None else round(held_error, 4),
            "meets_target": held_error is None or held_error <= target,
        })
    if calibration.conformal_quantile is not None:
        q = calibration.conformal_quantile
        sets = [cal[i] >= 1 - q - 1e-12 for i in range(len(cal))]
        covered = [bool(s[y]) or int(np.argmax(c)) == y for s, c, y in
                   zip(sets, cal, y_held, strict=True)]
        out["conformal"] = {"alpha": args.alpha, "held_coverage": round(float(np.mean(covered)), 4),
                            "mean_set_size": round(float(np.mean([max(1, s.sum()) for s in sets])),
                                                   3)}
    seed_rows = {r["i"]: r for r in read_jsonl(cache_path(name, "seed", task, model))}
    paired = [(cached[i], seed_rows[i]) for i in fit_idx + held_idx
              if i in cached and i in seed_rows and "error" not in seed_rows[i]]
    n_seed_errors = sum(1 for i in fit_idx + held_idx if "error" in seed_rows.get(i, {}))
    if len(paired) >= 20:
        xe, ye = arrays([p[0] for p in paired])
        if multilabel:
            sp = np.array([[p[1]["p_true"][n] for n in task.label_names] for p in paired])
        else:
            sp = np.array([p[1]["probabilities"] for p in paired])
        ce, oke = calibration_view(task, probs_of(xe), ye)
        cs, oks = calibration_view(task, sp, ye)
        from surelabel import metrics

        def auroc_gap(c1: Any, o1: Any, c2: Any, o2: Any) -> float:
            return metrics.confidence_auroc_score(c1, o1) - metrics.confidence_auroc_score(c2, o2)

        # Paired: both methods on the same resampled rows.
        lo, hi = metrics.bootstrap_ci(auroc_gap, ce, oke, cs, oks, n_resamples=args.bootstrap)
        out["seed_vs_exact"] = {"n": len(paired), "seed_errors": n_seed_errors,
                                "exact": measure(ce, oke, args.bootstrap),
                                "seed": measure(cs, oks, args.bootstrap),
                                "auroc_gap": round(auroc_gap(ce, oke, cs, oks), 4),
                                "auroc_gap_ci95": [round(lo, 4), round(hi, 4)]}
    return out


def _fmt_ci(m: dict[str, Any], key: str) -> str:
    lo, hi = m[f"{key}_ci95"]
    return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def evaluate_sets(names: list[str], args: argparse.Namespace) -> int:
    from surelabel.backends.llamacpp import default_model_path

    model = default_model_path().name.removesuffix(".gguf")
    results = [r for r in (evaluate_set(n, args, model) for n in names) if r is not None]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("| set | rows fit/held | method (auto) | accuracy raw / cal | ECE raw [95% CI] | "
          "ECE cal [95% CI] | noise floor of ECE cal: mean (95th pct) | "
          "debiased ECE raw / cal | smooth ECE raw / cal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        raw, cal = r["raw"], r["calibrated"]
        floor, floor95 = cal["ece_noise_floor"]
        print(f"| {r['set']} | {r['n_fit']}/{r['n_held']} | {r['method']} | "
              f"{raw['accuracy']:.3f} / {cal['accuracy']:.3f} | {_fmt_ci(raw, 'ece')} | "
              f"{_fmt_ci(cal, 'ece')} | {floor:.3f} ({floor95:.3f}) | "
              f"{raw['debiased_ece']:.3f} / {cal['debiased_ece']:.3f} | "
              f"{raw['smooth_ece']:.3f} / {cal['smooth_ece']:.3f} |")
    print()
    print("| set | AUROC exact raw [95% CI] | AUROC seed [95% CI] | exact - seed [95% paired CI] "
          "| rows (seed failures) | AUROC calibrated (held) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        sv = r.get("seed_vs_exact")
        if sv is None:
            print(f"| {r['set']} | {_fmt_ci(r['raw'], 'auroc')} (held) | not run | - | - | "
                  f"{_fmt_ci(r['calibrated'], 'auroc')} |")
            continue
        print(f"| {r['set']} | {_fmt_ci(sv['exact'], 'auroc')} | {_fmt_ci(sv['seed'], 'auroc')} | "
              f"{_fmt_ci(sv, 'auroc_gap')} | "
              f"{sv['n']} ({sv['seed_errors']}) | {_fmt_ci(r['calibrated'], 'auroc')} |")
    print()
    print(f"| set | target error (delta {args.delta}) | accept threshold | accepted fit / held | "
          "error among accepted (held) [95% CI] | point estimate <= target |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for ro in r["routing"]:
            thr = "none (accept nothing)" if ro["threshold"] is None else f"{ro['threshold']:.3f}"
            err = "-" if ro["held_error_among_accepted"] is None else (
                f"{ro['held_error_among_accepted']:.3f} ({ro['held_errors']}/{ro['held_accepted']})"
                f" [{ro['held_error_ci95'][0]:.3f}, {ro['held_error_ci95'][1]:.3f}]")
            shares = f"{ro['fit_accept_share']:.1%} / {ro['held_accept_share']:.1%}"
            meets = "yes" if ro["meets_target"] else "NO"
            print(f"| {r['set']} | {ro['target_error']} | {thr} | {shares} | {err} | {meets} |")
    print()
    print(f"| set | conformal coverage on held half (target {1 - args.alpha:g}) | mean set size |")
    print("|---|---|---|")
    for r in results:
        conf = r.get("conformal")
        if conf is not None:
            print(f"| {r['set']} | {conf['held_coverage']:.3f} | {conf['mean_set_size']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
