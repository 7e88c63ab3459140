"""Exact label scoring, transformers vs llama.cpp: speed, and how far their numbers agree.

Run: ``make bench`` (or ``.venv/bin/python bench/bench_backends.py``). Parts:

- ``--part speed`` (default, this CPU): items/s of exact scoring (every label's
  probability, no reason) on the same rows and the same model, the bundled SmolLM2-135M
  Q4_1 GGUF: llama.cpp on its Q4_1 kernels, transformers on the dequantized weights in
  float32, at several batch sizes. Three tasks: binary (SST-2), 6 labels (TREC), 150 labels
  (CLINC150). The shared prompt prefix is evaluated once before the clock starts, as in
  any run of more than a few items. Also the two backends' largest probability difference
  on those rows.
- ``--part agreement``: the tolerance of ``tests/test_transformers.py``: the examples'
  items and 50 TREC rows through both backends, once on the bundled Q4_1 GGUF and once
  with llama.cpp given the GGUF requantized to F32 (the very weights transformers uses).
- ``--part gpu``: for a machine with a GPU and no network. The model is SmolLM2-135M's
  configuration with seeded random weights (``random_weights``), its real tokenizer, so
  tries, prompts and forward shapes are the real ones and no weights travel: items/s at
  batch sizes 1-256 on the GPU, the GPU's forward tokens/s at the best batch, and the GPU
  result checked against the CPU result on the same weights. Prepare here, run there::

      .venv/bin/python bench/bench_backends.py --export-kit bench/results/gpu-kit
      PYTHONPATH=src python bench/bench_backends.py --part gpu --kit bench/results/gpu-kit

  (the kit, ~4 MB under the git-ignored ``bench/results/``, holds the configuration, the
  tokenizer and the rows; the GPU machine needs torch, transformers, numpy, pyyaml, jinja2
  and tqdm, not gguf or llama.cpp).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from surelabel import methods, prompt
from surelabel.backends.base import Backend
from surelabel.errors import BackendError
from surelabel.task import Task, load_task

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TASKS = {  # name -> (task file, data file)
    "binary": ("sst2.yaml", "sst2_dev.jsonl"),
    "6-label": ("trec.yaml", "trec_coarse_test.jsonl"),
    "150-label": ("clinc150.yaml", "clinc150_test.jsonl"),
}
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def load_rows(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line, _ in zip(fh, range(n))]


def score(backend: Backend, task: Task, texts: list[str], batch: int
          ) -> tuple[float, np.ndarray]:
    """Seconds to score ``texts`` exactly, ``batch`` items per call (the shared prefix
    evaluated before the clock starts), and each row's label probabilities."""
    methods.exact_batch(backend, task, texts[:1], False)  # warm: prefix cached
    out: list[np.ndarray] = []
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        for res in methods.exact_batch(backend, task, texts[i : i + batch], False):
            if isinstance(res, BackendError):
                raise res
            out.append(np.asarray(res.distributions[0].probabilities))
    return time.perf_counter() - start, np.stack(out)


def mean_trie_nodes(backend: Any, task: Task) -> float:
    """Label tokens a trie evaluates per item (what exact scoring adds to the item)."""
    from surelabel.backends._scoring import LabelTrie

    _, tails, _ = backend.answer_split(prompt.messages(task, "x"), prompt.answer_prefix(task),
                                       prompt.continuations(task))
    return float(len(LabelTrie(tails, bool(prompt.closer(task)))))


def uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


# -- the CPU speed comparison -----------------------------------------------------------


def part_speed(args: argparse.Namespace) -> dict[str, Any]:
    from surelabel.backends.llamacpp import LlamaCppBackend
    from surelabel.backends.transformers import TransformersBackend

    threads = args.threads or os.cpu_count() or 1
    t0 = time.perf_counter()
    llama = LlamaCppBackend(n_threads=threads)
    load_llama = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = TransformersBackend(device="cpu", dtype="float32", n_threads=threads,
                             batch_size=max(args.batches))
    load_hf = time.perf_counter() - t0
    result: dict[str, Any] = {
        "command": "bench/bench_backends.py " + " ".join(sys.argv[1:]),
        "threads": threads, "rows": args.rows, "load_average_start": uptime(),
        "load_seconds": {"llamacpp": round(load_llama, 1), "transformers": round(load_hf, 1)},
        "tasks": {},
    }
    print(f"threads={threads} load average {uptime()}", file=sys.stderr)
    for name, (task_file, data_file) in TASKS.items():
        task = load_task(REPO / "bench" / "tasks" / task_file)
        texts = load_rows(DATA / data_file, args.rows)
        row: dict[str, Any] = {"labels": len(task.label_names),
                               "trie_nodes": mean_trie_nodes(hf, task)}
        ref = None
        try:
            seconds, ref = score(llama, task, texts, 1)
            row["llamacpp"] = round(len(texts) / seconds, 2)
        except BackendError as exc:  # recorded, so the other backend is still measured
            row["llamacpp"] = f"failed: {exc}"
        print(f"{name}: llama.cpp {row['llamacpp']} items/s", file=sys.stderr)
        for b in args.batches:
            seconds, got = score(hf, task, texts, b)
            row[f"transformers_b{b}"] = round(len(texts) / seconds, 2)
            print(f"{name}: transformers batch {b}: {row[f'transformers_b{b}']} items/s",
                  file=sys.stderr)
        if ref is not None:
            diff = np.abs(got - ref).max(axis=1)
            row["max_abs_dp"] = round(float(diff.max()), 4)
            row["mean_abs_dp"] = round(float(diff.mean()), 4)
            row["argmax_agree"] = int((got.argmax(1) == ref.argmax(1)).sum())
        result["tasks"][name] = row
    result["load_average_end"] = uptime()
    llama.close()
    hf.close()
    return result


# -- agreement with llama.cpp -----------------------------------------------------------


def _agreement_rows() -> list[tuple[Task, list[str]]]:
    ex = REPO / "examples"
    out = []
    for stem in ("fruit_veg_herb", "pineapple"):
        lines = (ex / f"{stem}_items.jsonl").read_text(encoding="utf-8").splitlines()
        out.append((load_task(ex / f"{stem}.yaml"), [json.loads(x)["text"] for x in lines]))
    out.append((load_task(REPO / "bench" / "tasks" / "trec.yaml"),
                load_rows(DATA / "trec_coarse_test.jsonl", 50)))
    return out


def _compare(a: Backend, b: Backend) -> dict[str, Any]:
    """How far ``a``'s label probabilities are from ``b``'s, row by row."""
    diffs: list[float] = []
    flips: list[dict[str, Any]] = []
    for task, texts in _agreement_rows():
        _, pa = score(a, task, texts, 8)
        _, pb = score(b, task, texts, 1)
        diffs.extend(np.abs(pa - pb).max(axis=1).tolist())
        for text, x, y in zip(texts, pa, pb):
            if x.argmax() != y.argmax():
                top = np.sort(y)[::-1]
                flips.append({"text": text,
                              "llamacpp_top_two_gap": round(float(top[0] - top[1]), 4)})
    return {"rows": len(diffs), "max_abs_dp": round(max(diffs), 4),
            "median_abs_dp": round(statistics.median(diffs), 4),
            "mean_abs_dp": round(statistics.mean(diffs), 4),
            "argmax_differs": flips}


def part_agreement(args: argparse.Namespace) -> dict[str, Any]:
    import ctypes

    import llama_cpp

    from surelabel.backends.llamacpp import LlamaCppBackend, default_model_path
    from surelabel.backends.transformers import TransformersBackend

    hf = TransformersBackend(device="cpu", dtype="float32")
    result: dict[str, Any] = {"command": "bench/bench_backends.py " + " ".join(sys.argv[1:])}
    llama = LlamaCppBackend()
    result["llamacpp_q4_1"] = _compare(hf, llama)
    llama.close()
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "smollm2-f32.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = 0  # LLAMA_FTYPE_ALL_F32: the Q4_1 blocks dequantized, as transformers does
        params.allow_requantize = True
        rc = llama_cpp.llama_model_quantize(str(default_model_path()).encode(),
                                            str(f32).encode(), ctypes.byref(params))
        if rc != 0:
            raise SystemExit(f"requantizing to F32 failed ({rc})")
        llama = LlamaCppBackend(f32)
        result["llamacpp_f32"] = _compare(hf, llama)
        llama.close()
    hf.close()
    return result


# -- the GPU run ------------------------------------------------------------------------


def export_kit(path: Path, rows: int) -> None:
    """Write what the GPU run needs and a GPU machine lacks: SmolLM2-135M's configuration
    and tokenizer (read from the bundled GGUF) and the benchmark rows."""
    import transformers

    from surelabel.backends.llamacpp import default_model_path

    gguf = default_model_path()
    path.mkdir(parents=True, exist_ok=True)
    load = {"gguf_file": gguf.name, "local_files_only": True}
    transformers.AutoTokenizer.from_pretrained(str(gguf.parent), **load).save_pretrained(path)
    config = transformers.AutoConfig.from_pretrained(str(gguf.parent), **load)
    config.quantization_config = None
    config.save_pretrained(path)
    (path / "config.json").write_text(
        json.dumps({k: v for k, v in json.loads((path / "config.json").read_text()).items()
                    if k != "quantization_config"}, indent=2))
    for name, (task_file, data_file) in TASKS.items():
        texts = load_rows(DATA / data_file, rows)
        (path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                    for t in texts))
        (path / f"{name}.yaml").write_bytes((REPO / "bench" / "tasks" / task_file).read_bytes())
    print(f"wrote {path} ({sum(f.stat().st_size for f in path.iterdir()) / 1e6:.1f} MB)",
          file=sys.stderr)


def part_gpu(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from surelabel.backends.transformers import TransformersBackend

    kit = Path(args.kit)
    if not (kit / "config.json").is_file():
        raise SystemExit(f"{kit}: no kit; make one with --export-kit {kit}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result: dict[str, Any] = {
        "command": "bench/bench_backends.py " + " ".join(sys.argv[1:]),
        "device": device, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "model": "SmolLM2-135M configuration, random weights (seed 0)", "tasks": {},
    }
    cpu = TransformersBackend(kit, device="cpu", dtype="float32", random_weights=0)
    for dtype in args.dtypes:
        gpu = TransformersBackend(kit, device=device, dtype=dtype, random_weights=0,
                                  batch_size=max(args.gpu_batches))
        for name in TASKS:
            task = load_task(kit / f"{name}.yaml")
            texts = load_rows(kit / f"{name}.jsonl", args.gpu_rows)
            row = result["tasks"].setdefault(name, {"labels": len(task.label_names)})
            speeds = {}
            for b in args.gpu_batches:
                seconds, _ = score(gpu, task, texts, b)
                speeds[b] = round(len(texts) / seconds, 1)
                print(f"{dtype} {name} batch {b}: {speeds[b]} items/s", file=sys.stderr)
            row[f"{dtype}_items_per_s"] = speeds
            check = texts[: args.check_rows]
            _, on_cpu = score(cpu, task, check, 8)
            _, on_gpu = score(gpu, task, check, 64)
            row[f"{dtype}_vs_cpu_max_abs_dp"] = float(np.abs(on_gpu - on_cpu).max())
            agree = int((on_gpu.argmax(1) == on_cpu.argmax(1)).sum())
            row[f"{dtype}_vs_cpu_argmax_agree"] = f"{agree}/{len(check)}"
        result[f"{dtype}_forward_tokens_per_s"] = forward_limit(gpu, device)
        gpu.close()
    cpu.close()
    return result


def forward_limit(backend: Any, device: str) -> dict[str, float]:
    """The GPU's own limit: tokens/s of plain forward passes (no cache, no custom mask),
    best over batch shapes of 4096-65536 tokens (one small shape on a CPU dry run)."""
    import torch

    model = backend.torch_model
    best: dict[str, float] = {"tokens_per_s": 0.0}
    shapes = ((16, 256), (64, 256), (256, 256)) if device.startswith("cuda") else ((4, 128),)
    for rows, length in shapes:
        ids = torch.randint(0, model.config.vocab_size, (rows, length), device=device)
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=1)  # warm-up
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(5):
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        tps = 5 * rows * length / (time.perf_counter() - start)
        if tps > best["tokens_per_s"]:
            best = {"tokens_per_s": round(tps), "rows": rows, "length": length}
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "agreement", "gpu"), default="speed")
    parser.add_argument("--rows", type=int, default=48, help="rows per task (speed)")
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8], help="transformers batch sizes (speed; default 1,8)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both backends (default: all cores)")
    parser.add_argument("--kit", default=str(REPO / "bench" / "results" / "gpu-kit"))
    parser.add_argument("--export-kit", metavar="DIR", help="write the GPU kit and stop")
    parser.add_argument("--gpu-rows", type=int, default=512, help="rows per task (gpu)")
    parser.add_argument("--gpu-batches", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(GPU_BATCHES), help="batch sizes (gpu; default 1-256)")
    parser.add_argument("--check-rows", type=int, default=32,
                        help="rows per task checked against the CPU (gpu)")
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32",
                                                                          "bfloat16"])
    parser.add_argument("--device", default=None, help="gpu part: default cuda if present")
    parser.add_argument("--out", default=None, help="write the result as JSON here too")
    args = parser.parse_args()
    if args.export_kit:
        export_kit(Path(args.export_kit), args.gpu_rows)
        return 0
    run = {"speed": part_speed, "agreement": part_agreement, "gpu": part_gpu}[args.part]
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    out = args.out or (os.path.join(os.environ["OUT"], f"backends-{args.part}.json")
                       if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
