"""``surelabel calibrate``: fit a calibration (and optional routing) on labelled rows."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from surelabel.calibration import CALIBRATORS, fit_calibration
from surelabel.calibration.uncertainty import describe
from surelabel.cli.common import add_backend_args, backend_from, method_options_from, task_from
from surelabel.cli.evaluate import add_labelled_args, labelled_from
from surelabel.errors import UserError
from surelabel.evaluate import from_predictions, score_labelled


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a calibration file on labelled rows",
        description="Fit a calibrator on labelled rows and save it as a calibration file tied "
                    "to the task, model and prompt. Optionally choose an accept threshold "
                    "with a guaranteed error rate and a conformal quantile for label sets.",
    )
    add_labelled_args(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="calibration file to write (JSON)")
    p.add_argument("--method", default="auto", choices=("auto", *CALIBRATORS),
                   help="auto (lowest cross-validated log loss), temperature, "
                        "bias_temperature, dirichlet (a full linear map of the label "
                        "log-probabilities), platt or isotonic (binary, per label for "
                        "multilabel), contextual (content-free inputs, no labels needed), "
                        "top_label (auto's pick, then its top-label confidence recalibrated)")
    p.add_argument("--folds", type=int, default=5, metavar="K",
                   help="cross-validation folds for auto and for routing (default: 5)")
    p.add_argument("--target-error", type=float, metavar="E",
                   help="choose the accept threshold so that the error among accepted items "
                        "is <= E with probability >= 1 - delta")
    p.add_argument("--delta", type=float, default=0.1, metavar="D",
                   help="allowed chance that the error guarantee fails (default: 0.1)")
    p.add_argument("--predictions", metavar="JSONL",
                   help="fit on an existing `surelabel classify` output for these rows "
                        "(matched by id; raw, not calibrated, with the default prompt style) "
                        "instead of running the model again")
    p.add_argument("--guarantee-width", type=float, default=0.05, metavar="W",
                   help="say how many labelled rows would bring the bound on the error among "
                        "accepted items within W of the observed rate (default: 0.05)")
    p.add_argument("--alpha", type=float, metavar="A",
                   help="also fit conformal label sets with coverage 1 - A (single-label tasks)")
    add_backend_args(p)
    p.set_defaults(func=run)


def _check_rate(name: str, value: float | None) -> None:
    if value is not None and not 0 < value < 1:
        raise UserError(f"{name}: must be between 0 and 1, got {value}")


def run(args: argparse.Namespace) -> int:
    _check_rate("--target-error", args.target_error)
    _check_rate("--delta", args.delta)
    _check_rate("--alpha", args.alpha)
    task = task_from(args)
    rows, y = labelled_from(args, task)
    if args.predictions:
        scored = from_predictions(args.predictions, task, rows, y)
        if scored.calibrated:
            raise UserError(f"{args.predictions}: these predictions are calibrated already; "
                            "fit on raw ones (classify with --calibration none)")
        model = scored.model or "?"
        method = scored.source_method or "exact"
    else:
        backend = backend_from(args)
        model = backend.model_name
        scored = score_labelled(backend, task, rows, y, with_seed=False, quiet=args.quiet,
                                options=method_options_from(args))
        method = scored.method
    calibration, _ = fit_calibration(
        task,
        model,
        scored.task_logprobs(task),
        scored.y,
        method=args.method,
        content_free=scored.task_content_free(task),
        folds=args.folds,
        target_error=args.target_error,
        delta=args.delta,
        alpha=args.alpha,
        confidence_method=method,
        scoring=scored.scoring,
        assess_uncertainty=True,
        guarantee_width=args.guarantee_width,
    )
    calibration.save(args.output)
    out = sys.stdout
    for note in scored.notes:
        print(note, file=out)
    if calibration.selection:
        print(calibration.selection["reason"], file=out)
    if calibration.routing is not None:
        print(calibration.routing.message, file=out)
    if calibration.uncertainty is not None:
        for line in describe(calibration.uncertainty):
            print(line, file=out)
    if calibration.conformal is not None:
        q = calibration.conformal["quantile"]
        what = ("every label (too few rows for this coverage)" if math.isinf(q)
                else f"labels with probability >= {1 - q:.3f}")
        print(f"conformal label sets (coverage {1 - args.alpha:g}): {what}", file=out)
    print(f"wrote {args.output} ({calibration.method}, {calibration.n_fitted} rows, "
          f"model {calibration.model})", file=out)
    return 0
