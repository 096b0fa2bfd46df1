//! The cluster configuration (`BulkheadConfig` named `cluster`): loading,
//! defaults, and field-named rejection.

use bulkhead_core::crd::{GuardMode, PolicyMode, UntenantedNamespaces};
use bulkhead_core::labels::Labels;
use bulkhead_core::model::{ClusterConfig, Pod};
use bulkhead_core::{Inventory, load_str};

fn inventory(yaml: &str) -> (Inventory, Vec<String>) {
    let loaded = load_str("config.yaml", yaml);
    let errors = loaded
        .diagnostics
        .iter()
        .map(|d| format!("{}: {}", d.field.clone().unwrap_or_default(), d.message))
        .collect();
    (Inventory::from_loaded(&loaded).0, errors)
}

fn pod(ns: &str, sa: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: "p".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ips: Vec::new(),
        node: None,
        ports: Vec::new(),
        host_network: false,
        service_account: sa.into(),
    }
}

fn ns_labels(name: &str) -> Labels {
    [("kubernetes.io/metadata.name".to_string(), name.to_string())].into()
}

#[test]
fn absent_config_means_defaults_trusting_kube_system() {
    let (inv, errors) = inventory("");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(inv.config, ClusterConfig::default());
    assert_eq!(inv.config.default_mode, PolicyMode::Enforce);
    assert_eq!(inv.config.api_guard.mode, GuardMode::Enforce);
    let trusted = &inv.config.api_guard.trusted;
    let p = pod("kube-system", "default", &[]);
    assert!(
        trusted
            .iter()
            .any(|t| t.matches(&p, &ns_labels("kube-system")))
    );
    let p = pod("shop", "default", &[]);
    assert!(!trusted.iter().any(|t| t.matches(&p, &ns_labels("shop"))));
}

#[test]
fn config_is_loaded_into_the_inventory() {
    let (inv, errors) = inventory(
        r#"
apiVersion: bulkhead.io/v1alpha1
kind: BulkheadConfig
metadata: {name: cluster}
spec:
  defaultMode: Learn
  untenantedNamespaces: Isolated
  flowLog: {enabled: true, rateLimitPerSecond: 50}
  apiGuard:
    mode: Monitor
    trusted:
    - podSelector: {matchLabels: {role: operator}}
      serviceAccounts: [ops/deployer]
"#,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let c = &inv.config;
    assert_eq!(c.default_mode, PolicyMode::Learn);
    assert_eq!(c.untenanted, UntenantedNamespaces::Isolated);
    assert_eq!(c.flow_log.rate_limit_per_second, 50);
    assert_eq!(c.api_guard.mode, GuardMode::Monitor);
    let t = &c.api_guard.trusted[0];
    // Every condition must hold: labels AND ServiceAccount.
    assert!(t.matches(
        &pod("ops", "deployer", &[("role", "operator")]),
        &ns_labels("ops")
    ));
    assert!(!t.matches(
        &pod("ops", "other", &[("role", "operator")]),
        &ns_labels("ops")
    ));
    assert!(!t.matches(&pod("ops", "deployer", &[]), &ns_labels("ops")));
    assert!(!t.matches(
        &pod("dev", "deployer", &[("role", "operator")]),
        &ns_labels("dev")
    ));
}

#[test]
fn bad_config_names_the_field_and_keeps_the_defaults() {
    for (yaml, field) in [
        (
            "apiVersion: bulkhead.io/v1alpha1\nkind: BulkheadConfig\nmetadata: {name: other}\nspec: {}\n",
            "metadata.name",
        ),
        (
            "apiVersion: bulkhead.io/v1alpha1\nkind: BulkheadConfig\nmetadata: {name: cluster}\nspec: {apiGuard: {trusted: [{}]}}\n",
            "spec.apiGuard.trusted[0]",
        ),
        (
            "apiVersion: bulkhead.io/v1alpha1\nkind: BulkheadConfig\nmetadata: {name: cluster}\nspec: {apiGuard: {trusted: [{podSelector: {matchLabels: {'bad key!': x}}}]}}\n",
            "spec.apiGuard.trusted[0].podSelector.matchLabels.bad key!",
        ),
        (
            "apiVersion: bulkhead.io/v1alpha1\nkind: BulkheadConfig\nmetadata: {name: cluster}\nspec: {defaultMode: Sometimes}\n",
            "spec.defaultMode",
        ),
    ] {
        let (inv, errors) = inventory(yaml);
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{field}: "))),
            "{field} not named in {errors:?}"
        );
        assert_eq!(inv.config, ClusterConfig::default(), "{yaml}");
    }
}
