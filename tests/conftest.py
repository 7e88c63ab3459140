"""Shared fixtures: the real bundled model (loaded once per session) and the data sets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def backend() -> Iterator[object]:
    """The embedded SmolLM2-135M-Instruct through llama.cpp, shared by all model tests."""
    from surelabel.backends.llamacpp import LlamaCppBackend

    b = LlamaCppBackend()
    yield b
    b.close()


@pytest.fixture(scope="session")
def transformers_backend() -> Iterator[object]:
    """The same embedded GGUF through transformers (dequantized to float32, on the CPU),
    shared by all tests of that backend."""
    from surelabel.backends.transformers import TransformersBackend

    b = TransformersBackend(device="cpu", dtype="float32")
    yield b
    b.close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"labelled data sets not found at {DATA}")
    return DATA
