"""The public API is curated: everything in ``__all__`` exists and is documented."""

from __future__ import annotations

import subprocess
import sys

import surelabel


def test_all_exports_exist_and_are_documented() -> None:
    assert surelabel.__all__ == sorted(surelabel.__all__)
    for name in surelabel.__all__:
        member = getattr(surelabel, name)
        if name != "__version__":
            assert member.__doc__, f"{name} has no docstring"


def test_public_names_are_all_exported() -> None:
    public = {
        name
        for name, value in vars(surelabel).items()
        if not name.startswith("_") and not isinstance(value, type(surelabel))
    }
    assert public <= set(surelabel.__all__)


def test_import_loads_no_model_and_no_heavy_modules() -> None:
    code = (
        "import sys, surelabel; "
        "print(','.join(m for m in ('llama_cpp', 'openai', 'fastapi', 'matplotlib', 'sklearn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
