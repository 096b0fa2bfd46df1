//! The inventory: every object the policy core reasons about, with the
//! indexes that keep a query from scanning every policy and pod.
//!
//! ```text
//!   namespaces ──< pods >── nodes
//!       │           │ selected_by[ingress|egress]
//!       └──< policies (per-namespace index)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::cnp::{ClusterNetworkPolicy, Tier};
use crate::diag::{Diagnostic, Origin, Severity};
use crate::labels::Labels;
use crate::load::{Loaded, Located};
use crate::model::{
    ClusterConfig, Direction, Namespace, NetworkPolicy, Node, Object, ObjectId, Pod, PolicyMode,
    Rule, UntenantedNamespaces,
};
use crate::tenant::{Fence, Tenant};

/// The namespace label that sets a namespace's mode: `learn`, `monitor` or
/// `enforce`. Without it, the cluster's `defaultMode` applies.
pub const MODE_LABEL: &str = "bulkhead.io/mode";

/// A `bulkhead.io/mode` label value; `None` when it is not one of the three.
pub fn parse_mode(value: &str) -> Option<PolicyMode> {
    match value {
        "learn" => Some(PolicyMode::Learn),
        "monitor" => Some(PolicyMode::Monitor),
        "enforce" => Some(PolicyMode::Enforce),
        _ => None,
    }
}

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
    /// ClusterNetworkPolicies in precedence order: tier, priority, name.
    pub cnps: Vec<ClusterNetworkPolicy>,
    /// Tenants, sorted by name.
    pub tenants: Vec<Tenant>,
    /// Per tenant: its exceptions as rules, `[allowFrom, allowTo]`.
    pub tenant_rules: Vec<[Vec<(usize, Rule)>; 2]>,
    /// Per namespace: how the tenant fences stand.
    pub ns_fence: Vec<Fence>,
    /// Sorted by `namespace/name`. Expired ones are left out by the caller
    /// (see [`crate::quarantine`]).
    pub quarantines: Vec<crate::quarantine::Quarantine>,
    /// The API guard's view of the API server: the `default/kubernetes`
    /// Service's cluster IPs and its EndpointSlices' addresses, sorted.
    pub api_vips: Vec<IpAddr>,
    pub api_endpoints: Vec<IpAddr>,

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
    /// Per pod: whether the API guard keeps it away from the API server,
    /// the nodes and the metadata address (an untrusted pod, guard not off).
    guarded: Vec<bool>,
    /// Per pod: the quarantines that cover it (never a host-network pod).
    quarantined: Vec<Vec<crate::quarantine::QuarantineId>>,
    /// Per pod: `[Admin, Baseline][ingress, egress]`, the ClusterNetworkPolicies
    /// that select it as subject and have rules in that direction, in
    /// precedence order.
    cnp_selected_by: Vec<[[Vec<CnpId>; 2]; 2]>,
}

pub type CnpId = usize;
pub type TenantId = usize;

fn tier_index(t: Tier) -> usize {
    match t {
        Tier::Admin => 0,
        Tier::Baseline => 1,
    }
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
        let mut cnps: BTreeMap<String, ClusterNetworkPolicy> = BTreeMap::new();
        let mut tenants: BTreeMap<String, Tenant> = BTreeMap::new();
        let mut quarantines = BTreeMap::new();
        let mut api_vips = BTreeSet::new();
        let mut api_endpoints = BTreeSet::new();
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
                Object::ClusterNetworkPolicy(c) => {
                    cnps.insert(c.name.clone(), c);
                }
                Object::Tenant(t) => {
                    tenants.insert(t.name.clone(), t);
                }
                Object::Quarantine(q) => {
                    quarantines.insert((q.namespace.clone(), q.name.clone()), q);
                }
                Object::ApiServer(a) => match a.kind {
                    crate::model::Kind::Service => api_vips.extend(a.addresses),
                    _ => api_endpoints.extend(a.addresses),
                },
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
            tenants: tenants.into_values().collect(),
            quarantines: quarantines.into_values().collect(),
            api_vips: api_vips.into_iter().collect(),
            api_endpoints: api_endpoints.into_iter().collect(),
            ..Default::default()
        };
        let mut cnps: Vec<ClusterNetworkPolicy> = cnps.into_values().collect();
        cnps.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        inv.cnps = cnps;
        let mut warnings = Vec::new();
        for n in &inv.namespaces {
            if let Some(v) = n.labels.get(MODE_LABEL)
                && parse_mode(v).is_none()
            {
                warnings.push(format!(
                    "Namespace {}: metadata.labels[{MODE_LABEL}] is {v:?}, not learn, monitor or enforce; the namespace is enforced",
                    n.name
                ));
            }
        }
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
        inv.index_tenants(&mut warnings);
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
            let (sel, cs, guarded, covering) = inv.pod_indexes(p, ns, &mut warnings);
            inv.selected_by.push(sel);
            inv.cnp_selected_by.push(cs);
            inv.guarded.push(guarded);
            inv.quarantined.push(covering);
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
        diags.extend(crate::tenant::conflict_diagnostics(&inv.tenant_reports()));
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

    /// The mode of a namespace: its `bulkhead.io/mode` label, else the
    /// cluster default. A label that is not a mode enforces (never fails open).
    pub fn namespace_mode(&self, ns: &str) -> PolicyMode {
        let label = self
            .ns_by_name
            .get(ns)
            .and_then(|&i| self.namespaces[i].labels.get(MODE_LABEL));
        match label {
            Some(v) => parse_mode(v).unwrap_or(PolicyMode::Enforce),
            None => self.config.default_mode,
        }
    }

    /// The labels of a pod's namespace.
    pub fn pod_namespace_labels(&self, pod: PodId) -> &Labels {
        &self.namespaces[self.pod_ns[pod]].labels
    }

    /// Whether the API guard keeps `pod` away from the API server, the nodes
    /// and the metadata address.
    pub fn guarded(&self, pod: PodId) -> bool {
        self.guarded.get(pod).copied().unwrap_or(false)
    }

    pub fn pod_node(&self, pod: PodId) -> Option<&Node> {
        self.pod_node[pod].map(|n| &self.nodes[n])
    }

    /// The policies that select `pod` for `dir`, sorted by `namespace/name`.
    /// Empty means the pod is not isolated in that direction.
    pub fn selecting(&self, pod: PodId, dir: Direction) -> &[PolicyId] {
        &self.selected_by[pod][dir_index(dir)]
    }

    /// The ClusterNetworkPolicies of `tier` that select `pod` as subject and
    /// have `dir` rules, in precedence order (priority, then name).
    pub fn cnp_selecting(&self, pod: PodId, tier: Tier, dir: Direction) -> &[CnpId] {
        &self.cnp_selected_by[pod][tier_index(tier)][dir_index(dir)]
    }

    /// How the fences stand for the namespace of `pod`.
    pub fn pod_fence(&self, pod: PodId) -> &Fence {
        &self.ns_fence[self.pod_ns[pod]]
    }

    /// How the fences stand for a namespace (by index in `namespaces`).
    pub fn namespace_fence(&self, ns: NamespaceId) -> &Fence {
        &self.ns_fence[ns]
    }

    /// The index of a pod's namespace in `namespaces`.
    pub fn pod_namespace_id(&self, pod: PodId) -> NamespaceId {
        self.pod_ns[pod]
    }

    /// Whether tenant `t` holds namespace `ns`.
    pub fn tenant_holds(&self, t: TenantId, ns: NamespaceId) -> bool {
        matches!(&self.ns_fence[ns], Fence::Tenants(ts) if ts.contains(&t))
    }

    /// Every tenant's namespaces and conflicts (what goes on their status).
    pub fn tenant_reports(&self) -> Vec<crate::tenant::TenantReport> {
        crate::tenant::reports(
            &self.tenants,
            self.namespaces.iter().map(|n| (n.name.as_str(), &n.labels)),
        )
    }

    fn index_tenants(&mut self, warnings: &mut Vec<String>) {
        let untenanted = match self.config.untenanted {
            UntenantedNamespaces::Shared => Fence::Open,
            UntenantedNamespaces::Isolated => Fence::Own,
        };
        self.ns_fence = self
            .namespaces
            .iter()
            .map(|n| {
                let ts: Vec<TenantId> = (0..self.tenants.len())
                    .filter(|&t| self.tenants[t].namespaces.matches(&n.labels))
                    .collect();
                if ts.is_empty() {
                    untenanted.clone()
                } else {
                    Fence::Tenants(ts)
                }
            })
            .collect();
        self.tenant_rules = self
            .tenants
            .iter()
            .map(|t| {
                let mut out: [Vec<(usize, Rule)>; 2] = Default::default();
                for dir in [Direction::Ingress, Direction::Egress] {
                    for (i, e) in t.exceptions(dir).iter().enumerate() {
                        match crate::tenant::exception_rule(e, &self.tenants) {
                            Some(r) => out[dir_index(dir)].push((i, r)),
                            None => warnings.push(format!(
                                "Tenant {}: exception {} names a Tenant that does not exist; it lets nothing through",
                                t.name, e.peer
                            )),
                        }
                    }
                }
                out
            })
            .collect();
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

/// The indexes of one pod that depend on nothing but the pod, its namespace
/// and the cluster-wide objects: `selected_by`, `cnp_selected_by`, `guarded`,
/// `quarantined`.
type PodIndexes = ([Vec<PolicyId>; 2], [[Vec<CnpId>; 2]; 2], bool, Vec<usize>);

impl Inventory {
    fn pod_indexes(&self, p: &Pod, ns: NamespaceId, warnings: &mut Vec<String>) -> PodIndexes {
        let inv = self;
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
        // ClusterNetworkPolicy subjects exclude host-network pods too.
        let mut cs: [[Vec<CnpId>; 2]; 2] = Default::default();
        if !p.host_network {
            let ns_labels = &inv.namespaces[ns].labels;
            for (cid, c) in inv.cnps.iter().enumerate() {
                if c.subject.matches(ns_labels, &p.labels) {
                    for dir in [Direction::Ingress, Direction::Egress] {
                        if !c.rules(dir).is_empty() {
                            cs[tier_index(c.tier)][dir_index(dir)].push(cid);
                        }
                    }
                }
            }
        }
        let guarded = inv.config.api_guard.mode != crate::model::GuardMode::Off
            && !p.host_network
            && !inv
                .config
                .api_guard
                .trusted
                .iter()
                .any(|t| t.matches(p, &inv.namespaces[ns].labels));
        let covering: Vec<usize> = (0..inv.quarantines.len())
            .filter(|&q| inv.quarantines[q].covers(p))
            .collect();
        if p.host_network && !covering.is_empty() {
            warnings.push(format!(
                "pod {} uses the host network and cannot be quarantined (Quarantine {}); quarantine the node instead",
                p.key(),
                inv.quarantines[covering[0]].key()
            ));
            (sel, cs, guarded, Vec::new())
        } else {
            (sel, cs, guarded, covering)
        }
    }

    /// Adds a pod or replaces the pod of the same namespace and name, in
    /// place, leaving every index as [`Inventory::new`] builds it for the
    /// objects with that change. `Err` gives the pod back when its namespace
    /// is not known (the caller rebuilds: a new namespace shifts indexes).
    /// Returns the warnings about the pod (addresses it shares, quarantine of
    /// a host-network pod).
    pub fn upsert_pod(&mut self, pod: Pod) -> Result<Vec<String>, Box<Pod>> {
        let Some(&ns) = self.ns_by_name.get(&pod.namespace) else {
            return Err(Box::new(pod));
        };
        let mut warnings = Vec::new();
        let ix = self.pod_indexes(&pod, ns, &mut warnings);
        let node = pod
            .node
            .as_ref()
            .and_then(|n| self.node_by_name.get(n).copied());
        let key = (pod.namespace.clone(), pod.name.clone());
        let mut ips = claimed(&pod);
        let id = match self.pod_by_key.get(&key) {
            Some(&id) => {
                let old = std::mem::replace(&mut self.pods[id], pod);
                ips.extend(claimed(&old));
                id
            }
            None => {
                let id = self.pods.partition_point(|p| {
                    (p.namespace.as_str(), p.name.as_str()) < (key.0.as_str(), key.1.as_str())
                });
                for v in self
                    .pod_by_key
                    .values_mut()
                    .chain(self.pod_by_ip.values_mut())
                {
                    if *v >= id {
                        *v += 1;
                    }
                }
                self.pods.insert(id, pod);
                self.pod_by_key.insert(key, id);
                self.pod_ns.insert(id, ns);
                self.pod_node.insert(id, None);
                self.selected_by.insert(id, Default::default());
                self.cnp_selected_by.insert(id, Default::default());
                self.guarded.insert(id, false);
                self.quarantined.insert(id, Vec::new());
                id
            }
        };
        self.pod_node[id] = node;
        let (sel, cs, guarded, covering) = ix;
        self.selected_by[id] = sel;
        self.cnp_selected_by[id] = cs;
        self.guarded[id] = guarded;
        self.quarantined[id] = covering;
        self.reown(&ips, &mut warnings);
        Ok(warnings)
    }

    /// Removes a pod in place (see [`Inventory::upsert_pod`]); `None` when
    /// there is no such pod. A namespace made up for the pod alone stays (it
    /// has no pods: no verdict and no ruleset depends on it).
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Option<Pod> {
        let id = self
            .pod_by_key
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        let old = self.pods.remove(id);
        self.pod_ns.remove(id);
        self.pod_node.remove(id);
        self.selected_by.remove(id);
        self.cnp_selected_by.remove(id);
        self.guarded.remove(id);
        self.quarantined.remove(id);
        let ips = claimed(&old);
        self.pod_by_ip.retain(|_, v| *v != id);
        for v in self
            .pod_by_key
            .values_mut()
            .chain(self.pod_by_ip.values_mut())
        {
            if *v > id {
                *v -= 1;
            }
        }
        self.reown(&ips, &mut Vec::new());
        Some(old)
    }

    /// Gives each of `ips` to the first pod (in order) that claims it, as
    /// [`Inventory::new`] does.
    fn reown(&mut self, ips: &BTreeSet<IpAddr>, warnings: &mut Vec<String>) {
        for ip in ips {
            self.pod_by_ip.remove(ip);
            let mut claimers = self
                .pods
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.host_network && p.ips.contains(ip))
                .map(|(i, _)| i);
            if let Some(owner) = claimers.next() {
                self.pod_by_ip.insert(*ip, owner);
                for other in claimers {
                    warnings.push(format!(
                        "pods {} and {} both claim address {ip}; it is taken as {}",
                        self.pods[owner].key(),
                        self.pods[other].key(),
                        self.pods[owner].key()
                    ));
                }
            }
        }
    }

    /// The objects this inventory was built from, as far as it keeps them
    /// (the API server's addresses come back as one Service and one
    /// EndpointSlice): `Inventory::new(inv.objects())` compiles the same.
    pub fn objects(&self) -> Vec<Object> {
        let mut out: Vec<Object> = Vec::new();
        out.extend(self.namespaces.iter().cloned().map(Object::Namespace));
        out.extend(self.pods.iter().cloned().map(Object::Pod));
        out.extend(self.nodes.iter().cloned().map(Object::Node));
        out.extend(self.policies.iter().cloned().map(Object::NetworkPolicy));
        out.push(Object::Config(self.config.clone()));
        out.extend(self.cnps.iter().cloned().map(Object::ClusterNetworkPolicy));
        out.extend(self.tenants.iter().cloned().map(Object::Tenant));
        out.extend(self.quarantines.iter().cloned().map(Object::Quarantine));
        for (kind, addresses) in [
            (crate::model::Kind::Service, &self.api_vips),
            (crate::model::Kind::EndpointSlice, &self.api_endpoints),
        ] {
            if !addresses.is_empty() {
                out.push(Object::ApiServer(crate::model::ApiServer {
                    kind,
                    namespace: "default".to_owned(),
                    name: "kubernetes".to_owned(),
                    addresses: addresses.clone(),
                }));
            }
        }
        out
    }
}

/// The addresses a pod claims (none for a host-network pod).
fn claimed(p: &Pod) -> BTreeSet<IpAddr> {
    if p.host_network {
        BTreeSet::new()
    } else {
        p.ips.iter().copied().collect()
    }
}
