# One task runner. `make demo` and `make test` work on a fresh machine: they create .venv,
# build llama-cpp-python portable (once, cached in ~/.cache/surelabel/wheels) and install.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS := local,dev,openai,eval,server,transformers
# PyTorch before the project: 2.13.0 is the CPU build this image keeps on disk (pip's
# find-links), installed in seconds. Left to the extras' dependencies pip would take PyPI's
# newest torch, a multi-GB CUDA build. Elsewhere, e.g.
#   make install TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml scripts/build-llama.sh 2>/dev/null | sha256sum | cut -c1-12)

.PHONY: install demo test test-slow test-all lint bench bench-quality clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/build-llama.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	wheels=$$(PYTHON=$(PY) bash scripts/build-llama.sh) && \
	  $(PY) -m pip install -q "$$wheels"/llama_cpp_python-*.whl
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -c "import llama_cpp, torch, transformers, surelabel"
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(VENV)/bin/surelabel classify examples/fruit_veg_herb.yaml examples/fruit_veg_herb_items.jsonl --format table
	$(VENV)/bin/surelabel classify examples/pineapple.yaml examples/pineapple_items.jsonl --format table

test: install
	$(PY) -m pytest -m "not slow" -q

test-slow: install
	$(PY) -m pytest -m slow -q || [ $$? -eq 5 ]

test-all: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/bench_classify.py --rows 200
	$(PY) bench/bench_server.py --clients 20 --seconds 60
	$(PY) bench/bench_server.py --backend api --clients 20 --seconds 60
	$(PY) bench/bench_openai.py --rows 60
	$(PY) bench/bench_ray.py --rows 200
	$(PY) bench/bench_backends.py
	$(PY) bench/bench_labels.py --rows 100 --json bench/results/labels/r100.json --plot docs/img/labels.png
	$(PY) bench/bench_labels.py --rows 20 --methods streams --sizes 2,150 --no-long

bench-quality: install
	$(PY) bench/bench_quality.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
