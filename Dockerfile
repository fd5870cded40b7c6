# syntax=docker/dockerfile:1
#
# Sluice container image.
#
#   docker build -t sluice .
#   docker run -d --name sluice -p 127.0.0.1:8080:8080 -v sluice-data:/data \
#       -e SLUICE_SECRET="$(openssl rand -hex 32)" --stop-timeout 40 sluice
#
# The image runs as uid 10001, stores files in the /data volume and reads
# /etc/sluice/config.toml (config/docker.toml); mount another file there to change it.

# ---------------------------------------------------------------------------- build
FROM rust:1-slim-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the crate downloads and build artefacts between builds; the binary
# is copied out of the target cache because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/sluice /usr/local/bin/sluice

# ---------------------------------------------------------------------------- runtime
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 sluice \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin sluice \
    && mkdir -p /data /etc/sluice \
    && chown 10001:10001 /data \
    && chmod 0700 /data
COPY --from=builder /usr/local/bin/sluice /usr/local/bin/sluice
COPY config/docker.toml /etc/sluice/config.toml
# Plain log lines (no ANSI colours) for `docker logs`.
ENV SLUICE_LOG=info NO_COLOR=1
VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001
# `sluice healthcheck` exits 0 when GET /health answers 200 (the image has no curl).
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/sluice", "healthcheck", "--addr", "127.0.0.1:8080"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--config", "/etc/sluice/config.toml"]
