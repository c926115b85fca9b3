# The CPU worker image: `corral worker` with llama-cpp-python built for any x86-64-v3 CPU
# (AVX2/FMA, 2013 and later; override LLAMA_CMAKE_ARGS for others).
#   docker build -f deploy/docker/worker.Dockerfile -t corral/corral-worker:0.1.0 .
# llama-cpp-python has no binary wheels on PyPI, so the build stage compiles it (about 15
# minutes on 2 cores) unless a llama_cpp_python-0.3.36-*.whl lies in deploy/docker/wheels/.
# Build args: BASE_IMAGE (any Debian 12 based image), LLAMA_CMAKE_ARGS, CORRAL_PIP_OFFLINE=1.
ARG BASE_IMAGE=debian:12.11-slim

FROM ${BASE_IMAGE} AS build
ARG CORRAL_PIP_OFFLINE=
ARG LLAMA_CPP_VERSION=0.3.36
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libgomp1 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
RUN python3 -m venv /opt/corral
COPY deploy/docker/wheels/ /wheels/
# The compiler is installed only when there is no wheel to reuse.
RUN if ! ls /wheels/llama_cpp_python-${LLAMA_CPP_VERSION}-*.whl >/dev/null 2>&1; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake g++ make python3-dev git \
      && CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" /opt/corral/bin/pip wheel --no-cache-dir --no-deps -w /wheels \
           "llama-cpp-python==${LLAMA_CPP_VERSION}"; \
    fi
COPY pyproject.toml README.md /src/
COPY services /src/services
RUN /opt/corral/bin/pip install --no-cache-dir ${CORRAL_PIP_OFFLINE:+--no-index} --find-links /wheels "/src[worker]" \
 && /opt/corral/bin/python -c "import llama_cpp, corral.worker.app" \
 && /opt/corral/bin/pip uninstall -q -y pip setuptools  # not needed at run time

FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates libgomp1 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 10001 corral \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/corral --create-home --shell /usr/sbin/nologin corral \
 && mkdir -p /var/lib/corral/models && chown 10001:10001 /var/lib/corral/models
COPY --from=build /opt/corral /opt/corral
COPY deploy/docker/healthcheck.py /opt/corral/healthcheck.py
# OLLAMA_MODELS is the blob cache (a volume, shareable by every worker replica: file locks);
# the directory exists here, owned by the service user, so a new named volume inherits that.
ENV PATH=/opt/corral/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OLLAMA_HOST=0.0.0.0:11434 \
    OLLAMA_MODELS=/var/lib/corral/models
USER 10001:10001
WORKDIR /home/corral
VOLUME ["/var/lib/corral/models"]
EXPOSE 11434
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "/opt/corral/healthcheck.py", "/api/version"]
ENTRYPOINT ["corral"]
CMD ["worker"]
