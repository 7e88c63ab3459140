"""Load test of ``surelabel serve``: clients posting classifications, reviewers answering.

Starts the service as its own process on 127.0.0.1 (a fresh SQLite database in a temporary
folder, or ``--db`` PostgreSQL), creates API tokens, warms up, then runs ``--clients``
clients, each posting one item per request in a loop for ``--seconds``, and ``--reviewers``
reviewers (API tokens with the review scope), each claiming the next item
(``POST /v1/tasks/T/claim``) and answering it, in a loop, while the clients post. Items need
``--reviews-per-item`` answers. Reports throughput and p50/p95/max latency of each kind of
request, the count of failed answers (must be 0), the server's resident memory (RSS from
/proc), and checks that nothing acknowledged was lost: every classification answered 200
is stored, every answer acknowledged is a review row, and each item's answer count equals
its review rows.

    python bench/bench_server.py                       # embedded model, 20 clients, 60 s
    python bench/bench_server.py --reviewers 20        # ... and 20 reviewers answering
    python bench/bench_server.py --backend fake --reviewers 20   # no model: the service alone
    python bench/bench_server.py --backend api         # via llama.cpp's OpenAI-compatible server

``--backend api`` also starts ``python -m llama_cpp.server`` with the same bundled GGUF and
serves through surelabel's OpenAI backend (``--backend openai --base-url ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            if proc.poll() is not None:
                raise SystemExit(f"process exited early with code {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not come up in {timeout:.0f} s") from None
            time.sleep(0.25)


def start_llama_server(port: int) -> subprocess.Popen[bytes]:
    from surelabel.backends.llamacpp import default_model_path

    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
         "--model_alias", "smollm2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
    return proc


class Tally:
    """What the load run saw: latencies per request kind, errors, acknowledged writes."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {"classify": [], "claim": [], "answer": []}
        self.errors: list[str] = []
        self.stored: set[int] = set()     # item ids acknowledged by classify
        self.answered: list[tuple[int, str]] = []  # (item id, reviewer) acknowledged
        self.idle_claims = 0


async def client_loop(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                      texts: list[str], start_index: int, deadline: float,
                      tally: Tally) -> None:
    i = start_index
    while time.monotonic() < deadline:
        # A new text each time (the counter makes it unique): every post is classified.
        text = f"{texts[i % len(texts)]} #{i}"
        i += 1
        t0 = time.perf_counter()
        try:
            r = await client.post(url, json={"text": text}, headers=headers)
        except httpx.HTTPError as exc:
            tally.errors.append(f"classify {type(exc).__name__}: {exc}")
            continue
        dt = time.perf_counter() - t0
        if r.status_code == 200 and r.json().get("error") is None:
            tally.latency["classify"].append(dt)
            tally.stored.add(r.json()["item_id"])
        else:
            tally.errors.append(f"classify {r.status_code}: {r.text[:200]}")


async def reviewer_loop(client: httpx.AsyncClient, base: str, task: str, name: str,
                        headers: dict[str, str], labels: list[str], deadline: float,
                        tally: Tally) -> None:
    """Claim the next item, answer it (the model's label, or another one in 1 of 5), again."""
    k = 0
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            r = await client.post(f"{base}/v1/tasks/{task}/claim", json={}, headers=headers)
        except httpx.HTTPError as exc:
            tally.errors.append(f"claim {type(exc).__name__}: {exc}")
            continue
        tally.latency["claim"].append(time.perf_counter() - t0)
        item = r.json().get("item") if r.status_code == 200 else None
        if r.status_code != 200:
            tally.errors.append(f"claim {r.status_code}: {r.text[:200]}")
        if item is None:
            tally.idle_claims += 1
            await asyncio.sleep(0.2)  # the queue is empty for this reviewer: wait for items
            continue
        k += 1
        label = item["label"] if k % 5 else labels[k % len(labels)]
        t0 = time.perf_counter()
        try:
            r = await client.post(f"{base}/v1/items/{item['item_id']}/review",
                                  json={"label": label}, headers=headers)
        except httpx.HTTPError as exc:
            tally.errors.append(f"answer {type(exc).__name__}: {exc}")
            continue
        if r.status_code == 200:
            tally.latency["answer"].append(time.perf_counter() - t0)
            tally.answered.append((item["item_id"], name))
        else:
            tally.errors.append(f"answer {r.status_code}: {r.text[:200]}")


async def load(base: str, task: str, token: str, reviewer_tokens: list[str], texts: list[str],
               labels: list[str], clients: int, seconds: float) -> tuple[Tally, float]:
    url = f"{base}/v1/tasks/{task}/classify"
    headers = {"Authorization": f"Bearer {token}"}
    tally = Tally()
    n = clients + len(reviewer_tokens)
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    # Generous timeout: with one model and N clients, a request waits for up to N items.
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        for text in texts[:3]:  # warm-up, not measured
            r = await client.post(url, json={"text": text}, headers=headers)
            r.raise_for_status()
            tally.stored.add(r.json()["item_id"])
        t0 = time.monotonic()
        deadline = t0 + seconds
        await asyncio.gather(
            *(client_loop(client, url, headers, texts, k * 7, deadline, tally)
              for k in range(clients)),
            *(reviewer_loop(client, base, task, f"token:r{k}",
                            {"Authorization": f"Bearer {tok}"}, labels, deadline, tally)
              for k, tok in enumerate(reviewer_tokens)),
        )
        elapsed = time.monotonic() - t0
    return tally, elapsed


def check_nothing_lost(db: str, task: str, tally: Tally) -> dict[str, Any]:
    """Every acknowledged classification and answer is in the database, and consistent."""
    from sqlalchemy import func, select

    from surelabel.store import Store
    from surelabel.store.schema import items, reviews

    with Store(db) as store, store.engine.connect() as conn:
        stored = set(conn.execute(select(items.c.id).where(items.c.task == task)).scalars())
        rows = {(r[0], r[1]) for r in conn.execute(select(reviews.c.item_id, reviews.c.reviewer))}
        counts = {r[0]: r[1] for r in conn.execute(select(reviews.c.item_id, func.count())
                                                   .group_by(reviews.c.item_id))}
        mismatched = [
            r.id for r in conn.execute(select(items.c.id, items.c.review_count)
                                       .where(items.c.task == task))
            if r.review_count != counts.get(r.id, 0)
        ]
        over = int(conn.execute(select(func.count()).select_from(items).where(
            items.c.review_count > items.c.reviews_needed)).scalar_one())
        integrity = None
        if conn.dialect.name == "sqlite":
            from sqlalchemy import text

            integrity = conn.execute(text("PRAGMA integrity_check")).scalar()
        settled = store.count_items(task)
    missing_items = len(tally.stored - stored)
    missing_answers = len(set(tally.answered) - rows)
    return {
        "acknowledged_items": len(tally.stored),
        "missing_items": missing_items,
        "acknowledged_answers": len(tally.answered),
        "missing_answers": missing_answers,
        "duplicate_answers": len(tally.answered) - len(set(tally.answered)),
        "items_whose_count_differs_from_their_reviews": len(mismatched),
        "items_with_more_answers_than_needed": over,
        "sqlite_integrity_check": integrity,
        "counts_at_end": settled,
        "nothing_lost": missing_items == 0 and missing_answers == 0 and not mismatched
        and over == 0 and len(tally.answered) == len(set(tally.answered)),
    }


def summary(values: list[float]) -> dict[str, Any]:
    lat = sorted(values)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {"n": len(lat), "p50_ms": round(1000 * q[49], 1), "p95_ms": round(1000 * q[94], 1),
            "max_ms": round(1000 * lat[-1], 1) if lat else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("embedded", "api", "fake"), default="embedded",
                    help="embedded model, llama_cpp.server through the OpenAI backend, or "
                         "the fake backend (no model: what the service itself sustains)")
    ap.add_argument("--task", default=str(REPO / "examples" / "fruit_veg_herb.yaml"))
    ap.add_argument("--items", default=str(REPO / "examples" / "fruit_veg_herb_items.jsonl"))
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--reviewers", type=int, default=0,
                    help="reviewers answering while the clients post (default: 0)")
    ap.add_argument("--reviews-per-item", type=int, default=2,
                    help="answers an item needs (with --reviewers; default: 2)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--db", default=None,
                    help="database URL (default: a fresh SQLite file in a temporary folder)")
    ap.add_argument("--no-reason", action="store_true", help="serve with --no-reason")
    ap.add_argument("--workers", type=int, default=None,
                    help="server classification threads (default: 1 embedded, 4 api/fake)")
    ap.add_argument("--threads", type=int, default=None,
                    help="llama.cpp threads of the embedded model (default: half the cores)")
    ap.add_argument("--out", default=None, help="JSON results (default: bench/results/...)")
    args = ap.parse_args()

    texts = [json.loads(line)["text"] for line in Path(args.items).read_text().splitlines()
             if line.strip()]
    workers = args.workers or (1 if args.backend == "embedded" else 4)
    tmp = Path(tempfile.mkdtemp(prefix="surelabel-bench-"))
    db = args.db or f"sqlite:///{tmp / 'bench.db'}"
    from surelabel.store import Store
    from surelabel.task import load_task

    task = load_task(args.task)
    task_file = args.task
    if args.reviewers:
        # The same task with a review section: answers per item, and the audit sample.
        data = task.to_dict()
        data["review"] = {"reviews_per_item": args.reviews_per_item, "audit": 0.1,
                          "refit_every": 0}
        task_file = str(tmp / "task.json")
        Path(task_file).write_text(json.dumps(data))
    with Store(db) as store:
        token = store.create_token("bench", ["classify"])
        reviewer_tokens = [store.create_token(f"r{k}", ["review"])
                           for k in range(args.reviewers)]

    helpers: list[subprocess.Popen[bytes]] = []
    serve_args = [task_file, "--db", db, "--log-level", "warning", "--workers", str(workers),
                  "--queue-size", str(max(64, 2 * args.clients)), "--no-access-log"]
    if args.no_reason:
        serve_args.append("--no-reason")
    if args.threads:
        serve_args += ["--threads", str(args.threads)]
    if args.backend == "api":
        api_port = free_port()
        helpers.append(start_llama_server(api_port))
        serve_args += ["--backend", "openai", "--base-url", f"http://127.0.0.1:{api_port}/v1",
                       "--model", "smollm2", "--api-key", "none", "--no-cache"]
    elif args.backend == "fake":
        serve_args += ["--backend", "fake"]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "from surelabel.cli import entry; entry()", "serve",
         *serve_args, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    helpers.append(server)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", server)
        load_start = os.getloadavg()
        rss: list[float] = [rss_mib(server.pid)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                rss.append(rss_mib(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        tally, elapsed = asyncio.run(_with_sampler(sampler, load(
            base, task.name, token, reviewer_tokens, texts, list(task.label_names),
            args.clients, args.seconds)))
        stop.set()
        sampler.join()
        rss_start = rss_mib(server.pid) if len(rss) < 2 else rss[1]
        rss_end = rss_mib(server.pid)
        upstream_rss = rss_mib(helpers[0].pid) if args.backend == "api" else None
    finally:
        for proc in reversed(helpers):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    lost = check_nothing_lost(db, task.name, tally)

    classify = summary(tally.latency["classify"])
    result: dict[str, Any] = {
        "backend": args.backend,
        "task": Path(args.task).name,
        "db": "postgresql" if db.startswith("postgres") else "sqlite",
        "reason": not args.no_reason,
        "clients": args.clients,
        "reviewers": args.reviewers,
        "reviews_per_item": args.reviews_per_item if args.reviewers else 1,
        "seconds": round(elapsed, 1),
        "workers": workers,
        "threads": args.threads,
        "completed": classify["n"],
        "errors": len(tally.errors),
        "error_samples": tally.errors[:5],
        "throughput_rps": round(classify["n"] / elapsed, 2),
        "p50_ms": classify["p50_ms"],
        "p95_ms": classify["p95_ms"],
        "max_ms": classify["max_ms"],
        "answers": summary(tally.latency["answer"]),
        "claims": summary(tally.latency["claim"]),
        "answers_per_s": round(len(tally.latency["answer"]) / elapsed, 2),
        "idle_claims": tally.idle_claims,
        "check": lost,
        "rss_start_mib": round(rss_start, 1),
        "rss_peak_mib": round(max(rss), 1),
        "rss_end_mib": round(rss_end, 1),
        "upstream_rss_end_mib": None if upstream_rss is None else round(upstream_rss, 1),
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }
    name = f"server.{args.backend}" + (".no-reason" if args.no_reason else "") + (
        f".threads{args.threads}" if args.threads else "") + (
        f".reviewers{args.reviewers}" if args.reviewers else "") + (
        ".pg" if result["db"] == "postgresql" else "")
    out = Path(args.out) if args.out else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    answers = result["answers"]
    print(
        f"\n| {args.backend} | {result['db']} | {args.clients} | {args.reviewers} | "
        f"{result['seconds']} s | {result['completed']} | {result['throughput_rps']} req/s | "
        f"{result['p50_ms']} ms | {result['p95_ms']} ms | {answers['n']} | "
        f"{answers['p50_ms']} ms | {answers['p95_ms']} ms | {result['errors']} | "
        f"{'yes' if lost['nothing_lost'] else 'NO'} | {result['rss_start_mib']} → "
        f"{result['rss_end_mib']} MiB |"
    )
    return 1 if tally.errors or not lost["nothing_lost"] else 0


async def _with_sampler(sampler: threading.Thread, coro: Any) -> Any:
    sampler.start()
    return await coro


if __name__ == "__main__":
    sys.exit(main())
