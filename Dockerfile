# syntax=docker/dockerfile:1
# One image for the operator, the gateway and the sidecar in every kernel pod:
#   docker build -t notebook-operator:0.1.0 .
#
# Build arguments (the defaults are the public images a user builds with):
#   RUST_IMAGE     the toolchain of the build stage
#   RUNTIME_IMAGE  the base of the image that ships (glibc and libgcc, non-root)
#   BINARY_FROM    "build" (default): compile in the build stage; "prebuilt":
#                  take the binary at PREBUILT_BINARY from the build context
#                  instead (tests/node builds its image this way: no registry
#                  and no crates.io inside the builder, and CI already built
#                  the binary). The runtime stage is the same either way.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY_FROM=build

# --- build ------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src

# Dependencies first, in their own layer: a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && echo '' > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

COPY src ./src
# Touch so cargo sees the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && cp target/release/notebook-operator /notebook-operator

# --- or a binary built outside (BINARY_FROM=prebuilt) ------------------------
FROM scratch AS prebuilt
ARG PREBUILT_BINARY=target/release/notebook-operator
COPY ${PREBUILT_BINARY} /notebook-operator

FROM ${BINARY_FROM} AS binary

# --- runtime ----------------------------------------------------------------
# glibc and libgcc only (rustls, bundled SQLite: no OpenSSL), no shell, non-root.
FROM ${RUNTIME_IMAGE}
COPY --from=binary /notebook-operator /usr/local/bin/notebook-operator
USER 65532:65532
EXPOSE 8080 8888
ENTRYPOINT ["/usr/local/bin/notebook-operator"]
CMD ["run"]
