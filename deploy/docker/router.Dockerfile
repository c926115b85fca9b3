# The router image: `corral router` (gunicorn + uvicorn), no llama.cpp.
#   docker build -f deploy/docker/router.Dockerfile -t corral/corral-router:0.1.0 .
# Build args: BASE_IMAGE (any Debian 12 based image; the tests pass a local debootstrap one),
# CORRAL_PIP_OFFLINE=1 to install only from deploy/docker/wheels/ (no index).
ARG BASE_IMAGE=debian:12.11-slim

FROM ${BASE_IMAGE} AS build
ARG CORRAL_PIP_OFFLINE=
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
RUN python3 -m venv /opt/corral
COPY deploy/docker/wheels/ /wheels/
COPY pyproject.toml README.md /src/
COPY services /src/services
# --find-links: a wheel dropped in deploy/docker/wheels/ wins over the index (offline builds).
RUN /opt/corral/bin/pip install --no-cache-dir ${CORRAL_PIP_OFFLINE:+--no-index} --find-links /wheels "/src[router]" \
 && /opt/corral/bin/corral --help >/dev/null \
 && /opt/corral/bin/pip uninstall -q -y pip setuptools  # not needed at run time

FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 10001 corral \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/corral --create-home --shell /usr/sbin/nologin corral
COPY --from=build /opt/corral /opt/corral
COPY deploy/docker/healthcheck.py /opt/corral/healthcheck.py
# PROMETHEUS_MULTIPROC_DIR is left unset on purpose: `corral router` then makes a fresh one
# under /tmp at every start, so a restarted container never sums a dead process's counters.
ENV PATH=/opt/corral/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OLLAMA_HOST=0.0.0.0:11434 \
    CORRAL_SPOOL_DIR=/tmp/corral-router
USER 10001:10001
WORKDIR /home/corral
EXPOSE 11434
# Ready = Redis answers (503 otherwise), so nginx only starts in front of working routers.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "/opt/corral/healthcheck.py", "/api/cluster/ready"]
ENTRYPOINT ["corral"]
CMD ["router"]
