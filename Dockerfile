# syntax=docker/dockerfile:1
# Build stage: regenerate the gRPC code from protos/ and build the wheel.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools==1.85.1"
COPY pyproject.toml README.md ./
COPY protos protos
COPY scripts scripts
COPY service service
COPY storage storage
RUN python -m scripts.gen_protos && python -m scripts.gen_protos --check
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Runtime stage: the locked dependencies and the service only, as a non-root user.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/pointsd pointsd
COPY requirements/runtime.lock /tmp/runtime.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.lock && rm /tmp/runtime.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
USER pointsd
WORKDIR /var/lib/pointsd
# Set REDIS_URL and DATABASE_URL for real servers; unset, the container runs
# embedded ones in POINTS_DATA_DIR (mount a volume there to keep the data).
ENV POINTS_LISTEN=0.0.0.0:50051 \
    POINTS_DATA_DIR=/var/lib/pointsd/data \
    POINTS_METRICS_PORT=9100
EXPOSE 50051 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s \
  CMD ["pointsd", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["pointsd"]
CMD ["serve"]
