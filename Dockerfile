# The observer's image.
#
# With a network:
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t flow-observer:0.1.0 .
#   podman build --build-arg REVISION=$(git rev-parse HEAD) -t flow-observer:0.1.0 .
# Offline, with Debian's buildah (what CI does): `cargo xtask image`, which
# builds the same binary on the host and runs this file with the `builder`
# stage replaced by it (`--build-context builder=...`): the final stage below
# is the one both ways build.
#
# Multi-arch (amd64 and arm64): the builder compiles for the architecture it
# runs on (the kernel programs are bpfel for both), so build each platform
# natively or under QEMU and push one manifest list:
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/flow-observer:0.1.0 --push .
#   podman build --platform linux/amd64,linux/arm64 --manifest flow-observer:0.1.0 . && podman manifest push ...
FROM docker.io/library/rust:1.95-bookworm AS builder
ARG REVISION=unknown
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools \
    && rustup target add "$(uname -m)-unknown-linux-musl" \
    && rustup toolchain install nightly --profile minimal --component rust-src \
    && cargo install bpf-linker@0.9.15 --locked
WORKDIR /src
COPY . .
# A static (musl) binary: the final stage has no libc.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
    && OBSERVER_GIT_REVISION="$REVISION" cargo build --release --locked --target "$target" -p observer --bin observer \
    && install -D "target/$target/release/observer" /out/observer

# Only the binary: no shell, no libc, no CA bundle (in a cluster the API
# server's CA comes with the service account). Runs as uid 0 because
# Kubernetes grants added capabilities (BPF, PERFMON, NET_ADMIN) to root
# only; see deploy/daemonset.yaml and docs/install.md, "Security model".
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=
COPY --from=builder /out/observer /usr/local/bin/observer
LABEL org.opencontainers.image.title="flow-observer" \
      org.opencontainers.image.description="Node-local eBPF flow observer for Kubernetes AI workloads" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.source="$SOURCE"
USER 0:0
ENTRYPOINT ["/usr/local/bin/observer"]
CMD ["run"]
