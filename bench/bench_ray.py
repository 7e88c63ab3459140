"""One process vs Ray Data workers, and what a cluster of N machines would need.

Run (part of ``make bench``)::

    flock /tmp/surelabel-cpu.lock .venv/bin/python bench/bench_ray.py --rows 200

The first N rows of SST-2 dev, task ``bench/tasks/sst2.yaml``, the embedded model, exact
method, ``--no-reason``. Each run is a fresh process or a fresh Ray cluster on this
machine (``ray.init(num_cpus=...)``), so nothing is warm:

- ``1 process``: :func:`surelabel.batch.classify_ordered` in this process, one model
  load; with ``n_threads`` 1 and 2;
- ``Ray, W workers``: :func:`surelabel.ray.classify_rows` (what ``surelabel classify
  --engine ray`` runs) with W actors of ``n_threads=1`` each.

For each: the model load time (per worker: the backend build inside the actor), the wall
time of the classification with and without start-up, rows/s, each worker's rows/s over
the time it spent classifying, and per-worker memory (the peak resident set of each worker
process, ``getrusage``). Then the driver's writing speed (JSONL, CSV and Parquet,
synthetic records), which bounds a cluster run through the command line (the driver writes
every record), and the estimate for N machines from those figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sst2_dev.jsonl"
TASK = REPO / "bench" / "tasks" / "sst2.yaml"


def _rows(n: int) -> list[Any]:
    from surelabel.io import read_rows

    return read_rows(DATA)[:n]


def single(n: int, threads: int) -> dict[str, Any]:
    """One process, one model load (run in a child, so the model is loaded afresh)."""
    code = f"""
import json, resource, time, sys
sys.path.insert(0, {str(REPO / 'bench')!r})
from bench_ray import _rows
from surelabel import BackendSpec, Classifier, load_task
from surelabel.batch import classify_ordered
rows = _rows({n})
t0 = time.perf_counter()
clf = Classifier(load_task({str(TASK)!r}), BackendSpec("llamacpp", {{"n_threads": {threads}}}),
                 reason=False)
clf.plan
load = time.perf_counter() - t0
t1 = time.perf_counter()
records = list(classify_ordered(clf, rows))
run = time.perf_counter() - t1
print(json.dumps({{"load_s": load, "classify_s": run, "rows": len(records),
                  "errors": sum(r.error is not None for r in records),
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=3600)
    wall = time.perf_counter() - start
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "mode": f"1 process, n_threads={threads}",
        "workers": 1,
        "rows": got["rows"],
        "errors": got["errors"],
        "model_load_s": [round(got["load_s"], 2)],
        "start_s": round(wall - got["classify_s"], 2),
        "classify_s": round(got["classify_s"], 2),
        "wall_s": round(wall, 2),
        "rows_per_s": round(got["rows"] / got["classify_s"], 3),
        "rows_per_s_wall": round(got["rows"] / wall, 3),
        "rows_per_s_per_worker": [round(got["rows"] / got["classify_s"], 3)],
        "worker_rss_mib": [round(got["rss_mib"], 1)],
    }


def on_ray(n: int, workers: int) -> dict[str, Any]:
    import ray

    from surelabel import BackendSpec, Classifier, load_task
    from surelabel import ray as surelabel_ray

    rows = _rows(n)
    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        cluster_s = time.perf_counter() - start
        clf = Classifier(load_task(TASK), BackendSpec("llamacpp", {"n_threads": 1}),
                         reason=False)
        stats: dict[str, Any] = {}
        first = None
        t0 = time.perf_counter()
        count = errors = 0
        for record in surelabel_ray.classify_rows(rows, clf, workers=workers, batch_size=8,
                                                  stats=stats):
            if first is None:
                first = time.perf_counter()
            count += 1
            errors += record["error"] is not None
        end = time.perf_counter()
    finally:
        ray.shutdown()
    job_s = end - t0
    assert first is not None
    done = stats["workers"]
    return {
        "mode": f"Ray, {workers} worker{'s' if workers > 1 else ''} x n_threads=1",
        "workers": workers,
        "rows": count,
        "errors": errors,
        "model_load_s": sorted(round(x, 2) for x in stats["load_s"].values()),
        "start_s": round(cluster_s + (first - t0), 2),
        "classify_s": round(job_s, 2),
        "wall_s": round(end - start, 2),
        "rows_per_s": round(count / job_s, 3),
        "rows_per_s_wall": round(count / (end - start), 3),
        # The job's rate once the first batch is back (workers started, models loaded).
        "rows_per_s_after_first_batch": round((count - 8) / (end - first), 3),
        # Each worker's rows over the seconds it spent classifying them.
        "rows_per_s_per_worker": sorted(round(done[p] / stats["busy_s"][p], 3) for p in done),
        "rows_per_worker": sorted(done.values()),
        "worker_rss_mib": sorted(round(v, 1) for v in stats["max_rss_mib"].values()),
    }


def driver_writes(n: int = 100_000) -> dict[str, float]:
    """Records per second the driver writes (the single writer of a CLI cluster run)."""
    from surelabel.io import open_writer, record_columns

    record = {
        "id": 0, "text": "a fairly ordinary sentence of a review, about twenty words long "
        "as the shared sets have", "label": "positive", "confidence": 0.73,
        "probabilities": {"positive": 0.73, "negative": 0.27}, "label_mass": 0.9,
        "entropy": 0.58, "margin": 0.46, "decision": "review", "reason": None,
        "method": "exact", "model": "SmolLM2-135M-Instruct.Q4_1", "error": None,
        "confidence_source": "logprobs", "input_label": "positive",
    }
    out: dict[str, float] = {}
    columns = record_columns(["positive", "negative"])
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("jsonl", "csv", "parquet"):
            path = Path(tmp) / f"out.{fmt}"
            t0 = time.perf_counter()
            with open_writer(path, columns=columns) as w:
                for i in range(n):
                    w.write({**record, "id": i})
            out[f"{fmt}_rows_per_s"] = round(n / (time.perf_counter() - t0))
    return out


def estimate(results: list[dict[str, Any]], writes: dict[str, float],
             machine_gib: float, cores: int) -> dict[str, Any]:
    """A cluster of N machines like the one assumed, on paper, from the figures measured
    here: each worker classifies at the rate one Ray worker did here (its rows over its
    busy seconds), times the efficiency two workers kept on two cores; one core per machine
    is left to Ray's own processes; memory caps the workers too."""
    one = next(r for r in results if r["mode"].startswith("Ray, 1"))
    two = next(r for r in results if r["mode"].startswith("Ray, 2"))
    per_worker = one["rows_per_s_per_worker"][0]
    rates = two["rows_per_s_per_worker"]
    efficiency = sum(rates) / len(rates) / per_worker
    rss = max(one["worker_rss_mib"] + two["worker_rss_mib"])
    by_memory = int(machine_gib * 1024 * 0.8 // rss)  # leave a fifth for the OS and Ray
    workers_per_machine = max(1, min(cores - 1, by_memory))
    start = max(one["start_s"], two["start_s"])
    table = []
    for machines in (1, 4, 16, 64):
        workers = machines * workers_per_machine
        rate = workers * per_worker * efficiency
        table.append({
            "machines": machines, "workers": workers, "rows_per_s": round(rate, 1),
            "hours_per_million_rows": round((start + 1e6 / rate) / 3600, 2),
            "driver_write_share": round(rate / writes["jsonl_rows_per_s"], 4),
        })
    return {
        "per_worker_rows_per_s": per_worker,
        "two_worker_efficiency": round(efficiency, 3),
        "worker_rss_mib": rss,
        "model_load_s": max(one["model_load_s"] + two["model_load_s"]),
        "start_s": start,
        "workers_per_machine": workers_per_machine,
        "workers_per_machine_by_memory": by_memory,
        "assumed_machine": f"{cores} cores, {machine_gib:g} GiB",
        "driver_limit_workers": int(writes["jsonl_rows_per_s"] / (per_worker * efficiency)),
        "table": table,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--machine-cores", type=int, default=16,
                        help="cores per machine in the estimate (default: 16)")
    parser.add_argument("--machine-gib", type=float, default=64,
                        help="memory per machine in the estimate (default: 64 GiB)")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    load = os.getloadavg()
    results = [single(args.rows, 1), single(args.rows, 2)]
    for workers in (1, 2):
        results.append(on_ray(args.rows, workers))
    writes = driver_writes()
    report = {
        "rows": args.rows,
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "driver_max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "results": results,
        "driver_writes": writes,
        "estimate": estimate(results, writes, args.machine_gib, args.machine_cores),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
