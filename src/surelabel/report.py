"""Evaluation reports: compute metrics as data, then show them (terminal, JSON, HTML).

Compute and plot are separate: :func:`evaluate_probabilities` returns plain data; the
display objects (:class:`ReliabilityDisplay`, :class:`RiskCoverageDisplay`) draw it and
import matplotlib only when called, so computing a report needs numpy only.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from surelabel import metrics
from surelabel.calibration.fit import calibration_view, top_label_view
from surelabel.policy import decide
from surelabel.task import Task, Thresholds

if TYPE_CHECKING:
    import jinja2

ECE_BINS = 15
HEADLINE = ("accuracy", "macro_f1", "brier", "log_loss", "ece", "ece_equal_mass",
            "ece_noise_floor",
            "debiased_ece", "smooth_ece", "mce", "auroc", "aurc")


def _bands(conf: NDArray[np.float64], ok: NDArray[np.bool_], thresholds: Thresholds) -> list[
    dict[str, Any]
]:
    decisions = np.array([decide(float(c), thresholds) for c in conf])
    out = []
    for band in ("accept", "review", "clarify"):
        mask = decisions == band
        out.append({
            "decision": band,
            "share": float(mask.mean()) if len(mask) else float("nan"),
            "count": int(mask.sum()),
            "accuracy": float(ok[mask].mean()) if mask.any() else None,
        })
    return out


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def evaluate_probabilities(
    task: Task,
    probabilities: ArrayLike,
    y: ArrayLike,
    *,
    thresholds: Thresholds | None = None,
    n_bootstrap: int = 1000,
    n_bins: int = ECE_BINS,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of one confidence method on labelled rows, as JSON-ready data.

    Parameters
    ----------
    probabilities:
        (n, k) label probabilities, or for multilabel tasks (n, L) probabilities that each
        label applies.
    y:
        True label indices (n,), or an (n, L) 0/1 array for multilabel tasks.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    yy = np.asarray(y)
    thresholds = thresholds or task.thresholds
    # Calibration figures are over the answers a calibrator calibrates (for multilabel
    # tasks: every label's yes/no); the decision bands are per row, as the classifier decides.
    conf, ok = calibration_view(task, p, yy)
    row_conf, row_ok = top_label_view(task, p, yy)
    names = task.label_names
    out: dict[str, Any] = {"n": len(yy)}
    if task.kind == "multilabel":
        per_label = {}
        for j, name in enumerate(names):
            yj, pj = yy[:, j].astype(int), p[:, j]
            pred = (pj >= 0.5).astype(int)
            prf = metrics.precision_recall_per_class(list(yj), list(pred), [1])[1]
            per_label[name] = {
                "accuracy": float(np.mean(pred == yj)), "precision": prf["precision"],
                "recall": prf["recall"], "f1": prf["f1"], "support": int(yj.sum()),
                "brier": metrics.brier_score_loss(yj, pj), "log_loss": metrics.log_loss(yj, pj),
                "ece": metrics.calibration_error(np.maximum(pj, 1 - pj), pred == yj, n_bins),
                "auroc": _nan_to_none(metrics.roc_auc_score(yj, pj)),
            }
        flat_y, flat_p = yy.ravel().astype(int), p.ravel()
        flat_pred = (flat_p >= 0.5).astype(int)
        micro = metrics.precision_recall_per_class(list(flat_y), list(flat_pred), [1])[1]
        out.update({
            "accuracy": float(row_ok.mean()),  # exact match: every label right
            "label_accuracy": float(ok.mean()),
            "macro_f1": float(np.mean([v["f1"] for v in per_label.values()])),
            "micro_f1": micro["f1"],
            "brier": float(np.mean([v["brier"] for v in per_label.values()])),
            "log_loss": float(np.mean([v["log_loss"] for v in per_label.values()])),
            "per_label": per_label,
        })
    else:
        pred_idx = p.argmax(axis=1)
        y_names = [names[i] for i in yy.astype(int)]
        p_names = [names[i] for i in pred_idx]
        out.update({
            "accuracy": metrics.accuracy_score(y_names, p_names),
            "macro_f1": metrics.macro_f1_score(y_names, p_names, names),
            "per_class": metrics.precision_recall_per_class(y_names, p_names, names),
            "brier": metrics.brier_score_loss(yy.astype(int), p),
            "log_loss": metrics.log_loss(yy.astype(int), p),
        })
    coverage, risk, cut = metrics.risk_coverage_curve(conf, ok)
    out.update({
        "ece": metrics.calibration_error(conf, ok, n_bins, "uniform"),
        "ece_equal_mass": metrics.calibration_error(conf, ok, n_bins, "quantile"),
        # What a perfectly calibrated model with these confidences would show.
        "ece_noise_floor": metrics.calibration_error_noise_floor(
            conf, n_bins, "quantile", n_draws=200, seed=seed)[0],
        "debiased_ece": metrics.debiased_calibration_error(conf, ok, n_bins, "quantile"),
        "smooth_ece": metrics.smooth_calibration_error(conf, ok),
        "mce": metrics.max_calibration_error(conf, ok, n_bins, "uniform"),
        "auroc": _nan_to_none(metrics.confidence_auroc_score(conf, ok)),
        "aurc": metrics.aurc_score(conf, ok),
        "mean_confidence": float(conf.mean()) if len(conf) else None,
        "bands": _bands(row_conf, row_ok, thresholds),
        "reliability": metrics.reliability_curve(conf, ok, n_bins, "uniform").as_dict(),
        "risk_coverage": {"coverage": coverage.tolist(), "risk": risk.tolist(),
                          "threshold": cut.tolist()},
    })
    if n_bootstrap and len(conf) > 1:
        ci: dict[str, list[float]] = {}
        stats: dict[str, Callable[..., float]] = {
            "label_accuracy" if task.kind == "multilabel" else "accuracy":
                lambda c, o: float(np.mean(np.asarray(o, dtype=np.float64))),
            "ece": lambda c, o: metrics.calibration_error(c, o, n_bins, "uniform"),
            "ece_equal_mass": lambda c, o: metrics.calibration_error(c, o, n_bins, "quantile"),
            "auroc": metrics.confidence_auroc_score,
            "aurc": metrics.aurc_score,
        }
        for key, fn in stats.items():
            lo, hi = metrics.bootstrap_ci(fn, conf, ok, n_resamples=n_bootstrap, seed=seed)
            ci[key] = [lo, hi]
        out["ci95"] = ci
    return out


def build_report(
    task: Task,
    model: str,
    results: Mapping[str, Mapping[str, Any]],
    *,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole report: task, model, and each method's metrics side by side."""
    return {
        "task": task.name,
        "kind": task.kind,
        "labels": list(task.label_names),
        "model": model,
        "thresholds": {"accept": task.thresholds.accept, "clarify": task.thresholds.clarify},
        "methods": {name: dict(r) for name, r in results.items()},
        "notes": list(notes),
    }


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def format_summary(report: Mapping[str, Any]) -> str:
    """A terminal table: one column per method, one row per headline figure."""
    methods = report["methods"]
    names = list(methods)
    # Room for a value with its interval, e.g. "0.088 [0.089, 0.163]".
    width = max(24, *(len(n) + 2 for n in names))
    lines = [f"{report['task']} ({report['kind']}), model {report['model']}"]
    lines.append("metric".ljust(16) + "".join(n.rjust(width) for n in names))
    for key in ("n", *HEADLINE):
        cells = []
        for n in names:
            m = methods[n]
            value = m.get(key)
            if key == "n":
                cells.append(str(value).rjust(width))
                continue
            cell = _fmt(value)
            ci = m.get("ci95", {}).get(key)
            if ci is not None and key in ("accuracy", "ece", "auroc") and not any(
                math.isnan(v) for v in ci
            ):
                # The interval itself: a bootstrap interval need not be symmetric (a binned
                # ECE's sits mostly above the estimate), so "±" would hide its shape.
                cell += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            cells.append(cell.rjust(width))
        lines.append(key.ljust(16) + "".join(cells))
    for n in names:
        bands = ", ".join(
            f"{b['decision']} {b['share']:.0%} (acc {_fmt(b['accuracy'], 2)})"
            for b in methods[n]["bands"]
        )
        lines.append(f"{n}: {bands}")
    lines.extend(report.get("notes", []))
    return "\n".join(lines)


def _clean(x: Any) -> Any:
    """NaN and infinities become null, so the file is strict JSON."""
    if isinstance(x, Mapping):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def write_json(report: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(_clean(report), indent=2, allow_nan=False,
                                     default=_json_default) + "\n", encoding="utf-8")


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


# -- displays ---------------------------------------------------------------------------


def _axes(ax: Any) -> Any:
    """``ax``, or new axes on a headless (Agg) figure; matplotlib is imported only here."""
    if ax is not None:
        return ax
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    _, new = plt.subplots(figsize=(5, 4.5))
    return new


@dataclass
class ReliabilityDisplay:
    """Reliability diagram of one or more methods (accuracy vs confidence per bin)."""

    curves: Mapping[str, Mapping[str, Any]]

    def plot(self, ax: Any = None) -> Any:
        ax = _axes(ax)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
        for name, curve in self.curves.items():
            ax.plot(curve["confidence"], curve["accuracy"], marker="o", markersize=3, label=name)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title("Reliability")
        ax.legend(loc="upper left", fontsize=8)
        return ax


@dataclass
class RiskCoverageDisplay:
    """Error rate among accepted items vs share accepted, for one or more methods."""

    curves: Mapping[str, Mapping[str, Any]]

    def plot(self, ax: Any = None) -> Any:
        ax = _axes(ax)
        for name, curve in self.curves.items():
            ax.step(curve["coverage"], curve["risk"], where="post", label=name)
        ax.set_xlabel("coverage (share accepted)")
        ax.set_ylabel("error rate among accepted")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.set_title("Risk-coverage")
        ax.legend(loc="upper left", fontsize=8)
        return ax


def _png(display: ReliabilityDisplay | RiskCoverageDisplay) -> str:
    import matplotlib.pyplot as plt

    ax = display.plot()
    buf = io.BytesIO()
    ax.figure.tight_layout()
    ax.figure.savefig(buf, format="png", dpi=110)
    plt.close(ax.figure)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@functools.cache
def _report_template() -> jinja2.Template:
    """The HTML page's template (``templates/report.html``), loaded on first use."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("surelabel", "templates"),
        autoescape=True,  # method names, labels and notes come from the user's files
        keep_trailing_newline=True,
    )
    return env.get_template("report.html")


def to_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page (plots embedded as PNG data URIs)."""
    methods = report["methods"]
    names = list(methods)
    metric_rows = []
    for key in ("n", *HEADLINE):
        cells = []
        for n in names:
            value = methods[n].get(key)
            ci = methods[n].get("ci95", {}).get(key)
            cells.append({
                "value": str(value) if key == "n" else _fmt(value),
                "interval": None if ci is None else (_fmt(ci[0]), _fmt(ci[1])),
            })
        metric_rows.append({"metric": key, "cells": cells})
    band_rows = [
        {"method": n, "decision": b["decision"], "share": f"{b['share']:.1%}",
         "count": b["count"], "accuracy": _fmt(b["accuracy"])}
        for n in names for b in methods[n]["bands"]
    ]
    first = methods[names[0]]
    per = first.get("per_class") or first.get("per_label") or {}
    detail = None
    if per:
        detail = {
            "kind": "label" if "per_label" in first else "class",
            "method": names[0],
            "columns": list(next(iter(per.values()))),
            "rows": [
                {"label": str(label),
                 "cells": [_fmt(v) if isinstance(v, float) else v for v in d.values()]}
                for label, d in per.items()
            ],
        }
    return _report_template().render(
        task=report["task"],
        kind=report["kind"],
        labels=report["labels"],
        model=report["model"],
        ece_bins=ECE_BINS,
        methods=names,
        metric_rows=metric_rows,
        band_rows=band_rows,
        reliability_png=_png(ReliabilityDisplay({n: methods[n]["reliability"] for n in names})),
        risk_png=_png(RiskCoverageDisplay({n: methods[n]["risk_coverage"] for n in names})),
        detail=detail,
        notes=report.get("notes", []),
    )


def write_html(report: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(to_html(report), encoding="utf-8")
