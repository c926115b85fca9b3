# The CUDA worker image: `corral worker` with llama-cpp-python built with GGML_CUDA=on.
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t corral/corral-worker-cuda:0.1.0 .
# A CUDA -devel stage compiles llama.cpp for the common GPU architectures (Volta V100 70,
# Turing T4 75, Ampere A100 80 / A10 86, Ada L4 89, Hopper H100 90); the final stage is the
# matching -runtime image. Runs on hosts with the NVIDIA driver and the NVIDIA Container
# Toolkit (compose: `--profile gpu`). Ubuntu 24.04 bases: Python 3.12 from apt.
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

FROM ${CUDA_DEVEL_IMAGE} AS build
ARG CORRAL_PIP_OFFLINE=
ARG LLAMA_CPP_VERSION=0.3.36
ARG CUDA_ARCHITECTURES="70;75;80;86;89;90"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev ca-certificates cmake g++ make git \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
RUN python3 -m venv /opt/corral
COPY deploy/docker/wheels/cuda/ /wheels/
# libcuda.so comes from the host's driver at run time; the link uses the toolkit's stub.
RUN if ! ls /wheels/llama_cpp_python-${LLAMA_CPP_VERSION}-*.whl >/dev/null 2>&1; then \
      ln -sf /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/cuda/lib64/stubs/libcuda.so.1 \
      && LD_LIBRARY_PATH=/usr/local/cuda/lib64/stubs:${LD_LIBRARY_PATH} \
         CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES} -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined" \
         CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
         /opt/corral/bin/pip wheel --no-cache-dir --no-deps -w /wheels "llama-cpp-python==${LLAMA_CPP_VERSION}"; \
    fi
COPY pyproject.toml README.md /src/
COPY services /src/services
RUN /opt/corral/bin/pip install --no-cache-dir ${CORRAL_PIP_OFFLINE:+--no-index} --find-links /wheels "/src[worker]" \
 && /opt/corral/bin/pip uninstall -q -y pip setuptools  # not needed at run time

FROM ${CUDA_RUNTIME_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates libgomp1 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 10001 corral \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/corral --create-home --shell /usr/sbin/nologin corral \
 && mkdir -p /var/lib/corral/models && chown 10001:10001 /var/lib/corral/models
COPY --from=build /opt/corral /opt/corral
COPY deploy/docker/healthcheck.py /opt/corral/healthcheck.py
ENV PATH=/opt/corral/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OLLAMA_HOST=0.0.0.0:11434 \
    OLLAMA_MODELS=/var/lib/corral/models \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/corral
VOLUME ["/var/lib/corral/models"]
EXPOSE 11434
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/corral/healthcheck.py", "/api/version"]
ENTRYPOINT ["corral"]
CMD ["worker"]
