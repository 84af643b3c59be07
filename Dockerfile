# egress-gate as a sidecar container.
#
#   docker build -t egress-gate .
#   docker run --rm -v "$PWD/config:/etc/egress-gate:ro" -v egress-audit:/var/lib/egress-gate \
#     egress-gate serve --config /etc/egress-gate/egress.toml --listen 0.0.0.0:3128
#
# The image runs as an unprivileged user and needs no capabilities. Mount the policy read-only
# (the proxy halts if it changes without a reload) and give the audit trail a volume.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin egress-gate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/egress-gate --create-home egress-gate
COPY --from=build /src/target/release/egress-gate /usr/local/bin/egress-gate
COPY config/egress.toml /etc/egress-gate/egress.toml
USER 10001
WORKDIR /var/lib/egress-gate
EXPOSE 3128
ENTRYPOINT ["/usr/local/bin/egress-gate"]
CMD ["serve", "--config", "/etc/egress-gate/egress.toml", "--listen", "0.0.0.0:3128"]
