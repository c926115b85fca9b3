# The CUDA worker image: `corral worker` with llama-cpp-python built with GGML_CUDA=on.
#   deploy/docker/build-worker-cuda.sh            (or: docker build -f deploy/docker/worker-cuda.Dockerfile .)
#
# By default it builds on the same Debian 12 base as the CPU images, with CUDA 13.0 from
# NVIDIA's PyPI wheels (nvidia-cuda-nvcc, -crt, nvvm, -runtime, -cccl, cublas): no Docker Hub,
# no NGC, and a CPU-only build machine (nothing here needs a GPU). Why the wheels: Debian 12's
# own CUDA (non-free) is 11.8, which needs gcc 11 and predates much of llama.cpp's CUDA code;
# Debian 13's 12.4 would mean another base; and CUDA 12's wheels carry no nvcc. CUDA 13 needs
# an NVIDIA driver >= 580 on the host and a GPU of compute capability 7.5 (Turing) or newer.
#
# Sites that can pull NVIDIA's images (older drivers, Volta) build from them instead:
#   --build-arg CUDA_FROM=image --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#   --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 --build-arg CUDA_ARCHITECTURES="70-real;..."
#
# The compile (llama.cpp's CPU code plus ggml-cuda for every architecture listed) takes long:
# see loadtest/reports/cuda-image.md. A llama_cpp_python-0.3.36-*.whl built with CUDA and
# dropped in deploy/docker/wheels/cuda/ skips it. The runtime stage carries the venv and only
# the CUDA libraries llama.cpp links (cudart, cuBLAS); libcuda.so.1 comes from the host's driver.
ARG BASE_IMAGE=debian:12.11-slim
ARG BUILD_IMAGE=${BASE_IMAGE}
ARG RUNTIME_IMAGE=${BASE_IMAGE}

FROM ${BUILD_IMAGE} AS toolkit
# pypi: assemble CUDA from the wheels below; image: BUILD_IMAGE has it in /usr/local/cuda.
ARG CUDA_FROM=pypi
ARG CORRAL_PIP_OFFLINE=
ARG CUDA_WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev ca-certificates cmake ninja-build g++ make git libgomp1 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
RUN python3 -m venv /opt/corral
COPY deploy/docker/wheels/cuda/ /wheels/
COPY deploy/docker/cuda-toolkit.sh /usr/local/bin/cuda-toolkit.sh
RUN if [ "$CUDA_FROM" = pypi ]; then \
      sh /usr/local/bin/cuda-toolkit.sh /usr/local/cuda /opt/corral/bin/pip \
        ${CORRAL_PIP_OFFLINE:+--no-index} --find-links /wheels ${CUDA_WHEELS}; \
    fi \
 && /usr/local/cuda/bin/nvcc --version
ENV PATH=/usr/local/cuda/bin:$PATH \
    CUDAToolkit_ROOT=/usr/local/cuda

# What CI builds (tests/e2e/test_cuda_image.py): the toolchain compiling and linking for one
# architecture, and llama.cpp's CUDA backend configuring against it, in a minute or two.
FROM toolkit AS check
COPY deploy/docker/cuda-check.sh /usr/local/bin/cuda-check.sh
ARG CORRAL_PIP_OFFLINE=
ARG LLAMA_CPP_VERSION=0.3.36
RUN /opt/corral/bin/pip download --quiet --no-deps --no-binary llama-cpp-python ${CORRAL_PIP_OFFLINE:+--no-index} --find-links /wheels \
      -d /tmp/sdist "llama-cpp-python==${LLAMA_CPP_VERSION}" \
 && sh /usr/local/bin/cuda-check.sh /tmp/sdist/llama_cpp_python-${LLAMA_CPP_VERSION}.tar.gz 90-real

FROM toolkit AS build
ARG CUDA_FROM=pypi
ARG CORRAL_PIP_OFFLINE=
ARG LLAMA_CPP_VERSION=0.3.36
# Turing T4 75, Ampere A100 80 / A10 86, Ada L4 89, Hopper H100 90 (+ its PTX for newer GPUs),
# consumer Blackwell 120a. Each one adds most of the compile again.
ARG CUDA_ARCHITECTURES="75-real;80-real;86-real;89-real;90;120a-real"
ARG CUDA_RUNTIME_WHEELS="nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14"
# Executables (llama.cpp's tools, if any are built) link with the driver stub's symbols left open.
RUN if ! ls /wheels/llama_cpp_python-${LLAMA_CPP_VERSION}-*.whl >/dev/null 2>&1; then \
      LIBRARY_PATH=/usr/local/cuda/lib64/stubs \
      CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES} -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined" \
      CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      /opt/corral/bin/pip wheel --no-cache-dir --no-deps ${CORRAL_PIP_OFFLINE:+--no-index} --find-links /wheels \
        -w /wheels "llama-cpp-python==${LLAMA_CPP_VERSION}"; \
    fi
COPY pyproject.toml README.md /src/
COPY services /src/services
# With CUDA from the wheels, the runtime libraries go into the venv too (headers and static
# libraries dropped); cuda.conf tells the loader where, for the final stage's ldconfig.
RUN /opt/corral/bin/pip install --no-cache-dir ${CORRAL_PIP_OFFLINE:+--no-index} --find-links /wheels "/src[worker]" \
 && if [ "$CUDA_FROM" = pypi ]; then \
      /opt/corral/bin/pip install --no-cache-dir --no-deps ${CORRAL_PIP_OFFLINE:+--no-index} --find-links /wheels ${CUDA_RUNTIME_WHEELS} \
      && cu=$(echo /opt/corral/lib/python3*/site-packages/nvidia/cu13) \
      && rm -rf "$cu/include" "$cu"/lib/*.a "$cu"/lib/libnvblas.so* \
      && echo "$cu/lib" >/opt/corral/cuda.conf; \
    else : >/opt/corral/cuda.conf; fi \
 && /opt/corral/bin/pip uninstall -q -y pip setuptools  # not needed at run time

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates libgomp1 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 10001 corral \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/corral --create-home --shell /usr/sbin/nologin corral \
 && mkdir -p /var/lib/corral/models && chown 10001:10001 /var/lib/corral/models
COPY --from=build /opt/corral /opt/corral
COPY deploy/docker/healthcheck.py /opt/corral/healthcheck.py
RUN cp /opt/corral/cuda.conf /etc/ld.so.conf.d/corral-cuda.conf && ldconfig
ENV PATH=/opt/corral/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OLLAMA_HOST=0.0.0.0:11434 \
    OLLAMA_MODELS=/var/lib/corral/models \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/corral
VOLUME ["/var/lib/corral/models"]
EXPOSE 11434
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/corral/healthcheck.py", "/api/version"]
ENTRYPOINT ["corral"]
CMD ["worker"]
