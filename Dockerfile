# syntax=docker/dockerfile:1
# Two stages: build with the Rust toolchain, run on a slim Debian as a non-root user.
# Build from the repository root: `docker build -t causeway:latest .`

FROM rust:1-bookworm AS build
# etcd-client's build script runs protoc and needs the well-known .proto files.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin causeway \
 && strip target/release/causeway

FROM debian:bookworm-slim
COPY --from=build /src/target/release/causeway /usr/local/bin/causeway
# The gateway creates its TUN device, sets routes and may bind :53 without running as root:
# file capabilities, set here because COPY does not reliably keep extended attributes. The
# Deployment in deploy/ adds both capabilities to the container's bounding set.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
 && setcap cap_net_admin,cap_net_bind_service+ep /usr/local/bin/causeway \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/causeway && chown 65532:65532 /var/lib/causeway
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/causeway"]
CMD ["--help"]
