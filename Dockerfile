# Stratus as one small image: every component is `stratus serve <component>`.
#
#   docker build -t stratus .
#   docker run -p 8080:8080 stratus serve gateway
#
# Build stage: the same release build every benchmark in bench/ measures (glibc, its malloc as
# src/memory.rs tunes it), so what ships is what is measured. A musl build would link fully
# static, but musl's allocator is much slower under the gateway's load than glibc's, and the
# allocator is the largest difference between two builds of the same code; the runtime stage
# below is the smallest image that carries glibc (distroless/cc: glibc, libgcc, CA
# certificates, no shell, no package manager). Health checks run the binary: `stratus probe`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling (bench/); the image drops them, which
# changes no instruction of the program (170 MB -> about 41 MB).
RUN cargo build --release --locked -j2 \
 && strip --strip-debug -o /stratus target/release/stratus

# Runtime stage: the binary and glibc, as an unprivileged user, with a writable data directory.
# (Debian 12, as the build stage, so the binary finds the glibc it was linked against.)
FROM gcr.io/distroless/cc-debian12:nonroot
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
