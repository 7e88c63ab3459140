"""Two numerical facts the code and docs rely on, measured with the embedded model.

1. Batch split (``--part split``). The same prompt is evaluated by llama.cpp in one batch
   and in batches of 8 tokens, with flash attention on and off; printed: the largest
   absolute difference of the final position's log-softmax over the vocabulary, and at the
   token ``" veget"`` (the first token of a label). Why the backend turns flash attention
   off (``src/surelabel/backends/llamacpp.py``, DEVELOPERS.md).

2. Repeated prompt (``--part repeat``). ``python -m llama_cpp.server`` on 127.0.0.1 is asked
   the same chat request twice in a row, after an unrelated one; printed, per item: whether
   the two answers are the same text, and the largest difference of a token logprob over
   the tokens both answers share from the start. Why the
   test proxy in ``tests/test_openai_server.py`` clears the server's cached prompt
   (docs/openai.md).

    python bench/numerics.py                 # both parts, about 20 s
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ITEMS = ["tomato", "basil leaves fresh from the garden", "lemon", "Hawaiian pizza with ham",
         "cucumber"]


def split_part() -> None:
    import llama_cpp

    from surelabel import prompt
    from surelabel.backends.llamacpp import LlamaCppBackend, default_model_path
    from surelabel.task import load_task

    task = load_task(REPO / "examples" / "fruit_veg_herb.yaml")
    backend = LlamaCppBackend(n_threads=1)
    tokens = backend.prompt_tokens(prompt.messages(task, "lemon"))
    tokens += backend.tokenize(prompt.answer_prefix(task) + ' "')  # the answer up to the value
    label_token = backend.tokenize(' "veget')[-1]
    backend.close()
    print(f"prompt of {len(tokens)} tokens (fruit_veg_herb, 'lemon', answer prefix)")
    for flash in (True, False):
        last = {}
        for n_batch in (512, 8):
            llm = llama_cpp.Llama(str(default_model_path()), n_ctx=1024, n_batch=n_batch,
                                  n_threads=1, flash_attn=flash, logits_all=True,
                                  verbose=False)
            llm.eval(tokens)
            x = np.asarray(llm.scores[len(tokens) - 1], dtype=np.float64)
            last[n_batch] = x - x.max() - np.log(np.exp(x - x.max()).sum())
            llm.close()
        gap = np.abs(last[512] - last[8])
        print(f"flash attention {'on ' if flash else 'off'}: one batch vs batches of 8: "
              f"largest log-softmax gap {gap.max():.2e}, at the label's first token "
              f"{gap[label_token]:.2e}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ask(url: str, text: str) -> list[tuple[str, float]]:
    body = {
        "model": "smollm2", "temperature": 0, "max_tokens": 6, "logprobs": True,
        "top_logprobs": 10, "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": "You are a chef. Classify the item as a "
                      "fruit, vegetable, or herb. Answer in JSON."},
                     {"role": "user", "content": text}],
    }
    req = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        data: dict[str, Any] = json.load(resp)
    return [(t["token"], t["logprob"]) for t in data["choices"][0]["logprobs"]["content"]]


def repeat_part() -> None:
    from surelabel.backends.llamacpp import default_model_path

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
         "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/models", timeout=5)
                break
            except OSError:
                time.sleep(1)
        for i, text in enumerate(ITEMS):
            _ask(url, ITEMS[(i + 1) % len(ITEMS)])  # something else first
            first, again = _ask(url, text), _ask(url, text)
            # Compare the tokens both answers share from the start.
            same = 0
            while same < min(len(first), len(again)) and first[same][0] == again[same][0]:
                same += 1
            gap = max((abs(first[i][1] - again[i][1]) for i in range(same)), default=0.0)
            answers = "same answer" if first == again or [t for t, _ in first] == [
                t for t, _ in again] else "ANOTHER ANSWER"
            print(f"{text!r}: same request twice in a row: {answers}; largest logprob gap "
                  f"over the {same} tokens both share first: {gap:.4f}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("split", "repeat", "both"), default="both")
    args = parser.parse_args(argv)
    if args.part in ("split", "both"):
        split_part()
    if args.part in ("repeat", "both"):
        repeat_part()
    return 0


if __name__ == "__main__":
    sys.exit(main())
