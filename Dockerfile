# sluice: rate-limiting reverse proxy.
#   docker build -t sluice .
#   docker run --rm -p 8080:8080 -p 9090:9090 -e SLUICE_UPSTREAM=http://app:3000 sluice

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /build

# Dependencies first, so that editing src/ does not recompile them: build the
# manifest against stub sources. Bench/test/example targets are dropped from
# this throw-away manifest because their files are not copied yet.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cp Cargo.toml Cargo.toml.orig \
 && awk '/^\[/ { skip = ($0 ~ /^\[\[(bench|test|example)\]\]/) } !skip' Cargo.toml.orig > Cargo.toml \
 && cargo build --release --locked \
 && cargo clean --release -p sluice \
 && mv Cargo.toml.orig Cargo.toml \
 && rm -rf src

# The real sources: .dockerignore lets in only Cargo.*, src/, benches/ (when
# present: Cargo.toml may name bench targets) and config/docker.toml.
COPY . ./
RUN cargo build --release --locked --bin sluice \
 && install -D -m 0755 target/release/sluice /out/sluice

# ---- runtime ----------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="A rate-limiting reverse proxy for HTTP JSON APIs" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/sluice /usr/local/bin/sluice
COPY config/docker.toml /etc/sluice/sluice.toml

ENV SLUICE_CONFIG=/etc/sluice/sluice.toml
# 8080: proxy, 9090: admin (/healthz, /readyz, /metrics)
EXPOSE 8080 9090
# distroless's nonroot user, numeric so that runAsNonRoot can verify it
USER 65532:65532
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/sluice", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/sluice"]
