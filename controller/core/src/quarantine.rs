//! Quarantine: the first check of the evaluation order. A quarantined pod
//! sends and receives nothing but connections from its forensics sources (and
//! their replies), whatever any policy of any tier says.
//!
//! ```text
//!   Quarantine ns/q ──podName / podSelector (+ captured)──▶ pods of ns
//!        └── allowFrom: <ns>/<pod> | CIDR   (forensics sources)
//! ```
//!
//! The quarantine follows the pod, not its address: the inventory records the
//! quarantined pods by identity, so a new pod that reuses a quarantined pod's
//! address is not quarantined. A selector quarantine also keeps the pods it
//! matched once (`captured`, filled by the controller), so relabelling a pod
//! does not release it.
//!
//! Time: the core has no clock. `expires` is kept as written and compared to a
//! `now` the caller passes ([`Quarantine::expired`], [`drop_expired`]); the
//! controller filters expired Quarantines before it builds the inventory and
//! rebuilds when the next one expires.
//!
//! Host-network pods cannot be quarantined (they share their node's
//! addresses: quarantining one would cut the node); the inventory reports
//! them as a warning.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::inventory::{Inventory, PodId};
use crate::labels::Selector;
use crate::model::Object;
use crate::verdict::{Endpoint, Query};

pub type QuarantineId = usize;

/// A validated `bulkhead.io/v1alpha1` Quarantine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantine {
    pub namespace: String,
    pub name: String,
    pub target: Target,
    pub reason: String,
    /// The forensics sources: the only ones that may still connect in.
    pub allow_from: Vec<Source>,
    /// RFC 3339, validated; `None`: until deleted.
    pub expires: Option<String>,
    /// Pods of the namespace a selector matched before (by name): they stay
    /// quarantined when relabelled. Filled by the controller.
    pub captured: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// One pod of the Quarantine's namespace, by name.
    Pod(String),
    /// Every pod of the Quarantine's namespace the selector matches.
    Selector(Selector),
}

/// A forensics source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    Pod { namespace: String, name: String },
    Cidr(IpNet),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            Source::Cidr(c) => write!(f, "{c}"),
        }
    }
}

impl Quarantine {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether this quarantine covers `pod` (ignoring host networking).
    pub fn covers(&self, pod: &crate::model::Pod) -> bool {
        pod.namespace == self.namespace
            && match &self.target {
                Target::Pod(name) => *name == pod.name,
                Target::Selector(sel) => {
                    sel.matches(&pod.labels) || self.captured.contains(&pod.name)
                }
            }
    }

    /// When it ends, if it does (and the time is readable).
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.expires.as_deref().and_then(|e| e.parse().ok())
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires_at().is_some_and(|t| t <= now)
    }
}

/// Removes the Quarantines that expired at `now`; returns the earliest expiry
/// still ahead (when the caller must look again).
pub fn drop_expired(objects: &mut Vec<Object>, now: Timestamp) -> Option<Timestamp> {
    objects.retain(|o| !matches!(o, Object::Quarantine(q) if q.expired(now)));
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Quarantine(q) => q.expires_at(),
            _ => None,
        })
        .min()
}

/// How a quarantine decided a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineVerdict {
    pub quarantine: QuarantineId,
    /// The quarantined end.
    pub pod: PodId,
    /// `true`: the quarantined pod is the source.
    pub source_side: bool,
    /// The forensics source entry (index in `allowFrom`) that lets it in.
    pub allowed_by: Option<usize>,
}

impl QuarantineVerdict {
    pub fn allows(&self) -> bool {
        self.allowed_by.is_some()
    }
}

/// The quarantined pod behind an endpoint (a pod, or an address a pod owns).
fn quarantined_pod(inv: &Inventory, e: Endpoint) -> Option<PodId> {
    let p = match e {
        Endpoint::Pod(p) => p,
        Endpoint::Ip(ip) => inv.pod_by_ip(ip)?,
    };
    (!inv.quarantines_of(p).is_empty()).then_some(p)
}

/// Whether the source end (`src`, using address `src_ip`) is the forensics
/// source `s`. A quarantined end is never a forensics source; a pod named in
/// `allowFrom` is matched by its own address (not a host-network pod).
pub fn source_matches(inv: &Inventory, s: &Source, src: Endpoint, src_ip: Option<IpAddr>) -> bool {
    let Some(ip) = src_ip else { return false };
    if quarantined_pod(inv, src).is_some()
        || inv
            .pod_by_ip(ip)
            .is_some_and(|p| !inv.quarantines_of(p).is_empty())
    {
        return false;
    }
    match s {
        Source::Cidr(net) => net.contains(&ip),
        Source::Pod { namespace, name } => match (src, inv.pod_id(namespace, name)) {
            (Endpoint::Pod(p), Some(named)) => {
                p == named && !inv.pods[p].host_network && inv.pod_by_ip(ip) == Some(p)
            }
            _ => false,
        },
    }
}

/// The quarantine's decision on a connection, or `None` when neither end is
/// quarantined (then the API guard and the tiers decide). Traffic of a pod to
/// itself never leaves it and is not decided here.
pub fn decide(
    inv: &Inventory,
    q: &Query,
    src_ip: Option<IpAddr>,
    _dst_ip: Option<IpAddr>,
) -> Option<QuarantineVerdict> {
    if q.src == q.dst {
        return None;
    }
    if let Some(p) = quarantined_pod(inv, q.src) {
        return Some(QuarantineVerdict {
            quarantine: inv.quarantines_of(p)[0],
            pod: p,
            source_side: true,
            allowed_by: None,
        });
    }
    let p = quarantined_pod(inv, q.dst)?;
    let ids = inv.quarantines_of(p);
    for &id in ids {
        let qr = &inv.quarantines[id];
        if let Some(i) = qr
            .allow_from
            .iter()
            .position(|s| source_matches(inv, s, q.src, src_ip))
        {
            return Some(QuarantineVerdict {
                quarantine: id,
                pod: p,
                source_side: false,
                allowed_by: Some(i),
            });
        }
    }
    Some(QuarantineVerdict {
        quarantine: ids[0],
        pod: p,
        source_side: false,
        allowed_by: None,
    })
}

/// In words, for `explain`.
pub fn describe(inv: &Inventory, v: &QuarantineVerdict) -> String {
    let qr = &inv.quarantines[v.quarantine];
    let pod = inv.pods[v.pod].key();
    match (v.source_side, v.allowed_by) {
        (true, _) => format!(
            "{pod} is quarantined by Quarantine {} ({}): it may not open connections",
            qr.key(),
            qr.reason
        ),
        (false, Some(i)) => format!(
            "{pod} is quarantined by Quarantine {} ({}); {} is its forensics source allowFrom[{i}]",
            qr.key(),
            qr.reason,
            qr.allow_from[i]
        ),
        (false, None) => format!(
            "{pod} is quarantined by Quarantine {} ({}): only its forensics sources may connect",
            qr.key(),
            qr.reason
        ),
    }
}
