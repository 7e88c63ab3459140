"""Fit time of each calibrator by number of labels, on synthetic label log-probabilities.

    python bench/bench_calibrators.py                  # 1000 rows; 2, 7, 15 and 25 labels

The rows are an overconfident softmax (logits x 3) with labels drawn from the true
probabilities; fit times depend on the number of rows and labels, not on the text.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from surelabel.calibration import CALIBRATORS
    from surelabel.calibration.base import softmax
    from surelabel.calibration.registry import BINARY_ONLY, WRAPPERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--labels", default="2,7,15,25", help="comma-separated label counts")
    args = parser.parse_args(argv)
    names = [m for m in CALIBRATORS if m not in WRAPPERS and m != "contextual"]
    print("| labels | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for k in (int(v) for v in args.labels.split(",")):
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(args.rows, k)) * 1.5
        y = np.array([rng.choice(k, p=row) for row in softmax(logits)])
        cells = []
        for name in names:
            if k > 2 and name in BINARY_ONLY:
                cells.append("-")
                continue
            start = time.perf_counter()
            CALIBRATORS[name]().fit(logits * 3.0, y)
            cells.append(f"{time.perf_counter() - start:.2f} s")
        print(f"| {k} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
