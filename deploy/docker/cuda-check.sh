#!/bin/sh
# The CUDA image's toolchain, checked in a minute or two on a machine with no GPU (the `check`
# stage of worker-cuda.Dockerfile, which CI builds):
#   cuda-check.sh LLAMA_CPP_PYTHON_SDIST ARCH        (e.g. .../llama_cpp_python-0.3.36.tar.gz 90-real)
# 1. nvcc compiles a kernel for ARCH and links it against cudart, cuBLAS and the driver library,
#    and its machine code is for that architecture (the cubin records the -arch it was built
#    for; cuobjdump is not in the wheels).
# 2. llama.cpp's CUDA backend, from the sdist the image compiles, configures against the toolkit
#    (every CUDA library found) and two of its sources compile for ARCH: a small one and a
#    matrix-multiplication template instance, the kind that makes up most of the full build.
set -eu
sdist=$1
arch=$2
work=$(mktemp -d)
cd "$work"

cat >probe.cu <<'EOF'
#include <cstdio>
#include <cuda.h>
#include <cublas_v2.h>
__global__ void scale(float *x, float k) { x[threadIdx.x] *= k; }
int main() {
    cublasHandle_t handle;  // referenced so that cuBLAS is linked, not called: no GPU here
    int version = 0;
    cuDriverGetVersion(&version);
    printf("%p %d\n", (void *)&cublasCreate_v2, version);
    scale<<<1, 32>>>(nullptr, 2.0f);
    (void)handle;
    return 0;
}
EOF
nvcc -arch="sm_${arch%-real}" -o probe probe.cu -lcublas -lcuda -L/usr/local/cuda/lib64/stubs
for lib in libcublas.so libcuda.so.1; do  # cudart is linked statically, nvcc's default
    ldd probe | grep -q "$lib" || { echo "probe does not link $lib:"; ldd probe; exit 1; }
done
nvcc -arch="sm_${arch%-real}" --cubin -o probe.cubin probe.cu
strings probe.cubin | grep -q -- "-arch sm_${arch%-real} " || { echo "probe.cubin is not for sm_${arch%-real}"; exit 1; }

tar xzf "$sdist"
src=$(echo llama_cpp_python-*/vendor/llama.cpp)
cmake -S "$src" -B build -DGGML_CUDA=on -DGGML_NATIVE=OFF "-DCMAKE_CUDA_ARCHITECTURES=$arch" \
      -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF >cmake.log 2>&1 \
    || { tail -40 cmake.log; exit 1; }
for found in "CUDA Toolkit found" "Including CUDA backend"; do
    grep -q "$found" cmake.log || { echo "cmake did not say '$found':"; cat cmake.log; exit 1; }
done
for name in cudart cublas cublasLt cuda_driver; do
    grep -q "^CUDA_${name}_LIBRARY:FILEPATH=/" build/CMakeCache.txt \
        || { echo "CMake found no CUDA::$name"; grep "^CUDA_.*_LIBRARY" build/CMakeCache.txt; exit 1; }
done
make -C build/ggml/src/ggml-cuda arange.cu.o template-instances/mmq-instance-q4_0.cu.o >make.log 2>&1 \
    || { tail -40 make.log; exit 1; }
echo "CUDA toolchain OK: $(nvcc --version | tail -n 2 | head -n 1); probe and ggml-cuda objects built for $arch"
rm -rf "$work"
