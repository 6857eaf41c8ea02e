# Stratus as one small static image: every component is `stratus serve <component>`.
#
#   docker build -t stratus .
#   docker run -p 8080:8080 stratus serve gateway
#
# Build stage: a static binary (musl), so the runtime stage needs nothing but the file.
# Why musl and scratch rather than a static-pie glibc build on distroless/static: the binary
# has no C dependency that wants glibc (rustls/ring for TLS, sqlx's bundled SQLite, no
# OpenSSL), musl links it fully static with the stable toolchain, and an image with one file
# has nothing else to patch or scan. The price is musl's slower allocator under contention;
# measure before switching (see bench/). Health checks run the binary too: `stratus probe`.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked -j2 --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/stratus /stratus

# Runtime stage: the binary alone, as an unprivileged user, with a writable data directory.
FROM scratch
COPY --from=build /stratus /stratus
COPY --from=build --chown=65532:65532 /tmp /data
# Where compose mounts the trust bundle's volume: a volume takes its owner from the image's
# folder, so the registry (this user) can write the bundle there.
COPY --from=build --chown=65532:65532 /tmp /trust
USER 65532:65532
ENV STRATUS_BIND=0.0.0.0 \
    STRATUS_DATA_DIR=/data \
    STRATUS_LOG_FORMAT=json
EXPOSE 8080 8081 8500 8600/udp 8600/tcp
ENTRYPOINT ["/stratus"]
CMD ["up"]
