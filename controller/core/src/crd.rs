//! Bulkhead's own Kubernetes API: the custom resources of group `bulkhead.io`,
//! version `v1alpha1`, as Rust types. Their `CustomResourceDefinition`s are
//! derived from these types (kube's `CustomResource`), printed by
//! `bulkhead crds`, and checked into `manifests/crds.yaml`; a test fails when
//! that file is stale.
//!
//! ```text
//!   Quarantine      namespaced   one pod (podName) or a workload (podSelector)
//!     spec          reason, allowFrom (forensics sources), expires
//!     status        conditions, enforcedBy[node, generation, time]
//!   BulkheadConfig  cluster      the singleton `cluster`: cluster-wide settings
//!     spec          defaultMode, apiGuard{mode, trusted[]}, flowLog, untenantedNamespaces
//!     status        conditions
//!   Tenant          cluster      a fence around the namespaces it selects
//!     spec          namespaceSelector, allowFrom[], allowTo[] (tenant | namespace | cidr, ports)
//!     status        namespaces, conditions
//!   FlowBaseline    namespaced   `baseline`: the learned service graph of one namespace
//!     spec          version, workloads[], edges[] (at most 1000), omittedEdges
//!                   (written by the leading controller; no status)
//! ```
//!
//! The schemas reject what a structural schema can (types, enums, and a few
//! CEL rules: exactly one pod target, exactly one peer kind, the singleton's
//! name). Everything else is checked by each spec's `validate()`, which names
//! the offending field, so a bad object can be reported on its status and the
//! last good state kept.

use std::fmt;
use std::fmt::Write as _;

use crate::labels::{validate_dns_subdomain, validate_key, validate_value};
use crate::load::validate_port_name;
use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Bulkhead custom resource.
pub const GROUP: &str = "bulkhead.io";
/// The API version of every Bulkhead custom resource.
pub const VERSION: &str = "v1alpha1";
/// The name of the one `BulkheadConfig` the controller reads.
pub const BULKHEAD_CONFIG_NAME: &str = "cluster";
/// The namespace trusted by the API guard when `apiGuard.trusted` is not given.
pub const DEFAULT_TRUSTED_NAMESPACE: &str = "kube-system";
/// The label every namespace carries with its own name (set by the API server).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

// ---------------------------------------------------------------------------
// Validation errors
// ---------------------------------------------------------------------------

/// One problem in a spec: the field path (as in `kubectl explain`, e.g.
/// `spec.allowFrom[1]`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one spec, in field order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl ValidationErrors {
    /// The field paths, in order (for tests and status conditions).
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.field.as_str()).collect()
    }
}

/// Collects field errors; `finish` turns them into a result.
#[derive(Debug, Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.push(field, message);
        }
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

// ---------------------------------------------------------------------------
// Quarantine
// ---------------------------------------------------------------------------

/// Cuts a pod (or every pod a selector matches) off the network: it sends and
/// receives nothing but what `allowFrom` lets in, whatever any policy of any
/// tier says; its existing connections are cut.
// Each `printcolumn(..)` repeats `type_`/`json_path`: not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulkhead.io",
    version = "v1alpha1",
    kind = "Quarantine",
    namespaced,
    status = "QuarantineStatus",
    derive = "PartialEq",
    shortname = "qr",
    doc = "Cuts a pod (or every pod a selector matches) off the network, except for the forensics sources it names.",
    printcolumn(
        name = "Pod",
        type_ = "string",
        description = "The quarantined pod (empty when a selector is used)",
        json_path = ".spec.podName"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        description = "Why the pod is quarantined",
        json_path = ".spec.reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("has(self.podName) != has(self.podSelector)")
    .message("give exactly one of podName and podSelector"))]
#[serde(rename_all = "camelCase")]
pub struct QuarantineSpec {
    /// The pod to quarantine, in the Quarantine's namespace. Exactly one of
    /// podName and podSelector is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The pods to quarantine (a whole workload), in the Quarantine's
    /// namespace; must not be empty. Exactly one of podName and podSelector is
    /// given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Why: recorded in the audit trail. Must not be empty.
    pub reason: String,
    /// The only sources the quarantined pods still accept connections from
    /// (forensics): `<namespace>/<pod>` or a CIDR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// When the quarantine ends by itself (RFC 3339). Absent: until the
    /// Quarantine is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub expires: Option<String>,
}

/// Where a Quarantine stands, written by the leading controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineStatus {
    /// `Accepted` (the spec is valid), `Enforced` (every node hosting a
    /// quarantined pod applied it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The nodes that enforce this quarantine: the first ruleset generation of
    /// the node that contains it, and when the node acknowledged it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub enforced_by: Vec<NodeEnforcement>,
}

/// One node's enforcement of a Quarantine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeEnforcement {
    /// The node's name.
    pub node: String,
    /// The node's ruleset generation that first contained the quarantine.
    pub generation: u64,
    /// When the node acknowledged that generation.
    pub time: Time,
}

impl QuarantineSpec {
    /// Checks what the schema cannot; every error names its field
    /// (`spec.podName`, `spec.allowFrom[2]`, ...).
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        match (&self.pod_name, &self.pod_selector) {
            (Some(_), Some(_)) => errs.push(
                "spec.podSelector",
                "give exactly one of podName and podSelector, not both",
            ),
            (None, None) => errs.push(
                "spec.podName",
                "give exactly one of podName and podSelector",
            ),
            (Some(name), None) => errs.check("spec.podName", validate_dns_subdomain(name)),
            (None, Some(sel)) => {
                if selector_is_empty(sel) {
                    errs.push(
                        "spec.podSelector",
                        "an empty selector would quarantine every pod in the namespace; select the pods by their labels",
                    );
                }
                validate_selector(&mut errs, "spec.podSelector", sel);
            }
        }
        if self.reason.trim().is_empty() {
            errs.push(
                "spec.reason",
                "must not be empty: it goes into the audit trail",
            );
        }
        for (i, entry) in self.allow_from.iter().enumerate() {
            errs.check(format!("spec.allowFrom[{i}]"), validate_allow_from(entry));
        }
        if let Some(expires) = &self.expires {
            errs.check("spec.expires", validate_time(expires));
        }
        errs.finish()
    }
}

/// What one `allowFrom` entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowFrom {
    Pod { namespace: String, name: String },
    Cidr(ipnet::IpNet),
}

/// Parses an `allowFrom` entry: a CIDR (`10.0.0.0/8`, `fd00::/64`), or
/// `<namespace>/<pod>`.
pub fn parse_allow_from(entry: &str) -> Result<AllowFrom, String> {
    if let Ok(net) = entry.parse::<ipnet::IpNet>() {
        return Ok(AllowFrom::Cidr(net));
    }
    let Some((namespace, name)) = entry.split_once('/') else {
        return Err(format!(
            "{entry:?} is neither <namespace>/<pod> nor a CIDR (a single address is written as a /32 or /128)"
        ));
    };
    if namespace.contains(':') || namespace.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("{entry:?} is not a valid CIDR"));
    }
    validate_dns_label(namespace).map_err(|e| format!("{entry:?}: namespace {e}"))?;
    validate_dns_subdomain(name).map_err(|e| format!("{entry:?}: pod name {e}"))?;
    Ok(AllowFrom::Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

fn validate_allow_from(entry: &str) -> Result<(), String> {
    parse_allow_from(entry).map(|_| ())
}

fn validate_time(s: &str) -> Result<(), String> {
    // jiff's parser accepts a superset of RFC 3339 (a bracketed time zone, no
    // seconds, ...): check the exact shape first, then let jiff check the
    // calendar (no February 30th).
    if !is_rfc3339_shape(s.as_bytes()) {
        return Err(format!(
            "{s:?} is not an RFC 3339 time (e.g. 2025-01-31T18:00:00Z)"
        ));
    }
    s.parse::<k8s_openapi::jiff::Timestamp>()
        .map(|_| ())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`, `T` and `Z` in either case.
fn is_rfc3339_shape(b: &[u8]) -> bool {
    let digits = |b: &[u8]| !b.is_empty() && b.iter().all(u8::is_ascii_digit);
    let fits = |b: &[u8], pattern: &[u8]| {
        b.len() == pattern.len()
            && b.iter().zip(pattern).all(|(c, p)| match p {
                b'd' => c.is_ascii_digit(),
                b'T' => matches!(c, b'T' | b't'),
                p => c == p,
            })
    };
    let Some((date_time, mut rest)) = b.split_at_checked(19) else {
        return false;
    };
    if !fits(date_time, b"dddd-dd-ddTdd:dd:dd") {
        return false;
    }
    if let Some(fraction) = rest.strip_prefix(b".") {
        let end = fraction
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if !digits(&fraction[..end]) {
            return false;
        }
        rest = &fraction[end..];
    }
    matches!(rest, b"Z" | b"z")
        || (matches!(rest.first(), Some(b'+' | b'-')) && fits(&rest[1..], b"dd:dd"))
}

// ---------------------------------------------------------------------------
// BulkheadConfig
// ---------------------------------------------------------------------------

/// Cluster-wide settings. The controller reads only the object named
/// `cluster` (the schema rejects any other name); without it, every field has
/// its default.
// Each `printcolumn(..)` repeats `type_`/`json_path`: not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "bulkhead.io",
    version = "v1alpha1",
    kind = "BulkheadConfig",
    status = "BulkheadConfigStatus",
    derive = "PartialEq",
    shortname = "bhc",
    doc = "Bulkhead's cluster-wide settings: a singleton named 'cluster'.",
    validation = kube::core::Rule::new("self.metadata.name == 'cluster'")
        .message("BulkheadConfig is a singleton: its name must be 'cluster'"),
    printcolumn(
        name = "Mode",
        type_ = "string",
        description = "The default mode of namespaces",
        json_path = ".spec.defaultMode"
    ),
    printcolumn(
        name = "API-Guard",
        type_ = "string",
        description = "The Kubernetes API guard's mode",
        json_path = ".spec.apiGuard.mode"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BulkheadConfigSpec {
    /// The mode of a namespace that does not choose one: Learn (everything
    /// allowed, flows recorded as the baseline), Monitor (allowed, alerts on
    /// flows outside policy or baseline) or Enforce (denials drop).
    #[serde(default)]
    pub default_mode: PolicyMode,
    /// Which pods may reach the Kubernetes API server, the kubelet and node
    /// ports, and the cloud metadata address.
    #[serde(default)]
    pub api_guard: ApiGuard,
    /// The flow log: what the agents report of the flows they see.
    #[serde(default)]
    pub flow_log: FlowLog,
    /// What namespaces that no Tenant selects may reach: Shared (everything a
    /// policy allows) or Isolated (a fence of their own, like a tenant each).
    #[serde(default)]
    pub untenanted_namespaces: UntenantedNamespaces,
}

/// A namespace's mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PolicyMode {
    Learn,
    Monitor,
    #[default]
    Enforce,
}

/// The Kubernetes API guard's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiGuard {
    /// Enforce (untrusted pods are dropped), Monitor (allowed, alerted) or
    /// Off. Quote "Off" in YAML: unquoted, kubectl reads it as false.
    #[serde(default)]
    pub mode: GuardMode,
    /// The trusted pods: a pod is trusted when any entry matches it. Default:
    /// every pod of kube-system. An empty list trusts no pod.
    #[serde(default = "default_trusted")]
    pub trusted: Vec<TrustedPods>,
}

impl Default for ApiGuard {
    fn default() -> Self {
        Self {
            mode: GuardMode::default(),
            trusted: default_trusted(),
        }
    }
}

fn default_trusted() -> Vec<TrustedPods> {
    vec![TrustedPods {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(
                [(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    DEFAULT_TRUSTED_NAMESPACE.to_owned(),
                )]
                .into(),
            ),
            ..LabelSelector::default()
        }),
        pod_selector: None,
        service_accounts: Vec::new(),
    }]
}

/// The API guard's mode. In YAML, quote `"Off"`: unquoted, YAML 1.1 tools
/// such as kubectl read it as the boolean `false`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum GuardMode {
    #[default]
    Enforce,
    Monitor,
    Off,
}

/// Pods the API guard trusts: those matching every condition given. At least
/// one condition must be given; `namespaceSelector: {}` means every namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedPods {
    /// The pod's namespace matches this selector. Absent: any namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The pod matches this selector. Absent: any pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// The pod runs as one of these ServiceAccounts, each written
    /// `<namespace>/<name>`. Empty: any ServiceAccount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
}

/// The flow log's settings.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowLog {
    /// Whether agents report flows at all.
    #[serde(default = "default_flow_log_enabled")]
    pub enabled: bool,
    /// At most this many flow records per second per node; the excess is
    /// counted, not logged.
    #[serde(default = "default_flow_log_rate")]
    pub rate_limit_per_second: u32,
}

/// Flow logging is on unless turned off.
pub const DEFAULT_FLOW_LOG_ENABLED: bool = true;
/// The default flow-record budget per node and second.
pub const DEFAULT_FLOW_LOG_RATE: u32 = 1000;

fn default_flow_log_enabled() -> bool {
    DEFAULT_FLOW_LOG_ENABLED
}

fn default_flow_log_rate() -> u32 {
    DEFAULT_FLOW_LOG_RATE
}

impl Default for FlowLog {
    fn default() -> Self {
        Self {
            enabled: DEFAULT_FLOW_LOG_ENABLED,
            rate_limit_per_second: DEFAULT_FLOW_LOG_RATE,
        }
    }
}

/// How namespaces that belong to no Tenant are treated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UntenantedNamespaces {
    #[default]
    Shared,
    Isolated,
}

/// Where the cluster configuration stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkheadConfigStatus {
    /// `Accepted`: whether the controller applies this configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl BulkheadConfigSpec {
    /// Checks what the schema cannot; every error names its field.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        for (i, t) in self.api_guard.trusted.iter().enumerate() {
            let field = format!("spec.apiGuard.trusted[{i}]");
            if t.namespace_selector.is_none()
                && t.pod_selector.is_none()
                && t.service_accounts.is_empty()
            {
                errs.push(
                    &field,
                    "gives no condition, which would trust every pod; to mean that, write namespaceSelector: {}",
                );
            }
            if let Some(sel) = &t.namespace_selector {
                validate_selector(&mut errs, &format!("{field}.namespaceSelector"), sel);
            }
            if let Some(sel) = &t.pod_selector {
                validate_selector(&mut errs, &format!("{field}.podSelector"), sel);
            }
            for (j, sa) in t.service_accounts.iter().enumerate() {
                errs.check(
                    format!("{field}.serviceAccounts[{j}]"),
                    validate_service_account(sa),
                );
            }
        }
        if self.flow_log.enabled && self.flow_log.rate_limit_per_second == 0 {
            errs.push(
                "spec.flowLog.rateLimitPerSecond",
                "must be positive while the flow log is enabled (set enabled: false to turn it off)",
            );
        }
        errs.finish()
    }
}

fn validate_service_account(sa: &str) -> Result<(), String> {
    let Some((ns, name)) = sa.split_once('/') else {
        return Err(format!("{sa:?}: expected <namespace>/<name>"));
    };
    validate_dns_label(ns).map_err(|e| format!("{sa:?}: namespace {e}"))?;
    validate_dns_subdomain(name).map_err(|e| format!("{sa:?}: name {e}"))
}

// ---------------------------------------------------------------------------
// Tenant
// ---------------------------------------------------------------------------

/// A fence around a set of namespaces: namespaces of different tenants cannot
/// talk except through the exceptions listed here. Enforced at the admin tier,
/// so no NetworkPolicy in a tenant's namespaces can undo it.
// Each `printcolumn(..)` repeats `type_`/`json_path`: not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "bulkhead.io",
    version = "v1alpha1",
    kind = "Tenant",
    status = "TenantStatus",
    derive = "PartialEq",
    shortname = "tn",
    doc = "A fence around the namespaces a selector matches; other tenants reach them only through the listed exceptions.",
    printcolumn(
        name = "Namespaces",
        type_ = "string",
        description = "The namespaces of the tenant",
        json_path = ".status.namespaces"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// The tenant's namespaces. Must not be empty. A namespace matched by two
    /// Tenants is a conflict, reported on both; the stricter outcome applies.
    pub namespace_selector: LabelSelector,
    /// Who outside the tenant may connect in (at most 100 exceptions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub allow_from: Vec<TenantPeer>,
    /// Where outside the tenant its pods may connect to (at most 100
    /// exceptions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub allow_to: Vec<TenantPeer>,
}

/// The most exceptions a Tenant lists per direction (the schema's `maxItems`,
/// which also bounds the cost of the per-peer CEL rule).
pub const MAX_TENANT_PEERS: usize = 100;

/// One exception to a tenant's fence: exactly one of tenant, namespace and
/// cidr, and optionally the ports it is limited to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.tenant), has(self.__namespace__), has(self.cidr)].filter(x, x).size() == 1"
).message("give exactly one of tenant, namespace and cidr"))]
#[serde(rename_all = "camelCase")]
pub struct TenantPeer {
    /// Another Tenant, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// One namespace, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Addresses outside the cluster (or any), e.g. `10.20.0.0/16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// The ports the exception is limited to, as in a NetworkPolicy. Empty:
    /// every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

/// Where a Tenant stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The namespaces the selector matches now, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// `Accepted`, and `Conflict` when a namespace is in another Tenant too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl TenantSpec {
    /// Checks what the schema cannot; every error names its field.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        if selector_is_empty(&self.namespace_selector) {
            errs.push(
                "spec.namespaceSelector",
                "an empty selector would put every namespace in this tenant",
            );
        }
        validate_selector(
            &mut errs,
            "spec.namespaceSelector",
            &self.namespace_selector,
        );
        for (dir, peers) in [("allowFrom", &self.allow_from), ("allowTo", &self.allow_to)] {
            if peers.len() > MAX_TENANT_PEERS {
                errs.push(
                    format!("spec.{dir}"),
                    format!(
                        "{} exceptions; at most {MAX_TENANT_PEERS} are allowed",
                        peers.len()
                    ),
                );
            }
            for (i, peer) in peers.iter().enumerate() {
                validate_peer(&mut errs, &format!("spec.{dir}[{i}]"), peer);
            }
        }
        errs.finish()
    }
}

fn validate_peer(errs: &mut Errors, field: &str, peer: &TenantPeer) {
    let given = [
        peer.tenant.is_some(),
        peer.namespace.is_some(),
        peer.cidr.is_some(),
    ]
    .into_iter()
    .filter(|g| *g)
    .count();
    if given != 1 {
        errs.push(field, "give exactly one of tenant, namespace and cidr");
    }
    if let Some(t) = &peer.tenant {
        errs.check(format!("{field}.tenant"), validate_dns_subdomain(t));
    }
    if let Some(ns) = &peer.namespace {
        errs.check(format!("{field}.namespace"), validate_dns_label(ns));
    }
    if let Some(cidr) = &peer.cidr {
        errs.check(
            format!("{field}.cidr"),
            cidr.parse::<ipnet::IpNet>()
                .map(|_| ())
                .map_err(|e| format!("{cidr:?} is not a CIDR: {e}")),
        );
    }
    for (i, port) in peer.ports.iter().enumerate() {
        validate_port(errs, &format!("{field}.ports[{i}]"), port);
    }
}

fn validate_port(errs: &mut Errors, field: &str, port: &NetworkPolicyPort) {
    if let Some(p) = &port.protocol
        && !matches!(p.as_str(), "TCP" | "UDP" | "SCTP")
    {
        errs.push(
            format!("{field}.protocol"),
            format!("{p:?}: expected TCP, UDP or SCTP"),
        );
    }
    let number = match &port.port {
        None => None,
        Some(IntOrString::Int(n)) => {
            if !(1..=65535).contains(n) {
                errs.push(format!("{field}.port"), format!("{n} is not in 1-65535"));
            }
            Some(*n)
        }
        Some(IntOrString::String(name)) => {
            errs.check(format!("{field}.port"), validate_port_name(name));
            None
        }
    };
    if let Some(end) = port.end_port {
        match (&port.port, number) {
            (Some(IntOrString::Int(_)), Some(start)) => {
                if end < start || end > 65535 {
                    errs.push(
                        format!("{field}.endPort"),
                        format!("{end} must be in {start}-65535 (at least port)"),
                    );
                }
            }
            _ => errs.push(
                format!("{field}.endPort"),
                "needs a numeric port to start the range",
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// FlowBaseline
// ---------------------------------------------------------------------------

/// The name of the one FlowBaseline the controller keeps per namespace.
pub const FLOW_BASELINE_NAME: &str = "baseline";
/// The most edges one FlowBaseline holds (the schema's `maxItems`): about
/// 300 bytes each, so an object stays well under etcd's 1.5 MiB limit.
/// Over it, learned edges are kept first, then the most recently seen; the
/// rest stay in the controller's memory only and are counted in
/// `omittedEdges`.
pub const MAX_BASELINE_EDGES: usize = 1000;
/// The longest `lastRule` kept in a FlowBaseline (longer ones are cut).
pub const MAX_BASELINE_RULE_LEN: usize = 256;

/// The service graph the controller learned from observed flows, for one
/// namespace: written by the leading controller (kube mode), read back when
/// a controller starts so that the baseline survives a restart. One object
/// per namespace, named `baseline`.
// Each `printcolumn(..)` repeats `type_`/`json_path`: not a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "bulkhead.io",
    version = "v1alpha1",
    kind = "FlowBaseline",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    shortname = "fb",
    doc = "The flows Bulkhead observed in a namespace (the learned baseline), kept by the leading controller.",
    printcolumn(
        name = "Edges",
        type_ = "integer",
        description = "Edges kept in this object",
        json_path = ".spec.edgeCount"
    ),
    printcolumn(
        name = "Omitted",
        type_ = "integer",
        description = "Edges over the per-object cap, not kept here",
        json_path = ".spec.omittedEdges"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FlowBaselineSpec {
    /// The format's version (the controller's flow graph version).
    pub version: u32,
    /// The workloads the edges name, with the labels that select their pods
    /// (including workloads of other namespaces that are peers here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<BaselineWorkload>,
    /// The edges whose destination is a workload of this namespace, or whose
    /// source is and whose destination is outside the cluster. At most 1000.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub edges: Vec<BaselineEdge>,
    /// How many edges `edges` holds.
    #[serde(default)]
    pub edge_count: u32,
    /// Edges of this namespace over the cap, not kept in this object.
    #[serde(default)]
    pub omitted_edges: u64,
}

/// A workload: its namespace, name and selecting labels.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineWorkload {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub selector: std::collections::BTreeMap<String, String>,
}

/// One end of an edge: a workload (namespace and workload) or an address
/// outside the cluster (cidr, a host prefix).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineEnd {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
}

/// One edge of the service graph.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineEdge {
    pub src: BaselineEnd,
    pub dst: BaselineEnd,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The destination port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Connections observed (a lower bound when several replicas observed).
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub first_seen_unix_millis: u64,
    #[serde(default)]
    pub last_seen_unix_millis: u64,
    #[serde(default)]
    pub allowed: u64,
    #[serde(default)]
    pub denied: u64,
    #[serde(default)]
    pub would_deny: u64,
    /// In the baseline: seen, not dropped, while an end was in learn mode.
    #[serde(default)]
    pub learned: bool,
    /// An anomaly alert was raised for this edge.
    #[serde(default)]
    pub alerted: bool,
    /// The name the destination pods give the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// The rule that decided the last flow.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_rule: String,
}

// ---------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------

fn selector_is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// A label selector as the API server validates one: keys and values, the
/// four operators, values for In/NotIn only.
fn validate_selector(errs: &mut Errors, field: &str, sel: &LabelSelector) {
    for (k, v) in sel.match_labels.iter().flatten() {
        errs.check(format!("{field}.matchLabels"), validate_key(k));
        errs.check(format!("{field}.matchLabels.{k}"), validate_value(v));
    }
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        errs.check(format!("{at}.key"), validate_key(&req.key));
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.push(
                        format!("{at}.values"),
                        format!("must not be empty for operator {}", req.operator),
                    );
                }
                for (j, v) in values.iter().enumerate() {
                    errs.check(format!("{at}.values[{j}]"), validate_value(v));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.push(
                        format!("{at}.values"),
                        format!("must be empty for operator {}", req.operator),
                    );
                }
            }
            other => errs.push(
                format!("{at}.operator"),
                format!("{other:?}: expected In, NotIn, Exists or DoesNotExist"),
            ),
        }
    }
}

/// RFC 1123 label (a namespace name): 1-63 lowercase alphanumerics and '-',
/// alphanumeric at both ends.
fn validate_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a lowercase RFC 1123 label"))
    }
}

// ---------------------------------------------------------------------------
// The CRDs
// ---------------------------------------------------------------------------

/// The CustomResourceDefinitions of every Bulkhead kind, in a fixed order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Quarantine::crd(),
        BulkheadConfig::crd(),
        Tenant::crd(),
        FlowBaseline::crd(),
    ]
}

/// What `bulkhead crds` prints and `manifests/crds.yaml` holds: every CRD as
/// one YAML document, after a header saying how the file was made.
pub fn crds_yaml() -> String {
    // The header is a comment inside the first document, not a document of
    // its own: no tool sees an empty document.
    let mut out = String::from(
        "# Generated by `bulkhead crds` from controller/src/crd.rs: do not edit.\n\
         # Regenerate: cargo run -p bulkhead -- crds > manifests/crds.yaml\n",
    );
    for (i, crd) in crds().iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        match serde_yaml::to_string(crd) {
            Ok(doc) => out.push_str(&quote_yaml11_booleans(&doc)),
            // Serializing a typed CRD cannot fail; should it, the output is
            // still YAML and names the problem.
            Err(e) => {
                let _ = writeln!(out, "# error serializing {}: {e}", crd_name(crd));
            }
        }
    }
    out
}

/// The words YAML 1.1 reads as booleans and YAML 1.2 as strings (`true` and
/// `false` are booleans in both). serde_yaml writes YAML 1.2, but kubectl
/// reads YAML 1.1: unquoted, the enum value `Off` would reach the API server
/// as `false`.
const YAML11_BOOLEANS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Single-quotes every plain scalar value (`key: Off`, `- Off`) that YAML 1.1
/// would read as a boolean, leaving block scalars (descriptions) alone.
/// Quoted, the value is the same string in YAML 1.1 and 1.2.
fn quote_yaml11_booleans(doc: &str) -> String {
    let mut out = String::with_capacity(doc.len());
    // Inside a block scalar: the indentation of the key that opened it.
    let mut block: Option<usize> = None;
    for line in doc.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(key_indent) = block {
            if line.trim().is_empty() || indent > key_indent {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block = None;
        }
        let body = &line[indent..];
        // `- ` items may nest (`- - x`); the scalar is after the last marker.
        let mut start = indent;
        while line[start..].starts_with("- ") {
            start += 2;
        }
        let value_at = match line[start..].find(": ") {
            Some(i) if !line[start..].starts_with(['\'', '"']) => start + i + 2,
            _ => start,
        };
        let value = &line[value_at..];
        if YAML11_BOOLEANS.contains(&value) {
            out.push_str(&line[..value_at]);
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        } else {
            out.push_str(line);
        }
        out.push('\n');
        let opens_block = ["|", "|-", "|+", ">", ">-", ">+"].iter().any(|m| {
            body.ends_with(&format!(": {m}")) || body == *m || body.ends_with(&format!("- {m}"))
        });
        if opens_block {
            block = Some(indent);
        }
    }
    out
}

fn crd_name(crd: &CustomResourceDefinition) -> &str {
    crd.metadata.name.as_deref().unwrap_or("a CRD")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml11_booleans_are_quoted_outside_block_scalars() {
        let doc = "\
a: Off
b: 'Off'
c: true
list:
- Off
- - no
- k: Yes
- Offside
description: |-
  text
  - Off
  k: no
after: On
";
        let want = "\
a: 'Off'
b: 'Off'
c: true
list:
- 'Off'
- - 'no'
- k: 'Yes'
- Offside
description: |-
  text
  - Off
  k: no
after: 'On'
";
        assert_eq!(quote_yaml11_booleans(doc), want);
    }
}
