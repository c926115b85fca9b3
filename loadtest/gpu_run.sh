#!/usr/bin/env bash
# The GPU measurements of the GPU issue, on a lent device machine, from what
# loadtest/gpu_prepare.sh packed into .gpu/ on the build machine. The device tool's calls, in
# order, within one lease (the machine must stay warm between them: idle_release_s is short):
#   run(carry=[".gpu/a"], command="loadtest/gpu_run.sh setup", timeout_s=480)
#   run(carry=[".gpu/b"], command="loadtest/gpu_run.sh check", timeout_s=60)
#   run(carry=[".gpu/c"], command="loadtest/gpu_run.sh bench", timeout_s=540)
# setup: unpacks Debian's redis/registry/nginx under .gpu/root, the carried wheels under
#        .gpu/pylib (for the image's own python3 and its packages) and builds llama.cpp with CUDA for
#        this GPU (loadtest/cuda_build.sh: llama-server and the libraries the worker loads).
# check: says what is there so far (a carry of .gpu/b only adds the model's first half).
# bench: joins the model, then bench_engine (worker vs llama-server at 1, 8, 32 and 64 streams)
#        and bench_router --split (the worker on the GPU, proxies on CPUs of their own); the
#        reports, with the card, driver and CUDA versions, land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
G=$PWD/.gpu
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
step=${1:?usage: gpu_run.sh setup|check|bench}
log() { printf '==> %s\n' "$*" >&2; }

setup() {
    log "Debian packages under $G/root"
    rm -rf "$G/root" && mkdir -p "$G/root"
    for deb in "$G"/a/debs/*.deb; do dpkg -x "$deb" "$G/root"; done
    ln -sf redis-check-rdb "$G/root/usr/bin/redis-server"  # one binary; the redis-server package only links it
    log "Python packages under $G/pylib (beside the image's python3 and its packages)"
    rm -rf "$G/pylib"
    python3 -m pip install -q --no-index --no-deps --target "$G/pylib" "$G"/a/wheels/*.whl
    log "llama.cpp with CUDA"
    rm -rf "$G/src" && mkdir -p "$G/src" && tar -C "$G/src" -xJf "$G/a/llama.cpp.tar.xz"
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d .)
    loadtest/cuda_build.sh "$G/src/llama.cpp" "$G/build" "${arch:-90}"
}

environment() {
    export PATH="$G/pylib/bin:$PATH" PYTHONPATH="$PWD/services:$G/pylib"
    export LD_LIBRARY_PATH="$G/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export CORRAL_BENCH_REDIS="$G/root/usr/bin/redis-server" CORRAL_BENCH_REGISTRY="$G/root/usr/bin/docker-registry"
    export CORRAL_BENCH_NGINX="$G/root/usr/sbin/nginx"
    export LLAMA_CPP_LIB_PATH="$G/build/bin" CORRAL_TEST_MODEL="$G/model.gguf"
}

check() {
    environment
    ls -la "$G" "$G/build/bin" 2>&1 | head -40
    python3 -c "import llama_cpp, fastapi, uvicorn, redis; print('llama_supports_gpu_offload:', llama_cpp.llama_supports_gpu_offload())"
    "$CORRAL_BENCH_REDIS" --version && "$CORRAL_BENCH_NGINX" -v && "$CORRAL_BENCH_REGISTRY" --version
}

bench() {
    environment
    cat "$G/b/model.part" "$G/c/model.part" >"$G/model.gguf"
    echo "$(cat "$G/c/model.sha256")  $G/model.gguf" | sha256sum -c --quiet
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
    nvcc --version | tail -n 2 >>"$OUT/gpu.txt"
    log "bench_engine: 1, 8, 32, 64 streams"
    timeout 240 python3 loadtest/bench_engine.py --llama-server "$G/build/bin/llama-server" --gpu-layers 999 \
        --levels 1,8,32,64 --repeats 3 --out "$OUT/engine-cuda.md" --json "$OUT/engine-cuda.json" || true
    log "bench_router: the worker on the GPU (CPUs 0-3), proxies, Redis and the client on the others"
    pin="0,1,2,3:$(seq -s, 4 $(($(nproc) - 1)))"
    timeout 270 python3 loadtest/bench_router.py --parts latency --split --rounds 2 --pin "$pin" \
        --out "$OUT/router-cuda.md" --json "$OUT/router-cuda.json" --max-seconds 250 || true
    ls -la "$OUT"
}

"$step"
