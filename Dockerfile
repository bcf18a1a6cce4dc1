# Container image for shipper: a static-ish Rust binary on distroless, non-root, read-only root.
#
#   docker build -t shipper:dev --build-arg VERSION="$(git describe --tags --always)" .
#   docker run --rm shipper:dev --help
#
# Two stages:
#   builder  compiles the dependencies first from Cargo.toml + Cargo.lock alone (a layer that
#            survives source edits), then the crate itself.
#   runtime  gcr.io/distroless/cc-debian12:nonroot: glibc, libgcc, CA certificates, no shell,
#            uid/gid 65532. Only the binary is copied in.
#
# At run time the image writes only under /var/lib/shipper (checkpoints, dead letters, spool:
# the default --data-dir), declared a VOLUME, so it works with readOnlyRootFilesystem. A --socket
# under /run/shipper needs a writable mount there too (the Helm chart mounts an emptyDir).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# Dependency layer: a stub crate with the real manifest, lock file and build flags
# (.cargo/config.toml). Rebuilt only when those change. If the manifest ever declares explicit
# targets (a [[bench]] with harness = false, a [[bin]] with a path), add a stub for each here.
# The workspace's test endpoint (fake-kinesis/) only needs its manifest and a stub to exist: the
# image builds the shipper package alone.
COPY Cargo.toml Cargo.lock ./
COPY fake-kinesis/Cargo.toml fake-kinesis/
COPY .cargo .cargo
RUN mkdir -p src fake-kinesis/src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && echo 'fn main() {}' > fake-kinesis/src/main.rs \
    && cargo build --release --locked -p shipper --bin shipper \
    && rm -rf src fake-kinesis/src

# The crate. .dockerignore keeps target/, .git, tool caches and deployment files out.
COPY . .
# The stubs above were written after the real files' mtimes; touch the roots so cargo rebuilds
# the crate instead of trusting the stub's fingerprint.
RUN touch -c src/main.rs src/lib.rs \
    && cargo build --release --locked -p shipper --bin shipper \
    && mkdir -p /rootfs/usr/local/bin /rootfs/var/lib/shipper /rootfs/run/shipper \
    && install -m 0755 target/release/shipper /rootfs/usr/local/bin/shipper

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
ARG LICENSES=NOASSERTION

LABEL org.opencontainers.image.title="shipper" \
      org.opencontainers.image.description="Sidecar that tails a worker's log files and ships every line to Amazon Kinesis Data Streams, at least once" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="${LICENSES}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY --from=builder /rootfs/usr/local/bin/shipper /usr/local/bin/shipper
# Writable directories owned by the runtime user, so a fresh volume mounted there (Docker copies
# the ownership into an anonymous volume) or a tmpfs is usable without root.
COPY --from=builder --chown=65532:65532 /rootfs/var/lib/shipper /var/lib/shipper
COPY --from=builder --chown=65532:65532 /rootfs/run/shipper /run/shipper

USER 65532:65532
WORKDIR /var/lib/shipper
VOLUME ["/var/lib/shipper"]

# Prometheus metrics, /healthz and /readyz when --metrics-addr is set (the chart uses 9090).
EXPOSE 9090

ENTRYPOINT ["/usr/local/bin/shipper"]
CMD ["--help"]
