"""Backends by name: the ``surelabel.backends`` entry-point group, and backend specs.

A backend is found by name in the entry-point group ``surelabel.backends``; surelabel's own
backends (``fake``, ``llamacpp``, ``openai``, ``transformers``) are registered there too, in
its ``pyproject.toml``, exactly as a third-party package would register one::

    [project.entry-points."surelabel.backends"]
    mybackend = "mypackage.backend:MyBackend"

The entry point names a class (or any callable) taking the backend's options as keyword
arguments. :func:`register` adds one at run time (tests, notebooks); such a name is known
only in the process that registered it.

A :class:`BackendSpec` is a small frozen value, a name and plain options, that builds the
backend when asked (:meth:`BackendSpec.build`). Anything that holds a spec instead of a
loaded model pickles, and is rebuilt in the worker process (joblib, Spark, Ray).
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from surelabel.errors import UserError

if TYPE_CHECKING:
    from surelabel.backends.base import Backend

GROUP = "surelabel.backends"
_runtime: dict[str, Callable[..., Backend]] = {}
_lock = threading.Lock()


def _plain(value: Any, where: str) -> Any:
    """``value`` if it is plain JSON-like data (so a spec can be written down and pickled)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: option keys must be strings, got {k!r}")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"{where}: {type(value).__name__} is not plain data (str, number, list, "
                    "mapping); a spec must be writable as JSON")


@dataclass(frozen=True)
class BackendSpec:
    """A backend's name and options; :meth:`build` makes the backend.

    Options are plain data (strings, numbers, booleans, lists, mappings; paths become
    strings); ``None`` values are dropped so the backend's own defaults apply.

    >>> BackendSpec("llamacpp", {"n_threads": 1})
    BackendSpec('llamacpp', {'n_threads': 1})
    >>> BackendSpec.parse("llamacpp:n_threads=1,model=/models/x.gguf").options["model"]
    '/models/x.gguf'
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("a backend spec needs a backend name")
        if not isinstance(self.options, Mapping):
            raise TypeError("backend options must be a mapping")
        clean = {k: _plain(v, k) for k, v in self.options.items() if v is not None}
        object.__setattr__(self, "options", clean)

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(self.options, sort_keys=True)))

    def __repr__(self) -> str:
        return f"BackendSpec({self.name!r}, {dict(self.options)!r})"

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}:{json.dumps(dict(self.options), sort_keys=True)}"

    def with_options(self, **options: Any) -> BackendSpec:
        """The same backend with some options replaced (``None`` removes one)."""
        merged = {**self.options, **options}
        return BackendSpec(self.name, {k: v for k, v in merged.items() if v is not None})

    def build(self) -> Backend:
        """Make the backend (this loads the model or opens the client)."""
        return build_backend(self)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackendSpec:
        if not isinstance(data, Mapping) or "name" not in data:
            raise UserError("backend spec: expected {\"name\": ..., \"options\": {...}}")
        return cls(str(data["name"]), dict(data.get("options") or {}))

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        """Read ``NAME``, ``NAME:key=value,key=value`` or ``NAME:{json options}``.

        A value is read as JSON when it is valid JSON (numbers, ``true``, lists), else as
        a string.
        """
        name, sep, rest = text.strip().partition(":")
        if not name:
            raise UserError(f"backend spec {text!r}: no backend name")
        if not sep or not rest.strip():
            return cls(name)
        rest = rest.strip()
        if rest.startswith("{"):
            try:
                options = json.loads(rest)
            except json.JSONDecodeError as exc:
                raise UserError(f"backend spec {text!r}: options are not valid JSON "
                                f"({exc.msg})") from None
            if not isinstance(options, dict):
                raise UserError(f"backend spec {text!r}: options must be a JSON object")
            return cls(name, options)
        options = {}
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise UserError(f"backend spec {text!r}: expected key=value, got {part!r}")
            options[key.strip()] = parse_value(value.strip())
        return cls(name, options)


def parse_value(value: str) -> Any:
    """A command-line option value: JSON if it parses as JSON, else the string itself."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def register(name: str, factory: Callable[..., Backend]) -> None:
    """Add a backend factory under ``name`` in this process (overrides an entry point)."""
    with _lock:
        _runtime[name] = factory


def unregister(name: str) -> None:
    with _lock:
        _runtime.pop(name, None)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}


def available_backends() -> list[str]:
    """Every backend name: entry points and run-time registrations, sorted."""
    with _lock:
        names = set(_runtime)
    return sorted(names | set(_entry_points()))


def backend_factory(name: str) -> Callable[..., Backend]:
    """The class (or callable) registered as ``name``."""
    with _lock:
        if name in _runtime:
            return _runtime[name]
    ep = _entry_points().get(name)
    if ep is None:
        raise UserError(
            f"unknown backend {name!r}; expected one of {', '.join(available_backends())}"
        )
    try:
        factory: Callable[..., Backend] = ep.load()
    except ImportError as exc:
        raise UserError(f"backend {name!r} cannot be loaded: {exc} (is its extra "
                        f"installed? pip install 'surelabel[{name}]')") from exc
    return factory


def build_backend(spec: BackendSpec | str, **options: Any) -> Backend:
    """Build a backend from a spec, a spec string or a name plus options."""
    if isinstance(spec, str):
        spec = BackendSpec.parse(spec)
    if options:
        spec = spec.with_options(**options)
    factory = backend_factory(spec.name)
    try:
        return factory(**spec.options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc) or "positional argument" in str(exc):
            raise UserError(f"backend {spec.name!r}: {exc}") from exc
        raise


def as_spec(backend: Any) -> BackendSpec | None:
    """The spec of a spec, a spec string, or a built backend (``None`` when it has none)."""
    if isinstance(backend, BackendSpec):
        return backend
    if isinstance(backend, str):
        return BackendSpec.parse(backend)
    spec = backend.spec
    return spec if isinstance(spec, BackendSpec) else None
