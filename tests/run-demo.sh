#!/usr/bin/env bash
# The lab demo on a fresh Debian machine (as root, with a Rust toolchain):
# installs nftables, iproute2 and conntrack if they are missing, builds
# everything with cargo, and runs `bulkhead-lab demo`: a two-node cluster of
# network namespaces with the real controller and agents, its reachability
# matrix before and after NetworkPolicies, checked against the policy engine.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "the lab creates network namespaces: run this as root" >&2
    exit 1
fi
source tests/setup.sh

echo "==> building (cargo build)"
cargo build --quiet --bin bulkhead --bin bulkhead-agent --bin bulkhead-lab
# `bulkhead-lab` finds `bulkhead` and `bulkhead-agent` next to itself.
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "${target_dir:-target}/debug/bulkhead-lab" demo "$@"
