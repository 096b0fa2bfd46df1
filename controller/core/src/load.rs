//! The snapshot loader: Kubernetes YAML, as users have it, into validated
//! [`Object`]s plus [`Diagnostic`]s. Pure: text in, values out.
//!
//! Accepts multi-document streams, `kind: List` (what `kubectl get -o yaml`
//! prints) and typed lists (`PodList`, whose items carry no `kind`). Parsing
//! uses the k8s-openapi types; validation follows the API server's rules and
//! names the field path of every problem.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::crd;
use crate::diag::{Diagnostic, Origin, Severity};
use crate::labels::{self, Labels, Op, Requirement, Selector};
use crate::model::{
    ApiGuard, ApiServer, ClusterConfig, ContainerPort, Kind, Namespace, NamespaceScope,
    NetworkPolicy, Node, Object, Peer, Pod, PortMatch, PortSpec, Protocol, Rule, TrustedPods,
};

/// An object and where it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub object: Object,
    pub origin: Origin,
}

/// The result of loading one file.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub objects: Vec<Located>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn extend(&mut self, other: Loaded) {
        self.objects.extend(other.objects);
        self.diagnostics.extend(other.diagnostics);
    }
}

/// Loads every document of one YAML stream. Never panics; a document that
/// cannot be read becomes a diagnostic and the others still load.
pub fn load_str(file: &str, text: &str) -> Loaded {
    let mut out = Loaded::default();
    // YAML allows a byte order mark; editors on Windows write one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = Origin {
            file: file.to_owned(),
            document: i + 1,
            item: None,
        };
        match serde_yaml::Value::deserialize(doc) {
            Ok(value) => load_value(value, origin, None, false, &mut out),
            Err(e) => {
                out.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    origin: Some(origin),
                    object: None,
                    field: None,
                    message: format!("invalid YAML: {e}"),
                });
                // The YAML parser cannot resume after a syntax error.
                break;
            }
        }
    }
    out
}

/// Loads one object that is already parsed (e.g. from the Kubernetes API),
/// exactly as one document of a file: the same kinds, validation and
/// diagnostics. `origin` says where it came from in the diagnostics.
pub fn load_object(origin: Origin, value: serde_yaml::Value) -> Loaded {
    let mut out = Loaded::default();
    load_value(value, origin, None, false, &mut out);
    out
}

/// `(apiVersion, kind)` inherited by the items of a typed list such as `PodList`.
type ItemType = (String, String);

fn load_value(
    value: serde_yaml::Value,
    origin: Origin,
    inherited: Option<&ItemType>,
    in_list: bool,
    out: &mut Loaded,
) {
    let err = |out: &mut Loaded, origin: &Origin, field: Option<&str>, message: String| {
        out.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            origin: Some(origin.clone()),
            object: None,
            field: field.map(str::to_owned),
            message,
        })
    };
    let map = match value {
        serde_yaml::Value::Null => return,
        serde_yaml::Value::Mapping(m) => m,
        other => {
            let what = match other {
                serde_yaml::Value::Bool(_) => "a boolean",
                serde_yaml::Value::Number(_) => "a number",
                serde_yaml::Value::String(_) => "a string",
                serde_yaml::Value::Sequence(_) => "a sequence",
                _ => "not a mapping",
            };
            err(
                out,
                &origin,
                None,
                format!("expected a Kubernetes object (a mapping), found {what}"),
            );
            return;
        }
    };
    let get_str = |key: &str| map.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let (api_version, kind) = match (get_str("apiVersion"), get_str("kind"), inherited) {
        (Some(a), Some(k), _) => (a, k),
        (None, None, Some((a, k))) => (a.clone(), k.clone()),
        (None, _, _) => {
            err(
                out,
                &origin,
                Some("apiVersion"),
                "missing or not a string".into(),
            );
            return;
        }
        (_, None, _) => {
            err(out, &origin, Some("kind"), "missing or not a string".into());
            return;
        }
    };

    if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
        if in_list {
            // Nested lists are not something kubectl produces.
            err(
                out,
                &origin,
                Some("kind"),
                "a List inside a List is not supported".into(),
            );
            return;
        }
        let item_type = kind
            .strip_suffix("List")
            .filter(|k| !k.is_empty())
            .map(|k| (api_version.clone(), k.to_owned()));
        let items = match map.get("items") {
            None | Some(serde_yaml::Value::Null) => return,
            Some(serde_yaml::Value::Sequence(items)) => items.clone(),
            Some(_) => {
                err(
                    out,
                    &origin,
                    Some("items"),
                    "expected a list of objects".into(),
                );
                return;
            }
        };
        for (j, item) in items.into_iter().enumerate() {
            let origin = Origin {
                item: Some(j),
                ..origin.clone()
            };
            load_value(item, origin, item_type.as_ref(), true, out);
        }
        return;
    }

    let value = serde_yaml::Value::Mapping(map);
    let result = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => parse::<core::Namespace>(value).and_then(convert_namespace),
        ("v1", "Pod") => match parse::<core::Pod>(value) {
            Ok(pod) => match convert_pod(pod) {
                Ok(Some(obj)) => Ok(obj),
                Ok(None) => return,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        ("v1", "Node") => parse::<core::Node>(value).and_then(convert_node),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            parse::<net::NetworkPolicy>(value).and_then(convert_network_policy)
        }
        ("bulkhead.io/v1alpha1", "BulkheadConfig") => {
            parse::<crd::BulkheadConfig>(value).and_then(convert_config)
        }
        (crate::cnp::API_VERSION, "ClusterNetworkPolicy") => {
            parse::<crate::cnp::CnpIn>(value).and_then(crate::cnp::convert)
        }
        ("bulkhead.io/v1alpha1", "Tenant") => {
            parse::<crd::Tenant>(value).and_then(crate::tenant::convert)
        }
        ("bulkhead.io/v1alpha1", "Quarantine") => {
            parse::<crd::Quarantine>(value).and_then(convert_quarantine)
        }
        // The API guard reads the `default/kubernetes` Service and its
        // EndpointSlices; other Services are not used.
        ("v1", "Service") => match parse::<core::Service>(value) {
            Ok(svc) => match convert_api_service(svc) {
                Some(r) => r,
                None => return not_used(out, origin, &kind, &api_version),
            },
            Err(e) => Err(e),
        },
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            match parse::<k8s_openapi::api::discovery::v1::EndpointSlice>(value) {
                Ok(slice) => match convert_api_endpoints(slice) {
                    Some(r) => r,
                    None => return not_used(out, origin, &kind, &api_version),
                },
                Err(e) => Err(e),
            }
        }
        _ => return not_used(out, origin, &kind, &api_version),
    };
    match result {
        Ok(object) => out.objects.push(Located { object, origin }),
        Err(failed) => {
            let object = failed.object.map(|name| format!("{kind} {name}"));
            for (field, message) in failed.problems {
                out.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    origin: Some(origin.clone()),
                    object: object.clone(),
                    field,
                    message,
                });
            }
        }
    }
}

/// Why an object was rejected: its name when known, and every problem found.
fn not_used(out: &mut Loaded, origin: Origin, kind: &str, api_version: &str) {
    out.diagnostics.push(Diagnostic {
        severity: Severity::Warning,
        origin: Some(origin),
        object: None,
        field: None,
        message: format!("skipped: kind {kind} ({api_version}) is not used by bulkhead"),
    });
}

/// The namespace and name of the Service whose cluster IPs and endpoints the
/// API guard protects.
pub const API_SERVICE: (&str, &str) = ("default", "kubernetes");

/// The `default/kubernetes` Service's cluster IPs; `None` for any other
/// Service.
fn convert_api_service(svc: core::Service) -> Option<Result<Object, Rejected>> {
    let (ns, name) = match meta_names(&svc.metadata, true) {
        Ok(n) => n,
        Err(e) => return Some(Err(e)),
    };
    if (ns.as_str(), name.as_str()) != API_SERVICE {
        return None;
    }
    let spec = svc.spec.unwrap_or_default();
    let ips = match spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips,
        _ => spec.cluster_ip.into_iter().collect(),
    };
    let mut c = Checker::new();
    let mut addresses = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        match ip.parse::<IpAddr>() {
            Ok(a) => addresses.push(a),
            Err(_) if ip == "None" || ip.is_empty() => {}
            Err(_) => c.fail(
                format!("spec.clusterIPs[{i}]"),
                format!("{ip:?} is not an IP address"),
            ),
        }
    }
    Some(c.finish(
        format!("{ns}/{name}"),
        Object::ApiServer(ApiServer {
            kind: Kind::Service,
            namespace: ns,
            name,
            addresses,
        }),
    ))
}

/// The addresses of an EndpointSlice of the `default/kubernetes` Service
/// (label `kubernetes.io/service-name`); `None` for any other slice.
fn convert_api_endpoints(
    slice: k8s_openapi::api::discovery::v1::EndpointSlice,
) -> Option<Result<Object, Rejected>> {
    let (ns, name) = match meta_names(&slice.metadata, true) {
        Ok(n) => n,
        Err(e) => return Some(Err(e)),
    };
    let service = labels_of(&slice.metadata)
        .get("kubernetes.io/service-name")
        .cloned();
    if ns != API_SERVICE.0 || service.as_deref() != Some(API_SERVICE.1) {
        return None;
    }
    let mut c = Checker::new();
    let mut addresses = Vec::new();
    if slice.address_type != "FQDN" {
        for (i, e) in slice.endpoints.iter().enumerate() {
            for (j, a) in e.addresses.iter().enumerate() {
                match a.parse::<IpAddr>() {
                    Ok(ip) if !addresses.contains(&ip) => addresses.push(ip),
                    Ok(_) => {}
                    Err(_) => c.fail(
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("{a:?} is not an IP address"),
                    ),
                }
            }
        }
    }
    Some(c.finish(
        format!("{ns}/{name}"),
        Object::ApiServer(ApiServer {
            kind: Kind::EndpointSlice,
            namespace: ns,
            name,
            addresses,
        }),
    ))
}

#[derive(Debug, Default)]
pub(crate) struct Rejected {
    object: Option<String>,
    problems: Vec<(Option<String>, String)>,
}

fn parse<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, Rejected> {
    let name = object_name(&value);
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        Rejected {
            object: name,
            problems: vec![(field, e.into_inner().to_string())],
        }
    })
}

/// `namespace/name` or `name`, read leniently for messages about objects that
/// fail to parse.
fn object_name(value: &serde_yaml::Value) -> Option<String> {
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    Some(match meta.get("namespace").and_then(|n| n.as_str()) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    })
}

/// Collects the problems of one object while it is converted.
pub(crate) struct Checker {
    problems: Vec<(Option<String>, String)>,
}

impl Checker {
    pub(crate) fn new() -> Self {
        Self {
            problems: Vec::new(),
        }
    }

    pub(crate) fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push((Some(field.into()), message.into()));
    }

    /// The problems found so far, for an object that could not be built.
    pub(crate) fn into_rejected(self, object: String) -> Rejected {
        Rejected {
            object: Some(object),
            problems: self.problems,
        }
    }

    pub(crate) fn finish<T>(self, object: String, value: T) -> Result<T, Rejected> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(Rejected {
                object: Some(object),
                problems: self.problems,
            })
        }
    }
}

pub(crate) fn meta_names(
    meta: &ObjectMeta,
    namespaced: bool,
) -> Result<(String, String), Rejected> {
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        return Err(Rejected {
            object: None,
            problems: vec![(Some("metadata.name".into()), "missing".into())],
        });
    };
    let ns = if namespaced {
        meta.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    Ok((ns, name))
}

fn labels_of(meta: &ObjectMeta) -> Labels {
    meta.labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn convert_namespace(ns: core::Namespace) -> Result<Object, Rejected> {
    let (_, name) = meta_names(&ns.metadata, false)?;
    Ok(Object::Namespace(Namespace::new(
        &name,
        labels_of(&ns.metadata),
    )))
}

/// Pods that have finished (`Succeeded`, `Failed`) hold no address: they are
/// left out, so an address they once had cannot be mistaken for them.
fn convert_pod(pod: core::Pod) -> Result<Option<Object>, Rejected> {
    let (namespace, name) = meta_names(&pod.metadata, true)?;
    let key = format!("{namespace}/{name}");
    let status = pod.status.unwrap_or_default();
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let mut c = Checker::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut add_ip = |c: &mut Checker, field: String, text: &str| match text.parse::<IpAddr>() {
        Ok(ip) if !ips.contains(&ip) => ips.push(ip),
        Ok(_) => {}
        Err(_) => c.fail(field, format!("invalid IP address {text:?}")),
    };
    if let Some(ip) = status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
        add_ip(&mut c, "status.podIP".into(), ip);
    }
    for (i, ip) in status.pod_ips.unwrap_or_default().iter().enumerate() {
        add_ip(&mut c, format!("status.podIPs[{i}].ip"), &ip.ip);
    }
    let spec = pod.spec.unwrap_or_default();
    let mut ports = Vec::new();
    for (ci, container) in spec.containers.iter().enumerate() {
        for (pi, p) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let protocol = match p
                .protocol
                .as_deref()
                .map(Protocol::from_k8s)
                .unwrap_or(Ok(Protocol::Tcp))
            {
                Ok(proto) => proto,
                Err(e) => {
                    c.fail(format!("{field}.protocol"), e);
                    continue;
                }
            };
            let Some(port) = u16::try_from(p.container_port).ok().filter(|p| *p > 0) else {
                c.fail(
                    format!("{field}.containerPort"),
                    format!("{} is not a port number (1-65535)", p.container_port),
                );
                continue;
            };
            if let Some(n) = &p.name
                && let Err(e) = validate_port_name(n)
            {
                c.fail(format!("{field}.name"), e);
                continue;
            }
            ports.push(ContainerPort {
                name: p.name.clone(),
                port,
                protocol,
            });
        }
    }
    let object = Pod {
        namespace,
        name,
        labels: labels_of(&pod.metadata),
        ips,
        node: spec.node_name.filter(|n| !n.is_empty()),
        ports,
        host_network: spec.host_network.unwrap_or(false),
        service_account: spec
            .service_account_name
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
    };
    c.finish(key, Some(Object::Pod(object)))
}

fn convert_node(node: core::Node) -> Result<Object, Rejected> {
    let (_, name) = meta_names(&node.metadata, false)?;
    let mut addresses = Vec::new();
    for a in node
        .status
        .unwrap_or_default()
        .addresses
        .unwrap_or_default()
    {
        if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP")
            && let Ok(ip) = a.address.parse::<IpAddr>()
            && !addresses.contains(&ip)
        {
            addresses.push(ip);
        }
    }
    Ok(Object::Node(Node {
        labels: labels_of(&node.metadata),
        name,
        addresses,
    }))
}

impl Protocol {
    /// The API's spelling, which is case-sensitive.
    pub fn from_k8s(s: &str) -> Result<Protocol, String> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!(
                "unsupported protocol {s:?}: must be TCP, UDP or SCTP"
            )),
        }
    }
}

/// `IANA_SVC_NAME`: 1-15 characters, lowercase alphanumerics and '-', at least
/// one letter, no '-' at either end and no "--".
pub fn validate_port_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid port name {name:?}: {why}"));
    if name.is_empty() || name.len() > 15 {
        return bad("must be 1 to 15 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("may contain only lowercase letters, digits and '-'");
    }
    if !name.chars().any(|c| c.is_ascii_lowercase()) {
        return bad("must contain at least one letter");
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return bad("must not begin or end with '-' nor contain \"--\"");
    }
    Ok(())
}

fn convert_network_policy(np: net::NetworkPolicy) -> Result<Object, Rejected> {
    let (namespace, name) = meta_names(&np.metadata, true)?;
    let key = format!("{namespace}/{name}");
    let mut c = Checker::new();
    let spec = np.spec.unwrap_or_default();
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector(&mut c, "spec.podSelector", s),
        None => Selector::everything(),
    };

    // Defaulting, as the API server does: no policyTypes means Ingress, plus
    // Egress when there are egress rules.
    let types: Vec<String> = match spec.policy_types.as_deref() {
        Some(t) if !t.is_empty() => t.to_vec(),
        _ => {
            let mut t = vec!["Ingress".to_owned()];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                t.push("Egress".to_owned());
            }
            t
        }
    };
    let mut has_ingress = false;
    let mut has_egress = false;
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => has_ingress = true,
            "Egress" => has_egress = true,
            other => c.fail(
                format!("spec.policyTypes[{i}]"),
                format!("unsupported policy type {other:?}: must be Ingress or Egress"),
            ),
        }
    }

    let ingress: Vec<Rule> = (spec.ingress.iter().flatten().enumerate())
        .map(|(i, r)| {
            rule(
                &mut c,
                &format!("spec.ingress[{i}]"),
                "from",
                r.from.as_deref(),
                r.ports.as_deref(),
            )
        })
        .collect();
    let egress: Vec<Rule> = (spec.egress.iter().flatten().enumerate())
        .map(|(i, r)| {
            rule(
                &mut c,
                &format!("spec.egress[{i}]"),
                "to",
                r.to.as_deref(),
                r.ports.as_deref(),
            )
        })
        .collect();

    let policy = NetworkPolicy {
        namespace,
        name,
        pod_selector,
        ingress: has_ingress.then_some(ingress),
        egress: has_egress.then_some(egress),
    };
    c.finish(key, Object::NetworkPolicy(policy))
}

fn rule(
    c: &mut Checker,
    field: &str,
    peers_field: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
) -> Rule {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| peer(c, &format!("{field}.{peers_field}[{i}]"), p))
        .collect();
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| port(c, &format!("{field}.ports[{i}]"), p))
        .collect();
    Rule { peers, ports }
}

fn peer(c: &mut Checker, field: &str, p: &net::NetworkPolicyPeer) -> Option<Peer> {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (Some(block), None, None) => ip_block(c, &format!("{field}.ipBlock"), block),
        (Some(_), _, _) => {
            c.fail(
                field,
                "ipBlock may not be combined with podSelector or namespaceSelector",
            );
            None
        }
        (None, None, None) => {
            c.fail(
                field,
                "a peer must set podSelector, namespaceSelector or ipBlock",
            );
            None
        }
        (None, ns, pods) => {
            let namespaces = match ns {
                Some(s) => {
                    NamespaceScope::Selected(selector(c, &format!("{field}.namespaceSelector"), s))
                }
                None => NamespaceScope::PolicyNamespace,
            };
            let pods = match pods {
                Some(s) => selector(c, &format!("{field}.podSelector"), s),
                None => Selector::everything(),
            };
            Some(Peer::Pods { namespaces, pods })
        }
    }
}

pub(crate) fn parse_cidr(c: &mut Checker, field: &str, text: &str) -> Option<IpNet> {
    match IpNet::from_str(text) {
        Ok(net) => Some(net.trunc()),
        Err(_) => {
            c.fail(field, format!("invalid CIDR {text:?}: expected an address and a prefix length, like 10.0.0.0/16"));
            None
        }
    }
}

fn ip_block(c: &mut Checker, field: &str, block: &net::IPBlock) -> Option<Peer> {
    let cidr = parse_cidr(c, &format!("{field}.cidr"), &block.cidr)?;
    let mut except = Vec::new();
    let mut ok = true;
    for (i, e) in block.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let Some(net) = parse_cidr(c, &f, e) else {
            ok = false;
            continue;
        };
        if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() {
            c.fail(f, format!("{net} is not strictly inside cidr {cidr}"));
            ok = false;
            continue;
        }
        except.push(net);
    }
    ok.then_some(Peer::IpBlock { cidr, except })
}

/// A NetworkPolicy port entry, validated (also used by Tenant exceptions).
pub(crate) fn port_of(
    c: &mut Checker,
    field: &str,
    p: &net::NetworkPolicyPort,
) -> Option<PortMatch> {
    port(c, field, p)
}

fn port(c: &mut Checker, field: &str, p: &net::NetworkPolicyPort) -> Option<PortMatch> {
    let protocol = match p
        .protocol
        .as_deref()
        .map(Protocol::from_k8s)
        .unwrap_or(Ok(Protocol::Tcp))
    {
        Ok(proto) => proto,
        Err(e) => {
            c.fail(format!("{field}.protocol"), e);
            return None;
        }
    };
    let number = |c: &mut Checker, f: String, n: i32| -> Option<u16> {
        match u16::try_from(n) {
            Ok(v) if v > 0 => Some(v),
            _ => {
                c.fail(f, format!("{n} is not a port number (1-65535)"));
                None
            }
        }
    };
    let spec = match (&p.port, p.end_port) {
        (None, None) => PortSpec::Any,
        (None, Some(_)) => {
            c.fail(
                format!("{field}.endPort"),
                "endPort requires a numeric port",
            );
            return None;
        }
        (Some(IntOrString::Int(n)), None) => {
            PortSpec::Number(number(c, format!("{field}.port"), *n)?)
        }
        (Some(IntOrString::Int(n)), Some(end)) => {
            let start = number(c, format!("{field}.port"), *n)?;
            let end = number(c, format!("{field}.endPort"), end)?;
            if end < start {
                c.fail(
                    format!("{field}.endPort"),
                    format!("endPort {end} is below port {start}"),
                );
                return None;
            }
            PortSpec::Range(start, end)
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                c.fail(
                    format!("{field}.endPort"),
                    "endPort may not be used with a named port",
                );
                return None;
            }
            if let Err(e) = validate_port_name(name) {
                c.fail(format!("{field}.port"), e);
                return None;
            }
            PortSpec::Named(name.clone())
        }
    };
    Some(PortMatch {
        protocol,
        port: spec,
    })
}

/// Converts a `LabelSelector` (matchLabels AND matchExpressions) with the API
/// server's validation.
pub(crate) fn selector(c: &mut Checker, field: &str, s: &LabelSelector) -> Selector {
    let mut requirements = Vec::new();
    for (k, v) in s.match_labels.iter().flatten() {
        let f = format!("{field}.matchLabels.{k}");
        if let Err(e) = labels::validate_key(k) {
            c.fail(&f, e);
            continue;
        }
        if let Err(e) = labels::validate_value(v) {
            c.fail(&f, e);
            continue;
        }
        requirements.push(Requirement {
            key: k.clone(),
            op: Op::Equals(v.clone()),
        });
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if let Err(err) = labels::validate_key(&e.key) {
            c.fail(format!("{f}.key"), err);
            continue;
        }
        let values = e.values.clone().unwrap_or_default();
        for (j, v) in values.iter().enumerate() {
            if let Err(err) = labels::validate_value(v) {
                c.fail(format!("{f}.values[{j}]"), err);
            }
        }
        let op = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                c.fail(
                    format!("{f}.values"),
                    format!("operator {} needs at least one value", e.operator),
                );
                continue;
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                c.fail(
                    format!("{f}.values"),
                    format!("operator {} takes no values", e.operator),
                );
                continue;
            }
            "In" => Op::In(values),
            "NotIn" => Op::NotIn(values),
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            other => {
                c.fail(
                    format!("{f}.operator"),
                    format!(
                        "invalid operator {other:?}: must be In, NotIn, Exists or DoesNotExist"
                    ),
                );
                continue;
            }
        };
        requirements.push(Requirement {
            key: e.key.clone(),
            op,
        });
    }
    Selector { requirements }
}

/// A `BulkheadConfig`: only the singleton named `cluster` is valid.
fn convert_config(config: crd::BulkheadConfig) -> Result<Object, Rejected> {
    let (_, name) = meta_names(&config.metadata, false)?;
    let mut c = Checker::new();
    if name != crd::BULKHEAD_CONFIG_NAME {
        c.fail(
            "metadata.name",
            format!(
                "BulkheadConfig is a singleton: its name must be {:?}",
                crd::BULKHEAD_CONFIG_NAME
            ),
        );
    }
    if let Err(errs) = config.spec.validate() {
        for e in errs.0 {
            c.fail(e.field, e.message);
        }
    }
    let spec = config.spec;
    let trusted = spec
        .api_guard
        .trusted
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let field = format!("spec.apiGuard.trusted[{i}]");
            TrustedPods {
                namespace_selector: t
                    .namespace_selector
                    .as_ref()
                    .map(|s| selector(&mut c, &format!("{field}.namespaceSelector"), s)),
                pod_selector: t
                    .pod_selector
                    .as_ref()
                    .map(|s| selector(&mut c, &format!("{field}.podSelector"), s)),
                service_accounts: t.service_accounts.clone(),
            }
        })
        .collect();
    let out = ClusterConfig {
        name: name.clone(),
        default_mode: spec.default_mode,
        api_guard: ApiGuard {
            mode: spec.api_guard.mode,
            trusted,
        },
        flow_log: spec.flow_log,
        untenanted: spec.untenanted_namespaces,
    };
    c.finish(name, Object::Config(out))
}

/// A `Quarantine`: the spec's own checks, then the model. A selector
/// quarantine's `captured` pods start empty (the controller fills them).
fn convert_quarantine(q: crd::Quarantine) -> Result<Object, Rejected> {
    use crate::quarantine::{Quarantine, Source, Target};
    let (namespace, name) = meta_names(&q.metadata, true)?;
    let key = format!("{namespace}/{name}");
    let mut c = Checker::new();
    if let Err(errs) = q.spec.validate() {
        for e in errs.0 {
            c.fail(e.field, e.message);
        }
    }
    let spec = q.spec;
    let target = match (&spec.pod_name, &spec.pod_selector) {
        (Some(n), _) => Target::Pod(n.clone()),
        (None, Some(s)) => Target::Selector(selector(&mut c, "spec.podSelector", s)),
        // Reported by `validate`.
        (None, None) => Target::Pod(String::new()),
    };
    let allow_from = spec
        .allow_from
        .iter()
        .filter_map(|e| match crd::parse_allow_from(e) {
            Ok(crd::AllowFrom::Cidr(net)) => Some(Source::Cidr(net.trunc())),
            Ok(crd::AllowFrom::Pod { namespace, name }) => Some(Source::Pod { namespace, name }),
            // Reported by `validate`.
            Err(_) => None,
        })
        .collect();
    let out = Quarantine {
        namespace,
        name,
        target,
        reason: spec.reason,
        allow_from,
        expires: spec.expires,
        captured: Vec::new(),
    };
    c.finish(key, Object::Quarantine(out))
}
