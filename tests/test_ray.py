"""Scale-out on Ray Data, against a real Ray cluster on this machine (2 CPUs, loopback),
started once for the module and stopped afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

from surelabel import BackendSpec, Classifier, load_task  # noqa: E402
from surelabel import ray as surelabel_ray  # noqa: E402
from surelabel.cli import main  # noqa: E402
from surelabel.io import Row, iter_records  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FVH_PATH = REPO / "examples" / "fruit_veg_herb.yaml"
FVH = load_task(FVH_PATH)
WORDS = {"fruit": ["apple", "berr", "melon"], "vegetable": ["bean", "pea", "carrot"],
         "herb": ["spice", "basil", "thyme"]}
FAKE = json.dumps({"keywords": WORDS})


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster: 2 CPUs, no dashboard, on loopback; its GCS address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def shared_rows(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 rows of a shared labelled set (their gold `label` passes through as input_label)."""
    lines = (data_dir / "usda_food_groups.jsonl").read_text().splitlines()[:50]
    path = tmp_path_factory.mktemp("rows") / "usda50.jsonl"
    path.write_text("".join(f'{{"id": "u{i}", {line.strip()[1:]}\n' for i, line in
                            enumerate(lines)))
    return path


def test_fifty_shared_rows_through_the_ray_engine_equal_the_single_process_run(
    cluster: str, shared_rows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    common = ["classify", str(FVH_PATH), str(shared_rows), "--backend", f"fake:{FAKE}", "-q"]
    assert main([*common, "-o", str(local)]) == 0
    assert main([*common, "-o", str(on_ray), "--engine", "ray", "--workers", "2",
                 "--ray-batch-size", "4"]) == 0
    capsys.readouterr()
    assert on_ray.read_bytes() == local.read_bytes()
    records = [json.loads(line) for line in on_ray.read_text().splitlines()]
    assert len(records) == 50 and [r["id"] for r in records] == [f"u{i}" for i in range(50)]
    assert all(r["input_label"] for r in records)


def test_workers_apply_the_same_calibration(
    cluster: str, shared_rows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import numpy as np

    from surelabel.calibration import fit_calibration

    lp = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]] * 4))
    calibration, _ = fit_calibration(FVH, "fake-model", lp, [0, 1, 2] * 4,
                                     method="temperature", confidence_method="exact")
    cal = tmp_path / "cal.json"
    calibration.save(cal)
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    common = ["classify", str(FVH_PATH), str(shared_rows), "--backend", f"fake:{FAKE}", "-q",
              "--calibration", str(cal)]
    assert main([*common, "-o", str(local)]) == 0
    assert main([*common, "-o", str(on_ray), "--engine", "ray", "--workers", "2"]) == 0
    capsys.readouterr()
    assert on_ray.read_text() == local.read_text()
    assert json.loads(local.read_text().splitlines()[0])["calibrated"] is True


def test_the_command_line_reaches_a_running_cluster_and_writes_a_parquet_directory(
    cluster: str, shared_rows: Path, tmp_path: Path,
) -> None:
    local, out = tmp_path / "local.parquet", tmp_path / "out"
    common = ["classify", str(FVH_PATH), str(shared_rows), "--backend", f"fake:{FAKE}", "-q"]
    assert main([*common, "-o", str(local)]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "surelabel", *common, "-o", f"{out}/", "--format", "parquet",
         "--rows-per-file", "20", "--engine", "ray", "--ray-address", cluster,
         "--workers", "2"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert list(iter_records(out)) == list(iter_records(local))


def test_a_worker_killed_mid_job_is_replaced_and_every_row_comes_once(cluster: str) -> None:
    clf = Classifier(FVH, BackendSpec("fake", {"keywords": WORDS, "delay": 0.03}), reason=False)
    rows = [Row(id=i, text=f"melon {i}", line=i + 1, extra={"n": i}) for i in range(200)]
    stats: dict[str, Any] = {}
    out: list[dict[str, Any]] = []
    killed = None
    for record in surelabel_ray.classify_rows(rows, clf, workers=2, batch_size=5, stats=stats):
        out.append(record)
        if killed is None and len(out) >= 10:
            killed = next(iter(stats["workers"]))
            os.kill(killed, signal.SIGKILL)  # a Ray worker process this test's cluster runs
    assert killed is not None
    assert [r["id"] for r in out] == list(range(200))
    assert [r["n"] for r in out] == list(range(200))
    assert all(r["label"] == "fruit" and r["error"] is None for r in out)
    # Ray started a new worker in place of the killed one.
    assert len(stats["workers"]) >= 3 and sum(stats["workers"].values()) == 200


def test_classify_dataset_adds_the_classifier_columns(cluster: str) -> None:
    pd = pytest.importorskip("pandas")
    items = [{"id": i, "text": t, "meta": i * 10} for i, t in
             enumerate(["apple", "bean stew", "dried thyme", " ", "melon"] * 4)]
    ds = ray.data.from_items(items)
    clf = Classifier(FVH, BackendSpec("fake", {"keywords": WORDS}), reason=False)
    out = surelabel_ray.classify_dataset(ds, clf, concurrency=2, batch_size=3)
    got = pd.DataFrame(out.take_all()).sort_values("id").reset_index(drop=True)
    want = clf.classify_frame(pd.DataFrame(items))
    assert list(got.columns) == list(want.columns)

    def plain(df: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = df.astype(object).where(df.notna(), None).to_dict("records")
        return rows

    assert plain(got) == plain(want)
    assert got.loc[3, "error"] == "empty text"


def test_a_setup_mistake_on_the_cluster_is_one_line(
    cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    items = tmp_path / "items.txt"
    items.write_text("basil\n")
    code = main(["classify", str(FVH_PATH), str(items), "--engine", "ray", "--backend", "llamacpp",
                 "--model", str(tmp_path / "missing.gguf"), "-q", "-o",
                 str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing.gguf" in err


def test_rate_caps_hold_for_the_whole_cluster_not_per_worker(cluster: str) -> None:
    window = surelabel_ray._shared_limiter(BackendSpec("openai", {"max_rpm": 5}))
    assert window is not None

    @ray.remote(num_cpus=1)
    def worker(actor: Any) -> int:
        limiter = surelabel_ray.SharedRateLimiter(actor)

        async def go() -> int:
            got = 0
            for _ in range(5):
                try:
                    ticket = await asyncio.wait_for(limiter.acquire(10), timeout=3)
                except asyncio.TimeoutError:
                    continue
                limiter.settle(ticket, tokens=10)
                got += 1
            return got

        return asyncio.run(go())

    started = sum(ray.get([worker.remote(window), worker.remote(window)]))
    assert started == 5  # 10 asked for by two workers; the minute allows 5 in all
    assert ray.get(window.requests.remote()) == 5


def test_an_api_backend_on_a_worker_uses_the_cluster_limiter(cluster: str) -> None:
    pytest.importorskip("openai")
    spec = BackendSpec("openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                  "max_rpm": 30, "cache": False})
    clf = Classifier(FVH, spec, method="topk", reason=False)
    limiter = surelabel_ray._shared_limiter(spec)
    worker = surelabel_ray.ClassifyBatches(clf, mode="rows", limiter=limiter)
    assert isinstance(clf.backend.limiter, surelabel_ray.SharedRateLimiter)  # type: ignore[attr-defined]
    assert worker.load_s >= 0
    clf.close()


@pytest.mark.model
@pytest.mark.slow
def test_the_real_model_on_ray_workers_gives_the_single_process_records(
    cluster: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    lines = (data_dir / "sst2_dev.jsonl").read_text().splitlines()[:50]
    items = tmp_path / "sst2.jsonl"
    items.write_text("\n".join(lines) + "\n")
    task = REPO / "bench" / "tasks" / "sst2.yaml"
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    common = ["classify", str(task), str(items), "--threads", "1", "--no-reason", "-q"]
    assert main([*common, "-o", str(local)]) == 0
    assert main([*common, "-o", str(on_ray), "--engine", "ray", "--workers", "2"]) == 0
    capsys.readouterr()
    assert on_ray.read_text() == local.read_text()
