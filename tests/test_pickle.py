"""Anything holding a backend spec pickles, and is rebuilt in the process that unpickles it
(joblib, Spark and Ray workers): the model is loaded again there, never pickled."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from surelabel import BackendSpec, Classifier, load_task
from surelabel.testing import FakeBackend

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TASK = load_task(EXAMPLES / "fruit_veg_herb.yaml")


def _in_fresh_process(blob_path: Path, text: str) -> dict[str, float]:
    code = (
        "import json, pickle, sys\n"
        "clf = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "print(json.dumps(clf.classify_one(sys.argv[2]).probabilities))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(blob_path), text],
                         capture_output=True, text=True, check=True, timeout=300)
    probs: dict[str, float] = json.loads(out.stdout)
    return probs


def test_a_classifier_with_a_fake_spec_pickles(tmp_path: Path) -> None:
    spec = BackendSpec("fake", {"keywords": {"herb": ["basil"]}})
    clf = Classifier(TASK, spec, reason=False)
    here = clf.classify_one("basil").probabilities
    blob = tmp_path / "clf.pkl"
    blob.write_bytes(pickle.dumps(clf))
    assert _in_fresh_process(blob, "basil") == here


def test_a_classifier_with_a_live_backend_that_has_no_spec_says_why_it_cannot_pickle() -> None:
    from surelabel.backends.base import Generation

    clf = Classifier(TASK, FakeBackend(generation=Generation(text="{}")), method="seed")
    with pytest.raises(TypeError, match="BackendSpec"):
        pickle.dumps(clf)


@pytest.mark.model
def test_a_classifier_with_a_llamacpp_spec_gives_the_same_probabilities_in_a_fresh_process(
    tmp_path: Path,
) -> None:
    spec = BackendSpec("llamacpp", {"n_threads": 1})
    clf = Classifier(TASK, spec, reason=False)
    before = pickle.dumps(clf)  # nothing built yet
    here = clf.classify_one("basil").probabilities
    after = pickle.dumps(clf)  # built: the model is not in the pickle
    assert len(after) < 20_000 and len(before) < 20_000
    blob = tmp_path / "clf.pkl"
    blob.write_bytes(after)
    there = _in_fresh_process(blob, "basil")
    assert here is not None and set(there) == set(here)
    for label, p in here.items():
        assert there[label] == pytest.approx(p, abs=1e-6)
    clf.close()


def test_a_classifier_built_from_a_ready_backend_with_a_spec_pickles_as_that_spec() -> None:
    backend = FakeBackend(keywords={"fruit": ["mango"]})
    clf = Classifier(TASK, backend, reason=False)
    clone = pickle.loads(pickle.dumps(clf))
    assert clone.spec == backend.spec
    assert clone.classify_one("mango").probabilities == clf.classify_one("mango").probabilities
