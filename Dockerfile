# syntax=docker/dockerfile:1
#
# Container image for sluice.
#   docker build -t ghcr.io/sluice-pooler/sluice:latest .
#   docker run -e APP_PASSWORD=... -v "$PWD/pooler.toml:/etc/sluice/pooler.toml:ro" \
#       -p 6432:6432 -p 9930:9930 ghcr.io/sluice-pooler/sluice:latest
# In a container the config must listen on 0.0.0.0 ([pooler] listen and [http] listen),
# or neither clients nor the health check can reach it.

# ---- build -------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# The cache mounts keep the crate registry and the target directory between builds,
# so a source change recompiles sluice only, not its dependencies.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/sluice /out/sluice

# ---- runtime -----------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 sluice \
 && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin sluice \
 && mkdir -p /etc/sluice
COPY --from=builder /out/sluice /usr/local/bin/sluice
COPY pooler.toml /etc/sluice/pooler.toml.example

USER 10001:10001
ENV SLUICE_CONFIG=/etc/sluice/pooler.toml
# 6432: PostgreSQL clients; 9930: /health, /ready, /metrics
EXPOSE 6432 9930
# SIGTERM starts the graceful drain (/ready answers 503, open transactions finish
# within shutdown_timeout, then exit 0). Give `docker stop` a timeout longer than
# shutdown_timeout: docker stop -t 35.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9930/health"]

ENTRYPOINT ["sluice"]
CMD ["--config", "/etc/sluice/pooler.toml"]
