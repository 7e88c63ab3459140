"""Load test of ``surelabel serve``: concurrent clients posting single-item classifications.

Starts the service as its own process on 127.0.0.1 (a fresh SQLite database in a temporary
folder), creates an API token, warms up, then runs ``--clients`` clients, each posting one
item per request in a loop for ``--seconds``. Reports throughput, p50/p95/max latency, the
count of non-200 answers (must be 0) and the server's resident memory (RSS from /proc) at
the start of the load, its peak, and at the end.

    python bench/bench_server.py                       # embedded model, 20 clients, 60 s
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


async def client_loop(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                      texts: list[str], start_index: int, deadline: float,
                      latencies: list[float], errors: list[str]) -> None:
    i = start_index
    while time.monotonic() < deadline:
        text = texts[i % len(texts)]
        i += 1
        t0 = time.perf_counter()
        try:
            r = await client.post(url, json={"text": text}, headers=headers)
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        dt = time.perf_counter() - t0
        if r.status_code == 200 and r.json().get("error") is None:
            latencies.append(dt)
        else:
            errors.append(f"{r.status_code}: {r.text[:200]}")


async def load(url: str, token: str, texts: list[str], clients: int,
               seconds: float) -> tuple[list[float], list[str], float]:
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    # Generous timeout: with one model and N clients, a request waits for up to N items.
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        for text in texts[:3]:  # warm-up, not measured
            (await client.post(url, json={"text": text}, headers=headers)).raise_for_status()
        t0 = time.monotonic()
        deadline = t0 + seconds
        await asyncio.gather(*(
            client_loop(client, url, headers, texts, k * 7, deadline, latencies, errors)
            for k in range(clients)
        ))
        elapsed = time.monotonic() - t0
    return latencies, errors, elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("embedded", "api"), default="embedded")
    ap.add_argument("--task", default=str(REPO / "examples" / "fruit_veg_herb.yaml"))
    ap.add_argument("--items", default=str(REPO / "examples" / "fruit_veg_herb_items.jsonl"))
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--no-reason", action="store_true", help="serve with --no-reason")
    ap.add_argument("--workers", type=int, default=None,
                    help="server classification threads (default: 1 embedded, 4 api)")
    ap.add_argument("--threads", type=int, default=None,
                    help="llama.cpp threads of the embedded model (default: all cores)")
    ap.add_argument("--out", default=None, help="JSON results (default: bench/results/...)")
    args = ap.parse_args()

    texts = [json.loads(line)["text"] for line in Path(args.items).read_text().splitlines()
             if line.strip()]
    workers = args.workers or (1 if args.backend == "embedded" else 4)
    tmp = Path(tempfile.mkdtemp(prefix="surelabel-bench-"))
    db = f"sqlite:///{tmp / 'bench.db'}"
    from surelabel.store import Store
    from surelabel.task import load_task

    with Store(db) as store:
        token = store.create_token("bench", ["classify"])

    helpers: list[subprocess.Popen[bytes]] = []
    serve_args = [args.task, "--db", db, "--log-level", "warning", "--workers", str(workers),
                  "--queue-size", str(max(64, 2 * args.clients))]
    if args.no_reason:
        serve_args.append("--no-reason")
    if args.threads:
        serve_args += ["--threads", str(args.threads)]
    if args.backend == "api":
        api_port = free_port()
        helpers.append(start_llama_server(api_port))
        serve_args += ["--backend", "openai", "--base-url", f"http://127.0.0.1:{api_port}/v1",
                       "--model", "smollm2", "--api-key", "none", "--no-cache"]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "from surelabel.cli import entry; entry()", "serve",
         *serve_args, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    helpers.append(server)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/openapi.json", server)
        url = f"{base}/v1/tasks/{load_task(args.task).name}/classify"
        load_start = os.getloadavg()
        rss: list[float] = [rss_mib(server.pid)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                rss.append(rss_mib(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        latencies, errors, elapsed = asyncio.run(
            _with_sampler(sampler, load(url, token, texts, args.clients, args.seconds))
        )
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

    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    result: dict[str, Any] = {
        "backend": args.backend,
        "task": Path(args.task).name,
        "reason": not args.no_reason,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "workers": workers,
        "threads": args.threads,
        "completed": len(lat),
        "errors": len(errors),
        "error_samples": errors[:5],
        "throughput_rps": round(len(lat) / elapsed, 2),
        "p50_ms": round(1000 * q[49], 1),
        "p95_ms": round(1000 * q[94], 1),
        "max_ms": round(1000 * lat[-1], 1) if lat else None,
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
        f".threads{args.threads}" if args.threads else "")
    out = Path(args.out) if args.out else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"\n| {args.backend} | {args.clients} | {result['seconds']} s | {result['completed']} | "
        f"{result['throughput_rps']} req/s | {result['p50_ms']} ms | {result['p95_ms']} ms | "
        f"{result['errors']} | {result['rss_start_mib']} → {result['rss_end_mib']} MiB "
        f"(peak {result['rss_peak_mib']}) |"
    )
    return 1 if errors else 0


async def _with_sampler(sampler: threading.Thread, coro: Any) -> Any:
    sampler.start()
    return await coro


if __name__ == "__main__":
    sys.exit(main())
