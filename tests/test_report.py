"""Reports (data, terminal, JSON, HTML) and the evaluate / calibrate / classify commands."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from surelabel import metrics, report
from surelabel.cli import main
from surelabel.task import Task
from surelabel.testing import FakeBackend, registered

REPO = Path(__file__).resolve().parents[1]
TASK_YAML = """\
name: produce
instructions: Classify the item.
kind: multiclass
field: type
labels: [fruit, vegetable, herb]
"""
WORDS = {
    "fruit": ("apple", "pear", "plum", "mango"),
    "vegetable": ("carrot", "leek", "onion", "potato"),
    "herb": ("basil", "thyme", "mint", "dill"),
}


def keyword_backend(model_name: str = "fake-model") -> FakeBackend:
    """Scores labels by keywords plus a fixed per-text offset (fast, no model)."""
    return FakeBackend(model_name=model_name, keywords=WORDS, weight=2.5, noise=4.0,
                       capabilities={"exact_scoring": True})


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    task = tmp_path / "task.yaml"
    task.write_text(TASK_YAML)
    rng = np.random.default_rng(1)
    lines = []
    for i in range(60):
        label = ["fruit", "vegetable", "herb"][i % 3]
        word = WORDS[label][int(rng.integers(0, 4))]
        lines.append(json.dumps({"id": i, "text": f"a {word}, item {i}", "label": label}))
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(lines) + "\n")
    return {"task": task, "labelled": labelled, "dir": tmp_path}


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    # The CLI's default backend name, in this process only: the commands use this instance.
    backend = keyword_backend()
    with registered("llamacpp", backend):
        yield backend


def test_evaluate_probabilities_matches_metrics() -> None:
    task = Task.from_dict({"name": "t", "instructions": "i", "labels": ["a", "b", "c"]})
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], 200)
    y = rng.integers(0, 3, 200)
    out = report.evaluate_probabilities(task, p, y, n_bootstrap=50)
    conf, ok = p.max(1), p.argmax(1) == y
    assert out["accuracy"] == pytest.approx(ok.mean())
    assert out["ece"] == pytest.approx(metrics.calibration_error(conf, ok, 15))
    assert out["log_loss"] == pytest.approx(metrics.log_loss(y, p))
    assert out["auroc"] == pytest.approx(metrics.confidence_auroc_score(conf, ok))
    assert sum(b["count"] for b in out["bands"]) == 200
    lo, hi = out["ci95"]["accuracy"]
    assert lo <= out["accuracy"] <= hi
    assert set(out["per_class"]) == {"a", "b", "c"}
    json.dumps(out, allow_nan=False)


def test_multilabel_report_has_per_label_and_averages() -> None:
    task = Task.from_dict({"name": "t", "instructions": "i", "kind": "multilabel",
                           "labels": ["a", "b"]})
    p = np.array([[0.9, 0.1], [0.2, 0.7], [0.6, 0.6], [0.1, 0.2]])
    y = np.array([[1, 0], [0, 1], [0, 1], [0, 0]])
    out = report.evaluate_probabilities(task, p, y, n_bootstrap=0)
    assert set(out["per_label"]) == {"a", "b"}
    assert out["accuracy"] == pytest.approx(0.75)  # exact match
    assert "micro_f1" in out and "macro_f1" in out


def test_report_module_does_not_import_matplotlib() -> None:
    code = "import surelabel.report, sys; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_html_is_self_contained() -> None:
    task = Task.from_dict({"name": "t", "instructions": "i", "labels": ["a", "b"]})
    rng = np.random.default_rng(0)
    p1 = rng.random(100)
    p = np.stack([p1, 1 - p1], axis=1)
    y = (rng.random(100) > p1).astype(int)
    results = {"exact": report.evaluate_probabilities(task, p, y, n_bootstrap=20)}
    rep = report.build_report(task, "m", results, notes=["a note"])
    page = report.to_html(rep)
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page
    assert "a note" in page
    assert "accuracy" in report.format_summary(rep)


def test_cli_evaluate_writes_json_and_html(files: dict[str, Path], fake: FakeBackend,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_html = files["dir"] / "m.json", files["dir"] / "r.html"
    code = main(["evaluate", str(files["task"]), str(files["labelled"]), "--json", str(out_json),
                 "--report", str(out_html), "--methods", "exact,calibrated", "--bootstrap", "20"])
    assert code == 0
    data = json.loads(out_json.read_text())
    assert set(data["methods"]) == {"exact", "calibrated"}
    assert data["methods"]["exact"]["n"] == 60
    assert any("cross-fitted" in n for n in data["notes"])
    assert "<img" in out_html.read_text()
    assert "calibrated" in capsys.readouterr().out


def test_cli_evaluate_skips_seed_on_many_rows(files: dict[str, Path], fake: FakeBackend) -> None:
    from surelabel.cli import evaluate

    args = type("A", (), {"methods": None, "predictions": None})()
    chosen, notes = evaluate._methods(args, 500)
    assert chosen == ["exact", "generic", "calibrated"] and "seed method skipped" in notes[0]
    chosen, _ = evaluate._methods(args, 50)
    assert "seed" in chosen


def test_cli_calibrate_then_classify(files: dict[str, Path], fake: FakeBackend,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cal = files["dir"] / "cal.json"
    code = main(["calibrate", str(files["task"]), str(files["labelled"]), "-o", str(cal),
                 "--target-error", "0.2", "--delta", "0.1", "--alpha", "0.1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "auto picked" in printed and "conformal" in printed
    data = json.loads(cal.read_text())
    assert data["routing"]["target_error"] == 0.2 and data["conformal"]["alpha"] == 0.1
    items = files["dir"] / "items.jsonl"
    items.write_text('{"text": "a fresh mango"}\n{"text": "some thyme"}\n')
    out = files["dir"] / "out.jsonl"
    code = main(["classify", str(files["task"]), str(items), "-o", str(out), "--no-reason",
                 "--calibration", str(cal), "-q"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["calibrated"] and r["label_set"] for r in rows)
    assert rows[0]["label_set"][0] == rows[0]["label"]
    # evaluate can use the file, and the classify output
    code = main(["evaluate", str(files["task"]), str(files["labelled"]), "--calibration",
                 str(cal), "--methods", "exact,calibrated", "--bootstrap", "0"])
    assert code == 0
    assert "calibration file" in capsys.readouterr().out


def test_cli_refuses_calibration_of_another_model(files: dict[str, Path], fake: FakeBackend,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cal = files["dir"] / "cal.json"
    assert main(["calibrate", str(files["task"]), str(files["labelled"]), "-o", str(cal),
                 "--method", "temperature"]) == 0
    fake.model_name = "another-model"
    items = files["dir"] / "items.jsonl"
    items.write_text('{"text": "a pear"}\n')
    code = main(["classify", str(files["task"]), str(items), "--calibration", str(cal), "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "made for model 'fake-model', not 'another-model'" in err


def test_cli_evaluate_from_predictions(files: dict[str, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    preds = files["dir"] / "preds.jsonl"
    rows = []
    for line in files["labelled"].read_text().splitlines():
        r = json.loads(line)
        p = {"fruit": 0.2, "vegetable": 0.3, "herb": 0.5}
        rows.append(json.dumps({"id": r["id"], "text": r["text"], "label": "herb",
                                "probabilities": p, "method": "exact", "error": None}))
    preds.write_text("\n".join(rows) + "\n")
    out_json = files["dir"] / "m.json"
    code = main(["evaluate", str(files["task"]), str(files["labelled"]), "--predictions",
                 str(preds), "--json", str(out_json), "--bootstrap", "0"])
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["methods"]["predictions"]["accuracy"] == pytest.approx(1 / 3)


def test_cli_calibrate_bad_label_is_a_user_error(files: dict[str, Path], fake: FakeBackend,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = files["dir"] / "bad.jsonl"
    bad.write_text('{"text": "x", "label": "mineral"}\n')
    code = main(["calibrate", str(files["task"]), str(bad), "-o", str(files["dir"] / "c.json")])
    assert code == 2
    assert "mineral" in capsys.readouterr().err


def test_summary_prints_lopsided_intervals_as_intervals() -> None:
    task = Task.from_dict({"name": "t", "instructions": "i", "labels": ["a", "b", "c"]})
    rng = np.random.default_rng(3)
    p = rng.dirichlet([1, 1, 1], 120)
    y = rng.integers(0, 3, 120)
    result = report.evaluate_probabilities(task, p, y, n_bootstrap=200)
    lo, hi = result["ci95"]["ece"]
    text = report.format_summary(report.build_report(task, "m", {"exact": result}))
    line = next(row for row in text.splitlines() if row.startswith("ece "))
    assert f"[{lo:.3f}, {hi:.3f}]" in line and "±" not in text


def test_cli_calibrate_from_predictions_runs_no_model_and_reports_uncertainty(
    files: dict[str, Path], fake: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    preds = files["dir"] / "preds.jsonl"
    assert main(["classify", str(files["task"]), str(files["labelled"]), "-o", str(preds),
                 "--no-reason", "-q"]) == 0
    capsys.readouterr()
    calls = fake.calls
    cal = files["dir"] / "cal.json"
    assert main(["calibrate", str(files["task"]), str(files["labelled"]), "--predictions",
                 str(preds), "-o", str(cal), "--target-error", "0.2"]) == 0
    assert fake.calls == calls  # the model was not run again
    printed = capsys.readouterr().out
    assert "held-out ECE" in printed and "95% interval" in printed
    assert "accept threshold would lie in" in printed
    assert "warning: only 60 labelled rows" in printed
    data = json.loads(cal.read_text())
    assert data["model"] == "fake-model" and data["confidence_method"] == "exact"
    assert data["uncertainty"]["n_rows"] == 60
    lo, hi = data["uncertainty"]["ece_ci95"]
    assert lo <= data["uncertainty"]["ece_equal_mass"] <= hi


def test_cli_calibrate_refuses_calibrated_predictions(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    preds = files["dir"] / "preds.jsonl"
    rows = [json.dumps({"id": json.loads(line)["id"], "text": "x", "probabilities":
                        {"fruit": 0.2, "vegetable": 0.3, "herb": 0.5}, "method": "exact",
                        "model": "m", "calibrated": True, "error": None})
            for line in files["labelled"].read_text().splitlines()]
    preds.write_text("\n".join(rows) + "\n")
    code = main(["calibrate", str(files["task"]), str(files["labelled"]), "--predictions",
                 str(preds), "-o", str(files["dir"] / "c.json")])
    assert code == 2
    assert "calibrated already" in capsys.readouterr().err
