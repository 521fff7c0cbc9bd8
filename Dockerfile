# strangler container image.
#
#   docker build -t strangler .
#   docker run --rm -p 8080:8080 -v "$PWD/my-routes.yaml:/etc/strangler/routes.yaml:ro" strangler
#   docker run --rm -v "$PWD/my-routes.yaml:/etc/strangler/routes.yaml:ro" strangler validate /etc/strangler/routes.yaml

# ---- build -------------------------------------------------------------------------------------
FROM rust:1-slim-bookworm AS builder

# Pingora's zlib-ng (libz-ng-sys) is built with cmake; zstd-sys needs a C toolchain.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependencies first, against stub sources: this layer is rebuilt only when Cargo.toml,
# Cargo.lock or the benches change, not on every source edit. benches/ comes along because
# Cargo.toml declares [[bench]] targets, and cargo refuses a manifest whose targets are missing
# (`cargo build` does not compile them).
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The crate itself. src/demo/mod.rs compiles in examples/apps/*.rs (via #[path]) and the root
# routes.yaml (via include_str!), so both are needed to build.
COPY src ./src
COPY examples ./examples
COPY routes.yaml ./
# Touch the crate roots so cargo rebuilds over the stubs whatever the copied files' mtimes are.
# Stripped: the line tables release builds keep for readable panics are 10x the code's size;
# backtraces in the image are symbolized from the unstripped build when needed.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && strip --strip-unneeded -o /usr/local/bin/strangler target/release/strangler

# ---- runtime -----------------------------------------------------------------------------------
FROM debian:bookworm-slim

# A fixed, non-root uid/gid, so that mounted files and runAsNonRoot policies can rely on it.
RUN groupadd --gid 10001 strangler \
    && useradd --uid 10001 --gid strangler --no-create-home --no-log-init \
       --home-dir /nonexistent --shell /usr/sbin/nologin strangler

COPY --from=builder /usr/local/bin/strangler /usr/local/bin/strangler
COPY LICENSE /usr/share/doc/strangler/LICENSE

# The repository's example config, so the image has something to validate and show. It listens on
# 127.0.0.1:8080 (admin 127.0.0.1:9901), which nothing outside the container can reach, and its
# backends are loopback addresses inside the container: mount your own config over this file,
# with `listen: 0.0.0.0:8080` (and `admin: 0.0.0.0:9901` only if the admin API must be reachable
# from a private network, such as for kubelet probes; off loopback it needs a bearer token,
# STRANGLER_ADMIN_TOKEN from a secret or server.admin_token, and refuses to start without one;
# /healthz, /readyz and /metrics stay open). Backend names are resolved at start-up, so they
# must resolve by then.
COPY routes.yaml /etc/strangler/routes.yaml
# server.diff_store (default strangler-diffs.db) is relative to the working directory, and `run`
# refuses to start a config with shadows whose store it cannot create: the non-root user gets a
# directory of its own. Mount a volume here to keep the comparisons.
RUN mkdir -p /var/lib/strangler && chown 10001:10001 /var/lib/strangler
WORKDIR /var/lib/strangler

USER 10001:10001

# 8080: client traffic; 9901: admin API (/healthz, /readyz, /metrics open; the rest needs the
# token when one is set).
EXPOSE 8080 9901

# Ready means the config is loaded and the listeners are up (`GET /readyz` on the admin API,
# open without a token). The image has no curl: the binary asks itself. Mounting a config whose
# `server.admin` is not on port 9901 means overriding this (`--admin HOST:PORT`).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["strangler", "healthcheck", "--admin", "127.0.0.1:9901"]

# Docker stops containers with SIGTERM: strangler stops accepting at once and gives in-flight
# requests server.drain_timeout (default 5 s), within `docker stop`'s default 10 s before SIGKILL.
ENTRYPOINT ["strangler"]
CMD ["run", "-c", "/etc/strangler/routes.yaml"]
