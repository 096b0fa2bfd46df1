# syntax=docker/dockerfile:1
#
# Bulkhead's image: both binaries, `bulkhead` (controller and CLI, the
# entrypoint) and `bulkhead-agent` (run by the DaemonSet, as root with
# NET_ADMIN only; see manifests/agent.yaml).
#
#   docker build -t ghcr.io/bulkhead/bulkhead:0.1.0 .

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace: cargo loads every member's manifest (and their declared
# benches and tests) even to build two packages. .dockerignore keeps target/
# and the fuzzing artefacts out.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p bulkhead -p bulkhead-agent \
 && install -D -m 0755 -t /out target/release/bulkhead target/release/bulkhead-agent

# The same Debian release as the builder, so the binaries find the glibc they
# were linked against. `nftables` brings `nft` (built with JSON support),
# which the agent drives with `nft -j -f -`.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/bulkhead /out/bulkhead-agent /usr/local/bin/
# The controller runs as this unprivileged user; the agent's DaemonSet
# overrides it with runAsUser: 0 (nft needs root; it gets NET_ADMIN only).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/bulkhead"]
