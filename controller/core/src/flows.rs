//! The flow store: flows reported by the agents, aggregated by WORKLOAD into a
//! service graph. Pure: the time of a report is passed in, never read.
//!
//! ```text
//!  FlowReport (agent, per 5-tuple) ──ingest──▶ FlowGraph
//!     Flow{src,dst: FlowPeer}                    workloads: (namespace, name) → selector labels
//!                                                edges: (src vertex, dst vertex, protocol, port) → EdgeStats
//!                                                        │ learned (the baseline), verdict counts, alerted
//!                                   Observation ◀────────┘ (one per flow: flow log, anomaly alerts)
//! ```
//!
//! # Identity
//!
//! Pods and addresses churn; workloads do not. A flow's ends are named by the
//! identity the agent captured AT FLOW TIME (the report's `FlowPeer`), so a
//! new pod that gets an old pod's address never inherits the old pod's
//! identity. Only when a report carries no identity for an address (a pod on
//! another node) does the [`Context`] resolve it, at report time, and an
//! address that is no pod's becomes an external vertex (its host prefix).
//!
//! A pod's workload is, in this order:
//! 1. the value of its first label among [`WORKLOAD_LABELS`]
//!    (`app.kubernetes.io/name`, `app`, `k8s-app`); its selector is that one
//!    label, so other labels may churn freely;
//! 2. otherwise its name without the suffixes controllers add (a
//!    ReplicaSet's `-<hash>-<5 chars>`, a Job's or DaemonSet's `-<5 chars>`,
//!    a StatefulSet's `-<ordinal>`); its selector is then the labels every
//!    observation of that workload carried, minus the per-pod and
//!    per-revision labels in [`VOLATILE_LABELS`].
//!
//! # Baseline and modes
//!
//! The mode of a namespace is its `bulkhead.io/mode` label (`learn`,
//! `monitor`, `enforce`) or the cluster's default mode. An edge
//! joins the baseline (`learned`) when it is seen while one of its pod ends
//! is in a `learn` namespace and the flow was not dropped. A flow is an
//! ANOMALY when one of its pod ends is in a `monitor` or `enforce` namespace,
//! its edge is not in the baseline, and no declared policy allows it; each
//! edge raises at most one anomaly (`alerted` is kept with the edge).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use bulkhead_proto::v1 as pb;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::crd::PolicyMode;
use crate::inventory::Inventory;
use crate::labels::Labels;
use crate::model::Protocol;
use crate::verdict::{self, Endpoint, Family, Query, Side};

/// The namespace label that chooses a namespace's mode.
pub use crate::inventory::MODE_LABEL;

/// The labels that name a workload, in order of preference.
pub const WORKLOAD_LABELS: [&str; 3] = ["app.kubernetes.io/name", "app", "k8s-app"];

/// Labels that differ between pods or revisions of one workload: never part
/// of a workload's selector.
pub const VOLATILE_LABELS: [&str; 8] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-completion-index",
];

/// The version of the persisted graph's format.
pub const GRAPH_VERSION: u32 = 1;

/// A workload: what pods of one Deployment, StatefulSet, Job, ... share.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkloadId {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One vertex of the service graph.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Vertex {
    Workload {
        namespace: String,
        name: String,
    },
    /// An address that is no pod's (outside the cluster, or a node), as its
    /// host prefix.
    External {
        cidr: IpNet,
    },
}

impl Vertex {
    pub fn workload(&self) -> Option<WorkloadId> {
        match self {
            Vertex::Workload { namespace, name } => Some(WorkloadId {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
            Vertex::External { .. } => None,
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        match self {
            Vertex::Workload { namespace, .. } => Some(namespace),
            Vertex::External { .. } => None,
        }
    }
}

impl std::fmt::Display for Vertex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Vertex::Workload { namespace, name } => write!(f, "{namespace}/{name}"),
            Vertex::External { cidr } => write!(f, "{cidr}"),
        }
    }
}

/// The identity of one end of a flow: the pod, as the agent saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub labels: Labels,
}

/// The verdict the dataplane gave a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlowVerdict {
    Allowed,
    Denied,
    /// Would have been denied; passed because of learn or monitor mode.
    WouldDeny,
}

impl FlowVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowVerdict::Allowed => "ALLOWED",
            FlowVerdict::Denied => "DENIED",
            FlowVerdict::WouldDeny => "WOULD_DENY",
        }
    }
}

/// One reported flow, checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObservedFlow {
    pub src_addr: IpAddr,
    pub dst_addr: IpAddr,
    pub protocol: Protocol,
    pub dst_port: u16,
    pub verdict: FlowVerdict,
    pub rule: String,
    pub count: u64,
    pub first_seen_unix_millis: u64,
    pub last_seen_unix_millis: u64,
    pub src: Option<PodIdentity>,
    pub dst: Option<PodIdentity>,
}

impl ObservedFlow {
    /// Checks one wire flow; `Err` names the field that is wrong.
    pub fn from_pb(f: &pb::Flow) -> Result<ObservedFlow, String> {
        let addr = |field: &str, s: &str| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("{field}: {s:?} is not an IP address"))
        };
        let src_addr = addr("src_addr", &f.src_addr)?;
        let dst_addr = addr("dst_addr", &f.dst_addr)?;
        let protocol = match pb::L4Proto::try_from(f.protocol) {
            Ok(pb::L4Proto::Tcp) => Protocol::Tcp,
            Ok(pb::L4Proto::Udp) => Protocol::Udp,
            Ok(pb::L4Proto::Sctp) => Protocol::Sctp,
            _ => return Err(format!("protocol: unsupported value {}", f.protocol)),
        };
        let dst_port = u16::try_from(f.dst_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("dst_port: {} is not a port", f.dst_port))?;
        let verdict = match pb::FlowVerdict::try_from(f.verdict) {
            Ok(pb::FlowVerdict::Allowed) => FlowVerdict::Allowed,
            Ok(pb::FlowVerdict::Denied) => FlowVerdict::Denied,
            Ok(pb::FlowVerdict::WouldDeny) => FlowVerdict::WouldDeny,
            _ => return Err(format!("verdict: unsupported value {}", f.verdict)),
        };
        let peer = |p: &Option<pb::FlowPeer>| {
            p.as_ref()
                .filter(|p| !p.namespace.is_empty() && !p.pod.is_empty())
                .map(|p| PodIdentity {
                    namespace: p.namespace.clone(),
                    pod: p.pod.clone(),
                    labels: p
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
        };
        Ok(ObservedFlow {
            src_addr,
            dst_addr,
            protocol,
            dst_port,
            verdict,
            rule: f.rule.clone(),
            count: f.count.max(1),
            first_seen_unix_millis: f.first_seen_unix_millis,
            last_seen_unix_millis: f.last_seen_unix_millis.max(f.first_seen_unix_millis),
            src: peer(&f.src),
            dst: peer(&f.dst),
        })
    }
}

/// The workload a pod belongs to, and the labels that select it (`None`:
/// no workload label; the selector is learned from observations).
pub fn workload_of(id: &PodIdentity) -> (WorkloadId, Option<Labels>) {
    for key in WORKLOAD_LABELS {
        if let Some(v) = id.labels.get(key) {
            return (
                WorkloadId {
                    namespace: id.namespace.clone(),
                    name: v.clone(),
                },
                Some(Labels::from([(key.to_owned(), v.clone())])),
            );
        }
    }
    (
        WorkloadId {
            namespace: id.namespace.clone(),
            name: strip_pod_suffixes(&id.pod).to_owned(),
        },
        None,
    )
}

/// The characters Kubernetes uses for generated name suffixes and hashes
/// (no vowels, no look-alikes).
fn is_generated(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
}

/// `api-7d9f8b6c5d-x2x4q` → `api`; `worker-x2x4q` → `worker`; `db-0` → `db`.
pub fn strip_pod_suffixes(pod: &str) -> &str {
    let Some((head, last)) = pod.rsplit_once('-') else {
        return pod;
    };
    if head.is_empty() {
        return pod;
    }
    if !last.is_empty() && last.chars().all(|c| c.is_ascii_digit()) {
        return head;
    }
    if is_generated(last, 5..=5) {
        if let Some((h2, hash)) = head.rsplit_once('-')
            && !h2.is_empty()
            && is_generated(hash, 6..=10)
        {
            return h2;
        }
        return head;
    }
    pod
}

/// The host prefix of an address.
pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// What ingestion needs to know about the cluster now. [`Inventory`]
/// implements it; tests may stub it.
pub trait Context {
    /// The mode of a namespace.
    fn mode(&self, namespace: &str) -> PolicyMode;
    /// The pod that has `ip` now, for ends a report names by address only.
    fn resolve(&self, ip: IpAddr) -> Option<PodIdentity>;
    /// The name the destination pod gives this port, if it names it.
    fn port_name(&self, dst: &PodIdentity, protocol: Protocol, port: u16) -> Option<String>;
    /// Whether a declared policy (not just the absence of isolation) allows
    /// the flow.
    fn declared_allows(&self, flow: &ObservedFlow) -> bool;
}

pub fn mode_str(m: PolicyMode) -> &'static str {
    match m {
        PolicyMode::Learn => "learn",
        PolicyMode::Monitor => "monitor",
        PolicyMode::Enforce => "enforce",
    }
}

impl Context for Inventory {
    fn mode(&self, namespace: &str) -> PolicyMode {
        self.namespace_mode(namespace)
    }

    fn resolve(&self, ip: IpAddr) -> Option<PodIdentity> {
        self.pod_by_ip(ip).map(|i| {
            let p = &self.pods[i];
            PodIdentity {
                namespace: p.namespace.clone(),
                pod: p.name.clone(),
                labels: p.labels.clone(),
            }
        })
    }

    fn port_name(&self, dst: &PodIdentity, protocol: Protocol, port: u16) -> Option<String> {
        let p = &self.pods[self.pod_id(&dst.namespace, &dst.pod)?];
        p.ports
            .iter()
            .find(|c| c.protocol == protocol && c.port == port)
            .and_then(|c| c.name.clone())
    }

    fn declared_allows(&self, flow: &ObservedFlow) -> bool {
        if flow.verdict != FlowVerdict::Allowed {
            return false;
        }
        let end = |id: &Option<PodIdentity>, ip: IpAddr| match id {
            Some(id) => self.pod_id(&id.namespace, &id.pod).map(Endpoint::Pod),
            None => Some(self.pod_by_ip(ip).map_or(Endpoint::Ip(ip), Endpoint::Pod)),
        };
        let (Some(src), Some(dst)) = (end(&flow.src, flow.src_addr), end(&flow.dst, flow.dst_addr))
        else {
            return false;
        };
        let v = verdict::evaluate(
            self,
            &Query {
                src,
                dst,
                protocol: flow.protocol,
                port: flow.dst_port,
                family: Some(Family::of(&flow.dst_addr)),
            },
        );
        // Allowed, and a policy isolated at least one end and allowed it there.
        v.allowed
            && (matches!(v.egress, Side::Allowed { .. } | Side::Implicit { .. })
                || matches!(v.ingress, Side::Allowed { .. } | Side::Implicit { .. }))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EdgeKey {
    pub src: Vertex,
    pub dst: Vertex,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictCounts {
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeStats {
    /// Connections (new flows) observed.
    pub count: u64,
    pub first_seen_unix_millis: u64,
    pub last_seen_unix_millis: u64,
    pub verdicts: VerdictCounts,
    /// In the baseline: seen, not dropped, while an end was in learn mode.
    pub learned: bool,
    /// The name the destination gives the port, when every observation
    /// agreed on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// The rule that decided the last flow.
    #[serde(default)]
    pub last_rule: String,
    /// An anomaly was raised for this edge (once per edge).
    #[serde(default)]
    pub alerted: bool,
}

/// The service graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowGraph {
    /// The selector labels of each workload.
    pub workloads: BTreeMap<WorkloadId, Labels>,
    pub edges: BTreeMap<EdgeKey, EdgeStats>,
    /// Flows the agents shed (reported as `dropped`), summed.
    pub shed: u64,
    /// Flows refused as malformed.
    pub malformed: u64,
}

/// What ingestion says about one flow (for the flow log and alerts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observation {
    pub flow: ObservedFlow,
    pub src: Vertex,
    pub dst: Vertex,
    pub src_pod: Option<String>,
    pub dst_pod: Option<String>,
    /// The effective mode: learn if an end's namespace learns, else monitor
    /// if one monitors, else enforce.
    pub mode: PolicyMode,
    /// A flow outside the baseline and outside declared policy in a monitor
    /// or enforce namespace, first of its edge.
    pub anomaly: bool,
}

fn mode_rank(m: PolicyMode) -> u8 {
    match m {
        PolicyMode::Learn => 0,
        PolicyMode::Monitor => 1,
        PolicyMode::Enforce => 2,
    }
}

impl FlowGraph {
    fn vertex(
        &mut self,
        id: Option<PodIdentity>,
        ip: IpAddr,
        ctx: &dyn Context,
    ) -> (Vertex, Option<PodIdentity>) {
        let Some(id) = id.or_else(|| ctx.resolve(ip)) else {
            return (Vertex::External { cidr: host_net(ip) }, None);
        };
        let (w, selector) = workload_of(&id);
        let learned: Labels = id
            .labels
            .iter()
            .filter(|(k, _)| !VOLATILE_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let v = Vertex::Workload {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
        };
        match selector {
            Some(sel) => {
                self.workloads.insert(w, sel);
            }
            None => {
                // The labels every observation agreed on.
                let entry = self.workloads.entry(w).or_insert_with(|| learned.clone());
                entry.retain(|k, v| learned.get(k) == Some(v));
            }
        }
        (v, Some(id))
    }

    /// Adds one report from `node`. Malformed flows are skipped and counted.
    pub fn ingest(&mut self, report: &pb::FlowReport, ctx: &dyn Context) -> Vec<Observation> {
        self.shed = self.shed.saturating_add(report.dropped);
        let mut out = Vec::with_capacity(report.flows.len());
        for f in &report.flows {
            match ObservedFlow::from_pb(f) {
                Ok(flow) => out.push(self.add(flow, ctx)),
                Err(_) => self.malformed = self.malformed.saturating_add(1),
            }
        }
        out
    }

    /// Adds one checked flow.
    pub fn add(&mut self, flow: ObservedFlow, ctx: &dyn Context) -> Observation {
        let (src, src_id) = self.vertex(flow.src.clone(), flow.src_addr, ctx);
        let (dst, dst_id) = self.vertex(flow.dst.clone(), flow.dst_addr, ctx);
        let mode = [src.namespace(), dst.namespace()]
            .into_iter()
            .flatten()
            .map(|ns| ctx.mode(ns))
            .min_by_key(|m| mode_rank(*m))
            .unwrap_or(PolicyMode::Enforce);
        let port_name = dst_id
            .as_ref()
            .and_then(|d| ctx.port_name(d, flow.protocol, flow.dst_port));
        let key = EdgeKey {
            src: src.clone(),
            dst: dst.clone(),
            protocol: flow.protocol,
            port: flow.dst_port,
        };
        let e = self.edges.entry(key).or_default();
        let fresh = e.count == 0;
        if fresh {
            e.first_seen_unix_millis = flow.first_seen_unix_millis;
            e.port_name.clone_from(&port_name);
        } else if e.port_name != port_name {
            // Observations disagree: the number is what is known.
            e.port_name = None;
        }
        e.count = e.count.saturating_add(flow.count);
        e.first_seen_unix_millis = e.first_seen_unix_millis.min(flow.first_seen_unix_millis);
        e.last_seen_unix_millis = e.last_seen_unix_millis.max(flow.last_seen_unix_millis);
        let c = match flow.verdict {
            FlowVerdict::Allowed => &mut e.verdicts.allowed,
            FlowVerdict::Denied => &mut e.verdicts.denied,
            FlowVerdict::WouldDeny => &mut e.verdicts.would_deny,
        };
        *c = c.saturating_add(flow.count);
        e.last_rule.clone_from(&flow.rule);
        if mode == PolicyMode::Learn && flow.verdict != FlowVerdict::Denied {
            e.learned = true;
        }
        let anomaly =
            mode != PolicyMode::Learn && !e.learned && !e.alerted && !ctx.declared_allows(&flow);
        if anomaly {
            e.alerted = true;
        }
        Observation {
            src_pod: src_id.map(|i| i.pod),
            dst_pod: dst_id.map(|i| i.pod),
            flow,
            src,
            dst,
            mode,
            anomaly,
        }
    }

    /// Forgets edges not seen since `now - retention` and workloads left
    /// without edges.
    pub fn expire(&mut self, now_unix_millis: u64, retention_millis: u64) {
        let cutoff = now_unix_millis.saturating_sub(retention_millis);
        self.edges.retain(|_, e| e.last_seen_unix_millis >= cutoff);
        let used: BTreeSet<WorkloadId> = self
            .edges
            .keys()
            .flat_map(|k| [k.src.workload(), k.dst.workload()])
            .flatten()
            .collect();
        self.workloads.retain(|w, _| used.contains(w));
    }

    /// The learned edges (the baseline).
    pub fn baseline(&self) -> impl Iterator<Item = (&EdgeKey, &EdgeStats)> {
        self.edges.iter().filter(|(_, e)| e.learned)
    }

    pub fn to_doc(&self) -> GraphDoc {
        GraphDoc {
            version: GRAPH_VERSION,
            workloads: self
                .workloads
                .iter()
                .map(|(w, l)| WorkloadDoc {
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                    selector: l.clone(),
                })
                .collect(),
            edges: self
                .edges
                .iter()
                .map(|(k, e)| EdgeDoc {
                    src: k.src.clone(),
                    dst: k.dst.clone(),
                    protocol: k.protocol.as_str().to_owned(),
                    port: k.port,
                    stats: e.clone(),
                })
                .collect(),
            shed: self.shed,
            malformed: self.malformed,
        }
    }

    /// The graph of a document; `Err` names the first bad edge.
    pub fn from_doc(doc: GraphDoc) -> Result<FlowGraph, String> {
        if doc.version != GRAPH_VERSION {
            return Err(format!(
                "version: {} is not a flow graph version this controller reads ({GRAPH_VERSION})",
                doc.version
            ));
        }
        let mut g = FlowGraph {
            shed: doc.shed,
            malformed: doc.malformed,
            ..FlowGraph::default()
        };
        for w in doc.workloads {
            g.workloads.insert(
                WorkloadId {
                    namespace: w.namespace,
                    name: w.name,
                },
                w.selector,
            );
        }
        for (i, e) in doc.edges.into_iter().enumerate() {
            let protocol: Protocol = e
                .protocol
                .parse()
                .map_err(|m| format!("edges[{i}].protocol: {m}"))?;
            if e.port == 0 {
                return Err(format!("edges[{i}].port: 0 is not a port"));
            }
            let stats = e.stats;
            g.edges.insert(
                EdgeKey {
                    src: e.src,
                    dst: e.dst,
                    protocol,
                    port: e.port,
                },
                stats,
            );
        }
        Ok(g)
    }
}

/// The graph as JSON (`/flows`, the state file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphDoc {
    pub version: u32,
    pub workloads: Vec<WorkloadDoc>,
    pub edges: Vec<EdgeDoc>,
    #[serde(default)]
    pub shed: u64,
    #[serde(default)]
    pub malformed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadDoc {
    pub namespace: String,
    pub name: String,
    /// The labels that select the workload's pods.
    pub selector: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeDoc {
    pub src: Vertex,
    pub dst: Vertex,
    pub protocol: String,
    pub port: u16,
    #[serde(flatten)]
    pub stats: EdgeStats,
}

/// Names the ports of edges that have no name yet, from the pods `inv` has
/// now: when every pod of the destination workload that has the port names
/// it, with one name. (Used by `bulkhead recommend --source`.)
pub fn name_ports(graph: &mut FlowGraph, inv: &Inventory) {
    for (k, e) in graph.edges.iter_mut() {
        let Some(w) = k.dst.workload() else { continue };
        if e.port_name.is_some() {
            continue;
        }
        let names: BTreeSet<Option<&String>> = inv
            .pods
            .iter()
            .filter(|p| {
                workload_of(&PodIdentity {
                    namespace: p.namespace.clone(),
                    pod: p.name.clone(),
                    labels: p.labels.clone(),
                })
                .0 == w
            })
            .flat_map(|p| p.ports.iter())
            .filter(|c| c.protocol == k.protocol && c.port == k.port)
            .map(|c| c.name.as_ref())
            .collect();
        if let [Some(n)] = names.into_iter().collect::<Vec<_>>().as_slice() {
            e.port_name = Some((*n).clone());
        }
    }
}
