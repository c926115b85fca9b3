#!/usr/bin/env bash
# Build llama.cpp with CUDA for bench_engine's GPU run: llama-server plus the shared libraries
# the worker loads through llama-cpp-python's LLAMA_CPP_LIB_PATH, from the llama.cpp sources
# vendored in the llama-cpp-python sdist the worker runs (so both sides are the same llama.cpp).
#
#   loadtest/cuda_build.sh SRC BUILD [CUDA_ARCHITECTURES]     # e.g. .../vendor/llama.cpp /tmp/b 90
#
# Needs nvcc, cmake and ninja. Writes BUILD/build-facts.json, which bench_engine.py reports when
# given --llama-server BUILD/bin/llama-server. Then, for example:
#   LLAMA_CPP_LIB_PATH=BUILD/bin .venv/bin/python loadtest/bench_engine.py \
#       --llama-server BUILD/bin/llama-server --gpu-layers 999 --out loadtest/reports/engine-cuda.md
set -euo pipefail
src=${1:?usage: cuda_build.sh SRC BUILD [CUDA_ARCHITECTURES]}
build=${2:?usage: cuda_build.sh SRC BUILD [CUDA_ARCHITECTURES]}
arch=${3:-90}
flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$arch"
       -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF
       -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF)
start=$(date +%s)
cmake -S "$src" -B "$build" -G Ninja "${flags[@]}" >"$build.cmake.log" 2>&1 || { tail -30 "$build.cmake.log"; exit 1; }
cmake --build "$build" --target llama mtmd llama-server -j "$(nproc)"  # mtmd: the worker imports it (vision)
seconds=$(( $(date +%s) - start ))
nvcc_version=$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
python3 - "$build/build-facts.json" "$seconds" "$nvcc_version" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" "${flags[@]}" <<'PY'
import json, sys
path, seconds, nvcc, nproc, load, *flags = sys.argv[1:]
json.dump({"version": "vendored (cuda_build.sh)", "build_s": float(seconds), "flags": flags,
           "load_during_build": f"{load}, {nproc} CPUs, nvcc {nvcc}"}, open(path, "w"), indent=2)
PY
echo "built $build/bin/llama-server and the shared libraries in $seconds s"
