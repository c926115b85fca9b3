#!/bin/sh
# Lays out a CUDA toolkit at PREFIX from NVIDIA's PyPI wheels, the way nvcc and CMake's
# FindCUDAToolkit expect one (bin/, include/, lib/ = lib64/, targets/x86_64-linux/), so the CUDA
# worker image builds on a plain Debian base with no Docker Hub or NGC image.
#   cuda-toolkit.sh PREFIX PIP [PIP_OPTION...] WHEEL_SPEC...   (e.g. /usr/local/cuda /opt/corral/bin/pip --find-links /wheels nvidia-cuda-nvcc==13.0.88 ...)
# PIP installs the wheels (from wherever it is configured to look: an index or --find-links).
# CUDA 13's wheels all unpack into nvidia/cu13/, one tree; CUDA 12's nvcc wheel has no nvcc.
#
# No GPU is needed to compile, but linking ggml-cuda needs libcuda.so, which only the NVIDIA
# driver ships. The toolkit's own stub is not in any wheel, so one is made here from cuda.h:
# every driver function the headers can reference, each returning CUDA_ERROR_NO_DEVICE. It
# lives in lib/stubs/ (which CMake searches for the driver) and never reaches the runtime image:
# there the real libcuda.so.1 comes from the host's driver through the NVIDIA Container Toolkit.
set -eu
prefix=$1
pip=$2
shift 2
unpacked=$(mktemp -d)
"$pip" install --quiet --no-deps --target "$unpacked" "$@"
mkdir -p "$(dirname "$prefix")"
mv "$unpacked/nvidia/cu13" "$prefix"
rm -rf "$unpacked"
cd "$prefix"
ln -s lib lib64
mkdir -p targets/x86_64-linux lib/stubs
ln -s ../../include targets/x86_64-linux/include
ln -s ../../lib targets/x86_64-linux/lib
for lib in lib/lib*.so.*; do  # the unversioned names the linker looks for
    [ -e "${lib%.so.*}.so" ] || ln -s "$(basename "$lib")" "${lib%.so.*}.so"
done

# The driver stub. After the preprocessor, cuda.h's declarations carry the versioned names
# (cuMemAlloc -> cuMemAlloc_v2) that compiled code references.
printf '#include <cuda.h>\n' | gcc -E -P -I include -x c - \
    | grep -o 'CUresult *cu[A-Za-z0-9_]* *(' | sed 's/CUresult *\(cu[A-Za-z0-9_]*\) *(/\1/' | sort -u \
    | awk '{ printf "int %s(void) { return 100; }\n", $1 }' >lib/stubs/libcuda.c
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o lib/stubs/libcuda.so lib/stubs/libcuda.c
ln -s libcuda.so lib/stubs/libcuda.so.1
echo "CUDA toolkit at $prefix: $(bin/nvcc --version | tail -n 2 | head -n 1);" \
     "driver stub with $(grep -c . lib/stubs/libcuda.c) functions"
