//! Tenant fences (`bulkhead.io/v1alpha1 Tenant`): the validated model, its
//! loader and the pure status the controller writes on each Tenant.
//!
//! ```text
//!   namespace ──fence──▶ Tenants(t…)   selected by one Tenant (two: a conflict)
//!                        Own           in no Tenant, untenanted: Isolated
//!                        Open          in no Tenant, untenanted: Shared
//! ```
//!
//! The fence, checked on each side of a connection (egress at the source,
//! ingress at the destination) before every Admin ClusterNetworkPolicy: when
//! this pod's namespace is fenced by tenant `t` (or by its own isolation) and
//! the other end is a pod (not host-network) of a namespace that `t` does not
//! hold and that is not `Open`, the connection is denied unless `t` lists an
//! exception (`allowTo` at egress, `allowFrom` at ingress) matching the other
//! end and port. A namespace in two Tenants is fenced by both (the stricter
//! outcome: every one of its tenants must let the connection out or in).
//! Addresses that are not pods (outside the cluster, nodes, host-network
//! pods) are not behind any fence: `cidr` exceptions match pod addresses.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Serialize;

use crate::crd;
use crate::labels::{Labels, Selector};
use crate::load::{Checker, Rejected, meta_names, parse_cidr, port_of, selector};
use crate::model::{NAMESPACE_NAME_LABEL, NamespaceScope, Object, Peer, PortMatch, Rule};

/// What an exception lets through the fence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ExceptionPeer {
    /// The pods of another Tenant's namespaces.
    Tenant(String),
    /// The pods of one namespace.
    Namespace(String),
    /// Pod addresses in a CIDR.
    Cidr(IpNet),
}

impl std::fmt::Display for ExceptionPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExceptionPeer::Tenant(t) => write!(f, "tenant {t}"),
            ExceptionPeer::Namespace(n) => write!(f, "namespace {n}"),
            ExceptionPeer::Cidr(c) => write!(f, "cidr {c}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exception {
    pub peer: ExceptionPeer,
    /// Empty: every port.
    pub ports: Vec<PortMatch>,
}

impl std::fmt::Display for Exception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.peer)?;
        if self.ports.is_empty() {
            f.write_str(" (any port)")
        } else {
            let p: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
            write!(f, " ({})", p.join(", "))
        }
    }
}

/// A validated Tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    pub name: String,
    pub namespaces: Selector,
    pub allow_from: Vec<Exception>,
    pub allow_to: Vec<Exception>,
}

impl Tenant {
    /// `allowFrom` for ingress, `allowTo` for egress.
    pub fn exceptions(&self, dir: crate::model::Direction) -> &[Exception] {
        match dir {
            crate::model::Direction::Ingress => &self.allow_from,
            crate::model::Direction::Egress => &self.allow_to,
        }
    }
}

/// An exception as a NetworkPolicy-like rule, given the tenants it may name.
/// `None` when it names a Tenant that does not exist: it matches nothing.
pub fn exception_rule(e: &Exception, tenants: &[Tenant]) -> Option<Rule> {
    let peer = match &e.peer {
        ExceptionPeer::Tenant(t) => Peer::Pods {
            namespaces: NamespaceScope::Selected(
                tenants.iter().find(|x| x.name == *t)?.namespaces.clone(),
            ),
            pods: Selector::everything(),
        },
        ExceptionPeer::Namespace(n) => Peer::Pods {
            namespaces: NamespaceScope::Selected(Selector::from_pairs([(
                NAMESPACE_NAME_LABEL,
                n.as_str(),
            )])),
            pods: Selector::everything(),
        },
        ExceptionPeer::Cidr(c) => Peer::IpBlock {
            cidr: *c,
            except: Vec::new(),
        },
    };
    Some(Rule {
        peers: vec![peer],
        ports: e.ports.clone(),
    })
}

/// How a namespace stands behind the fences.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Fence {
    /// In no Tenant, and untenanted namespaces are Shared: no fence.
    Open,
    /// In no Tenant, and untenanted namespaces are Isolated: a fence of its
    /// own, without exceptions.
    Own,
    /// In these Tenants (ids into the inventory's tenants; two or more is a
    /// conflict).
    Tenants(Vec<usize>),
}

/// Converts a parsed Tenant, with `validate()`'s field-named errors.
pub(crate) fn convert(t: crd::Tenant) -> Result<Object, Rejected> {
    let (_, name) = meta_names(&t.metadata, false)?;
    let mut c = Checker::new();
    if let Err(errs) = t.spec.validate() {
        for e in errs.0 {
            c.fail(e.field, e.message);
        }
    }
    let namespaces = selector(&mut c, "spec.namespaceSelector", &t.spec.namespace_selector);
    let mut lists = [Vec::new(), Vec::new()];
    for (k, (dir, peers)) in [
        ("allowFrom", &t.spec.allow_from),
        ("allowTo", &t.spec.allow_to),
    ]
    .into_iter()
    .enumerate()
    {
        for (i, p) in peers.iter().enumerate() {
            let f = format!("spec.{dir}[{i}]");
            let peer = match (&p.tenant, &p.namespace, &p.cidr) {
                (Some(t), None, None) => ExceptionPeer::Tenant(t.clone()),
                (None, Some(n), None) => ExceptionPeer::Namespace(n.clone()),
                (None, None, Some(cidr)) => match parse_cidr(&mut c, &format!("{f}.cidr"), cidr) {
                    Some(net) => ExceptionPeer::Cidr(net),
                    None => continue,
                },
                // validate() has named the problem.
                _ => continue,
            };
            let ports = p
                .ports
                .iter()
                .enumerate()
                .filter_map(|(j, port)| port_of(&mut c, &format!("{f}.ports[{j}]"), port))
                .collect();
            lists[k].push(Exception { peer, ports });
        }
    }
    let [allow_from, allow_to] = lists;
    c.finish(
        name.clone(),
        Object::Tenant(Tenant {
            name,
            namespaces,
            allow_from,
            allow_to,
        }),
    )
}

/// What the controller writes on one Tenant's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantReport {
    pub name: String,
    /// The namespaces the selector matches, sorted.
    pub namespaces: Vec<String>,
    /// Namespaces this Tenant shares with other Tenants.
    pub conflicts: Vec<Conflict>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    pub namespace: String,
    /// The other Tenants that select the namespace too, sorted.
    pub other_tenants: Vec<String>,
}

/// Every tenant's namespaces and conflicts, from the tenants and the
/// namespaces (name, labels). Pure: what the status writer and `bulkhead
/// tenants` show.
pub fn reports<'a>(
    tenants: &[Tenant],
    namespaces: impl IntoIterator<Item = (&'a str, &'a Labels)>,
) -> Vec<TenantReport> {
    let mut members: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_ns: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in tenants {
        members.entry(&t.name).or_default();
    }
    for (ns, labels) in namespaces {
        for t in tenants {
            if t.namespaces.matches(labels) {
                members.entry(&t.name).or_default().push(ns);
                by_ns.entry(ns).or_default().push(&t.name);
            }
        }
    }
    members
        .into_iter()
        .map(|(name, mut nss)| {
            nss.sort_unstable();
            let conflicts = nss
                .iter()
                .filter_map(|ns| {
                    let others: Vec<String> = by_ns
                        .get(ns)
                        .into_iter()
                        .flatten()
                        .filter(|t| **t != name)
                        .map(|t| (*t).to_owned())
                        .collect();
                    (!others.is_empty()).then(|| Conflict {
                        namespace: (*ns).to_owned(),
                        other_tenants: others,
                    })
                })
                .collect();
            TenantReport {
                name: name.to_owned(),
                namespaces: nss.into_iter().map(str::to_owned).collect(),
                conflicts,
            }
        })
        .collect()
}

/// One error per namespace selected by two or more Tenants, naming all of
/// them (the stricter outcome applies: every one of them fences it).
pub fn conflict_diagnostics(reports: &[TenantReport]) -> Vec<crate::diag::Diagnostic> {
    let mut seen: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in reports {
        for c in &r.conflicts {
            seen.entry(&c.namespace).or_default().push(&r.name);
        }
    }
    seen.into_iter()
        .map(|(ns, tenants)| crate::diag::Diagnostic {
            severity: crate::diag::Severity::Warning,
            origin: None,
            object: Some(format!("Tenant {}", tenants.join(", Tenant "))),
            field: Some("spec.namespaceSelector".into()),
            message: format!(
                "namespace {ns} is selected by Tenants {}: a conflict; every one of their fences applies to it",
                tenants.join(" and ")
            ),
        })
        .collect()
}
