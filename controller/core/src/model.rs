//! The validated inventory objects. Everything here has passed the loader's
//! checks: selectors, CIDRs, ports and protocols are known good.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;

pub use crate::crd::{FlowLog, GuardMode, PolicyMode, UntenantedNamespaces};
use crate::labels::{Labels, Selector};

/// The label the API server puts on every namespace (since Kubernetes 1.22).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    /// Kubernetes objects spell protocols in upper case; the CLI accepts any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!(
                "unsupported protocol {s:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    /// Always carries `kubernetes.io/metadata.name`, as the API server ensures.
    pub labels: Labels,
}

impl Namespace {
    pub fn new(name: &str, mut labels: Labels) -> Self {
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        Self {
            name: name.to_owned(),
            labels,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// Primary address first (`status.podIP`), then the others of `status.podIPs`.
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    pub ports: Vec<ContainerPort>,
    /// Host-network pods share their node's addresses; NetworkPolicy does not
    /// select them.
    pub host_network: bool,
    pub service_account: String,
}

impl Pod {
    /// `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Resolves a named port against this pod's container ports.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    pub addresses: Vec<IpAddr>,
}

/// A `networking.k8s.io/v1` NetworkPolicy after defaulting and validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `Some` iff the (defaulted) `policyTypes` contain `Ingress`; an empty list
    /// then isolates the selected pods and allows nothing.
    pub ingress: Option<Vec<Rule>>,
    /// `Some` iff the (defaulted) `policyTypes` contain `Egress`.
    pub egress: Option<Vec<Rule>>,
}

impl NetworkPolicy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ingress or egress rule. Empty `peers` matches every peer, empty
/// `ports` every port (as `from`/`to`/`ports` absent or `[]` do in Kubernetes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`.
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    /// `ipBlock`: inside `cidr` and outside every `except`.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceScope {
    /// No `namespaceSelector`: the policy's own namespace.
    PolicyNamespace,
    /// A `namespaceSelector` (`{}` is every namespace).
    Selected(Selector),
}

impl Peer {
    pub fn ip_block_contains(cidr: &IpNet, except: &[IpNet], ip: IpAddr) -> bool {
        cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortMatch {
    pub protocol: Protocol,
    pub port: PortSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PortSpec {
    /// No `port`: every port of the protocol.
    Any,
    Number(u16),
    /// `port` .. `endPort`, inclusive.
    Range(u16, u16),
    /// A named port, resolved against the destination pod's container ports.
    Named(String),
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortSpec::Any => write!(f, "{}/any", self.protocol),
            PortSpec::Number(p) => write!(f, "{}/{}", self.protocol, p),
            PortSpec::Range(a, b) => write!(f, "{}/{}-{}", self.protocol, a, b),
            PortSpec::Named(n) => write!(f, "{}/{}", self.protocol, n),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods { namespaces, pods } => {
                if pods.is_everything() {
                    f.write_str("all pods")?;
                } else {
                    write!(f, "pods {pods}")?;
                }
                match namespaces {
                    NamespaceScope::PolicyNamespace => f.write_str(" in the policy's namespace"),
                    NamespaceScope::Selected(ns) if ns.is_everything() => {
                        f.write_str(" in all namespaces")
                    }
                    NamespaceScope::Selected(ns) => write!(f, " in namespaces {ns}"),
                }
            }
            Peer::IpBlock { cidr, except } if except.is_empty() => write!(f, "ipBlock {cidr}"),
            Peer::IpBlock { cidr, except } => {
                let ex: Vec<String> = except.iter().map(|e| e.to_string()).collect();
                write!(f, "ipBlock {cidr} except {}", ex.join(","))
            }
        }
    }
}

/// The `kind` names this crate understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    Namespace,
    Pod,
    Node,
    NetworkPolicy,
    BulkheadConfig,
    ClusterNetworkPolicy,
    Tenant,
    Quarantine,
    /// The `default/kubernetes` Service (for the API guard).
    Service,
    /// An EndpointSlice of the `default/kubernetes` Service.
    EndpointSlice,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::BulkheadConfig => "BulkheadConfig",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::Tenant => "Tenant",
            Kind::Quarantine => "Quarantine",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Node(Node),
    NetworkPolicy(NetworkPolicy),
    Config(ClusterConfig),
    ClusterNetworkPolicy(crate::cnp::ClusterNetworkPolicy),
    Tenant(crate::tenant::Tenant),
    Quarantine(crate::quarantine::Quarantine),
    /// What the API guard needs of the `default/kubernetes` Service and its
    /// EndpointSlices.
    ApiServer(ApiServer),
}

/// The Kubernetes API server as the API guard sees it: from the Service
/// `default/kubernetes` (its cluster IPs, `source: Service`) or from one of
/// its EndpointSlices (the real endpoints' addresses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiServer {
    /// `Service` or `EndpointSlice`.
    pub kind: Kind,
    /// Always `default`.
    pub namespace: String,
    /// `kubernetes` for the Service; the slice's name.
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Node(_) => Kind::Node,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::Config(_) => Kind::BulkheadConfig,
            Object::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
            Object::Tenant(_) => Kind::Tenant,
            Object::Quarantine(_) => Kind::Quarantine,
            Object::ApiServer(a) => a.kind,
        }
    }

    /// `(kind, namespace, name)`: the identity of the object in a cluster.
    pub fn id(&self) -> ObjectId {
        let (ns, name) = match self {
            Object::Namespace(n) => (None, &n.name),
            Object::Pod(p) => (Some(&p.namespace), &p.name),
            Object::Node(n) => (None, &n.name),
            Object::NetworkPolicy(p) => (Some(&p.namespace), &p.name),
            Object::Config(c) => (None, &c.name),
            Object::ClusterNetworkPolicy(c) => (None, &c.name),
            Object::Tenant(t) => (None, &t.name),
            Object::Quarantine(q) => (Some(&q.namespace), &q.name),
            Object::ApiServer(a) => (Some(&a.namespace), &a.name),
        };
        ObjectId {
            kind: self.kind(),
            namespace: ns.cloned(),
            name: name.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectId {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Bulkhead's cluster-wide settings: the `BulkheadConfig` named `cluster`,
/// validated. Without one, [`ClusterConfig::default`] is in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterConfig {
    /// Always [`crate::crd::BULKHEAD_CONFIG_NAME`] once loaded.
    pub name: String,
    /// The mode of namespaces without a `bulkhead.io/mode` label.
    pub default_mode: PolicyMode,
    pub api_guard: ApiGuard,
    pub flow_log: FlowLog,
    /// How namespaces in no Tenant are treated.
    pub untenanted: UntenantedNamespaces,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: crate::crd::BULKHEAD_CONFIG_NAME.to_owned(),
            default_mode: PolicyMode::default(),
            api_guard: ApiGuard::default(),
            flow_log: FlowLog::default(),
            untenanted: UntenantedNamespaces::default(),
        }
    }
}

/// The Kubernetes API guard's settings, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiGuard {
    pub mode: GuardMode,
    /// A pod is trusted when any entry matches it.
    pub trusted: Vec<TrustedPods>,
}

impl Default for ApiGuard {
    /// Every pod of `kube-system` is trusted; the guard enforces.
    fn default() -> Self {
        Self {
            mode: GuardMode::default(),
            trusted: vec![TrustedPods {
                namespace_selector: Some(Selector::from_pairs([(
                    NAMESPACE_NAME_LABEL,
                    crate::crd::DEFAULT_TRUSTED_NAMESPACE,
                )])),
                pod_selector: None,
                service_accounts: Vec::new(),
            }],
        }
    }
}

/// Pods the API guard trusts: those matching every condition given (at least
/// one is given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrustedPods {
    /// Absent: any namespace.
    pub namespace_selector: Option<Selector>,
    /// Absent: any pod.
    pub pod_selector: Option<Selector>,
    /// `<namespace>/<name>`; empty: any ServiceAccount.
    pub service_accounts: Vec<String>,
}

impl TrustedPods {
    /// Whether a pod with these labels, namespace labels, namespace and
    /// ServiceAccount is trusted by this entry.
    pub fn matches(&self, pod: &Pod, namespace_labels: &Labels) -> bool {
        self.namespace_selector
            .as_ref()
            .is_none_or(|s| s.matches(namespace_labels))
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&pod.labels))
            && (self.service_accounts.is_empty()
                || self
                    .service_accounts
                    .iter()
                    .any(|sa| *sa == format!("{}/{}", pod.namespace, pod.service_account)))
    }
}
