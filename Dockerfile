# syntax=docker/dockerfile:1
# Two stages: build with the Rust toolchain, run on a slim Debian as a non-root user.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin causeway \
 && apt-get update && apt-get install -y --no-install-recommends libcap2-bin \
 # The gateway creates its TUN device, sets routes and binds :53 without running as root.
 && setcap cap_net_admin,cap_net_bind_service+ep target/release/causeway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/causeway && chown 65532:65532 /var/lib/causeway
COPY --from=build /src/target/release/causeway /usr/local/bin/causeway
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/causeway"]
CMD ["--help"]
