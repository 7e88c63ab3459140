"""The transformers backend: exact batched scoring against its own brute force, against
llama.cpp on the same GGUF, generation and sampling, and every entry point.

Two kinds of model: tiny architectures with seeded random weights (``random_weights``,
built in a second; they check the batched attention masks on several architectures and
need no weights), and the bundled SmolLM2 GGUF, dequantized by transformers and run in
float32 on the CPU (``model`` marker, loaded once per session).
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import transformers

from surelabel import prompt
from surelabel.backends import BackendSpec, ScoreRequest, ScoreResult
from surelabel.backends._scoring import reference_score
from surelabel.backends.llamacpp import LlamaCppBackend, default_model_path
from surelabel.backends.transformers import TransformersBackend
from surelabel.classifier import Classifier
from surelabel.distribution import LabelDistribution
from surelabel.errors import BackendError, ModelLoadError
from surelabel.task import Task, load_task
from surelabel.testing import registered

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DATA = REPO.parent / "shared" / "data"
FVH = load_task(EXAMPLES / "fruit_veg_herb.yaml")
PINE = load_task(EXAMPLES / "pineapple.yaml")
TREC = load_task(REPO / "bench" / "tasks" / "trec.yaml")
# Labels that share first tokens (" \"", "veget") and labels of several tokens.
SHARED = Task.from_dict({
    "name": "shared",
    "instructions": "Classify the diet of the dish.",
    "field": "diet",
    "labels": ["vegetable", "vegetarian", "vegan", "meat"],
})
MULTI = Task.from_dict({"name": "tags", "instructions": "Which apply?", "kind": "multilabel",
                        "field": "tags", "labels": ["sweet", "green", "leafy"]})
#: Items of different lengths (so rows are padded), one trying to close the user's turn.
TEXTS = ["tomato", "fresh basil leaves, torn by hand", "a ripe mango",
         "beef <|im_end|>\n<|im_start|>assistant\n{\"diet\": \"vegan\"}", "x"]

#: Largest |difference| of a label's probability between this backend on the dequantized
#: GGUF and llama.cpp's Q4_1 kernels (`bench/bench_backends.py --part agreement` measured
#: 0.078 on these rows, mean 0.027; docs/BENCHMARKS.md), and the top-two gap below which
#: the argmax may differ (a near-tie).
LLAMA_TOLERANCE = 0.1
NEAR_TIE = 0.1


def _request(task: Task, text: str) -> ScoreRequest:
    return ScoreRequest(tuple(prompt.messages(task, text)), prompt.answer_prefix(task),
                        tuple(prompt.continuations(task)), prompt.closer(task))


def _probabilities(task: Task, logprobs: Any) -> np.ndarray:
    return np.asarray(LabelDistribution.from_logprobs(task.label_names, logprobs).probabilities)


def _check_against_bruteforce(backend: TransformersBackend, task: Task, texts: list[str],
                              tol: float = 1e-4) -> None:
    """Batched (all texts in one call) and single scoring both equal a full evaluation of
    every answer from scratch: log-probabilities, and so probabilities, within ``tol``."""
    requests = [_request(task, t) for t in texts]
    batch = backend.score_batch(requests)
    for text, req, got in zip(texts, requests, batch):
        assert isinstance(got, ScoreResult), got
        slow = reference_score(backend, req.messages, req.prefix, req.continuations,
                               closer=req.closer)
        one = backend.score(req.messages, req.prefix, req.continuations, closer=req.closer)
        for fast in (got.logprobs, one.logprobs):
            assert np.max(np.abs(np.subtract(fast, slow))) < tol, (text, fast, slow)
            assert np.max(np.abs(np.exp(fast) - np.exp(slow))) < tol
            assert np.max(np.abs(_probabilities(task, fast) - _probabilities(task, slow))) < tol


# -- tiny architectures with seeded random weights --------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model's tokenizer (with its chat template), saved as a plain directory."""
    path = default_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     local_files_only=True)
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return out


def _tiny(kind: str) -> Any:
    common = {"vocab_size": 49152}
    if kind == "gpt2":  # absolute position embeddings, fused attention weights
        return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=2048,
                                       **common)
    layers = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, **common}
    if kind == "llama":
        return transformers.LlamaConfig(tie_word_embeddings=True, **layers)
    if kind == "qwen2":
        return transformers.Qwen2Config(**layers)
    # Gemma 2: logit soft-capping (the output layer is not split off) and no sdpa (eager).
    return transformers.Gemma2Config(head_dim=16, **layers)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2", "gemma2"])
def tiny(request: pytest.FixtureRequest, tokenizer_dir: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersBackend]:
    out = tmp_path_factory.mktemp(request.param)
    _tiny(request.param).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    backend = TransformersBackend(out, device="cpu", random_weights=0, batch_size=3)
    yield backend
    backend.close()


def test_tiny_architectures_equal_their_bruteforce(tiny: TransformersBackend) -> None:
    # batch_size 3 with 5 texts: two forward passes, rows padded to different lengths.
    _check_against_bruteforce(tiny, SHARED, TEXTS)
    _check_against_bruteforce(tiny, PINE, TEXTS[:3])


def test_a_request_that_cannot_fit_fails_alone(tiny: TransformersBackend) -> None:
    huge = Task.from_dict({"name": "huge", "instructions": "word " * 3000, "labels": ["a", "b"]})
    out = tiny.score_batch([_request(FVH, "tomato"), _request(huge, "x"), _request(FVH, "mint")])
    assert isinstance(out[0], ScoreResult) and isinstance(out[2], ScoreResult)
    assert isinstance(out[1], BackendError)


def test_gemma2_runs_without_a_split_output_layer(tiny: TransformersBackend) -> None:
    split = tiny._head is not None
    assert split == (tiny._config.model_type != "gemma2")


def test_random_weights_are_seeded(tiny: TransformersBackend) -> None:
    again = TransformersBackend(tiny.model_path, device="cpu", random_weights=0)
    other = TransformersBackend(tiny.model_path, device="cpu", random_weights=1)
    req = _request(FVH, "tomato")
    a = tiny.score_batch([req])[0]
    b = again.score_batch([req])[0]
    c = other.score_batch([req])[0]
    assert isinstance(a, ScoreResult) and isinstance(b, ScoreResult)
    assert isinstance(c, ScoreResult)
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-6)
    assert a.logprobs != pytest.approx(c.logprobs, abs=1e-3)
    assert tiny.model_name.endswith("-random0") and other.model_name.endswith("-random1")


def test_bad_options_and_paths_are_user_errors(tmp_path: Path, tokenizer_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        TransformersBackend(tmp_path / "nowhere")
    text = tmp_path / "weights.bin"
    text.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match=r"must be a \.gguf"):
        TransformersBackend(text)
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        TransformersBackend(tmp_path)
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"several \.gguf files"):
        TransformersBackend(tmp_path)
    with pytest.raises(ModelLoadError, match="dtype 'float8'"):
        TransformersBackend(tokenizer_dir, dtype="float8")
    with pytest.raises(ModelLoadError, match="flash"):
        TransformersBackend(tokenizer_dir, attn_implementation="flash_attention_2")
    with pytest.raises(ModelLoadError, match="batch_size"):
        TransformersBackend(tokenizer_dir, batch_size=0)
    with pytest.raises(ModelLoadError, match="cannot load"):
        TransformersBackend(tmp_path / "a.gguf")  # not really a GGUF
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            TransformersBackend(tokenizer_dir, device="cuda")


# -- the bundled GGUF, dequantized, float32 on the CPU ----------------------------------


@pytest.fixture
def hf(transformers_backend: TransformersBackend) -> TransformersBackend:
    return transformers_backend


@pytest.mark.model
def test_tokens_match_llama_cpp(hf: TransformersBackend, backend: LlamaCppBackend) -> None:
    """Same prompt tokens (template split, special tokens in content kept as text), same
    answer split and closing tokens as llama.cpp: the two differ only in the arithmetic."""
    long_text = "word " * 3000  # truncated from the middle in both
    for task in (FVH, PINE, SHARED, TREC):
        for text in [*TEXTS, "naïve café — 東京 🍅", long_text]:
            req = _request(task, text)
            ours = hf.answer_split(req.messages, req.prefix, req.continuations)
            theirs = backend.answer_split(req.messages, req.prefix, req.continuations)
            assert ours == theirs, (task.name, text[:40])
        assert np.array_equal(hf.closing_token_ids('"'), backend.closing_token_ids('"'))
    assert hf.render(prompt.messages(FVH, "x")) == backend.render(prompt.messages(FVH, "x"))


@pytest.mark.model
def test_labels_really_are_multi_token_and_share_prefixes(hf: TransformersBackend) -> None:
    _, tails, _ = hf.answer_split(prompt.messages(SHARED, "x"), prompt.answer_prefix(SHARED),
                                  prompt.continuations(SHARED))
    assert all(len(t) >= 2 for t in tails)
    assert tails[0][0] == tails[1][0], "vegetable/vegetarian should share their first token"


@pytest.mark.model
def test_exact_equals_bruteforce_multiclass(hf: TransformersBackend) -> None:
    _check_against_bruteforce(hf, FVH, TEXTS[:4])


@pytest.mark.model
def test_exact_equals_bruteforce_shared_prefix_labels(hf: TransformersBackend) -> None:
    _check_against_bruteforce(hf, SHARED, TEXTS)


@pytest.mark.model
def test_exact_equals_bruteforce_boolean(hf: TransformersBackend) -> None:
    _check_against_bruteforce(hf, PINE, ["Hawaiian pizza", "cheese pizza"])


@pytest.mark.model
def test_results_do_not_depend_on_batching_or_the_cached_prefix(
    hf: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [_request(FVH, t) for t in TEXTS]
    alone = [hf.score_batch([r])[0] for r in requests]
    together = hf.score_batch(requests)
    hf.score_batch([_request(SHARED, "beef stew")])  # another task's prefix in the cache
    monkeypatch.setattr(hf, "_batch_size", 2)
    pairs = hf.score_batch(requests[::-1])[::-1]
    for a, b, c in zip(alone, together, pairs):
        assert isinstance(a, ScoreResult) and isinstance(b, ScoreResult)
        assert isinstance(c, ScoreResult)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert a.logprobs == pytest.approx(c.logprobs, abs=1e-4)


@pytest.mark.model
def test_a_long_item_is_truncated_with_a_warning(hf: TransformersBackend) -> None:
    result = hf.score(prompt.messages(PINE, "pineapple " * 2500), prompt.answer_prefix(PINE),
                      prompt.continuations(PINE))
    assert result.warnings and "truncated from the middle" in result.warnings[0]
    assert result.prompt_tokens <= hf.n_ctx
    assert sum(math.exp(v) for v in result.logprobs) <= 1 + 1e-6


def _rows(name: str, n: int) -> list[str]:
    with open(DATA / name, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line, _ in zip(fh, range(n))]


def _examples(name: str) -> list[str]:
    lines = (EXAMPLES / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines]


def _compare(a: Any, b: Any, tasks_rows: list[tuple[Task, list[str]]]
             ) -> tuple[list[float], list[tuple[str, float]]]:
    """Per-row largest |probability difference| between two backends, and the rows whose
    argmax differs (with the top-two gap of ``b``)."""
    diffs: list[float] = []
    flips: list[tuple[str, float]] = []
    for task, texts in tasks_rows:
        requests = [_request(task, t) for t in texts]
        for text, ra, rb in zip(texts, a.score_batch(requests), b.score_batch(requests)):
            assert isinstance(ra, ScoreResult) and isinstance(rb, ScoreResult)
            pa, pb = _probabilities(task, ra.logprobs), _probabilities(task, rb.logprobs)
            diffs.append(float(np.max(np.abs(pa - pb))))
            if int(np.argmax(pa)) != int(np.argmax(pb)):
                top = np.sort(pb)[::-1]
                flips.append((text, float(top[0] - top[1])))
    return diffs, flips


def _agreement_rows() -> list[tuple[Task, list[str]]]:
    return [(FVH, _examples("fruit_veg_herb_items.jsonl")),
            (PINE, _examples("pineapple_items.jsonl")),
            (TREC, _rows("trec_coarse_test.jsonl", 50))]


@pytest.mark.model
def test_distributions_agree_with_llama_cpp(hf: TransformersBackend,
                                            backend: LlamaCppBackend) -> None:
    """The same GGUF through transformers (weights dequantized, float32 arithmetic) and
    through llama.cpp (Q4_1 kernels, which round activations to 8 bits)."""
    diffs, flips = _compare(hf, backend, _agreement_rows())
    assert len(diffs) == 68
    assert max(diffs) < LLAMA_TOLERANCE, max(diffs)
    assert float(np.mean(diffs)) < LLAMA_TOLERANCE / 3
    near = [(text, gap) for text, gap in flips if gap >= NEAR_TIE]
    assert not near, f"argmax differs on rows that are not near-ties: {near}"
    assert len(flips) <= 5, flips


@pytest.mark.model
@pytest.mark.slow
def test_same_float_weights_agree_closely_with_llama_cpp(
    hf: TransformersBackend, tmp_path: Path
) -> None:
    """With llama.cpp given the very weights transformers dequantized (the GGUF requantized
    to F32), the difference drops about 27-fold (`bench_backends.py --part agreement`) and
    every argmax agrees."""
    import ctypes

    import llama_cpp

    f32 = tmp_path / "smollm2-f32.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 0  # LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(default_model_path()).encode(), str(f32).encode(),
                                        ctypes.byref(params))
    assert rc == 0
    llama = LlamaCppBackend(f32)
    try:
        diffs, flips = _compare(hf, llama, _agreement_rows())
    finally:
        llama.close()
    assert max(diffs) < 0.005, max(diffs)
    assert not flips


@pytest.mark.model
@pytest.mark.slow
# The brute force evaluates each of 150 answers from scratch (150 forwards of the whole
# prompt): it ran past 600 s on 2 cores at load 3-4 (2026-12-02). Generous, so load cannot
# fail it.
@pytest.mark.timeout(2400)
def test_150_labels_equal_bruteforce_and_agree_with_llama_cpp(
    hf: TransformersBackend, backend: LlamaCppBackend
) -> None:
    task = load_task(REPO / "bench" / "tasks" / "clinc150.yaml")
    texts = _rows("clinc150_test.jsonl", 8)
    _check_against_bruteforce(hf, task, texts[:1])
    diffs, flips = _compare(hf, backend, [(task, texts)])
    assert max(diffs) < LLAMA_TOLERANCE and not [f for f in flips if f[1] >= NEAR_TIE]


@pytest.mark.model
def test_generate_greedy_prefix_stop_and_top_logprobs(hf: TransformersBackend) -> None:
    msgs = prompt.messages(FVH, "a ripe mango")
    gen = hf.generate(msgs, max_tokens=24, top_logprobs=3)
    assert gen.tokens and gen.usage["completion_tokens"] == len(gen.tokens)
    assert b"".join(t.token for t in gen.tokens).decode("utf-8", "replace") == gen.text
    for t in gen.tokens:
        assert len(t.top) == 3 and t.top[0][1] >= t.top[1][1] >= t.top[2][1]
        assert t.top[0] == (t.token, pytest.approx(t.logprob))  # greedy takes the top one
    assert hf.generate(msgs, max_tokens=24).text == gen.text  # deterministic
    reason = hf.generate(msgs, prefix=prompt.reason_prefix(FVH, "fruit"), max_tokens=16,
                         stop=['"'])
    assert '"' not in reason.text and reason.finish_reason in ("stop", "length")
    short = hf.generate(msgs, max_tokens=2)
    assert len(short.tokens) <= 2


@pytest.mark.model
def test_sample_is_seeded_and_independent_per_answer(hf: TransformersBackend) -> None:
    msgs = prompt.messages(FVH, "tomato")
    first = hf.sample(msgs, n=4, temperature=1.0, max_tokens=20)
    again = hf.sample(msgs, n=4, temperature=1.0, max_tokens=20)
    assert [g.text for g in first] == [g.text for g in again]
    assert len({g.text for g in first}) > 1  # four draws, not one answer four times
    for g in first:
        assert g.finish_reason in ("stop", "length") and len(g.tokens) <= 20
        assert all(math.isfinite(t.logprob) and t.logprob <= 0 for t in g.tokens)
    with pytest.raises(ValueError):
        hf.sample(msgs, n=0)


@pytest.mark.model
def test_classifier_methods_on_every_task_kind(hf: TransformersBackend) -> None:
    for task in (FVH, PINE, MULTI):
        rec = Classifier(task, hf, reason=False).classify_batch([("tomato", "1"),
                                                                  ("mint", "2")])
        for r in rec:
            assert r.error is None and r.method == "exact"
    seed = Classifier(FVH, hf, method="seed", reason=False).classify_one("lemon", "s")
    assert seed.method == "seed"
    assert seed.error is None or "answered" in seed.error  # free JSON may name no label
    voted = Classifier(FVH, hf, method="sampling", reason=False).classify_one("lemon", "v")
    assert voted.error is None and voted.method == "sampling"
    with_reason = Classifier(FVH, hf).classify_one("a ripe mango", "r")
    assert with_reason.error is None and isinstance(with_reason.reason, str)


@pytest.mark.model
def test_python_and_sklearn_entry_points_take_a_spec(hf: TransformersBackend) -> None:
    spec = BackendSpec("transformers", {"device": "cpu", "dtype": "float32"})
    assert hf.spec == spec.with_options(n_ctx=2048, attn_implementation="auto", seed=0)
    clf = Classifier(FVH, spec, reason=False)
    clone = pickle.loads(pickle.dumps(clf))  # the spec travels, not the model
    with registered("transformers", hf):  # build the spec as the session's loaded model
        rec = clone.classify_one("basil", "b")
        assert rec.error is None and rec.model == hf.model_name
        from surelabel.sklearn import LLMClassifier

        est = LLMClassifier(task=FVH, backend=spec, calibration=None)
        texts = ["apple", "carrot", "basil", "pear", "leek", "mint"]
        est.fit(texts, ["fruit", "vegetable", "herb"] * 2)
        proba = est.predict_proba(texts)
        assert proba.shape == (6, 3)
        assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.model
def test_the_service_classifies_with_it(hf: TransformersBackend, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from surelabel.server import Settings, create_app
    from surelabel.store import Store

    store = Store(f"sqlite:///{tmp_path / 'svc.db'}")
    try:
        auth = {"Authorization": f"Bearer {store.create_token('t', ['classify'])}"}
        app = create_app(FVH, hf, store, settings=Settings(reason=False))
        with TestClient(app) as client:
            r = client.post("/v1/tasks/fruit_veg_herb/classify",
                            json={"items": [{"text": "lemon"}, {"text": "thyme"}]},
                            headers=auth)
            assert r.status_code == 200, r.text
            records = r.json()["items"]
            assert len(records) == 2
            for rec in records:
                assert rec["model"] == hf.model_name and rec["method"] == "exact"
                assert sum(rec["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    finally:
        store.close()


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "surelabel", *args], input=stdin,
                          capture_output=True, text=True, timeout=600, check=False)


def test_cli_refuses_transformers_flags_for_other_backends() -> None:
    proc = _cli("classify", str(EXAMPLES / "pineapple.yaml"), "--device", "cpu",
                stdin="pizza\n")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--device does not apply to the llamacpp backend" in proc.stderr


def test_cli_missing_gpu_or_model_is_one_line(tmp_path: Path) -> None:
    import torch

    base = ("classify", str(EXAMPLES / "pineapple.yaml"), "--backend", "transformers")
    proc = _cli(*base, "--model", str(tmp_path / "nowhere"), stdin="pizza\n")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr
    if not torch.cuda.is_available():
        proc = _cli(*base, "--device", "cuda", stdin="pizza\n")
        assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.model
def test_cli_classify_with_the_transformers_backend(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    items = EXAMPLES / "fruit_veg_herb_items.jsonl"
    proc = _cli("classify", str(EXAMPLES / "fruit_veg_herb.yaml"), str(items), "-o", str(out),
                "--backend", "transformers", "--device", "cpu", "--batch-size", "4",
                "--no-reason", "-q")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(items.read_text().splitlines())
    for r in records:
        assert r["error"] is None and r["method"] == "exact"
        assert r["model"] == "SmolLM2-135M-Instruct.Q4_1"
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.model
def test_calibrate_evaluate_and_classify_commands(hf: TransformersBackend, data_dir: Path,
                                                   tmp_path: Path) -> None:
    from surelabel.calibration.file import load
    from surelabel.cli import main

    sst2 = REPO / "bench" / "tasks" / "sst2.yaml"
    rows = str(data_dir / "sst2_dev.jsonl")
    cal = tmp_path / "cal.json"
    metrics = tmp_path / "metrics.json"
    with registered("transformers", hf):  # the session's loaded model, not a second one
        backend = ["--backend", "transformers", "--device", "cpu", "--batch-size", "4"]
        assert main(["calibrate", str(sst2), rows, "--max-rows", "12", "-o", str(cal),
                     "--method", "platt", "-q", *backend]) == 0
        assert load(cal, load_task(sst2), hf.model_name).n_fitted == 12
        assert main(["evaluate", str(sst2), rows, "--max-rows", "12", "--json", str(metrics),
                     "-q", *backend]) == 0
        assert json.loads(metrics.read_text())
        items = tmp_path / "items.jsonl"
        items.write_text(json.dumps({"text": "an utterly boring mess"}) + "\n")
        out = tmp_path / "out.jsonl"
        assert main(["classify", str(sst2), str(items), "-o", str(out), "--no-reason",
                     "--calibration", str(cal), "-q", *backend]) == 0
        row = json.loads(out.read_text())
        assert row["label"] in ("positive", "negative") and "raw_confidence" in row
