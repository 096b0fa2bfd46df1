//! nft object names: short, deterministic, and owned here. Names of content-
//! derived objects are a prefix and a 64-bit FNV-1a hash of a canonical
//! description, so that every node and every controller replica names the
//! same thing the same way, and a name changes only when its meaning does.

use std::fmt::Write as _;

/// The table every agent owns.
pub const TABLE: &str = "bulkhead";
pub const FORWARD: &str = "forward";
pub const INPUT: &str = "input";
/// Holds the rule whose comment records schema and generation.
pub const META: &str = "bhmeta";

pub const EGRESS4: &str = "egress4";
pub const EGRESS6: &str = "egress6";
pub const INGRESS4: &str = "ingress4";
pub const INGRESS6: &str = "ingress6";

/// The addresses of the node's pods (flow observation).
pub const LOCAL4: &str = "local4";
pub const LOCAL6: &str = "local6";

/// Agent-managed anti-spoofing sets.
pub const POD_IFACES: &str = "pod_ifaces";
pub const POD_IFADDR4: &str = "pod_ifaddr4";
pub const POD_IFADDR6: &str = "pod_ifaddr6";

pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `prefix` + 16 hex digits of the hash of `canonical`.
pub fn hashed(prefix: &str, canonical: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 16);
    s.push_str(prefix);
    let _ = write!(s, "{:016x}", fnv1a(canonical.as_bytes()));
    s
}

/// Quarantine (see `compile::quarantine`): the chain every base chain jumps
/// to first, the output base chain that carries only that jump, and the sets
/// of every quarantined pod's addresses.
pub const QUARANTINE: &str = "quarantine";
pub const OUTPUT: &str = "output";
pub const QPODS4: &str = "qpods4";
pub const QPODS6: &str = "qpods6";

/// The API guard (see `compile::guard`): the Service VIPs (matched on the
/// conntrack original destination), the other guarded addresses (nodes, API
/// endpoints, metadata), the input hook's dispatch of guarded local pods,
/// and the chain that denies.
pub const GUARD_VIP4: &str = "gvip4";
pub const GUARD_VIP6: &str = "gvip6";
pub const GUARD_DST4: &str = "gdst4";
pub const GUARD_DST6: &str = "gdst6";
pub const GUARD_IN4: &str = "guardin4";
pub const GUARD_IN6: &str = "guardin6";
pub const GUARD_INPUT: &str = "g_input";
