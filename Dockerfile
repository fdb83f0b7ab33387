# The observer's image: `docker build -t flow-observer:0.1.0 .` from the
# repository root. The builder has what `cargo build` needs for the kernel
# programs (nightly with rust-src, bpf-linker); the runtime image has only the
# binary and glibc.
FROM docker.io/library/rust:1.95-bookworm AS builder
RUN rustup toolchain install nightly --profile minimal --component rust-src \
    && cargo install bpf-linker@0.9.15 --locked
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p observer \
    && install -D target/release/observer /out/observer

# distroless: glibc and CA certificates, no shell, no package manager. Runs as
# uid 0 because Kubernetes grants the added capabilities (BPF, PERFMON,
# NET_ADMIN, SYS_RESOURCE) to root only; see deploy/daemonset.yaml.
FROM gcr.io/distroless/cc-debian12
COPY --from=builder /out/observer /usr/local/bin/observer
ENTRYPOINT ["/usr/local/bin/observer"]
CMD ["run"]
