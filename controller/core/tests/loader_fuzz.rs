//! The loader and the engine on arbitrary Kubernetes-shaped YAML: never a
//! panic, every error names where it was, and whatever loads can be queried.
//! (The coverage-guided twin of this test is `controller/core/fuzz`.)
#![allow(clippy::unwrap_used)]

use bulkhead_core::inventory::Inventory;
use bulkhead_core::verdict::{self, Endpoint, Query};
use bulkhead_core::{Protocol, load_str};
use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

const KEYS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "labels",
    "spec",
    "status",
    "podSelector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "ingress",
    "egress",
    "from",
    "to",
    "ports",
    "port",
    "endPort",
    "protocol",
    "ipBlock",
    "cidr",
    "except",
    "namespaceSelector",
    "policyTypes",
    "podIP",
    "podIPs",
    "ip",
    "containers",
    "containerPort",
    "items",
    "nodeName",
    "hostNetwork",
    "phase",
    "addresses",
    "type",
    "address",
    "app",
];
const STRINGS: &[&str] = &[
    "",
    "x",
    "app",
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
    "Bogus",
    "TCP",
    "UDP",
    "SCTP",
    "ICMP",
    "tcp",
    "Ingress",
    "Egress",
    "10.0.0.0/8",
    "10.0.0.0/33",
    "10.0.1.0/24",
    "fd00::/64",
    "10.0.0.1",
    "not-an-ip",
    "http",
    "HTTP",
    "--",
    "80",
    "a/b/c",
    "Running",
    "Succeeded",
    "InternalIP",
];

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(-1i64),
            Just(0),
            Just(80),
            Just(65535),
            Just(65536),
            any::<i64>()
        ]
        .prop_map(|n| Value::Number(n.into())),
        prop::sample::select(STRINGS.to_vec()).prop_map(|s| Value::String(s.to_owned())),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((prop::sample::select(KEYS.to_vec()), inner), 0..6).prop_map(
                |kv| {
                    let mut m = Mapping::new();
                    for (k, v) in kv {
                        m.insert(Value::String(k.to_owned()), v);
                    }
                    Value::Mapping(m)
                }
            ),
        ]
    })
}

fn arb_object() -> impl Strategy<Value = Value> {
    let kinds = prop::sample::select(vec![
        ("v1", "Namespace"),
        ("v1", "Pod"),
        ("v1", "Node"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("v1", "List"),
        ("v1", "PodList"),
        ("apps/v1", "Deployment"),
    ]);
    (kinds, arb_value(), arb_value(), arb_value()).prop_map(|((api, kind), meta, spec, rest)| {
        let mut m = match rest {
            Value::Mapping(m) => m,
            _ => Mapping::new(),
        };
        m.insert("apiVersion".into(), api.into());
        m.insert("kind".into(), kind.into());
        m.insert("metadata".into(), meta);
        m.insert("spec".into(), spec);
        Value::Mapping(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_objects_never_panic(docs in prop::collection::vec(arb_object(), 1..4)) {
        let text = docs.iter().map(|d| serde_yaml::to_string(d).unwrap()).collect::<Vec<_>>().join("---\n");
        let loaded = load_str("fuzz.yaml", &text);
        for d in &loaded.diagnostics {
            prop_assert!(d.origin.is_some(), "diagnostic without origin: {}", d);
            prop_assert!(!d.message.is_empty());
        }
        let (inv, _) = Inventory::from_loaded(&loaded);
        let eps: Vec<Endpoint> = (0..inv.pods.len()).map(Endpoint::Pod)
            .chain(["10.0.0.1", "fd00::1"].iter().map(|s| Endpoint::Ip(s.parse().unwrap())))
            .collect();
        for &src in &eps {
            for &dst in &eps {
                let q = Query { src, dst, protocol: Protocol::Tcp, port: 80, family: None };
                let _ = verdict::evaluate(&inv, &q);
                let _ = bulkhead_core::explain::explain(&inv, &q);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "[-a-zA-Z0-9:{}\\[\\],'\" \n/.#&*!|>]{0,200}") {
        let loaded = load_str("fuzz.yaml", &text);
        let _ = Inventory::from_loaded(&loaded);
    }
}
