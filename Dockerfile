# annotable: a small, non-root image with only the binary.
#   docker build -t annotable .
#   docker run --rm -e ANNOTABLE_SERVE_QUEUE_URL=... -e ANNOTABLE_CATALOG_URI=postgres://... annotable serve
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p annotable --bin annotable \
    && strip target/release/annotable

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/annotable --create-home annotable
COPY --from=build /src/target/release/annotable /usr/local/bin/annotable
USER 10001
WORKDIR /var/lib/annotable
# In a container the health endpoint must be reachable from the host's health checker.
# MIMALLOC_ALLOW_THP=0: no transparent huge pages for the allocator even on hosts whose THP
# mode is `always` (see the mimalloc entry in Cargo.toml for what they cost the writer).
ENV ANNOTABLE_SERVE_HTTP_ADDR=0.0.0.0:9464 \
    ANNOTABLE_DATA_DIR=/var/lib/annotable/data \
    MIMALLOC_ALLOW_THP=0
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD curl -fsS http://127.0.0.1:9464/healthz || exit 1
ENTRYPOINT ["annotable"]
CMD ["serve"]
