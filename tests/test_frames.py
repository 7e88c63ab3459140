"""The Python batch API: classify_many (texts, dicts, rows, DataFrames), aclassify_many,
classify_frame, records in notebooks; and the core regressions of issue 11."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surelabel import BackendSpec, Classifier, Record, Task, load_task
from surelabel.calibration import fit_calibration
from surelabel.errors import CalibrationError
from surelabel.io import Row
from surelabel.testing import FakeBackend

pd = pytest.importorskip("pandas")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FVH = load_task(EXAMPLES / "fruit_veg_herb.yaml")
WORDS = {"fruit": ["apple", "mango"], "vegetable": ["leek", "carrot"], "herb": ["basil", "mint"]}


def local() -> Classifier:
    return Classifier(FVH, BackendSpec("fake", {"keywords": WORDS}), reason=False)


def api(concurrency: int = 4, **options: Any) -> Classifier:
    """A fake API backend: top-k logprobs, several requests in flight."""
    spec = BackendSpec("fake", {"keywords": WORDS, "capabilities": "topk",
                                "concurrency": concurrency, **options})
    return Classifier(FVH, spec, reason=False)


def test_classify_many_takes_plain_strings_in_order_with_positions_as_ids() -> None:
    clf = local()
    records = clf.classify_many(["apple pie", "leek soup", "fresh basil"])
    assert [r.id for r in records] == [0, 1, 2]
    assert [r.text for r in records] == ["apple pie", "leek soup", "fresh basil"]
    assert [r.label for r in records] == ["fruit", "vegetable", "herb"]
    one = [clf.classify_one(t, id=i) for i, t in enumerate(["apple pie", "leek soup"])]
    assert [r.probabilities for r in records[:2]] == [r.probabilities for r in one]


def test_classify_many_takes_dicts_rows_and_given_ids() -> None:
    clf = local()
    records = clf.classify_many([{"id": "a", "text": "mango"}, {"body": "x"},
                                 Row(id="r", text="carrot", line=1, extra={})])
    assert [r.id for r in records] == ["a", 1, "r"]
    assert records[1].error == "no 'text' field" and records[1].label is None
    assert records[2].label == "vegetable"
    named = clf.classify_many([{"body": "mint"}], text_column="body", ids=["m"])
    assert named[0].id == "m" and named[0].label == "herb"
    with pytest.raises(ValueError, match="2 ids for 1 items"):
        clf.classify_many(["x"], ids=[1, 2])


def test_bad_items_become_error_records_and_the_batch_goes_on() -> None:
    records = local().classify_many(["apple", None, "  ", 7, "mint"])
    assert [r.error for r in records] == [None, "missing text", "empty text",
                                          "text must be a string, got int", None]
    assert records[0].label == "fruit" and records[4].label == "herb"


def test_the_old_pair_api_refuses_plain_strings_instead_of_unpacking_them() -> None:
    # Before: classify(["ab", "cd"]) silently gave id 'a', text 'b'.
    clf = local()
    with pytest.raises(TypeError, match="classify_many"):
        list(clf.classify(["ab", "cd"]))
    with pytest.raises(TypeError, match="classify_many"):
        list(clf.classify(["longer text"]))
    with pytest.raises(TypeError, match="not one string"):
        clf.classify_many("apple")
    assert [r.id for r in clf.classify([("x", "apple")])] == ["x"]


class CountingBackend(FakeBackend):
    """An API-like fake that counts the requests in flight; the first ones wait (up to
    10 s) until ``expect`` have been in flight together, so the count does not depend on
    timing."""

    def __init__(self, expect: int, **options: Any) -> None:
        super().__init__(**options)
        self.expect = expect
        self.active = self.most = 0
        self.cond = threading.Condition()

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self.cond:
            self.active += 1
            self.most = max(self.most, self.active)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.most >= self.expect, timeout=10)
        try:
            return super().generate(*args, **kwargs)
        finally:
            with self.cond:
                self.active -= 1


def test_api_backends_run_concurrently_and_keep_input_order() -> None:
    backend = CountingBackend(4, keywords=WORDS, capabilities="topk", concurrency=4)
    clf = Classifier(FVH, backend, reason=False)
    assert clf.workers == 4
    texts = [f"apple {i}" for i in range(20)]
    records = clf.classify_many(texts)
    assert backend.most == 4  # four requests in flight together, never more
    assert [r.text for r in records] == texts
    serial = clf.classify_many(texts, concurrency=1)
    assert [r.to_dict() for r in serial] == [r.to_dict() for r in records]


def test_progress_bar_when_asked_and_none_outside_a_notebook(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clf = local()
    clf.classify_many(["apple", "leek"])
    assert capsys.readouterr().err == ""
    clf.classify_many(["apple", "leek"], progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and FVH.name in err


def test_aclassify_many_awaits_records_in_order_without_blocking_the_loop() -> None:
    clf = api(concurrency=3, delay=0.02)
    texts = [f"mint {i}" for i in range(12)]

    async def main() -> tuple[list[Record], int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        records = await clf.aclassify_many(texts)
        done.set()
        await task
        return records, ticks

    records, ticks = asyncio.run(main())
    assert [r.text for r in records] == texts and all(r.label == "herb" for r in records)
    assert ticks > 1  # the loop ran while items were classified
    assert [r.to_dict() for r in records] == [r.to_dict() for r in clf.classify_many(texts)]


def test_classify_many_on_a_dataframe_uses_its_id_column_or_index() -> None:
    clf = local()
    df = pd.DataFrame({"id": ["x", "y"], "text": ["apple", "leek"]}, index=[10, 11])
    assert [r.id for r in clf.classify_many(df)] == ["x", "y"]
    assert [r.id for r in clf.classify_many(df.drop(columns="id"))] == [10, 11]
    series = pd.Series(["basil"], index=["s"])
    assert clf.classify_many(series)[0].id == "s"
    with pytest.raises(ValueError, match="no 'body' column"):
        clf.classify_many(df, text_column="body")


def test_classify_frame_keeps_every_column_and_adds_the_results() -> None:
    clf = local()
    df = pd.DataFrame({"review": ["apple", "leek", None, "mint"], "meta": [1, 2, 3, 4]},
                      index=list("abcd"))
    out = clf.classify_frame(df, text_column="review")
    assert list(out.index) == list("abcd")
    assert list(out.columns) == [
        "review", "meta", "label", "confidence", "decision", "calibration",
        "p_fruit", "p_vegetable", "p_herb", "error",
    ]
    assert out["meta"].tolist() == [1, 2, 3, 4] and "label" not in df.columns
    assert out["label"].tolist()[:2] == ["fruit", "vegetable"]
    assert out["error"].tolist()[2] == "missing text"
    assert pd.isna(out.loc["c", "confidence"]) and pd.isna(out.loc["c", "p_fruit"])
    assert out["confidence"].dtype == "float64"
    probs = out[["p_fruit", "p_vegetable", "p_herb"]].to_numpy()
    assert abs(probs[0].sum() - 1) < 1e-9
    # Which calibration made each confidence (none here; an error row has no confidence).
    assert out["calibration"].tolist()[:2] == ["none", "none"]
    assert pd.isna(out.loc["c", "calibration"])


def test_classify_frame_refuses_to_overwrite_a_column_and_takes_a_prefix() -> None:
    clf = local()
    df = pd.DataFrame({"text": ["apple"], "label": ["fruit"]})
    with pytest.raises(ValueError, match="prefix"):
        clf.classify_frame(df)
    out = clf.classify_frame(df, prefix="pred_")
    assert out["label"].tolist() == ["fruit"] and out["pred_label"].tolist() == ["fruit"]


def test_classify_frame_for_a_multilabel_task_gives_labels_and_decisions_per_label() -> None:
    task = Task(name="tags", instructions="Which apply?", kind="multilabel",
                labels=("sweet", "green"), field="tags")
    clf = Classifier(task, BackendSpec("fake", {"keywords": {"sweet": ["cake"],
                                                             "green": ["kale"]}}))
    out = clf.classify_frame(pd.DataFrame({"text": ["cake", "kale"]}))
    assert {"labels", "decision_sweet", "decision_green", "p_sweet", "p_green"} <= set(out)
    assert "label" not in out.columns
    assert out["labels"].tolist()[0] == ["sweet"]


def test_classify_frame_names_the_calibration_applied() -> None:
    task = FVH
    clf = local()
    texts = [f"{w} {i}" for i in range(10) for ws in WORDS.values() for w in ws]
    gold = [label for i in range(10) for label, ws in WORDS.items() for _ in ws]
    from surelabel.evaluate import text_logprobs

    lp = np.stack([text_logprobs(clf.backend, task, t, "exact") for t in texts])
    y = [task.label_names.index(g) for g in gold]
    calibration, _ = fit_calibration(task, clf.backend.model_name, lp, y, method="temperature",
                                     confidence_method="exact")
    calibrated = Classifier(task, BackendSpec("fake", {"keywords": WORDS}), reason=False,
                            calibrator=calibration)
    out = calibrated.classify_frame(pd.DataFrame({"text": ["apple", " "]}))
    assert out["calibration"].tolist() == ["task", None]  # task | generic | none


def test_a_record_renders_in_a_notebook_with_a_bar_per_label() -> None:
    record = local().classify_one("apple <b>pie</b>", id="r1")
    html = record._repr_html_()
    assert "&lt;b&gt;pie&lt;/b&gt;" in html and "<b>pie</b>" not in html
    for label in FVH.label_names:
        assert f">{label}<" in html
    assert html.count("width:") >= 3 and f">{record.decision}<" in html
    error = local().classify_one("  ")._repr_html_()
    assert "empty text" in error


# -- core regressions of issue 11 -------------------------------------------------------


def test_a_task_takes_plain_string_labels() -> None:
    task = Task(name="sentiment", instructions="Is the review positive?", kind="binary",
                labels=("positive", "negative"))
    assert task.label_names == ("positive", "negative")
    record = Classifier(task, BackendSpec("fake")).classify_one("great film")
    assert record.label in ("positive", "negative")


def test_python_refuses_a_calibration_fitted_for_another_version_of_the_task(
    tmp_path: Path,
) -> None:
    from surelabel.calibration import load as load_calibration

    clf = local()
    lp = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]] * 4))
    calibration, _ = fit_calibration(FVH, clf.backend.model_name, lp, [0, 1, 2] * 4,
                                     method="temperature", confidence_method="exact")
    path = tmp_path / "cal.json"
    calibration.save(path)
    data = FVH.to_dict()
    data["instructions"] = FVH.instructions + " Be careful."
    changed = Task.from_dict(data)
    with pytest.raises(CalibrationError, match="different version of task"):
        Classifier(changed, BackendSpec("fake"), calibrator=load_calibration(path))
    # The same file for the task it was fitted on is fine.
    Classifier(FVH, BackendSpec("fake"), calibrator=load_calibration(path))
    assert json.loads(path.read_text())["task"]["name"] == FVH.name


def test_a_calibrated_classifier_pickles_and_calibrates_alike_in_a_fresh_process(
    tmp_path: Path,
) -> None:
    import pickle
    import subprocess
    import sys

    clf = local()
    lp = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]] * 4))
    calibration, _ = fit_calibration(FVH, clf.backend.model_name, lp, [0, 1, 2] * 4,
                                     method="temperature", confidence_method="exact")
    calibrated = Classifier(FVH, BackendSpec("fake", {"keywords": WORDS}), reason=False,
                            calibrator=calibration)
    here = [r.to_dict() for r in calibrated.classify_many(["apple", "mint tea"])]
    assert here[0]["calibrated"] is True
    blob = tmp_path / "clf.pkl"
    blob.write_bytes(pickle.dumps(calibrated))
    code = ("import json, pickle, sys; clf = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "print(json.dumps([r.to_dict() for r in clf.classify_many(['apple', 'mint tea'])]))")
    out = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True,
                         text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == here


def test_the_batch_api_imports_pandas_pyarrow_and_ray_only_when_used() -> None:
    import subprocess
    import sys

    code = ("import sys, surelabel, surelabel.io, surelabel.batch, surelabel.ray; "
            "print(','.join(m for m in ('pandas', 'pyarrow', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == ""
