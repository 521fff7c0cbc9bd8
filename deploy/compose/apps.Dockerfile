# The demo apps of deploy/compose/compose.yaml: examples/legacy_app.rs and examples/new_app.rs
# (the handlers are examples/apps/*.rs), built from the repository root:
#   docker build -f deploy/compose/apps.Dockerfile -t strangler-demo-apps .
FROM rust:1-slim-bookworm AS builder
# The examples link the strangler library: Pingora's zlib-ng needs cmake, zstd-sys a C toolchain.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY . .
RUN cargo build --release --locked --example legacy_app --example new_app \
    && strip -o /usr/local/bin/legacy_app target/release/examples/legacy_app \
    && strip -o /usr/local/bin/new_app target/release/examples/new_app

FROM debian:bookworm-slim
COPY --from=builder /usr/local/bin/legacy_app /usr/local/bin/new_app /usr/local/bin/
USER 10001:10001
EXPOSE 9001 9002
