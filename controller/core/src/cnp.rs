//! `ClusterNetworkPolicy` (`policy.networking.k8s.io/v1alpha2`, the upstream
//! SIG-network API of network-policy-api v0.2.0): the validated model and its
//! loader. Read from the upstream Go types (`apis/v1alpha2/
//! clusternetworkpolicy_types.go`), not guessed:
//!
//! ```text
//!   spec.tier        Admin | Baseline
//!   spec.priority    0..=1000, lower wins; ties are undefined upstream, here
//!                    broken by name (byte order): (tier, priority, name)
//!   spec.subject     exactly one of namespaces | pods{namespaceSelector, podSelector}
//!   spec.ingress[]   ≤ 25 rules: {name ≤ 100, action Accept|Deny|Pass,
//!                    from[1..=25] (namespaces | pods), protocols[1..=25]}
//!   spec.egress[]    ≤ 25 rules: {.., to[1..=25] (namespaces | pods | nodes |
//!                    networks[1..=25]), protocols}
//!   protocols[]      exactly one of tcp|udp|sctp {destinationPort: number |
//!                    range{start < end}} | destinationNamedPort
//! ```
//!
//! Host-network pods are neither subjects nor `namespaces`/`pods` peers.
//! `domainNames` (experimental, Accept only) is not supported and rejected.

use std::fmt;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use crate::labels::{Labels, Selector};
use crate::load::{Checker, Rejected, meta_names, parse_cidr, selector, validate_port_name};
use crate::model::{Direction, NamespaceScope, Object, Peer, PortMatch, PortSpec, Protocol};

/// The upstream API group and version.
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// Upstream limits (`+kubebuilder:validation:MaxItems=25`).
pub const MAX_RULES: usize = 25;
pub const MAX_PEERS: usize = 25;
pub const MAX_PROTOCOLS: usize = 25;
pub const MAX_NETWORKS: usize = 25;
pub const MAX_RULE_NAME: usize = 100;
pub const MAX_PRIORITY: i64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pods a ClusterNetworkPolicy applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    /// Every pod of the selected namespaces.
    Namespaces(Selector),
    /// The selected pods of the selected namespaces.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

impl Subject {
    pub fn matches(&self, namespace_labels: &Labels, pod_labels: &Labels) -> bool {
        match self {
            Subject::Namespaces(ns) => ns.matches(namespace_labels),
            Subject::Pods { namespaces, pods } => {
                namespaces.matches(namespace_labels) && pods.matches(pod_labels)
            }
        }
    }
}

/// A peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CnpPeer {
    /// `namespaces` and `pods` (as a [`Peer::Pods`] with a namespace
    /// selector) and each CIDR of `networks` (as a [`Peer::IpBlock`] without
    /// `except`): the NetworkPolicy peer kinds with the same meaning.
    Std(Peer),
    /// `nodes` (experimental): the addresses of the selected Nodes.
    Nodes(Selector),
}

impl fmt::Display for CnpPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CnpPeer::Std(Peer::IpBlock { cidr, .. }) => write!(f, "network {cidr}"),
            CnpPeer::Std(p) => p.fmt(f),
            CnpPeer::Nodes(s) if s.is_everything() => f.write_str("all nodes"),
            CnpPeer::Nodes(s) => write!(f, "nodes {s}"),
        }
    }
}

/// One rule: if a peer and a port match, `action` applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CnpRule {
    pub name: Option<String>,
    pub action: Action,
    /// Never empty (upstream `MinItems=1`).
    pub peers: Vec<CnpPeer>,
    /// Empty: every port and protocol. A `destinationNamedPort` is one
    /// [`PortSpec::Named`] entry per protocol: it matches the destination
    /// pod's container port of that name, whatever its protocol.
    pub ports: Vec<PortMatch>,
}

/// A validated `ClusterNetworkPolicy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterNetworkPolicy {
    pub name: String,
    pub tier: Tier,
    pub priority: u16,
    pub subject: Subject,
    pub ingress: Vec<CnpRule>,
    pub egress: Vec<CnpRule>,
}

impl ClusterNetworkPolicy {
    pub fn rules(&self, dir: Direction) -> &[CnpRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The precedence key: tier, then priority (lower first), then name.
    pub fn order_key(&self) -> (Tier, u16, &str) {
        (self.tier, self.priority, &self.name)
    }

    /// `cnp <name>`.
    pub fn key(&self) -> String {
        format!("cnp {}", self.name)
    }
}

/// Describes a rule: `Deny to pods app=db in namespaces team=a; ports TCP/5432`.
pub fn describe_rule(rule: &CnpRule, dir: Direction) -> String {
    // Upstream requires at least one peer per rule.
    let what = crate::explain::describe_match(&rule.peers, &rule.ports, dir, "");
    let name = rule
        .name
        .as_deref()
        .map(|n| format!(" ({n:?})"))
        .unwrap_or_default();
    format!("{}{name} {what}", rule.action)
}

// ---- the wire types, as the upstream Go types spell them ----

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CnpIn {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Option<SpecIn>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct SpecIn {
    tier: Option<String>,
    priority: Option<i64>,
    subject: Option<SubjectIn>,
    ingress: Option<Vec<RuleIn>>,
    egress: Option<Vec<RuleIn>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct SubjectIn {
    namespaces: Option<LabelSelector>,
    pods: Option<NamespacedPodIn>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct NamespacedPodIn {
    namespace_selector: Option<LabelSelector>,
    pod_selector: Option<LabelSelector>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct RuleIn {
    name: Option<String>,
    action: Option<String>,
    from: Option<Vec<PeerIn>>,
    to: Option<Vec<PeerIn>>,
    protocols: Option<Vec<ProtocolIn>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct PeerIn {
    namespaces: Option<LabelSelector>,
    pods: Option<NamespacedPodIn>,
    nodes: Option<LabelSelector>,
    networks: Option<Vec<String>>,
    domain_names: Option<Vec<String>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct ProtocolIn {
    tcp: Option<ProtoPortIn>,
    udp: Option<ProtoPortIn>,
    sctp: Option<ProtoPortIn>,
    destination_named_port: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct ProtoPortIn {
    destination_port: Option<PortIn>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct PortIn {
    number: Option<i64>,
    range: Option<RangeIn>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct RangeIn {
    start: Option<i64>,
    end: Option<i64>,
}

/// Converts a parsed ClusterNetworkPolicy, checking every upstream rule and
/// naming the field of each problem.
pub(crate) fn convert(cnp: CnpIn) -> Result<Object, Rejected> {
    let (_, name) = meta_names(&cnp.metadata, false)?;
    let mut c = Checker::new();
    let spec = cnp.spec.unwrap_or_else(|| {
        c.fail("spec", "missing");
        SpecIn::default()
    });
    let tier = match spec.tier.as_deref() {
        Some("Admin") => Tier::Admin,
        Some("Baseline") => Tier::Baseline,
        Some(other) => {
            c.fail(
                "spec.tier",
                format!("unsupported tier {other:?}: must be Admin or Baseline"),
            );
            Tier::Admin
        }
        None => {
            c.fail("spec.tier", "missing: must be Admin or Baseline");
            Tier::Admin
        }
    };
    let priority = match spec.priority {
        Some(p) if (0..=MAX_PRIORITY).contains(&p) => p as u16,
        Some(p) => {
            c.fail(
                "spec.priority",
                format!("{p} is out of range: must be 0 to {MAX_PRIORITY}"),
            );
            0
        }
        None => {
            c.fail("spec.priority", "missing: a number from 0 to 1000");
            0
        }
    };
    let subject = match spec.subject {
        None => {
            c.fail("spec.subject", "missing: give namespaces or pods");
            None
        }
        Some(SubjectIn {
            namespaces: Some(ns),
            pods: None,
        }) => Some(Subject::Namespaces(selector(
            &mut c,
            "spec.subject.namespaces",
            &ns,
        ))),
        Some(SubjectIn {
            namespaces: None,
            pods: Some(p),
        }) => namespaced_pod(&mut c, "spec.subject.pods", &p)
            .map(|(namespaces, pods)| Subject::Pods { namespaces, pods }),
        Some(_) => {
            c.fail("spec.subject", "give exactly one of namespaces and pods");
            None
        }
    };
    let ingress = rules(&mut c, Direction::Ingress, spec.ingress.as_deref());
    let egress = rules(&mut c, Direction::Egress, spec.egress.as_deref());
    let policy = subject.map(|subject| ClusterNetworkPolicy {
        name: name.clone(),
        tier,
        priority,
        subject,
        ingress,
        egress,
    });
    match policy {
        Some(p) => c.finish(name, Object::ClusterNetworkPolicy(p)),
        None => Err(c.into_rejected(name)),
    }
}

fn namespaced_pod(
    c: &mut Checker,
    field: &str,
    p: &NamespacedPodIn,
) -> Option<(Selector, Selector)> {
    let namespaces = match &p.namespace_selector {
        Some(s) => selector(c, &format!("{field}.namespaceSelector"), s),
        None => Selector::everything(),
    };
    let Some(pods) = &p.pod_selector else {
        c.fail(
            format!("{field}.podSelector"),
            "required (use {} for every pod)",
        );
        return None;
    };
    Some((
        namespaces,
        selector(c, &format!("{field}.podSelector"), pods),
    ))
}

fn rules(c: &mut Checker, dir: Direction, rules: Option<&[RuleIn]>) -> Vec<CnpRule> {
    let list = dir.as_str();
    let rules = rules.unwrap_or_default();
    if rules.len() > MAX_RULES {
        c.fail(
            format!("spec.{list}"),
            format!(
                "{} rules: at most {MAX_RULES} are allowed per direction",
                rules.len()
            ),
        );
    }
    rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rule(c, dir, &format!("spec.{list}[{i}]"), r))
        .collect()
}

fn rule(c: &mut Checker, dir: Direction, field: &str, r: &RuleIn) -> Option<CnpRule> {
    if let Some(n) = &r.name
        && n.chars().count() > MAX_RULE_NAME
    {
        c.fail(
            format!("{field}.name"),
            format!("{} characters: at most {MAX_RULE_NAME}", n.chars().count()),
        );
    }
    let action = match r.action.as_deref() {
        Some("Accept") => Some(Action::Accept),
        Some("Deny") => Some(Action::Deny),
        Some("Pass") => Some(Action::Pass),
        Some(other) => {
            c.fail(
                format!("{field}.action"),
                format!("unsupported action {other:?}: must be Accept, Deny or Pass"),
            );
            None
        }
        None => {
            c.fail(format!("{field}.action"), "missing: Accept, Deny or Pass");
            None
        }
    };
    let (peers_name, peers_in, wrong, wrong_name) = match dir {
        Direction::Ingress => ("from", &r.from, &r.to, "to"),
        Direction::Egress => ("to", &r.to, &r.from, "from"),
    };
    if wrong.is_some() {
        c.fail(
            format!("{field}.{wrong_name}"),
            format!("{dir} rules name their peers in {peers_name:?}, not {wrong_name:?}"),
        );
    }
    let peers_field = format!("{field}.{peers_name}");
    let peers_in = peers_in.as_deref().unwrap_or_default();
    if peers_in.is_empty() {
        c.fail(&peers_field, "must list at least one peer");
    }
    if peers_in.len() > MAX_PEERS {
        c.fail(
            &peers_field,
            format!(
                "{} peers: at most {MAX_PEERS} are allowed per rule",
                peers_in.len()
            ),
        );
    }
    let mut peers = Vec::new();
    let mut address_peer = false;
    for (i, p) in peers_in.iter().enumerate() {
        let pf = format!("{peers_field}[{i}]");
        let given = [
            p.namespaces.is_some(),
            p.pods.is_some(),
            p.nodes.is_some(),
            p.networks.is_some(),
            p.domain_names.is_some(),
        ]
        .into_iter()
        .filter(|g| *g)
        .count();
        if given != 1 {
            c.fail(
                &pf,
                match dir {
                    Direction::Ingress => "give exactly one of namespaces and pods",
                    Direction::Egress => "give exactly one of namespaces, pods, nodes and networks",
                },
            );
            continue;
        }
        if let Some(ns) = &p.namespaces {
            peers.push(CnpPeer::Std(Peer::Pods {
                namespaces: NamespaceScope::Selected(selector(c, &format!("{pf}.namespaces"), ns)),
                pods: Selector::everything(),
            }));
        } else if let Some(np) = &p.pods {
            if let Some((namespaces, pods)) = namespaced_pod(c, &format!("{pf}.pods"), np) {
                peers.push(CnpPeer::Std(Peer::Pods {
                    namespaces: NamespaceScope::Selected(namespaces),
                    pods,
                }));
            }
        } else if dir == Direction::Ingress {
            let what = if p.nodes.is_some() {
                "nodes"
            } else if p.networks.is_some() {
                "networks"
            } else {
                "domainNames"
            };
            c.fail(
                format!("{pf}.{what}"),
                format!("{what} is an egress peer only; ingress peers are namespaces or pods"),
            );
        } else if let Some(nodes) = &p.nodes {
            address_peer = true;
            peers.push(CnpPeer::Nodes(selector(c, &format!("{pf}.nodes"), nodes)));
        } else if let Some(nets) = &p.networks {
            address_peer = true;
            let nf = format!("{pf}.networks");
            if nets.is_empty() {
                c.fail(&nf, "must list at least one CIDR");
            }
            if nets.len() > MAX_NETWORKS {
                c.fail(
                    &nf,
                    format!("{} CIDRs: at most {MAX_NETWORKS} are allowed", nets.len()),
                );
            }
            for (j, n) in nets.iter().enumerate() {
                if let Some(cidr) = parse_cidr(c, &format!("{nf}[{j}]"), n) {
                    peers.push(CnpPeer::Std(Peer::IpBlock {
                        cidr,
                        except: Vec::new(),
                    }));
                }
            }
        } else {
            c.fail(
                format!("{pf}.domainNames"),
                "domainNames peers are not supported by bulkhead",
            );
        }
    }
    let ports = protocols(c, field, r.protocols.as_ref(), dir, address_peer);
    Some(CnpRule {
        name: r.name.clone().filter(|n| !n.is_empty()),
        action: action?,
        peers,
        ports,
    })
}

fn protocols(
    c: &mut Checker,
    field: &str,
    list: Option<&Vec<ProtocolIn>>,
    dir: Direction,
    address_peer: bool,
) -> Vec<PortMatch> {
    let Some(list) = list else {
        return Vec::new();
    };
    let pf = format!("{field}.protocols");
    if list.is_empty() {
        c.fail(&pf, "must list at least one protocol when given");
    }
    if list.len() > MAX_PROTOCOLS {
        c.fail(
            &pf,
            format!(
                "{} protocols: at most {MAX_PROTOCOLS} are allowed",
                list.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let f = format!("{pf}[{i}]");
        let given = [
            p.tcp.is_some(),
            p.udp.is_some(),
            p.sctp.is_some(),
            p.destination_named_port.is_some(),
        ]
        .into_iter()
        .filter(|g| *g)
        .count();
        if given != 1 {
            c.fail(
                &f,
                "give exactly one of tcp, udp, sctp and destinationNamedPort",
            );
            continue;
        }
        if let Some(name) = &p.destination_named_port {
            let nf = format!("{f}.destinationNamedPort");
            if let Err(e) = validate_port_name(name) {
                c.fail(&nf, e);
                continue;
            }
            if dir == Direction::Egress && address_peer {
                c.fail(
                    &nf,
                    "networks/nodes peers cannot be used with a named port: they have no named ports",
                );
                continue;
            }
            for protocol in Protocol::ALL {
                out.push(PortMatch {
                    protocol,
                    port: PortSpec::Named(name.clone()),
                });
            }
            continue;
        }
        let (protocol, key, pp) = match (&p.tcp, &p.udp, &p.sctp) {
            (Some(pp), _, _) => (Protocol::Tcp, "tcp", pp),
            (_, Some(pp), _) => (Protocol::Udp, "udp", pp),
            (_, _, Some(pp)) => (Protocol::Sctp, "sctp", pp),
            _ => continue,
        };
        let df = format!("{f}.{key}.destinationPort");
        let Some(port) = &pp.destination_port else {
            c.fail(&df, "required: a number or a range");
            continue;
        };
        let num = |c: &mut Checker, f: String, n: Option<i64>| -> Option<u16> {
            match n {
                Some(n) if (1..=65535).contains(&n) => Some(n as u16),
                Some(n) => {
                    c.fail(f, format!("{n} is not a port number (1-65535)"));
                    None
                }
                None => {
                    c.fail(f, "required");
                    None
                }
            }
        };
        match (port.number, &port.range) {
            (Some(n), None) => {
                if let Some(n) = num(c, format!("{df}.number"), Some(n)) {
                    out.push(PortMatch {
                        protocol,
                        port: PortSpec::Number(n),
                    });
                }
            }
            (None, Some(r)) => {
                let start = num(c, format!("{df}.range.start"), r.start);
                let end = num(c, format!("{df}.range.end"), r.end);
                if let (Some(s), Some(e)) = (start, end) {
                    if s >= e {
                        c.fail(
                            format!("{df}.range"),
                            format!("start {s} must be less than end {e}"),
                        );
                    } else {
                        out.push(PortMatch {
                            protocol,
                            port: PortSpec::Range(s, e),
                        });
                    }
                }
            }
            _ => c.fail(&df, "give exactly one of number and range"),
        }
    }
    out
}

/// The API version and kind this module loads.
pub fn handles(api_version: &str, kind: &str) -> bool {
    api_version == API_VERSION && kind == "ClusterNetworkPolicy"
}

/// A rule's peer list as `IpNet`s, for tests and tools.
pub fn networks(rule: &CnpRule) -> Vec<IpNet> {
    rule.peers
        .iter()
        .filter_map(|p| match p {
            CnpPeer::Std(Peer::IpBlock { cidr, .. }) => Some(*cidr),
            _ => None,
        })
        .collect()
}
