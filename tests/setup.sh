# Sourced by run-tests.sh and run-demo.sh: installs the system packages
# Bulkhead needs when they are missing (as root, on Debian), and checks for a
# Rust toolchain.
need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need nft || missing+=(nftables)
need ip || missing+=(iproute2)
need conntrack || missing+=(conntrack)
if ((${#missing[@]})); then
    echo "==> installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! need cargo; then
    echo "a Rust toolchain is required (https://rustup.rs): cargo not found" >&2
    exit 1
fi
