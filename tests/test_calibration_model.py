"""Calibration on the real embedded model: contextual bias, and calibrate -> classify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surelabel.calibration import CONTENT_FREE, ContextualCalibration, load
from surelabel.classifier import Classifier
from surelabel.cli import main
from surelabel.evaluate import text_logprobs as exact_logprobs
from surelabel.task import load_task
from surelabel.testing import registered

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO / "bench" / "tasks" / "sst2.yaml"

pytestmark = pytest.mark.model


def test_contextual_calibration_on_content_free_inputs(backend: Any) -> None:
    task = load_task(SST2)
    cf = np.stack([exact_logprobs(backend, task, text) for text in CONTENT_FREE])
    cal = ContextualCalibration().fit(cf)
    # The bias is the mean content-free distribution: a proper distribution over 2 labels.
    assert np.exp(cal.bias_).sum() == pytest.approx(1.0)
    # After dividing it out, the content-free inputs themselves come out (nearly) neutral.
    neutral = cal.predict_proba(cf).mean(axis=0)
    assert abs(neutral[0] - 0.5) < abs(np.exp(cal.bias_)[0] - 0.5) + 1e-9
    record = Classifier(task, backend, calibrator=cal, reason=False).classify_one(
        "a charming and moving film", 1
    )
    assert record.error is None and record.extra["calibrated"] is True
    assert sum((record.probabilities or {}).values()) == pytest.approx(1.0)


def test_calibrate_then_classify_with_the_real_model(
    backend: Any, data_dir: Path, tmp_path: Path
) -> None:
    with registered("llamacpp", backend):  # the session's loaded model, not a second one
        _calibrate_then_classify(backend, data_dir, tmp_path)


def _calibrate_then_classify(backend: Any, data_dir: Path, tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    code = main(["calibrate", str(SST2), str(data_dir / "sst2_dev.jsonl"), "--max-rows", "12",
                 "-o", str(cal), "--method", "platt", "--alpha", "0.2", "-q"])
    assert code == 0
    calibration = load(cal, load_task(SST2), backend.model_name)
    assert calibration.method == "platt" and calibration.n_fitted == 12
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"text": "an utterly boring mess"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["classify", str(SST2), str(items), "-o", str(out), "--no-reason",
                 "--calibration", str(cal), "-q"]) == 0
    row = json.loads(out.read_text())
    assert row["label"] in ("positive", "negative") and row["label_set"]
    assert "raw_confidence" in row
