#!/usr/bin/env bash
# Sets up a fresh Debian machine (as root) and runs every check CI runs:
# formatting, clippy with -D warnings, and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

source tests/setup.sh

if need rustup; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> build"
# The end-to-end tests run the real binaries: build them once, with the
# workspace's features, and hand the tests their paths (so that no test runs
# cargo itself).
cargo build --workspace --bins --locked
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
export BULKHEAD_BIN="$target_dir/debug/bulkhead"
export BULKHEAD_AGENT_BIN="$target_dir/debug/bulkhead-agent"
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
echo "==> doc tests"
cargo test --workspace --locked --doc
