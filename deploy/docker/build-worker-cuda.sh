#!/usr/bin/env bash
# Builds the CUDA worker image on any machine with a Docker engine, no GPU needed:
#   deploy/docker/build-worker-cuda.sh [--target check|final] [--report FILE]
# Environment (all optional):
#   TAG                  image tag (default ghcr.io/corral-llm/corral-worker-cuda:$CORRAL_VERSION, 0.1.0)
#   BASE_IMAGE           Debian 12 base (default debian:12.11-slim; the tests use a debootstrap one)
#   CUDA_ARCHITECTURES   CMake's list (default: the Dockerfile's, Turing to Blackwell)
#   OFFLINE=1            download every Python package here first and build with no index
#                        (for engines whose containers cannot reach PyPI; what the tests do)
#   CORRAL_CACHE         where OFFLINE keeps its downloads (default ~/.cache/corral)
#   NO_CACHE=1           build every layer anew (what a build time in a report should be)
# --target check builds only the toolchain check stage (a minute or two; what CI runs).
# --report FILE writes the build's time, the image's size and what its llama.cpp was built
# with (llama_print_system_info, llama_supports_gpu_offload, the CUDA libraries it links):
# with no GPU, the image runs its check against the toolkit's driver stub.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
target=final
report=
while (($#)); do
    case $1 in
        --target) target=$2; shift 2 ;;
        --report) report=$2; shift 2 ;;
        *) echo "usage: $0 [--target check|final] [--report FILE]" >&2; exit 2 ;;
    esac
done
tag=${TAG:-ghcr.io/corral-llm/corral-worker-cuda:${CORRAL_VERSION:-0.1.0}}
cache=${CORRAL_CACHE:-$HOME/.cache/corral}
llama_version=0.3.36
dockerfile=deploy/docker/worker-cuda.Dockerfile
# The Dockerfile's CUDA wheels, read from it so the two cannot disagree.
cuda_wheels=$(sed -n 's/^ARG CUDA_WHEELS="\(.*\)"$/\1/p' "$repo/$dockerfile")

args=()
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -n "${CUDA_ARCHITECTURES:-}" ] && args+=(--build-arg "CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES")
[ "$target" = check ] && args+=(--target check) && tag="$tag-check"
[ "${NO_CACHE:-}" = 1 ] && args+=(--no-cache)

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# The context .dockerignore would give, copied so that wheels never land in the checkout.
cp "$repo/pyproject.toml" "$repo/README.md" "$repo/.dockerignore" "$ctx/"
cp -r "$repo/services" "$ctx/services"
mkdir -p "$ctx/deploy"
cp -r "$repo/deploy/docker" "$ctx/deploy/docker"
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +

if [ "${OFFLINE:-}" = 1 ]; then
    house="$cache/cuda-wheels/$(cat "$repo/pyproject.toml" "$repo/$dockerfile" "$0" | sha256sum | cut -c1-16)"
    if [ ! -e "$house/.complete" ]; then
        rm -rf "$cache/cuda-wheels" && mkdir -p "$house"  # one set at a time: it is 0.5 GB
        pip=("${PYTHON:-python3}" -m pip)
        # shellcheck disable=SC2086  # the list is words
        "${pip[@]}" download -q --no-deps -d "$house" $cuda_wheels
        "${pip[@]}" download -q --no-deps --no-binary :all: -d "$house" "llama-cpp-python==$llama_version"
        # The build backends (llama-cpp-python's, Corral's) and the worker's dependencies (Debian
        # 12's Python is 3.11.2, below which async-timeout is needed).
        "${pip[@]}" download -q -d "$house" "scikit-build-core[pyproject]>=0.9.2" "async-timeout>=4.0.3" \
            "setuptools>=77" wheel  # Corral's own build backend
        "${pip[@]}" download -q -d "$house" "$repo[worker]"
        rm -f "$house"/corral-* "$house"/llama_cpp_python-*.whl
        touch "$house/.complete"
    fi
    for wheel in "$house"/*; do ln "$wheel" "$ctx/deploy/docker/wheels/cuda/" 2>/dev/null || cp "$wheel" "$ctx/deploy/docker/wheels/cuda/"; done
    args+=(--build-arg CORRAL_PIP_OFFLINE=1)
fi

started=$(date +%s)
docker build -f "$ctx/$dockerfile" -t "$tag" "${args[@]}" "$ctx"
seconds=$(( $(date +%s) - started ))
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "built $tag in $seconds s: $((size / 1000000)) MB"
[ -n "$report" ] || exit 0
[ "$target" = final ] || { echo "--report needs the final image" >&2; exit 2; }

# What llama.cpp in the image was built with. No GPU here: libcuda.so.1 is the toolkit's stub
# (from the build's toolkit stage), whose every call answers "no device".
toolkit_args=()
for arg in "${args[@]}"; do [ "$arg" = --no-cache ] || toolkit_args+=("$arg"); done
docker build -q -f "$ctx/$dockerfile" --target toolkit -t "$tag-toolkit" "${toolkit_args[@]}" "$ctx" >/dev/null
stub=$(mktemp -d)
cid=$(docker create "$tag-toolkit" true)  # never started: only copied from
docker cp -L "$cid:/usr/local/cuda/lib64/stubs/libcuda.so" "$stub/libcuda.so.1" >/dev/null
docker rm "$cid" >/dev/null
chmod -R a+rX "$stub"
facts=$(docker run --rm -i -v "$stub:/opt/stub:ro" -e LD_LIBRARY_PATH=/opt/stub --entrypoint python3 "$tag" - <<'PY'
import glob, os, subprocess
import llama_cpp
llama_cpp.llama_backend_init()
lib = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
print("llama_supports_gpu_offload():", llama_cpp.llama_supports_gpu_offload())
print("llama_print_system_info():", llama_cpp.llama_print_system_info().decode().strip())
for so in sorted(glob.glob(os.path.join(lib, "libggml-cuda.so*"))):
    linked = subprocess.run(["ldd", so], capture_output=True, text=True).stdout
    print(f"ldd {os.path.basename(so)}:")
    print("".join(f"    {line.strip()}\n" for line in linked.splitlines() if "cu" in line or "nvidia" in line), end="")
PY
)
rm -rf "$stub"
layers=$(docker history --format '{{.Size}}\t{{.CreatedBy}}' "$tag" | awk -F'\t' '$1 != "0B" {print "    " $1 "\t" substr($2, 1, 110)}')
cat >"$report" <<EOF
# The CUDA worker image, built on a CPU-only machine

- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); code \`$(git -C "$repo" rev-parse --short HEAD)\`$(git -C "$repo" diff --quiet HEAD -- deploy services || echo ' (with uncommitted changes)')
- Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, no GPU; $(docker version -f 'Docker {{.Server.Version}}')
- Command: \`$( [ -n "${BASE_IMAGE:-}" ] && printf 'BASE_IMAGE=%s ' "$BASE_IMAGE")$( [ -n "${CUDA_ARCHITECTURES:-}" ] && printf "CUDA_ARCHITECTURES='%s' " "$CUDA_ARCHITECTURES")$( [ "${OFFLINE:-}" = 1 ] && printf 'OFFLINE=1 ')deploy/docker/build-worker-cuda.sh --report ...\`
- CUDA: $cuda_wheels (PyPI wheels)
- CUDA architectures: ${CUDA_ARCHITECTURES:-$(sed -n 's/^ARG CUDA_ARCHITECTURES="\(.*\)"$/\1/p' "$repo/$dockerfile")}

| | |
|---|---|
| build time ($([ "${NO_CACHE:-}" = 1 ] && echo 'every layer built' || echo 'cached layers reused')) | **$seconds s** ($(awk "BEGIN {printf \"%.1f\", $seconds / 60}") min) |
| image size | **$((size / 1000000)) MB** |

## What the image's llama.cpp was built with

\`\`\`
$facts
\`\`\`

## Layers

\`\`\`
$layers
\`\`\`
EOF
echo "report: $report"
