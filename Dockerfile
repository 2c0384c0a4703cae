# syntax=docker/dockerfile:1
# One image for the operator, the gateway and the sidecar in every kernel pod:
#   docker build -t notebook-operator:0.1.0 .

# --- build ------------------------------------------------------------------
FROM rust:1-bookworm AS build
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

# --- runtime ----------------------------------------------------------------
# glibc and libgcc only (rustls, bundled SQLite: no OpenSSL), no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /notebook-operator /usr/local/bin/notebook-operator
USER 65532:65532
EXPOSE 8080 8888
ENTRYPOINT ["/usr/local/bin/notebook-operator"]
CMD ["run"]
