# syntax=docker/dockerfile:1
# The base of both stages, pinned by digest so a rebuild gets the same
# Python and Debian (python:3.11-slim, Python 3.11.15 on Debian trixie, the
# multi-platform index of 2026-08-05; docs/deploying.md says where the digest
# comes from and how to refresh it).
FROM python:3.11-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff AS base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1

# Build stage: check that the committed gRPC code matches protos/ and build
# the wheel, its hot path compiled (POINTS_COMPILE=1, setup.py).
# tests/test_containers.py replays these steps on the same files.
FROM base AS build
WORKDIR /src
# A C compiler for the hot path mypyc compiles (setup.py): in this stage
# only; the runtime stage gets the compiled wheel and no compiler. The
# Debian release is the base image's, pinned by its digest.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# mypyc type-checks what it compiles, against the packages the modules
# import: the runtime lock (hash-checked), then the dev lock's versions of
# the tools and stubs (protoc output differs by grpcio-tools version; the
# compiled modules are the ones mypy checked).
COPY requirements/runtime.lock /tmp/runtime.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.lock \
    && pip install --no-cache-dir "grpcio-tools==1.85.1" "mypy==2.4.1" "setuptools==84.2.1" \
        "types-protobuf==7.35.1.20260906" "types-grpcio==1.85.0.20261028" \
        "types-PyYAML==6.0.12.20261122"
COPY pyproject.toml setup.py README.md ./
COPY protos protos
COPY scripts/__init__.py scripts/gen_protos.py scripts/
COPY service service
COPY storage storage
# gen_protos checks the client's copy of the generated code too.
COPY client/pointsd_client client/pointsd_client
# --check, not a regeneration: the image ships the code the tests ran with.
RUN python -m scripts.gen_protos --check \
    && POINTS_COMPILE=1 pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels .

# Runtime stage: the locked dependencies and the service only, as a non-root user.
FROM base AS runtime
RUN groupadd --system --gid 10001 pointsd \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /var/lib/pointsd pointsd
COPY requirements/runtime.lock /tmp/runtime.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.lock && rm /tmp/runtime.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
# Numeric, so a runtime that checks "runs as non-root" needs no /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/pointsd
# Set REDIS_URL and DATABASE_URL for real servers; unset, the container runs
# embedded ones in POINTS_DATA_DIR (mount a volume there to keep the data).
# The metrics listen on the host of POINTS_LISTEN, so all interfaces here.
ENV POINTS_LISTEN=0.0.0.0:50051 \
    POINTS_DATA_DIR=/var/lib/pointsd/data \
    POINTS_METRICS_PORT=9100
EXPOSE 50051 9100
# The gRPC health service of `pointsd serve`; the compose file gives the
# flusher (no gRPC port) a check of its own.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s \
  CMD ["pointsd", "health"]
ENTRYPOINT ["pointsd"]
CMD ["serve"]
