#!/usr/bin/env bash
# Build llama-cpp-python from source as a portable wheel and keep it in a wheel folder.
#
# Why: PyPI ships llama-cpp-python only as source. A default (native) build targets every
# instruction set the build machine advertises; on machines that advertise AVX-512/AMX that
# build dies with "Illegal instruction". pip's wheel cache ignores CMAKE_ARGS, so a cached
# native wheel would be reused silently: we build with --no-cache-dir into a folder named
# after the flags, and reuse that folder on later installs.
set -euo pipefail

VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
CMAKE_FLAGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
PY="${PYTHON:-.venv/bin/python}"
key=$(printf '%s %s' "$VERSION" "$CMAKE_FLAGS" | sha256sum | cut -c1-12)
WHEEL_DIR="${SURELABEL_WHEEL_DIR:-$HOME/.cache/surelabel/wheels}/llama-$key"

if ls "$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "build-llama: reusing portable wheel in $WHEEL_DIR" >&2
else
  echo "build-llama: compiling llama-cpp-python $VERSION (portable: $CMAKE_FLAGS); this takes about 5 minutes on 2 cores" >&2
  mkdir -p "$WHEEL_DIR"
  tmp=$(mktemp -d)
  CMAKE_ARGS="$CMAKE_FLAGS" "$PY" -m pip wheel --no-cache-dir --no-deps \
    -w "$tmp" "llama-cpp-python==$VERSION" >&2
  mv "$tmp"/llama_cpp_python-*.whl "$WHEEL_DIR"/
  rm -rf "$tmp"
fi
echo "$WHEEL_DIR"
