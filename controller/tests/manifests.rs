//! The deployment in `manifests/`, checked offline: the generated CRDs are
//! up to date, every document parses into its k8s-openapi type (errors name
//! the field), the security properties hold, the kustomization lists every
//! file, and the CRD schemas are structural (kubectl and kubeconform are not
//! available offline, so this is the schema validation CI runs).
//!
//! Also the `validate()` cases of Bulkhead's custom resources.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use bulkhead::crd::{
    self, ApiGuard, BulkheadConfig, BulkheadConfigSpec, FlowLog, GuardMode, PolicyMode, Quarantine,
    QuarantineSpec, Tenant, TenantPeer, TenantSpec, TrustedPods,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const NAMESPACE: &str = "bulkhead-system";
const REGENERATE: &str = "cargo run -p bulkhead -- crds > manifests/crds.yaml\n\
     or, without the binary: BULKHEAD_UPDATE_MANIFESTS=1 cargo test -p bulkhead --test manifests";

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn read(file: &str) -> String {
    let path = manifests_dir().join(file);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The non-empty documents of a multi-document YAML file.
fn documents(file: &str) -> Vec<Yaml> {
    let text = read(file);
    serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, doc)| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file}: document {i} is not YAML: {e}"))
        })
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for key in path {
        v = v.get(*key)?;
    }
    v.as_str()
}

/// Parses one document into `T`, naming the field on failure, and checks that
/// the typed value keeps every key of the document: k8s-openapi ignores
/// unknown fields, so a misspelt one (`readOnlyRootFileSystem`) would
/// otherwise pass unnoticed.
fn typed<T: DeserializeOwned + Serialize>(file: &str, index: usize, doc: &Yaml) -> T {
    let what = format!(
        "{file}: document {index} ({} {})",
        str_at(doc, &["kind"]).unwrap_or("?"),
        str_at(doc, &["metadata", "name"]).unwrap_or("?"),
    );
    let value: T = serde_path_to_error::deserialize(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: {}: {}", e.path(), e.inner()));
    let back = serde_yaml::to_value(&value).unwrap();
    let mut lost = Vec::new();
    keys_kept(doc, &back, String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{what}: fields its Kubernetes type does not have (misspelt?): {}",
        lost.join(", ")
    );
    value
}

fn keys_kept(orig: &Yaml, back: &Yaml, path: String, lost: &mut Vec<String>) {
    match (orig, back) {
        (Yaml::Mapping(o), Yaml::Mapping(b)) => {
            for (k, v) in o {
                let key = k.as_str().unwrap_or("?");
                let at = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(k) {
                    Some(bv) => keys_kept(v, bv, at, lost),
                    // `key: null` and `key: {}`/`[]` may be dropped on the way back.
                    None if is_empty(v) => {}
                    None => lost.push(at),
                }
            }
        }
        (Yaml::Sequence(o), Yaml::Sequence(b)) => {
            for (i, (ov, bv)) in o.iter().zip(b).enumerate() {
                keys_kept(ov, bv, format!("{path}[{i}]"), lost);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Yaml) -> bool {
    match v {
        Yaml::Null => true,
        Yaml::Mapping(m) => m.is_empty(),
        Yaml::Sequence(s) => s.is_empty(),
        _ => false,
    }
}

/// Every object of the files `kustomization.yaml` lists, typed.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    deployments: Vec<Deployment>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
    pod_disruption_budgets: Vec<PodDisruptionBudget>,
    crds: Vec<CustomResourceDefinition>,
    /// CRDs shipped as upstream publishes them (not generated from our types).
    upstream_crds: Vec<CustomResourceDefinition>,
}

/// The optional grants of `--auto-apply-recommendations` (not in the
/// kustomization).
const AUTO_APPLY_RBAC: &str = "rbac-auto-apply.yaml";

/// The manifest that holds the upstream ClusterNetworkPolicy CRD.
const UPSTREAM_CNP_FILE: &str = "clusternetworkpolicies.yaml";

fn kustomization_resources() -> Vec<String> {
    let doc = documents("kustomization.yaml").remove(0);
    assert_eq!(
        str_at(&doc, &["kind"]),
        Some("Kustomization"),
        "kustomization.yaml: kind"
    );
    doc.get("resources")
        .and_then(Yaml::as_sequence)
        .expect("kustomization.yaml: resources")
        .iter()
        .map(|r| r.as_str().expect("a resource is a file name").to_owned())
        .collect()
}

fn load() -> Objects {
    let mut o = Objects::default();
    for file in kustomization_resources() {
        for (i, doc) in documents(&file).iter().enumerate() {
            let api_version = str_at(doc, &["apiVersion"]).unwrap_or_default();
            let kind = str_at(doc, &["kind"]).unwrap_or_default();
            match (api_version, kind) {
                ("v1", "Namespace") => o.namespaces.push(typed(&file, i, doc)),
                ("v1", "ServiceAccount") => o.service_accounts.push(typed(&file, i, doc)),
                ("v1", "Service") => o.services.push(typed(&file, i, doc)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    o.cluster_roles.push(typed(&file, i, doc))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    o.cluster_role_bindings.push(typed(&file, i, doc))
                }
                ("rbac.authorization.k8s.io/v1", "Role") => o.roles.push(typed(&file, i, doc)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    o.role_bindings.push(typed(&file, i, doc))
                }
                ("apps/v1", "Deployment") => o.deployments.push(typed(&file, i, doc)),
                ("apps/v1", "DaemonSet") => o.daemon_sets.push(typed(&file, i, doc)),
                ("policy/v1", "PodDisruptionBudget") => {
                    o.pod_disruption_budgets.push(typed(&file, i, doc))
                }
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
                    if file == UPSTREAM_CNP_FILE =>
                {
                    o.upstream_crds.push(typed(&file, i, doc))
                }
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                    o.crds.push(typed(&file, i, doc))
                }
                other => panic!("{file}: document {i}: unexpected {other:?}"),
            }
        }
    }
    o
}

fn named<
    'a,
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    items: &'a [T],
    name: &str,
) -> &'a T {
    let found: Vec<&T> = items
        .iter()
        .filter(|i| i.metadata().name.as_deref() == Some(name))
        .collect();
    assert_eq!(found.len(), 1, "exactly one {} named {name}", T::KIND);
    found[0]
}

fn controller(o: &Objects) -> &Deployment {
    named(&o.deployments, "bulkhead-controller")
}

fn agent(o: &Objects) -> &DaemonSet {
    named(&o.daemon_sets, "bulkhead-agent")
}

fn pod_spec_of_deployment(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn pod_spec_of_daemon_set(d: &DaemonSet) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn only_container(spec: &PodSpec) -> &Container {
    assert_eq!(spec.containers.len(), 1, "one container");
    assert!(spec.init_containers.is_none(), "no init containers");
    &spec.containers[0]
}

// ---------------------------------------------------------------------------
// (a) The generated CRDs are up to date
// ---------------------------------------------------------------------------

#[test]
fn crds_yaml_is_up_to_date() {
    let path = manifests_dir().join("crds.yaml");
    let want = crd::crds_yaml();
    if std::env::var_os("BULKHEAD_UPDATE_MANIFESTS").is_some() {
        fs::write(&path, &want).unwrap();
        return;
    }
    let have = fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(h, w)| h != w)
            .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
        panic!(
            "manifests/crds.yaml is stale: it differs from the types in controller/src/crd.rs \
             from line {} on. Regenerate it:\n  {REGENERATE}",
            line + 1
        );
    }
}

#[test]
fn crds_are_the_four_kinds() {
    let crds = crd::crds();
    let names: Vec<_> = crds
        .iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap(),
                c.spec.scope.clone(),
                c.spec.names.short_names.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            (
                "quarantines.bulkhead.io".to_owned(),
                "Namespaced".to_owned(),
                vec!["qr".to_owned()]
            ),
            (
                "bulkheadconfigs.bulkhead.io".to_owned(),
                "Cluster".to_owned(),
                vec!["bhc".to_owned()]
            ),
            (
                "tenants.bulkhead.io".to_owned(),
                "Cluster".to_owned(),
                vec!["tn".to_owned()]
            ),
            (
                "flowbaselines.bulkhead.io".to_owned(),
                "Namespaced".to_owned(),
                vec!["fb".to_owned()]
            ),
        ]
    );
    for c in &crds {
        assert_eq!(c.spec.group, crd::GROUP);
        assert_eq!(c.spec.versions.len(), 1);
        let v = &c.spec.versions[0];
        assert_eq!(v.name, crd::VERSION);
        assert!(v.served && v.storage);
        // FlowBaseline is the controller's own record: its content is the
        // spec, and it has no status.
        let with_status = c.spec.names.kind != "FlowBaseline";
        assert_eq!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            with_status,
            "{}: status subresource",
            c.spec.names.kind
        );
    }
    let quarantine = &crds[0].spec.versions[0];
    let columns: Vec<_> = quarantine
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Pod", ".spec.podName"),
            ("Reason", ".spec.reason"),
            ("Age", ".metadata.creationTimestamp")
        ]
    );
}

// ---------------------------------------------------------------------------
// (b) Every document parses into its Kubernetes type
// ---------------------------------------------------------------------------

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let o = load();
    let names = |v: Vec<Option<String>>| -> BTreeSet<String> { v.into_iter().flatten().collect() };
    assert_eq!(
        names(
            o.namespaces
                .iter()
                .map(|n| n.metadata.name.clone())
                .collect()
        ),
        BTreeSet::from([NAMESPACE.to_owned()])
    );
    assert_eq!(
        names(
            o.service_accounts
                .iter()
                .map(|n| n.metadata.name.clone())
                .collect()
        ),
        BTreeSet::from([
            "bulkhead-agent".to_owned(),
            "bulkhead-controller".to_owned()
        ])
    );
    assert_eq!(o.cluster_roles.len(), 2);
    assert_eq!(o.cluster_role_bindings.len(), 1);
    assert_eq!(o.roles.len(), 2);
    assert_eq!(o.role_bindings.len(), 2);
    assert_eq!(o.deployments.len(), 1);
    assert_eq!(o.daemon_sets.len(), 1);
    assert_eq!(o.services.len(), 1);
    assert_eq!(o.pod_disruption_budgets.len(), 1);
    assert_eq!(o.crds, crd::crds(), "crds.yaml holds exactly crd::crds()");

    // Every namespaced object is in bulkhead-system.
    let namespaced = o
        .service_accounts
        .iter()
        .map(|x| (&x.metadata, "ServiceAccount"))
        .chain(o.roles.iter().map(|x| (&x.metadata, "Role")))
        .chain(o.role_bindings.iter().map(|x| (&x.metadata, "RoleBinding")))
        .chain(o.deployments.iter().map(|x| (&x.metadata, "Deployment")))
        .chain(o.daemon_sets.iter().map(|x| (&x.metadata, "DaemonSet")))
        .chain(o.services.iter().map(|x| (&x.metadata, "Service")))
        .chain(
            o.pod_disruption_budgets
                .iter()
                .map(|x| (&x.metadata, "PodDisruptionBudget")),
        );
    for (meta, kind) in namespaced {
        // But the Role (and its binding) to read the API server's Service
        // and EndpointSlices, which live in `default`.
        let expected = match (kind, meta.name.as_deref()) {
            ("Role" | "RoleBinding", Some("bulkhead-controller-apiserver")) => "default",
            _ => NAMESPACE,
        };
        assert_eq!(
            meta.namespace.as_deref(),
            Some(expected),
            "{kind} {:?}: namespace",
            meta.name
        );
    }
}

#[test]
fn a_misspelt_field_is_named() {
    let doc: Yaml = serde_yaml::from_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\nautomountServiceAccountTokn: false\n",
    )
    .unwrap();
    let e = std::panic::catch_unwind(|| typed::<ServiceAccount>("t.yaml", 0, &doc)).unwrap_err();
    let msg = e.downcast_ref::<String>().unwrap();
    assert!(msg.contains("automountServiceAccountTokn"), "{msg}");

    let doc: Yaml = serde_yaml::from_str(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  replicas: two\n",
    )
    .unwrap();
    let e = std::panic::catch_unwind(|| typed::<Deployment>("t.yaml", 0, &doc)).unwrap_err();
    let msg = e.downcast_ref::<String>().unwrap();
    assert!(msg.contains("spec.replicas"), "{msg}");
}

/// kubectl reads YAML 1.1, where these plain words are booleans.
const YAML11_BOOLEANS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

#[test]
fn no_plain_scalar_is_a_yaml11_boolean() {
    let mut files: Vec<String> = kustomization_resources();
    files.push("cert-manager.yaml".into());
    for file in files {
        for (n, line) in read(&file).lines().enumerate() {
            let t = line.trim();
            let value = t
                .rsplit_once(": ")
                .map_or(t.strip_prefix("- ").unwrap_or(""), |(_, v)| v);
            assert!(
                !YAML11_BOOLEANS.contains(&value),
                "{file}:{}: {t:?}: quote it, or kubectl reads a boolean",
                n + 1
            );
        }
    }
    // The generated CRD keeps `Off` a string for YAML 1.1 readers too.
    let crds = read("crds.yaml");
    assert!(crds.contains("- 'Off'"), "the GuardMode enum is quoted");
    let parsed: Vec<CustomResourceDefinition> = documents("crds.yaml")
        .iter()
        .enumerate()
        .map(|(i, d)| typed("crds.yaml", i, d))
        .collect();
    assert_eq!(parsed, crd::crds(), "quoting changes no value");
}

#[test]
fn cert_manager_manifest_fits_the_controller() {
    let docs = documents("cert-manager.yaml");
    let by_kind_name = |kind: &str, name: &str| -> &Yaml {
        docs.iter()
            .find(|d| {
                str_at(d, &["kind"]) == Some(kind) && str_at(d, &["metadata", "name"]) == Some(name)
            })
            .unwrap_or_else(|| panic!("cert-manager.yaml: no {kind} {name}"))
    };
    for d in &docs {
        assert_eq!(str_at(d, &["apiVersion"]), Some("cert-manager.io/v1"));
        assert_eq!(str_at(d, &["metadata", "namespace"]), Some(NAMESPACE));
    }
    let cert = by_kind_name("Certificate", "bulkhead-controller");
    let o = load();
    let secret = pod_spec_of_deployment(controller(&o))
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone())
        .unwrap();
    assert_eq!(str_at(cert, &["spec", "secretName"]), Some(secret.as_str()));
    let dns: Vec<&str> = cert["spec"]["dnsNames"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        dns.contains(&"bulkhead-controller"),
        "the agents' --server-name"
    );
    // `bulkhead certs issue` loads a CA key only in PKCS#8.
    for name in ["bulkhead-ca", "bulkhead-controller"] {
        let c = by_kind_name("Certificate", name);
        assert_eq!(
            str_at(c, &["spec", "privateKey", "encoding"]),
            Some("PKCS8")
        );
    }
    let issuer = str_at(cert, &["spec", "issuerRef", "name"]).unwrap();
    let ca_issuer = by_kind_name("Issuer", issuer);
    let ca_secret = str_at(ca_issuer, &["spec", "ca", "secretName"]).unwrap();
    let ca = by_kind_name("Certificate", "bulkhead-ca");
    assert_eq!(str_at(ca, &["spec", "secretName"]), Some(ca_secret));
    assert_eq!(ca["spec"]["isCA"].as_bool(), Some(true));
}

// ---------------------------------------------------------------------------
// (c) Security properties
// ---------------------------------------------------------------------------

#[test]
fn agent_has_net_admin_only_and_every_node() {
    let o = load();
    let ds = agent(&o);
    let spec = pod_spec_of_daemon_set(ds);
    let c = only_container(spec);
    let sc = c.security_context.as_ref().expect("agent: securityContext");
    let caps = sc.capabilities.as_ref().expect("agent: capabilities");
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_owned()][..]),
        "only NET_ADMIN added"
    );
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_owned()][..]),
        "ALL dropped"
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.run_as_user, Some(0), "nft needs root (see the comment)");
    let seccomp = |p: &Option<k8s_openapi::api::core::v1::SeccompProfile>| {
        p.as_ref().map(|p| p.type_.clone())
    };
    assert_eq!(
        seccomp(&sc.seccomp_profile).as_deref(),
        Some("RuntimeDefault")
    );
    assert_eq!(
        seccomp(&spec.security_context.as_ref().unwrap().seccomp_profile).as_deref(),
        Some("RuntimeDefault")
    );

    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_ne!(spec.host_pid, Some(true));
    assert_ne!(spec.host_ipc, Some(true));
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration `operator: Exists` (every taint): {tolerations:?}"
    );
    // No API access: no token, no binding.
    assert_eq!(spec.service_account_name.as_deref(), Some("bulkhead-agent"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    let sa = named(&o.service_accounts, "bulkhead-agent");
    assert_eq!(sa.automount_service_account_token, Some(false));
    let bound = o
        .cluster_role_bindings
        .iter()
        .flat_map(|b| b.subjects.iter().flatten())
        .chain(
            o.role_bindings
                .iter()
                .flat_map(|b| b.subjects.iter().flatten()),
        );
    for s in bound {
        assert_ne!(s.name, "bulkhead-agent", "the agent is bound to no role");
    }
    // No host paths: it needs none.
    for v in spec.volumes.iter().flatten() {
        assert!(v.host_path.is_none(), "agent volume {}: hostPath", v.name);
    }

    // It runs what the image ships, against the controller's Service.
    let command = c.command.as_deref().unwrap();
    assert_eq!(
        command[..2],
        ["bulkhead-agent".to_owned(), "run".to_owned()]
    );
    let flag = |name: &str| -> &str {
        let i = command
            .iter()
            .position(|a| a == name)
            .unwrap_or_else(|| panic!("agent: {name}"));
        &command[i + 1]
    };
    assert_eq!(flag("--node"), "$(NODE_NAME)");
    assert_eq!(flag("--tls-dir"), "/etc/bulkhead/tls");
    let svc = named(&o.services, "bulkhead-controller");
    let port = svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
    assert_eq!(
        flag("--controller"),
        format!("https://bulkhead-controller.{NAMESPACE}.svc:{port}")
    );
    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"));
    assert_eq!(
        c.image.as_deref(),
        only_container(pod_spec_of_deployment(controller(&o)))
            .image
            .as_deref(),
        "one image for both"
    );
}

#[test]
fn controller_is_non_root_replicated_and_probed() {
    let o = load();
    let d = controller(&o);
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    let spec = pod_spec_of_deployment(d);
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("bulkhead-controller")
    );
    let pod_sc = spec.security_context.as_ref().unwrap();
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert!(pod_sc.run_as_user.is_some_and(|u| u != 0));
    let c = only_container(spec);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_ne!(sc.run_as_user, Some(0));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(caps.add.is_none(), "the controller adds no capability");
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_ne!(spec.host_network, Some(true));

    let args = c.args.as_deref().unwrap();
    assert_eq!(
        args,
        [
            "controller",
            "--source",
            "kube",
            "--listen",
            "0.0.0.0:7443",
            "--http",
            "0.0.0.0:9443",
            "--tls-dir",
            "/etc/bulkhead/tls"
        ]
    );
    let port_named = |name: &str| -> i32 {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("controller port {name}"))
            .container_port
    };
    assert_eq!(port_named("grpc"), 7443);
    assert_eq!(port_named("http"), 9443);
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect(path);
        assert_eq!(get.path.as_deref(), Some(path));
        let port = match &get.port {
            IntOrString::Int(p) => *p,
            IntOrString::String(name) => port_named(name),
        };
        assert_eq!(port, 9443, "{path} on the --http port");
    }
    let res = c.resources.as_ref().unwrap();
    for key in ["cpu", "memory"] {
        assert!(
            res.requests.as_ref().unwrap().contains_key(key),
            "request {key}"
        );
        assert!(
            res.limits.as_ref().unwrap().contains_key(key),
            "limit {key}"
        );
    }

    // The TLS Secret's keys land under the names `--tls-dir` reads.
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/etc/bulkhead/tls");
    let mount = mount.expect("the TLS directory is mounted");
    assert_eq!(mount.read_only, Some(true));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(
        secret.secret_name.as_deref(),
        Some("bulkhead-controller-tls")
    );
    let files: BTreeSet<&str> = secret
        .items
        .iter()
        .flatten()
        .map(|i| i.path.as_str())
        .collect();
    assert_eq!(
        files,
        BTreeSet::from([
            bulkhead::certs::CA_CERT,
            "bulkhead-controller.pem",
            "bulkhead-controller-key.pem"
        ])
    );

    // The Service reaches the gRPC port of exactly these pods.
    let svc = named(&o.services, "bulkhead-controller")
        .spec
        .as_ref()
        .unwrap();
    let labels = &d
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels;
    for (k, v) in svc.selector.iter().flatten() {
        assert_eq!(
            labels.as_ref().and_then(|l| l.get(k)),
            Some(v),
            "selector {k}"
        );
    }
    let p = &svc.ports.as_ref().unwrap()[0];
    assert_eq!(p.port, 7443);
    assert_eq!(p.target_port, Some(IntOrString::String("grpc".into())));
}

/// One permission: (namespace or "*" for cluster-wide, group, resource,
/// resource name or "*", verb).
type Grant = (String, String, String, String, String);

fn grants_of(scope: &str, rules: &[PolicyRule], out: &mut BTreeSet<Grant>) {
    for r in rules {
        let all = |v: &Option<Vec<String>>| v.iter().flatten().any(|x| x == "*");
        assert!(
            !all(&r.api_groups) && !all(&r.resources) && !r.verbs.iter().any(|v| v == "*"),
            "no wildcards: {r:?}"
        );
        assert!(r.non_resource_urls.is_none(), "no non-resource URLs: {r:?}");
        let names: Vec<String> = match r.resource_names.as_deref() {
            None | Some([]) => vec!["*".to_owned()],
            Some(n) => n.to_vec(),
        };
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for n in &names {
                    for v in &r.verbs {
                        out.insert((scope.into(), g.clone(), res.clone(), n.clone(), v.clone()));
                    }
                }
            }
        }
    }
}

fn grant(scope: &str, group: &str, resource: &str, name: &str, verb: &str) -> Grant {
    (
        scope.into(),
        group.into(),
        resource.into(),
        name.into(),
        verb.into(),
    )
}

/// The RBAC grants exactly what the code uses: list/watch on what
/// `bulkhead::source::kube::watched()` watches (cluster-wide, or in its one
/// namespace), merge-patches of the status of Bulkhead's kinds, Events
/// (events.k8s.io/v1, in any namespace), and get/create/update on its Lease.
#[test]
fn controller_rbac_grants_exactly_what_the_code_uses() {
    let o = load();
    let mut granted = BTreeSet::new();
    let role = named(&o.cluster_roles, "bulkhead-controller");
    grants_of("*", role.rules.as_deref().unwrap(), &mut granted);
    for r in &o.roles {
        grants_of(
            r.metadata.namespace.as_deref().unwrap(),
            r.rules.as_deref().unwrap(),
            &mut granted,
        );
    }

    let mut used = BTreeSet::new();
    for w in bulkhead::source::kube::watched() {
        let scope = w.namespace.as_deref().unwrap_or("*");
        for verb in ["list", "watch"] {
            used.insert(grant(
                scope,
                &w.resource.group,
                &w.resource.plural,
                "*",
                verb,
            ));
        }
    }
    for c in crd::crds() {
        let has_status = c.spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some();
        if has_status {
            used.insert(grant(
                "*",
                &c.spec.group,
                &format!("{}/status", c.spec.names.plural),
                "*",
                "patch",
            ));
        }
    }
    // The learned flow graph (kube mode's persistence).
    for verb in bulkhead::flowstore::VERBS {
        used.insert(grant("*", crd::GROUP, "flowbaselines", "*", verb));
    }
    used.insert(grant("*", "events.k8s.io", "events", "*", "create"));
    let lease = bulkhead::lease::LEASE_NAME;
    used.insert(grant(
        NAMESPACE,
        "coordination.k8s.io",
        "leases",
        "*",
        "create",
    ));
    used.insert(grant(
        NAMESPACE,
        "coordination.k8s.io",
        "leases",
        lease,
        "get",
    ));
    used.insert(grant(
        NAMESPACE,
        "coordination.k8s.io",
        "leases",
        lease,
        "update",
    ));

    let extra: Vec<&Grant> = granted.difference(&used).collect();
    let missing: Vec<&Grant> = used.difference(&granted).collect();
    assert!(extra.is_empty(), "granted but never used: {extra:#?}");
    assert!(missing.is_empty(), "used but not granted: {missing:#?}");

    // The optional auto-apply grants: exactly what autoapply uses, bound to
    // the controller, and nothing that deletes.
    let docs = documents(AUTO_APPLY_RBAC);
    assert_eq!(docs.len(), 2);
    let role: ClusterRole = typed(AUTO_APPLY_RBAC, 0, &docs[0]);
    let binding: ClusterRoleBinding = typed(AUTO_APPLY_RBAC, 1, &docs[1]);
    let mut auto = BTreeSet::new();
    grants_of("*", role.rules.as_deref().unwrap(), &mut auto);
    let want: BTreeSet<Grant> = bulkhead::autoapply::VERBS
        .iter()
        .map(|v| grant("*", "networking.k8s.io", "networkpolicies", "*", v))
        .collect();
    assert_eq!(
        auto, want,
        "{AUTO_APPLY_RBAC} grants exactly what auto-apply uses"
    );
    assert!(!auto.iter().any(|g| g.4 == "delete" || g.4 == "patch"));
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let s = binding.subjects.as_deref().unwrap();
    assert_eq!(
        (s.len(), s[0].name.as_str(), s[0].namespace.as_deref()),
        (1, "bulkhead-controller", Some(NAMESPACE))
    );
    // The incident responder's role (unbound): exactly what the CLI's kube
    // mode uses.
    let operator = named(&o.cluster_roles, "bulkhead-quarantine-operator");
    let mut ops = BTreeSet::new();
    grants_of("*", operator.rules.as_deref().unwrap(), &mut ops);
    let want: BTreeSet<Grant> = bulkhead::quarantine::OPERATOR_GRANTS
        .iter()
        .map(|(g, r, v)| grant("*", g, r, "*", v))
        .collect();
    assert_eq!(
        ops, want,
        "rbac-quarantine.yaml grants exactly what the CLI uses"
    );
    assert!(
        !o.cluster_role_bindings
            .iter()
            .any(|b| b.role_ref.name == "bulkhead-quarantine-operator"),
        "who may quarantine is the cluster admin's choice"
    );
    for (_, _, res, _, _) in &granted {
        assert!(
            !matches!(
                res.as_str(),
                "secrets" | "configmaps" | "serviceaccounts/token"
            ),
            "no access to {res}"
        );
    }

    // Every Role and ClusterRole binds to the controller's ServiceAccount,
    // and nothing else.
    let crb = named(&o.cluster_role_bindings, "bulkhead-controller");
    assert_eq!(crb.role_ref.name, "bulkhead-controller");
    let mut bindings = vec![&crb.subjects];
    for r in &o.roles {
        let name = r.metadata.name.as_deref().unwrap();
        let rb = named(&o.role_bindings, name);
        assert_eq!(rb.metadata.namespace, r.metadata.namespace, "{name}");
        assert_eq!(
            (rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()),
            ("Role", name)
        );
        bindings.push(&rb.subjects);
    }
    for subjects in bindings {
        let s = subjects.as_deref().unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (
                s[0].kind.as_str(),
                s[0].name.as_str(),
                s[0].namespace.as_deref()
            ),
            ("ServiceAccount", "bulkhead-controller", Some(NAMESPACE))
        );
    }
}

/// The Deployment's arguments and downward-API variables are what
/// `bulkhead controller` accepts: parsed with its own clap definition.
#[test]
fn controller_deployment_arguments_parse_with_the_binary_s_flags() {
    use clap::{CommandFactory, Parser};
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: bulkhead::run::ControllerArgs,
    }
    let o = load();
    let c = only_container(pod_spec_of_deployment(controller(&o)));
    let args = c.args.as_deref().unwrap();
    assert_eq!(args[0], "controller");
    let parsed = Cli::try_parse_from(
        std::iter::once("bulkhead").chain(args[1..].iter().map(String::as_str)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.args.source, "kube");
    assert!(!parsed.args.insecure);
    assert_eq!(parsed.args.lease_name, bulkhead::lease::LEASE_NAME);

    // POD_NAME and POD_NAMESPACE come from the downward API and feed the
    // Lease's identity and namespace.
    let cmd = Cli::command();
    let env_of = |id: &str| -> String {
        let a = cmd.get_arguments().find(|a| a.get_id() == id).unwrap();
        a.get_env().unwrap().to_str().unwrap().to_owned()
    };
    let field_of = |var: &str| -> String {
        let e = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == var)
            .unwrap_or_else(|| panic!("env {var}"));
        e.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path
            .clone()
    };
    assert_eq!(field_of(&env_of("identity")), "metadata.name");
    assert_eq!(field_of(&env_of("lease_namespace")), "metadata.namespace");
    assert_eq!(controller(&o).spec.as_ref().unwrap().replicas, Some(2));
}

// ---------------------------------------------------------------------------
// (e) The kustomization lists every manifest
// ---------------------------------------------------------------------------

#[test]
fn kustomization_lists_every_manifest() {
    /// Applied on its own, when cert-manager is installed.
    const OPTIONAL: &[&str] = &["cert-manager.yaml", AUTO_APPLY_RBAC];
    let listed: Vec<String> = kustomization_resources();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a file listed twice: {listed:?}"
    );
    let on_disk: BTreeSet<String> = fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .filter(|n| n != "kustomization.yaml" && !OPTIONAL.contains(&n.as_str()))
        .collect();
    let listed: BTreeSet<String> = listed.into_iter().collect();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources vs the files in manifests/"
    );
    // The namespace comes before anything that lives in it.
    assert_eq!(kustomization_resources()[0], "namespace.yaml");
}

/// What `kubectl apply -k` would refuse: a kustomization field kustomize
/// does not know, or a listed file that is not there.
#[test]
fn kustomization_is_strict_and_every_listed_file_exists() {
    let docs = documents("kustomization.yaml");
    assert_eq!(docs.len(), 1, "one Kustomization");
    let keys: BTreeSet<&str> = docs[0]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(keys, BTreeSet::from(["apiVersion", "kind", "resources"]));
    assert_eq!(
        str_at(&docs[0], &["apiVersion"]),
        Some("kustomize.config.k8s.io/v1beta1")
    );
    for f in kustomization_resources() {
        assert!(
            manifests_dir().join(&f).is_file(),
            "{f} is listed but missing"
        );
        assert!(!documents(&f).is_empty(), "{f} is empty");
    }
}

// ---------------------------------------------------------------------------
// Offline schema validation of the CRDs
// ---------------------------------------------------------------------------

/// Walks a schema (as JSON) and reports what `apiextensions.k8s.io/v1` would
/// reject as non-structural, or what we never want in it.
fn structural_problems(s: &Json, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(obj) = s.as_object() else {
        out.push(format!("{path}: not a schema object"));
        return;
    };
    for banned in [
        "$ref",
        "$schema",
        "definitions",
        "$defs",
        "dependencies",
        "patternProperties",
        "additionalItems",
        "id",
    ] {
        if obj.contains_key(banned) {
            out.push(format!("{path}: {banned}"));
        }
    }
    let flag = |k: &str| obj.get(k).and_then(Json::as_bool) == Some(true);
    if in_junctor {
        // Inside allOf/anyOf/oneOf/not only value validations may appear.
        for k in [
            "type",
            "description",
            "default",
            "nullable",
            "additionalProperties",
            "x-kubernetes-preserve-unknown-fields",
            "x-kubernetes-int-or-string",
            "x-kubernetes-embedded-resource",
        ] {
            if obj.contains_key(k) {
                out.push(format!("{path}: {k} inside a junctor"));
            }
        }
    } else if !obj.contains_key("type")
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        out.push(format!("{path}: no type"));
    }
    if let Some(t) = obj.get("type") {
        let ok = t.as_str().is_some_and(|t| {
            ["object", "array", "string", "integer", "number", "boolean"].contains(&t)
        });
        if !ok {
            out.push(format!("{path}: type {t}"));
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    let ty = obj.get("type").and_then(Json::as_str);
    if ty == Some("array") && !obj.get("items").is_some_and(Json::is_object) {
        out.push(format!("{path}: an array needs one items schema"));
    }
    if obj.get("x-kubernetes-list-type").and_then(Json::as_str) == Some("map") {
        let keys = obj["x-kubernetes-list-map-keys"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let required = obj["items"]["required"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for k in &keys {
            if !required.contains(k) {
                out.push(format!(
                    "{path}: list-map key {k} is not required in the items"
                ));
            }
        }
        if keys.is_empty() {
            out.push(format!("{path}: list-type map without keys"));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Json::as_object) {
        for (name, p) in props {
            structural_problems(p, &format!("{path}.{name}"), in_junctor, out);
        }
        for r in obj
            .get("required")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            if !r.as_str().is_some_and(|r| props.contains_key(r)) {
                out.push(format!("{path}: required {r} is not a property"));
            }
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{path}[]"), in_junctor, out);
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        structural_problems(ap, &format!("{path}.*"), in_junctor, out);
    }
    for j in ["allOf", "anyOf", "oneOf"] {
        for (i, sub) in obj
            .get(j)
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            structural_problems(sub, &format!("{path}.{j}[{i}]"), true, out);
        }
    }
    if let Some(not) = obj.get("not") {
        structural_problems(not, &format!("{path}.not"), true, out);
    }
    if let Some(d) = obj.get("default") {
        default_fits(d, s, &format!("{path}.default"), out);
    }
}

/// A default must itself be valid against the schema it sits in.
fn default_fits(v: &Json, s: &Json, path: &str, out: &mut Vec<String>) {
    let ty = s.get("type").and_then(Json::as_str);
    let ok = match (ty, v) {
        (Some("object"), Json::Object(_))
        | (Some("array"), Json::Array(_))
        | (Some("string"), Json::String(_))
        | (Some("boolean"), Json::Bool(_)) => true,
        (Some("integer"), Json::Number(n)) => n.is_i64() || n.is_u64(),
        (Some("number"), Json::Number(_)) => true,
        (None, _) => true,
        _ => false,
    };
    if !ok {
        out.push(format!("{path}: {v} is not a {}", ty.unwrap_or("?")));
        return;
    }
    if let Some(allowed) = s.get("enum").and_then(Json::as_array)
        && !allowed.contains(v)
    {
        out.push(format!("{path}: {v} is not one of {allowed:?}"));
    }
    match v {
        Json::Object(m) => {
            for (k, child) in m {
                match s.get("properties").and_then(|p| p.get(k)) {
                    Some(cs) => default_fits(child, cs, &format!("{path}.{k}"), out),
                    None => match s.get("additionalProperties").filter(|a| a.is_object()) {
                        Some(cs) => default_fits(child, cs, &format!("{path}.{k}"), out),
                        None => {
                            out.push(format!("{path}.{k}: not in the schema (would be pruned)"))
                        }
                    },
                }
            }
        }
        Json::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, child) in items.iter().enumerate() {
                    default_fits(child, is, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn schema_json(c: &CustomResourceDefinition) -> Json {
    let props = c.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap_or_else(|| panic!("{}: no openAPIV3Schema", c.spec.names.kind));
    serde_json::to_value(props).unwrap()
}

#[test]
fn crd_schemas_are_structural() {
    for c in crd::crds() {
        let kind = &c.spec.names.kind;
        let json = schema_json(&c);
        // Round trip: what we print is what the API server reads back.
        let back: JSONSchemaProps = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("{kind}: schema does not read back: {e}"));
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            json,
            "{kind}: schema round trip"
        );

        let mut problems = Vec::new();
        structural_problems(&json, kind, false, &mut problems);
        assert!(
            problems.is_empty(),
            "{kind}: not structural:\n  {}",
            problems.join("\n  ")
        );
        assert_eq!(json["type"], "object", "{kind}: root type");
        let props = json["properties"].as_object().unwrap();
        assert!(
            props.contains_key("spec") && (props.contains_key("status") || kind == "FlowBaseline"),
            "{kind}: spec and status"
        );
        // metadata must not be described beyond name/generateName: it is not at all.
        assert!(
            !props.contains_key("metadata"),
            "{kind}: metadata is the API server's"
        );

        // Printer columns point at fields that exist.
        for col in c.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
        {
            let path = col.json_path.trim_start_matches('.');
            if path.starts_with("metadata.") {
                continue;
            }
            let mut s = &json;
            for part in path.split('.') {
                s = &s["properties"][part];
                assert!(
                    !s.is_null(),
                    "{kind}: printer column {} -> {}",
                    col.name,
                    col.json_path
                );
            }
        }
    }
}

#[test]
fn crd_schemas_carry_the_cel_rules() {
    let rules = |c: &CustomResourceDefinition| -> Vec<String> {
        let mut out = Vec::new();
        collect_rules(&schema_json(c), &mut out);
        out
    };
    fn collect_rules(s: &Json, out: &mut Vec<String>) {
        for r in s
            .get("x-kubernetes-validations")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            out.push(r["rule"].as_str().unwrap().to_owned());
        }
        for (_, p) in s
            .get("properties")
            .and_then(Json::as_object)
            .into_iter()
            .flatten()
        {
            collect_rules(p, out);
        }
        if let Some(i) = s.get("items") {
            collect_rules(i, out);
        }
    }
    let crds = crd::crds();
    assert_eq!(
        rules(&crds[0]),
        ["has(self.podName) != has(self.podSelector)"]
    );
    assert_eq!(
        rules(&crds[1]),
        [format!(
            "self.metadata.name == '{}'",
            crd::BULKHEAD_CONFIG_NAME
        )]
    );
    // `namespace` is a CEL reserved word: escaped as __namespace__.
    let tenant = rules(&crds[2]);
    assert_eq!(tenant.len(), 2, "{tenant:?}");
    assert!(tenant.iter().all(|r| r.contains("has(self.__namespace__)")));
    let spec = &schema_json(&crds[2])["properties"]["spec"]["properties"];
    for dir in ["allowFrom", "allowTo"] {
        assert_eq!(
            spec[dir]["maxItems"],
            crd::MAX_TENANT_PEERS,
            "{dir}: bounds the CEL cost"
        );
    }
}

#[test]
fn bulkhead_config_schema_defaults_are_the_rust_defaults() {
    let crds = crd::crds();
    let spec = &schema_json(&crds[1])["properties"]["spec"]["properties"];
    let want = serde_json::to_value(BulkheadConfigSpec::default()).unwrap();
    for field in ["defaultMode", "apiGuard", "flowLog", "untenantedNamespaces"] {
        assert_eq!(spec[field]["default"], want[field], "{field}");
    }
    // And an empty spec reads as the defaults.
    let empty: BulkheadConfigSpec = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, BulkheadConfigSpec::default());
    assert_eq!(empty.default_mode, PolicyMode::Enforce);
    assert_eq!(empty.api_guard.mode, GuardMode::Enforce);
    let kube_system = &empty.api_guard.trusted[0];
    assert_eq!(
        kube_system
            .namespace_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .and_then(|m| m.get("kubernetes.io/metadata.name"))
            .map(String::as_str),
        Some("kube-system")
    );
    assert_eq!(empty.flow_log, FlowLog::default());
    assert!(empty.validate().is_ok());
}

// ---------------------------------------------------------------------------
// (d) validate()
// ---------------------------------------------------------------------------

fn mk_quarantine(pod: Option<&str>, selector: Option<LabelSelector>) -> QuarantineSpec {
    QuarantineSpec {
        pod_name: pod.map(str::to_owned),
        pod_selector: selector,
        reason: "beaconing to a known C2 address".to_owned(),
        allow_from: Vec::new(),
        expires: None,
    }
}

fn mk_selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        match_expressions: None,
    }
}

fn fields(r: Result<(), crd::ValidationErrors>) -> Vec<String> {
    match r {
        Ok(()) => Vec::new(),
        Err(e) => {
            // Every message names its field.
            for fe in &e.0 {
                assert!(e.to_string().contains(&fe.field));
                assert!(!fe.message.is_empty());
            }
            e.fields().into_iter().map(str::to_owned).collect()
        }
    }
}

#[test]
fn quarantine_validate() {
    let ok = mk_quarantine(Some("web-7d4b9"), None);
    assert_eq!(fields(ok.validate()), Vec::<String>::new());
    let ok = mk_quarantine(None, Some(mk_selector(&[("app", "web")])));
    assert_eq!(fields(ok.validate()), Vec::<String>::new());

    // Exactly one of podName and podSelector.
    assert_eq!(
        fields(mk_quarantine(None, None).validate()),
        ["spec.podName"]
    );
    assert_eq!(
        fields(mk_quarantine(Some("web"), Some(mk_selector(&[("app", "web")]))).validate()),
        ["spec.podSelector"]
    );
    // An empty selector would take the whole namespace.
    assert_eq!(
        fields(mk_quarantine(None, Some(LabelSelector::default())).validate()),
        ["spec.podSelector"]
    );
    // Bad names and selectors.
    assert_eq!(
        fields(mk_quarantine(Some("Web_1"), None).validate()),
        ["spec.podName"]
    );
    let bad_expr = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![
            LabelSelectorRequirement {
                key: "app".into(),
                operator: "In".into(),
                values: None,
            },
            LabelSelectorRequirement {
                key: "tier".into(),
                operator: "Matches".into(),
                values: None,
            },
        ]),
    };
    assert_eq!(
        fields(mk_quarantine(None, Some(bad_expr)).validate()),
        [
            "spec.podSelector.matchExpressions[0].values",
            "spec.podSelector.matchExpressions[1].operator"
        ]
    );
    assert_eq!(
        fields(mk_quarantine(None, Some(mk_selector(&[("app", "-web")]))).validate()),
        ["spec.podSelector.matchLabels.app"]
    );

    // A reason is required (audit trail).
    let mut q = mk_quarantine(Some("web"), None);
    q.reason = "  ".into();
    assert_eq!(fields(q.validate()), ["spec.reason"]);

    // allowFrom: <ns>/<pod> or CIDR; each bad entry named by index.
    let mut q = mk_quarantine(Some("web"), None);
    q.allow_from = [
        "forensics/collector-0",
        "10.0.0.0/8",
        "fd00::/64",
        "192.168.1.7/32",
        "forensics",
        "10.0.0.1",
        "10.0.0.0/33",
        "Forensics/x",
        "ns/",
    ]
    .map(str::to_owned)
    .to_vec();
    assert_eq!(
        fields(q.validate()),
        [
            "spec.allowFrom[4]",
            "spec.allowFrom[5]",
            "spec.allowFrom[6]",
            "spec.allowFrom[7]",
            "spec.allowFrom[8]"
        ]
    );
    assert_eq!(
        crd::parse_allow_from("forensics/collector-0"),
        Ok(crd::AllowFrom::Pod {
            namespace: "forensics".into(),
            name: "collector-0".into()
        })
    );
    assert_eq!(
        crd::parse_allow_from("10.1.0.0/16"),
        Ok(crd::AllowFrom::Cidr("10.1.0.0/16".parse().unwrap()))
    );

    // expires: RFC 3339.
    for (expires, valid) in [
        ("2025-01-31T18:00:00Z", true),
        ("2025-01-31T18:00:00.5+01:00", true),
        ("2025-01-31t18:00:00z", true),
        ("2025-01-31", false),
        ("2025-01-31T18:00:00", false),
        ("2025-02-30T18:00:00Z", false),
        ("1h", false),
        ("2025-01-31T18:00:00-05:00[America/New_York]", false),
        ("2025-01-31T18:00+01:00", false),
        ("2025-01-31T18:00:00+0100", false),
        ("2025-01-31T18:00:00.Z", false),
        ("2025-01-31 18:00:00Z", false),
        ("2025-01-31T18:00:00.123456789-08:00", true),
        ("2025-01-31T18:00:00é+01:00", false),
        ("２025-01-31T18:00:00Z", false),
    ] {
        let mut q = mk_quarantine(Some("web"), None);
        q.expires = Some(expires.to_owned());
        let want: Vec<String> = if valid {
            vec![]
        } else {
            vec!["spec.expires".into()]
        };
        assert_eq!(fields(q.validate()), want, "expires {expires:?}");
    }

    // Several problems at once: all reported, in field order.
    let mut q = mk_quarantine(None, None);
    q.reason = String::new();
    q.allow_from = vec!["nope".into()];
    assert_eq!(
        fields(q.validate()),
        ["spec.podName", "spec.reason", "spec.allowFrom[0]"]
    );
}

#[test]
fn quarantine_reads_from_yaml() {
    let q: Quarantine = serde_yaml::from_str(
        r#"
apiVersion: bulkhead.io/v1alpha1
kind: Quarantine
metadata:
  name: web-7d4b9
  namespace: shop
spec:
  podName: web-7d4b9
  reason: beaconing
  allowFrom: [forensics/collector-0, 10.99.0.0/24]
  expires: "2030-01-01T00:00:00Z"
"#,
    )
    .unwrap();
    assert_eq!(q.spec.pod_name.as_deref(), Some("web-7d4b9"));
    assert_eq!(q.spec.allow_from.len(), 2);
    assert!(q.spec.validate().is_ok());
    assert!(q.status.is_none());
    // And serializes back without the absent fields.
    let back = serde_json::to_value(&q.spec).unwrap();
    assert!(back.get("podSelector").is_none());
}

#[test]
fn bulkhead_config_validate() {
    let mut spec = BulkheadConfigSpec::default();
    assert!(spec.validate().is_ok());
    spec.api_guard = ApiGuard {
        mode: GuardMode::Monitor,
        trusted: vec![
            TrustedPods::default(),
            TrustedPods {
                namespace_selector: Some(LabelSelector::default()),
                pod_selector: Some(mk_selector(&[("app", "argo cd")])),
                service_accounts: vec!["argocd/argocd-server".into(), "argocd-server".into()],
            },
        ],
    };
    spec.flow_log = FlowLog {
        enabled: true,
        rate_limit_per_second: 0,
    };
    assert_eq!(
        fields(spec.validate()),
        [
            "spec.apiGuard.trusted[0]",
            "spec.apiGuard.trusted[1].podSelector.matchLabels.app",
            "spec.apiGuard.trusted[1].serviceAccounts[1]",
            "spec.flowLog.rateLimitPerSecond"
        ]
    );
    // A disabled flow log needs no rate.
    spec.flow_log.enabled = false;
    spec.api_guard.trusted = vec![];
    assert!(
        spec.validate().is_ok(),
        "an empty list trusts nobody, which is valid"
    );

    let c: BulkheadConfig = serde_yaml::from_str(
        "apiVersion: bulkhead.io/v1alpha1\nkind: BulkheadConfig\nmetadata:\n  name: cluster\nspec:\n  defaultMode: Monitor\n",
    )
    .unwrap();
    assert_eq!(c.spec.default_mode, PolicyMode::Monitor);
    assert_eq!(c.spec.api_guard, ApiGuard::default());
    let bad = serde_yaml::from_str::<BulkheadConfig>(
        "apiVersion: bulkhead.io/v1alpha1\nkind: BulkheadConfig\nmetadata:\n  name: cluster\nspec:\n  defaultMode: enforce\n",
    );
    assert!(
        bad.is_err(),
        "modes are capitalized, as Kubernetes enums are"
    );
}

fn mk_peer(tenant: Option<&str>, namespace: Option<&str>, cidr: Option<&str>) -> TenantPeer {
    TenantPeer {
        tenant: tenant.map(str::to_owned),
        namespace: namespace.map(str::to_owned),
        cidr: cidr.map(str::to_owned),
        ports: Vec::new(),
    }
}

fn mk_port(
    protocol: Option<&str>,
    port: Option<IntOrString>,
    end: Option<i32>,
) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: protocol.map(str::to_owned),
        port,
        end_port: end,
    }
}

#[test]
fn tenant_validate() {
    let mut spec = TenantSpec {
        namespace_selector: mk_selector(&[("tenant", "blue")]),
        allow_from: vec![mk_peer(Some("red"), None, None)],
        allow_to: vec![
            mk_peer(None, Some("monitoring"), None),
            mk_peer(None, None, Some("10.20.0.0/16")),
        ],
    };
    assert!(spec.validate().is_ok());
    spec.allow_to[1].ports = vec![
        mk_port(Some("TCP"), Some(IntOrString::Int(443)), None),
        mk_port(Some("UDP"), Some(IntOrString::Int(5000)), Some(5010)),
        mk_port(None, Some(IntOrString::String("https".into())), None),
    ];
    assert!(spec.validate().is_ok());

    let bad = TenantSpec {
        namespace_selector: LabelSelector::default(),
        allow_from: vec![
            mk_peer(None, None, None),
            mk_peer(Some("red"), Some("x"), None),
            mk_peer(None, Some("Bad_NS"), None),
            mk_peer(None, None, Some("10.0.0.0/40")),
        ],
        allow_to: vec![TenantPeer {
            ports: vec![
                mk_port(Some("ICMP"), None, None),
                mk_port(None, Some(IntOrString::Int(0)), None),
                mk_port(None, Some(IntOrString::String("https".into())), Some(500)),
                mk_port(None, Some(IntOrString::Int(600)), Some(500)),
            ],
            ..mk_peer(Some("red"), None, None)
        }],
    };
    assert_eq!(
        fields(bad.validate()),
        [
            "spec.namespaceSelector",
            "spec.allowFrom[0]",
            "spec.allowFrom[1]",
            "spec.allowFrom[2].namespace",
            "spec.allowFrom[3].cidr",
            "spec.allowTo[0].ports[0].protocol",
            "spec.allowTo[0].ports[1].port",
            "spec.allowTo[0].ports[2].endPort",
            "spec.allowTo[0].ports[3].endPort"
        ]
    );

    let too_many = TenantSpec {
        namespace_selector: mk_selector(&[("tenant", "blue")]),
        allow_from: vec![mk_peer(Some("red"), None, None); crd::MAX_TENANT_PEERS + 1],
        allow_to: vec![],
    };
    assert_eq!(fields(too_many.validate()), ["spec.allowFrom"]);

    let t: Tenant = serde_yaml::from_str(
        r#"
apiVersion: bulkhead.io/v1alpha1
kind: Tenant
metadata:
  name: blue
spec:
  namespaceSelector:
    matchLabels: {tenant: blue}
  allowTo:
    - namespace: monitoring
      ports: [{protocol: TCP, port: 9090}]
"#,
    )
    .unwrap();
    assert!(t.spec.validate().is_ok());
    assert_eq!(
        t.spec.allow_to[0].ports[0].port,
        Some(IntOrString::Int(9090))
    );
}

#[test]
fn validation_errors_display_every_field() {
    let e = mk_quarantine(None, None).validate().unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("spec.podName: "), "{text}");
    let map: BTreeMap<_, _> =
        e.0.iter()
            .map(|f| (f.field.clone(), f.message.clone()))
            .collect();
    assert!(map["spec.podName"].contains("podSelector"));
}

// ---------------------------------------------------------------------------
// The upstream ClusterNetworkPolicy CRD
// ---------------------------------------------------------------------------

/// The schema at a path of property names (`items` steps into arrays).
fn schema_at<'a>(s: &'a Json, path: &[&str]) -> &'a Json {
    let mut v = s;
    for p in path {
        v = if *p == "items" {
            &v["items"]
        } else {
            &v["properties"][*p]
        };
        assert!(!v.is_null(), "no {p} in the schema (path {path:?})");
    }
    v
}

#[test]
fn upstream_cluster_network_policy_crd() {
    use bulkhead_core::cnp;
    let o = load();
    assert_eq!(o.upstream_crds.len(), 1, "{UPSTREAM_CNP_FILE}: one CRD");
    let c = &o.upstream_crds[0];
    assert_eq!(
        c.metadata.name.as_deref(),
        Some("clusternetworkpolicies.policy.networking.k8s.io")
    );
    let ann = c.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("policy.networking.k8s.io/bundle-version")
            .map(String::as_str),
        Some("v0.2.0")
    );
    assert_eq!(
        ann.get("policy.networking.k8s.io/channel")
            .map(String::as_str),
        Some("experimental"),
        "the experimental channel: bulkhead implements nodes peers and named ports"
    );
    assert_eq!(
        format!("{}/{}", c.spec.group, c.spec.versions[0].name),
        cnp::API_VERSION
    );
    assert_eq!(c.spec.names.kind, "ClusterNetworkPolicy");
    assert_eq!(c.spec.scope, "Cluster");
    let v = &c.spec.versions[0];
    assert!(v.served && v.storage);
    let json = schema_json(c);
    let mut problems = Vec::new();
    structural_problems(&json, "ClusterNetworkPolicy", false, &mut problems);
    assert!(
        problems.is_empty(),
        "not structural:\n  {}",
        problems.join("\n  ")
    );
    // The loader's limits are the schema's.
    let spec = schema_at(&json, &["spec"]);
    assert_eq!(
        spec["properties"]["priority"]["maximum"].as_f64(),
        Some(cnp::MAX_PRIORITY as f64)
    );
    for dir in ["ingress", "egress"] {
        let peers = if dir == "ingress" { "from" } else { "to" };
        assert_eq!(schema_at(spec, &[dir])["maxItems"], cnp::MAX_RULES, "{dir}");
        assert_eq!(
            schema_at(spec, &[dir, "items", peers])["maxItems"],
            cnp::MAX_PEERS,
            "{dir}.{peers}"
        );
        assert_eq!(schema_at(spec, &[dir, "items", peers])["minItems"], 1);
        assert_eq!(
            schema_at(spec, &[dir, "items", "protocols"])["maxItems"],
            cnp::MAX_PROTOCOLS
        );
        assert_eq!(
            schema_at(spec, &[dir, "items", "name"])["maxLength"],
            cnp::MAX_RULE_NAME
        );
        assert_eq!(
            schema_at(spec, &[dir, "items", "action"])["enum"],
            serde_json::json!(["Accept", "Deny", "Pass"])
        );
    }
    assert_eq!(
        schema_at(spec, &["egress", "items", "to", "items", "networks"])["maxItems"],
        cnp::MAX_NETWORKS
    );
    // The peer kinds the loader knows are the schema's.
    let keys = |v: &Json| -> Vec<String> {
        v["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        keys(schema_at(spec, &["egress", "items", "to", "items"])),
        ["domainNames", "namespaces", "networks", "nodes", "pods"]
    );
    assert_eq!(
        keys(schema_at(spec, &["ingress", "items", "from", "items"])),
        ["namespaces", "pods"]
    );
    assert_eq!(
        keys(schema_at(spec, &["ingress", "items", "protocols", "items"])),
        ["destinationNamedPort", "sctp", "tcp", "udp"]
    );
    assert_eq!(
        keys(spec),
        ["egress", "ingress", "priority", "subject", "tier"]
    );
}
