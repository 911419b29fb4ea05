# syntax=docker/dockerfile:1
#
# llmgram container image.
#
#   docker build -t llmgram .
#   docker run -d --name llmgram --restart unless-stopped --stop-timeout 30 \
#     -e TELEGRAM_BOT_TOKEN -e LLM_API_KEY -e OPS_API_TOKEN \
#     -v llmgram-data:/var/lib/llmgram/data -p 127.0.0.1:9090:9090 llmgram
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.
# See deploy/DEPLOY.md for the operator guide.

# The toolchain must be at least Cargo.toml's rust-version (1.90, edition
# 2024). Override with --build-arg RUST_IMAGE=rust:1-slim-bookworm to follow
# the latest stable. Keep it on bookworm: the binary links glibc dynamically
# and the runtime stage below is bookworm, so both must agree.
ARG RUST_IMAGE=rust:1.95-slim-bookworm

# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src

# Everything `cargo build --release --locked --bin llmgram` reads:
# - Cargo.toml / Cargo.lock: the root package and the locked dependency graph;
# - tests/fakes: a workspace member; cargo loads every member's manifest (and
#   needs its src/ to find a target) before building anything;
# - benches/: Cargo.toml declares the [[bench]] targets `load` and `store`,
#   and cargo refuses a manifest whose declared target files are missing;
# - config/: default.toml and the locales are include_str!'d into the binary;
# - src/.
# The rest of tests/ (suite, fixtures) is only used by `cargo test`.
COPY Cargo.toml Cargo.lock ./
COPY tests/fakes/ tests/fakes/
COPY benches/ benches/
COPY config/ config/
COPY src/ src/

# Dependency caching: cache mounts keep the crates.io downloads and the
# target directory between builds, so a source change recompiles llmgram
# only. Unlike the "dummy main.rs" trick this cannot ship a stale binary:
# cargo's own fingerprints decide what to rebuild. Cache mounts are not part
# of the image, so the binary is copied out of target/ in the same step.
RUN --mount=type=cache,id=llmgram-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=llmgram-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=llmgram-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin llmgram \
 && install -D -m 0755 target/release/llmgram /out/llmgram

# ---------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: system trust store for TLS tooling (the binary itself also
# carries webpki roots); curl: the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# Fixed uid/gid 10001 so a bind-mounted data directory can be chowned on the
# host (chown -R 10001:10001 DIR) and so orchestrators can check runAsNonRoot.
# The data directory is created here, owned by llmgram, before VOLUME: a new
# named volume is initialised from it and inherits that ownership.
RUN groupadd --system --gid 10001 llmgram \
 && useradd --system --uid 10001 --gid llmgram --no-create-home \
        --home-dir /var/lib/llmgram --shell /usr/sbin/nologin llmgram \
 && install -d -o llmgram -g llmgram -m 0750 /var/lib/llmgram /var/lib/llmgram/data

COPY --from=builder /out/llmgram /usr/local/bin/llmgram

# storage.path: the embedded store lives on the volume.
# ops.listen: the ops listener (/healthz, /readyz, /metrics) must bind all
#   interfaces to be reachable through a published port; publish it on the
#   host's loopback only (-p 127.0.0.1:9090:9090), as /metrics is not
#   authenticated. POST /backup needs OPS_API_TOKEN (a secret, like the
#   two above; pass it with -e) and is disabled without it, which the start
#   log warns about. If you change this port, change the HEALTHCHECK too.
# NO_COLOR: no ANSI escapes in `docker logs` (pretty log format); set
#   LLMGRAM_LOG__FORMAT=json for log shippers.
ENV LLMGRAM_STORAGE__PATH=/var/lib/llmgram/data \
    LLMGRAM_OPS__LISTEN=0.0.0.0:9090 \
    NO_COLOR=1

WORKDIR /var/lib/llmgram
USER 10001:10001
VOLUME ["/var/lib/llmgram/data"]
EXPOSE 9090

# Liveness only (/readyz may legitimately fail while a provider is down).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS --max-time 4 http://127.0.0.1:9090/healthz || exit 1

# SIGTERM starts a graceful shutdown (shutdown.grace, 10 s by default) and
# exits 0. Docker's default stop timeout is also 10 s, so run with
# --stop-timeout 30 (compose: stop_grace_period: 30s) to avoid a SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/llmgram"]
