# No `# syntax=` line: the Dockerfile frontend built into BuildKit (Docker 20.10 and later)
# has the cache mounts used below, and a build then needs no image from Docker Hub beyond
# its two base images (air-gapped builders and registry mirrors work).
#
# auth-sidecar container image.
#
#   docker build -t auth-sidecar:0.1.0 .
#   docker build --build-arg PGO=1 -t auth-sidecar:0.1.0 .   # profile-guided (faster; slower build)
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#     -v "$PWD/secrets:/etc/auth-sidecar/secrets:ro" auth-sidecar:0.1.0
#
# A glibc build on Debian 12 (bookworm) for distroless cc-debian12, which carries glibc,
# libgcc and CA certificates: glibc's allocator serves a proxy better than musl's, and
# aws-lc (rustls' crypto) builds here without extra tooling.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds (BuildKit). DT_RELR (build.rs):
# the runtime below is Debian 12 with glibc 2.36, so the compact relocations are safe.
# --build-arg PGO=1: a profile-guided build (benches/pgo.sh: it installs nginx, wrk and
# llvm-N of rustc's LLVM with apt-get, trains an instrumented build on loopback, rebuilds).
ARG PGO=0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
      PGO_DIR=/src/target/pgo bash benches/pgo.sh \
      && install -D -m 0755 target/pgo/auth-sidecar /out/auth-sidecar; \
    else \
      AUTH_SIDECAR_RELR=1 cargo build --release --locked --bin auth-sidecar \
      && install -D -m 0755 target/release/auth-sidecar /out/auth-sidecar; \
    fi

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="auth-sidecar" \
      org.opencontainers.image.description="Token-lifecycle reverse proxy for chat backends" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/auth-sidecar /auth-sidecar
# Default config: 0.0.0.0:8080 proxy, 0.0.0.0:9901 admin, JSON logs, backend on
# 127.0.0.1:3000, HMAC secret from /etc/auth-sidecar/secrets/hmac-secret. The Helm chart
# mounts its own config over /etc/auth-sidecar.
COPY deploy/container-config.toml /etc/auth-sidecar/config.toml
USER 65532:65532
# 8080: proxy (server.listen), 9901: admin (/healthz, /readyz, /metrics)
EXPOSE 8080 9901
ENTRYPOINT ["/auth-sidecar"]
CMD ["--config", "/etc/auth-sidecar/config.toml"]
