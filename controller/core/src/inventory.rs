//! The inventory: every object the policy core reasons about, with the
//! indexes that keep a query from scanning every policy and pod.
//!
//! ```text
//!   namespaces ──< pods >── nodes
//!       │           │ selected_by[ingress|egress]
//!       └──< policies (per-namespace index)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::diag::{Diagnostic, Origin, Severity};
use crate::labels::Labels;
use crate::load::{Loaded, Located};
use crate::model::{
    ClusterConfig, Direction, Namespace, NetworkPolicy, Node, Object, ObjectId, Pod,
};

pub type PodId = usize;
pub type PolicyId = usize;
pub type NamespaceId = usize;
pub type NodeId = usize;

#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// Sorted by name.
    pub namespaces: Vec<Namespace>,
    /// Sorted by `namespace/name`.
    pub pods: Vec<Pod>,
    /// Sorted by name.
    pub nodes: Vec<Node>,
    /// Sorted by `namespace/name`.
    pub policies: Vec<NetworkPolicy>,
    /// The `BulkheadConfig` in force, or the defaults.
    pub config: ClusterConfig,
    /// Sorted by `namespace/name`. Expired ones are left out by the caller
    /// (see [`crate::quarantine`]).
    pub quarantines: Vec<crate::quarantine::Quarantine>,

    ns_by_name: HashMap<String, NamespaceId>,
    pod_by_key: HashMap<(String, String), PodId>,
    pod_by_ip: HashMap<IpAddr, PodId>,
    node_by_name: HashMap<String, NodeId>,
    node_by_ip: HashMap<IpAddr, NodeId>,
    /// The namespace of each pod.
    pod_ns: Vec<NamespaceId>,
    /// The node of each pod, when known.
    pod_node: Vec<Option<NodeId>>,
    /// Policies per namespace.
    ns_policies: Vec<Vec<PolicyId>>,
    /// Per pod: the policies that select it for ingress, for egress.
    selected_by: Vec<[Vec<PolicyId>; 2]>,
    /// Per pod: the quarantines that cover it (never a host-network pod).
    quarantined: Vec<Vec<crate::quarantine::QuarantineId>>,
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl Inventory {
    /// Builds the inventory and its indexes. The result does not depend on the
    /// order of `objects`. When two objects have the same identity the last
    /// one wins; [`Inventory::from_loaded`] reports such duplicates instead.
    /// Pods in a namespace that is not given get a namespace with only the
    /// `kubernetes.io/metadata.name` label, as the API server would give it.
    pub fn new(objects: impl IntoIterator<Item = Object>) -> (Inventory, Vec<String>) {
        let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
        let mut pods: BTreeMap<(String, String), Pod> = BTreeMap::new();
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut policies: BTreeMap<(String, String), NetworkPolicy> = BTreeMap::new();
        let mut config = ClusterConfig::default();
        let mut quarantines = BTreeMap::new();
        for o in objects {
            match o {
                Object::Namespace(n) => {
                    namespaces.insert(n.name.clone(), n);
                }
                Object::Pod(p) => {
                    pods.insert((p.namespace.clone(), p.name.clone()), p);
                }
                Object::Node(n) => {
                    nodes.insert(n.name.clone(), n);
                }
                Object::NetworkPolicy(p) => {
                    policies.insert((p.namespace.clone(), p.name.clone()), p);
                }
                Object::Config(c) => config = c,
                Object::Quarantine(q) => {
                    quarantines.insert((q.namespace.clone(), q.name.clone()), q);
                }
            }
        }
        for ns in pods
            .keys()
            .map(|(ns, _)| ns)
            .chain(policies.keys().map(|(ns, _)| ns))
        {
            if !namespaces.contains_key(ns) {
                namespaces.insert(ns.clone(), Namespace::new(ns, Labels::new()));
            }
        }

        let mut inv = Inventory {
            namespaces: namespaces.into_values().collect(),
            pods: pods.into_values().collect(),
            nodes: nodes.into_values().collect(),
            policies: policies.into_values().collect(),
            config,
            quarantines: quarantines.into_values().collect(),
            ..Default::default()
        };
        let mut warnings = Vec::new();
        inv.ns_by_name = inv
            .namespaces
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        inv.node_by_name = inv
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        for (i, n) in inv.nodes.iter().enumerate() {
            for ip in &n.addresses {
                inv.node_by_ip.entry(*ip).or_insert(i);
            }
        }
        inv.ns_policies = vec![Vec::new(); inv.namespaces.len()];
        for (i, p) in inv.policies.iter().enumerate() {
            if let Some(&ns) = inv.ns_by_name.get(&p.namespace) {
                inv.ns_policies[ns].push(i);
            }
        }
        for (i, p) in inv.pods.iter().enumerate() {
            inv.pod_by_key
                .insert((p.namespace.clone(), p.name.clone()), i);
            let ns = inv
                .ns_by_name
                .get(&p.namespace)
                .copied()
                .unwrap_or_default();
            inv.pod_ns.push(ns);
            inv.pod_node.push(
                p.node
                    .as_ref()
                    .and_then(|n| inv.node_by_name.get(n).copied()),
            );
            if !p.host_network {
                for ip in &p.ips {
                    match inv.pod_by_ip.get(ip) {
                        Some(&other) => warnings.push(format!(
                            "pods {} and {} both claim address {ip}; it is taken as {}",
                            inv.pods[other].key(),
                            p.key(),
                            inv.pods[other].key()
                        )),
                        None => {
                            inv.pod_by_ip.insert(*ip, i);
                        }
                    }
                }
            }
            let mut sel: [Vec<PolicyId>; 2] = [Vec::new(), Vec::new()];
            // NetworkPolicy does not apply to host-network pods.
            if !p.host_network {
                for &pid in &inv.ns_policies[ns] {
                    let pol = &inv.policies[pid];
                    if pol.pod_selector.matches(&p.labels) {
                        if pol.ingress.is_some() {
                            sel[0].push(pid);
                        }
                        if pol.egress.is_some() {
                            sel[1].push(pid);
                        }
                    }
                }
            }
            inv.selected_by.push(sel);
            let covering: Vec<usize> = (0..inv.quarantines.len())
                .filter(|&q| inv.quarantines[q].covers(p))
                .collect();
            if p.host_network && !covering.is_empty() {
                warnings.push(format!(
                    "pod {} uses the host network and cannot be quarantined (Quarantine {}); quarantine the node instead",
                    p.key(),
                    inv.quarantines[covering[0]].key()
                ));
                inv.quarantined.push(Vec::new());
            } else {
                inv.quarantined.push(covering);
            }
        }
        (inv, warnings)
    }

    /// Builds the inventory from loaded files, reporting objects defined more
    /// than once (an error: which one is meant cannot be known).
    pub fn from_loaded(loaded: &Loaded) -> (Inventory, Vec<Diagnostic>) {
        let mut origins: HashMap<ObjectId, Vec<&Origin>> = HashMap::new();
        for l in &loaded.objects {
            origins.entry(l.object.id()).or_default().push(&l.origin);
        }
        let mut diags = Vec::new();
        let mut keep: Vec<&Located> = Vec::new();
        for l in &loaded.objects {
            let id = l.object.id();
            match origins.get(&id).map(Vec::as_slice) {
                Some([_]) => keep.push(l),
                Some([first, ..]) if *first != &l.origin => diags.push(Diagnostic {
                    severity: Severity::Error,
                    origin: Some(l.origin.clone()),
                    object: Some(id.to_string()),
                    field: Some("metadata.name".into()),
                    // Keeping either copy would make the result depend on
                    // the order of the files.
                    message: format!("defined twice (first at {first}); every copy is ignored"),
                }),
                _ => {}
            }
        }
        let (inv, warnings) = Inventory::new(keep.into_iter().map(|l| l.object.clone()));
        diags.extend(warnings.into_iter().map(|w| Diagnostic {
            severity: Severity::Warning,
            origin: None,
            object: None,
            field: None,
            message: w,
        }));
        (inv, diags)
    }

    pub fn pod_id(&self, namespace: &str, name: &str) -> Option<PodId> {
        self.pod_by_key
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    /// The pod that owns an address (host-network pods own none).
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<PodId> {
        self.pod_by_ip.get(&ip).copied()
    }

    pub fn node_by_ip(&self, ip: IpAddr) -> Option<NodeId> {
        self.node_by_ip.get(&ip).copied()
    }

    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.node_by_name.get(name).copied()
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.ns_by_name.get(name).map(|&i| &self.namespaces[i])
    }

    /// The labels of a pod's namespace.
    pub fn pod_namespace_labels(&self, pod: PodId) -> &Labels {
        &self.namespaces[self.pod_ns[pod]].labels
    }

    pub fn pod_node(&self, pod: PodId) -> Option<&Node> {
        self.pod_node[pod].map(|n| &self.nodes[n])
    }

    /// The policies that select `pod` for `dir`, sorted by `namespace/name`.
    /// Empty means the pod is not isolated in that direction.
    pub fn selecting(&self, pod: PodId, dir: Direction) -> &[PolicyId] {
        &self.selected_by[pod][dir_index(dir)]
    }

    /// The quarantines that cover a pod, sorted by `namespace/name`; empty
    /// when it is not quarantined.
    pub fn quarantines_of(&self, pod: PodId) -> &[crate::quarantine::QuarantineId] {
        self.quarantined
            .get(pod)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The policies of a namespace.
    pub fn namespace_policies(&self, namespace: &str) -> &[PolicyId] {
        self.ns_by_name
            .get(namespace)
            .map(|&i| self.ns_policies[i].as_slice())
            .unwrap_or_default()
    }
}
