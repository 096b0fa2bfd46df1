//! The Kubernetes API guard: untrusted pods cannot reach the API server (its
//! Service VIP and its real endpoints), any node's address (the kubelet and
//! every other port of the host) or the cloud metadata address.
//!
//! The guard is a step of the egress side of a connection, at the source pod
//! (see [`crate::tiers`]): after the tenant fences and the Admin tier, so that
//! an explicit Admin `Accept` grants access (the escape hatch) and an Admin
//! `Deny` still denies; before NetworkPolicy, so that no namespace owner can
//! open it. Traffic between a pod and its own node is otherwise always
//! allowed; for a guarded pod the guard applies to it too, and only an Admin
//! `Accept` lets it through.
//!
//! Trusted pods (the `BulkheadConfig`'s `apiGuard.trusted`, by default every
//! pod of `kube-system`) and host-network pods are not guarded. In `monitor`
//! mode the guard's denials are logged and let through, like a namespace's
//! own denials in `monitor`; in `off` mode there is no guard.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::inventory::{Inventory, PodId};

/// The cloud metadata addresses: `169.254.169.254` and AWS's IPv6
/// `fd00:ec2::254`.
pub const METADATA: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// What a guarded address is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Target {
    /// A cluster IP of the `default/kubernetes` Service (matched on the
    /// connection's original destination, before kube-proxy's DNAT).
    ServiceVip,
    /// An address of the `default/kubernetes` EndpointSlices.
    ApiEndpoint,
    /// An address of a node (the kubelet and every other host port).
    Node { name: String },
    /// The cloud metadata address.
    Metadata,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::ServiceVip => f.write_str("the Kubernetes API Service VIP"),
            Target::ApiEndpoint => f.write_str("a Kubernetes API server endpoint"),
            Target::Node { name } => write!(f, "node {name}"),
            Target::Metadata => f.write_str("the cloud metadata address"),
        }
    }
}

/// What `ip` is to the guard, when it guards it.
pub fn target(inv: &Inventory, ip: IpAddr) -> Option<Target> {
    if inv.api_vips.contains(&ip) {
        Some(Target::ServiceVip)
    } else if inv.api_endpoints.contains(&ip) {
        Some(Target::ApiEndpoint)
    } else if let Some(n) = inv.nodes.iter().find(|n| n.addresses.contains(&ip)) {
        Some(Target::Node {
            name: n.name.clone(),
        })
    } else if METADATA.contains(&ip) {
        Some(Target::Metadata)
    } else {
        None
    }
}

/// The guard's decision for an egress from `pod` to `peer_ip`: `Some` when
/// the pod is guarded and the address is.
pub(crate) fn check(inv: &Inventory, pod: PodId, peer_ip: Option<IpAddr>) -> Option<Target> {
    if !inv.guarded(pod) {
        return None;
    }
    target(inv, peer_ip?)
}
