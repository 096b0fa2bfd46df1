//! The flow store and the recommender, as pure code: aggregation by
//! workload, label churn, address reuse, retention, persistence, anomalies,
//! and recommended policies checked by the verdict engine.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use bulkhead_core::flows::{
    Context, EdgeKey, FlowGraph, FlowVerdict, GraphDoc, ObservedFlow, PodIdentity, Vertex,
    WorkloadId, strip_pod_suffixes, workload_of,
};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::load_str;
use bulkhead_core::model::Protocol;
use bulkhead_core::recommend::{self, recommend};
use bulkhead_core::verdict::{Endpoint, Query, evaluate};
use bulkhead_proto::v1 as pb;
use proptest::prelude::*;

fn ns(name: &str, mode: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{bulkhead.io/mode: {mode}}}}}\n"
    )
}

fn pod(ns: &str, name: &str, ip: &str, labels: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{nodeName: n1, containers: [{{name: c, image: i, ports: [{ports}]}}]}}\nstatus: {{podIP: {ip}}}\n"
    )
}

/// shop (learn): frontend → api (named port http) → db (named port pg), a
/// report job (no app label) → api, everyone → kube-dns (kube-system).
fn cluster(shop_mode: &str) -> String {
    [
        ns("shop", shop_mode),
        ns("kube-system", "enforce"),
        pod(
            "shop",
            "frontend-7d9f8b6c5d-x2x4q",
            "10.0.1.1",
            "app: frontend, pod-template-hash: 7d9f8b6c5d",
            "",
        ),
        pod(
            "shop",
            "frontend-7d9f8b6c5d-b5b6c",
            "10.0.1.5",
            "app: frontend, pod-template-hash: 7d9f8b6c5d",
            "",
        ),
        pod(
            "shop",
            "api-6c8d9f7b4-zq9r2",
            "10.0.1.2",
            "app: api",
            "{name: http, containerPort: 8080}",
        ),
        pod(
            "shop",
            "db-0",
            "10.0.1.3",
            "app: db",
            "{name: pg, containerPort: 5432}",
        ),
        pod(
            "shop",
            "report-x7x8z",
            "10.0.1.4",
            "job-name: report, batch.kubernetes.io/controller-uid: u1",
            "",
        ),
        pod(
            "kube-system",
            "coredns-5d78c9869d-7xk2p",
            "10.0.9.9",
            "k8s-app: kube-dns",
            "{name: dns, containerPort: 53, protocol: UDP}",
        ),
    ]
    .concat()
}

fn inv(yaml: &str) -> Inventory {
    let loaded = load_str("t.yaml", yaml);
    let (i, d) = Inventory::from_loaded(&loaded);
    assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
    assert!(
        loaded.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        loaded.diagnostics
    );
    i
}

/// A flow as the agent reports it, with the identity of the pods `inv`
/// has at the two addresses (captured "at flow time").
fn flow(inv: &Inventory, src: &str, dst: &str, proto: pb::L4Proto, port: u32, at: u64) -> pb::Flow {
    let peer = |ip: &str| {
        inv.resolve(ip.parse().unwrap()).map(|p| pb::FlowPeer {
            namespace: p.namespace,
            pod: p.pod,
            labels: p.labels.into_iter().collect(),
        })
    };
    pb::Flow {
        src_addr: src.into(),
        dst_addr: dst.into(),
        protocol: proto as i32,
        dst_port: port,
        verdict: pb::FlowVerdict::Allowed as i32,
        rule: "default allow".into(),
        count: 1,
        first_seen_unix_millis: at,
        last_seen_unix_millis: at,
        src: peer(src),
        dst: peer(dst),
    }
}

fn report(flows: Vec<pb::Flow>) -> pb::FlowReport {
    pb::FlowReport {
        flows,
        dropped: 0,
        sample_rate: 1,
    }
}

const TCP: pb::L4Proto = pb::L4Proto::Tcp;
const UDP: pb::L4Proto = pb::L4Proto::Udp;

fn w(ns: &str, name: &str) -> Vertex {
    Vertex::Workload {
        namespace: ns.into(),
        name: name.into(),
    }
}

/// The realistic pattern, learned.
fn learned_graph(i: &Inventory) -> FlowGraph {
    let mut g = FlowGraph::default();
    let flows = vec![
        flow(i, "10.0.1.1", "10.0.1.2", TCP, 8080, 100),
        flow(i, "10.0.1.5", "10.0.1.2", TCP, 8080, 150),
        flow(i, "10.0.1.2", "10.0.1.3", TCP, 5432, 200),
        flow(i, "10.0.1.4", "10.0.1.2", TCP, 8080, 300),
        flow(i, "10.0.1.1", "10.0.9.9", UDP, 53, 50),
        flow(i, "10.0.1.2", "10.0.9.9", UDP, 53, 60),
        flow(i, "10.0.1.2", "203.0.113.7", TCP, 443, 70),
    ];
    let obs = g.ingest(&report(flows), i);
    assert!(
        obs.iter().all(|o| !o.anomaly),
        "nothing is an anomaly while learning"
    );
    g
}

#[test]
fn pod_suffixes_are_stripped_and_names_kept() {
    assert_eq!(strip_pod_suffixes("api-6c8d9f7b4-zq9r2"), "api");
    assert_eq!(strip_pod_suffixes("my-api-7d9f8b6c5d-x2x4q"), "my-api");
    assert_eq!(strip_pod_suffixes("report-x7x8z"), "report");
    assert_eq!(strip_pod_suffixes("db-0"), "db");
    assert_eq!(strip_pod_suffixes("web-server"), "web-server");
    assert_eq!(strip_pod_suffixes("server"), "server");
    assert_eq!(strip_pod_suffixes("-0"), "-0");
}

#[test]
fn flows_aggregate_by_workload_not_by_pod_or_address() {
    let i = inv(&cluster("learn"));
    let g = learned_graph(&i);
    // Two frontend pods (two names, two addresses): one edge.
    let k = EdgeKey {
        src: w("shop", "frontend"),
        dst: w("shop", "api"),
        protocol: Protocol::Tcp,
        port: 8080,
    };
    let e = &g.edges[&k];
    assert_eq!(e.count, 2);
    assert_eq!(
        (e.first_seen_unix_millis, e.last_seen_unix_millis),
        (100, 150)
    );
    assert_eq!(e.verdicts.allowed, 2);
    assert!(e.learned);
    assert_eq!(e.port_name.as_deref(), Some("http"));
    // The job has no app label: its name without the suffix, and the labels
    // that are not per-run.
    let job = WorkloadId {
        namespace: "shop".into(),
        name: "report".into(),
    };
    assert_eq!(
        g.workloads[&job],
        [("job-name".to_owned(), "report".to_owned())].into()
    );
    assert!(g.edges.contains_key(&EdgeKey {
        src: w("shop", "report"),
        dst: w("shop", "api"),
        protocol: Protocol::Tcp,
        port: 8080
    }));
    // An address that is no pod's is an external vertex of its host prefix.
    assert!(g.edges.keys().any(|k| k.dst
        == Vertex::External {
            cidr: "203.0.113.7/32".parse().unwrap()
        }));
    // 7 flows, 6 edges.
    assert_eq!(g.edges.len(), 6);
}

#[test]
fn label_churn_keeps_the_workload_and_its_selector() {
    let i = inv(&cluster("learn"));
    let mut g = FlowGraph::default();
    let mut f = flow(&i, "10.0.1.1", "10.0.1.2", TCP, 8080, 1);
    for (t, version) in [(1, "v1"), (2, "v2"), (3, "v3")] {
        let src = f.src.as_mut().unwrap();
        src.labels.insert("version".into(), version.into());
        src.pod = format!("frontend-6b7c8d9f5{t}-x2x4q");
        f.first_seen_unix_millis = t;
        f.last_seen_unix_millis = t;
        g.ingest(&report(vec![f.clone()]), &i);
    }
    assert_eq!(g.edges.len(), 1);
    let fe = WorkloadId {
        namespace: "shop".into(),
        name: "frontend".into(),
    };
    assert_eq!(
        g.workloads[&fe],
        [("app".to_owned(), "frontend".to_owned())].into()
    );

    // Without a workload label, only the labels every pod carried select it.
    let mut g = FlowGraph::default();
    let mut f = flow(&i, "10.0.1.4", "10.0.1.2", TCP, 8080, 1);
    for (t, run) in [(1, "a"), (2, "b")] {
        let src = f.src.as_mut().unwrap();
        src.labels.insert("run".into(), run.into());
        src.labels
            .insert("batch.kubernetes.io/controller-uid".into(), format!("u{t}"));
        src.pod = format!("report-{}", ["x7x8z", "q2w4r"][t as usize - 1]);
        g.ingest(&report(vec![f.clone()]), &i);
    }
    let job = WorkloadId {
        namespace: "shop".into(),
        name: "report".into(),
    };
    assert_eq!(
        g.workloads[&job],
        [("job-name".to_owned(), "report".to_owned())].into()
    );
    assert_eq!(g.edges.len(), 1);
}

#[test]
fn a_reused_address_does_not_inherit_the_old_pods_identity() {
    let i = inv(&cluster("learn"));
    let mut g = FlowGraph::default();
    // db-0 had 10.0.1.3; it is gone and a cache pod now has the address. The
    // agent reports the identity it saw at flow time.
    let old = flow(&i, "10.0.1.2", "10.0.1.3", TCP, 5432, 10);
    let mut new = old.clone();
    new.dst = Some(pb::FlowPeer {
        namespace: "shop".into(),
        pod: "cache-0".into(),
        labels: [("app".to_owned(), "cache".to_owned())].into(),
    });
    new.dst_port = 6379;
    new.first_seen_unix_millis = 20;
    new.last_seen_unix_millis = 20;
    // The inventory (stale or not) still says db-0 has the address: the
    // report's identity wins.
    g.ingest(&report(vec![old, new]), &i);
    let dsts: Vec<(&Vertex, u16)> = g.edges.keys().map(|k| (&k.dst, k.port)).collect();
    assert_eq!(
        dsts,
        vec![(&w("shop", "cache"), 6379), (&w("shop", "db"), 5432)]
    );
    // And the cache edge takes no port name from db-0's container ports.
    let cache = g
        .edges
        .iter()
        .find(|(k, _)| k.dst == w("shop", "cache"))
        .unwrap()
        .1;
    assert_eq!(cache.port_name, None);
}

#[test]
fn an_address_without_identity_is_resolved_now_or_is_external() {
    let i = inv(&cluster("learn"));
    let mut g = FlowGraph::default();
    let mut f = flow(&i, "10.0.1.1", "10.0.1.2", TCP, 8080, 1);
    f.dst = None; // a pod on another node
    let mut ext = flow(&i, "198.51.100.1", "10.0.1.2", TCP, 8080, 1);
    ext.src = None;
    let obs = g.ingest(&report(vec![f, ext]), &i);
    assert_eq!(obs[0].dst, w("shop", "api"));
    assert_eq!(obs[0].dst_pod.as_deref(), Some("api-6c8d9f7b4-zq9r2"));
    assert_eq!(
        obs[1].src,
        Vertex::External {
            cidr: "198.51.100.1/32".parse().unwrap()
        }
    );
}

#[test]
fn malformed_flows_are_counted_and_skipped() {
    let i = inv(&cluster("learn"));
    let mut g = FlowGraph::default();
    let good = flow(&i, "10.0.1.1", "10.0.1.2", TCP, 8080, 1);
    let mut bad_addr = good.clone();
    bad_addr.src_addr = "not-an-ip".into();
    let mut bad_port = good.clone();
    bad_port.dst_port = 70000;
    let mut bad_proto = good.clone();
    bad_proto.protocol = 99;
    let mut r = report(vec![bad_addr, good, bad_port, bad_proto]);
    r.dropped = 7;
    let obs = g.ingest(&r, &i);
    assert_eq!(obs.len(), 1);
    assert_eq!((g.malformed, g.shed), (3, 7));
    let e = ObservedFlow::from_pb(&pb::Flow {
        dst_port: 0,
        ..flow(&i, "10.0.1.1", "10.0.1.2", TCP, 8080, 1)
    })
    .unwrap_err();
    assert!(e.contains("dst_port"), "{e}");
}

#[test]
fn retention_forgets_old_edges_and_their_workloads() {
    let i = inv(&cluster("learn"));
    let mut g = learned_graph(&i);
    // The db edge was seen at 200, the report job's at 300; keep 50 ms before 340.
    g.expire(340, 50);
    assert_eq!(g.edges.len(), 1);
    assert!(g.edges.keys().all(|k| k.src == w("shop", "report")));
    assert!(!g.workloads.contains_key(&WorkloadId {
        namespace: "shop".into(),
        name: "db".into()
    }));
}

#[test]
fn the_graph_survives_a_json_round_trip() {
    let i = inv(&cluster("learn"));
    let g = learned_graph(&i);
    let text = serde_json::to_string(&g.to_doc()).unwrap();
    let doc: GraphDoc = serde_json::from_str(&text).unwrap();
    let back = FlowGraph::from_doc(doc).unwrap();
    assert_eq!(back, g);
    let mut doc = g.to_doc();
    doc.edges[0].protocol = "ICMP".into();
    let e = FlowGraph::from_doc(doc).unwrap_err();
    assert!(e.starts_with("edges[0].protocol"), "{e}");
}

#[test]
fn anomalies_outside_the_baseline_once_per_edge() {
    // Learn first.
    let learning = inv(&cluster("learn"));
    let mut g = learned_graph(&learning);
    // Then enforce, with a deny-all policy in shop: the learned edges are no
    // anomaly; a new one is, once.
    let deny = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n";
    let enforcing = inv(&format!("{}{deny}", cluster("enforce")));
    let mut known = flow(&enforcing, "10.0.1.1", "10.0.1.2", TCP, 8080, 500);
    known.verdict = pb::FlowVerdict::Denied as i32;
    let mut new = flow(&enforcing, "10.0.1.1", "10.0.1.3", TCP, 5432, 500);
    new.verdict = pb::FlowVerdict::Denied as i32;
    new.rule = "np shop/deny egress".into();
    let obs = g.ingest(&report(vec![known, new.clone(), new.clone()]), &enforcing);
    assert_eq!(
        obs.iter().map(|o| o.anomaly).collect::<Vec<_>>(),
        [false, true, false]
    );
    assert_eq!(obs[1].src, w("shop", "frontend"));
    assert_eq!(obs[1].dst, w("shop", "db"));
    assert_eq!(obs[1].flow.verdict, FlowVerdict::Denied);
    // A denied flow never joins the baseline.
    assert!(
        !g.edges
            .iter()
            .any(|(k, e)| k.dst == w("shop", "db") && k.src == w("shop", "frontend") && e.learned)
    );

    // Monitor, no policy at all: a new edge is an anomaly (no declared policy
    // allows it); in the same namespace a declared allow is not.
    let monitoring = inv(&cluster("monitor"));
    let mut g = FlowGraph::default();
    let o = g.add(
        ObservedFlow::from_pb(&flow(&monitoring, "10.0.1.3", "10.0.1.1", TCP, 80, 1)).unwrap(),
        &monitoring,
    );
    assert!(o.anomaly);
    let allow = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: fe, namespace: shop}\nspec: {podSelector: {matchLabels: {app: frontend}}, ingress: [{ports: [{port: 80}]}]}\n";
    let declared = inv(&format!("{}{allow}", cluster("monitor")));
    let mut g = FlowGraph::default();
    let o = g.add(
        ObservedFlow::from_pb(&flow(&declared, "10.0.1.3", "10.0.1.1", TCP, 80, 1)).unwrap(),
        &declared,
    );
    assert!(!o.anomaly);
}

/// Loads the recommended policies with the cluster and checks, with the
/// verdict engine, that every learned edge is allowed.
fn engine_with(yaml: &str) -> Inventory {
    inv(&format!("{}{yaml}", cluster("enforce")))
}

fn query(i: &Inventory, src: &str, dst: &str, proto: Protocol, port: u16) -> Query {
    let end = |s: &str| {
        let ip: IpAddr = s.parse().unwrap();
        i.pod_by_ip(ip).map_or(Endpoint::Ip(ip), Endpoint::Pod)
    };
    Query::new(end(src), end(dst), proto, port)
}

#[test]
fn recommended_policies_allow_exactly_the_learned_edges() {
    let learning = inv(&cluster("learn"));
    let g = learned_graph(&learning);
    let rec = recommend(&g, None);
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    let names: Vec<String> = rec
        .policies
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap(),
                p.metadata.name.as_deref().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "kube-system/bulkhead-learned-kube-dns",
            "shop/bulkhead-learned-api",
            "shop/bulkhead-learned-db",
            "shop/bulkhead-learned-frontend",
            "shop/bulkhead-learned-report",
        ]
    );
    // Labelled as generated: what auto-apply replaces (a hand-applied
    // recommendation stays Bulkhead's to update).
    for p in &rec.policies {
        let labels = p.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels.get(recommend::GENERATED_LABEL).map(String::as_str),
            Some("true")
        );
    }
    let yaml = recommend::to_yaml(&rec.policies).unwrap();
    // Named ports where the pods name them.
    assert!(yaml.contains("port: http"), "{yaml}");
    assert!(yaml.contains("port: pg"), "{yaml}");
    assert!(yaml.contains("port: dns"), "{yaml}");
    assert!(yaml.contains("cidr: 203.0.113.7/32"), "{yaml}");
    let e = engine_with(&yaml);
    let learned = [
        ("10.0.1.1", "10.0.1.2", Protocol::Tcp, 8080),
        ("10.0.1.5", "10.0.1.2", Protocol::Tcp, 8080),
        ("10.0.1.2", "10.0.1.3", Protocol::Tcp, 5432),
        ("10.0.1.4", "10.0.1.2", Protocol::Tcp, 8080),
        ("10.0.1.1", "10.0.9.9", Protocol::Udp, 53),
        ("10.0.1.2", "10.0.9.9", Protocol::Udp, 53),
        ("10.0.1.2", "203.0.113.7", Protocol::Tcp, 443),
    ];
    for (s, d, p, port) in learned {
        let v = evaluate(&e, &query(&e, s, d, p, port));
        assert!(
            v.allowed,
            "learned {s} -> {d} {p}/{port} denied: {v:?}\n{yaml}"
        );
    }
    let unlearned = [
        ("10.0.1.1", "10.0.1.3", Protocol::Tcp, 5432), // frontend -> db
        ("10.0.1.1", "10.0.1.2", Protocol::Tcp, 9090), // frontend -> api, other port
        ("10.0.1.3", "10.0.1.2", Protocol::Tcp, 8080), // db -> api
        ("10.0.1.4", "10.0.9.9", Protocol::Udp, 53),   // the job never resolved names
        ("10.0.1.3", "203.0.113.7", Protocol::Tcp, 443),
        ("10.0.1.2", "203.0.113.8", Protocol::Tcp, 443),
        ("198.51.100.1", "10.0.1.1", Protocol::Tcp, 80),
    ];
    for (s, d, p, port) in unlearned {
        let v = evaluate(&e, &query(&e, s, d, p, port));
        assert!(
            !v.allowed,
            "unlearned {s} -> {d} {p}/{port} allowed\n{yaml}"
        );
    }
}

#[test]
fn recommendations_are_stable_and_filtered_by_namespace() {
    let i = inv(&cluster("learn"));
    let g = learned_graph(&i);
    // The same edges learned in another order, in other reports.
    let mut g2 = FlowGraph::default();
    let mut flows = report(vec![]).flows;
    for (s, d, p, port, t) in [
        ("10.0.1.2", "203.0.113.7", TCP, 443, 70),
        ("10.0.1.2", "10.0.9.9", UDP, 53, 60),
        ("10.0.1.4", "10.0.1.2", TCP, 8080, 300),
        ("10.0.1.2", "10.0.1.3", TCP, 5432, 200),
        ("10.0.1.5", "10.0.1.2", TCP, 8080, 150),
        ("10.0.1.1", "10.0.9.9", UDP, 53, 50),
        ("10.0.1.1", "10.0.1.2", TCP, 8080, 100),
    ] {
        flows.push(flow(&i, s, d, p, port, t));
    }
    for f in flows {
        g2.ingest(&report(vec![f]), &i);
    }
    let a = recommend::to_yaml(&recommend(&g, None).policies).unwrap();
    let b = recommend::to_yaml(&recommend(&g2, None).policies).unwrap();
    assert_eq!(a, b);
    let shop = recommend(&g, Some("shop"));
    assert_eq!(shop.policies.len(), 4);
    assert!(
        shop.policies
            .iter()
            .all(|p| p.metadata.namespace.as_deref() == Some("shop"))
    );
}

#[test]
fn unlearned_and_unselectable_workloads_are_left_out_with_a_warning() {
    let i = inv(&cluster("learn"));
    let mut g = learned_graph(&i);
    // A pod without labels or a generated name: nothing selects it alone.
    let mut f = flow(&i, "10.0.1.1", "10.0.1.2", TCP, 8080, 1);
    f.src = Some(pb::FlowPeer {
        namespace: "shop".into(),
        pod: "debug".into(),
        labels: Default::default(),
    });
    g.ingest(&report(vec![f]), &i);
    let rec = recommend(&g, Some("shop"));
    assert!(
        rec.warnings.iter().any(|w| w.contains("shop/debug")),
        "{:?}",
        rec.warnings
    );
    assert!(
        !rec.policies
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some("bulkhead-learned-debug"))
    );
}

#[test]
fn workload_identity_prefers_the_name_label() {
    let id = PodIdentity {
        namespace: "n".into(),
        pod: "x-6c8d9f7b4-zq9r2".into(),
        labels: [
            ("app".to_owned(), "a".to_owned()),
            ("app.kubernetes.io/name".to_owned(), "b".to_owned()),
        ]
        .into(),
    };
    let (w, sel) = workload_of(&id);
    assert_eq!(w.name, "b");
    assert_eq!(
        sel.unwrap(),
        [("app.kubernetes.io/name".to_owned(), "b".to_owned())].into()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// Any subset of the pattern, learned in any order: the recommendation
    /// allows every learned edge and the same YAML comes out.
    #[test]
    fn any_learned_subset_is_allowed(picks in prop::collection::vec(0usize..7, 1..10)) {
        let i = inv(&cluster("learn"));
        let all = [
            ("10.0.1.1", "10.0.1.2", TCP, 8080u32),
            ("10.0.1.5", "10.0.1.2", TCP, 8080),
            ("10.0.1.2", "10.0.1.3", TCP, 5432),
            ("10.0.1.4", "10.0.1.2", TCP, 8080),
            ("10.0.1.1", "10.0.9.9", UDP, 53),
            ("10.0.1.2", "10.0.9.9", UDP, 53),
            ("10.0.1.2", "203.0.113.7", TCP, 443),
        ];
        let mut g = FlowGraph::default();
        for (t, &p) in picks.iter().enumerate() {
            let (s, d, pr, port) = all[p];
            g.ingest(&report(vec![flow(&i, s, d, pr, port, t as u64)]), &i);
        }
        let yaml = recommend::to_yaml(&recommend(&g, None).policies).unwrap();
        let e = engine_with(&yaml);
        for &p in &picks {
            let (s, d, pr, port) = all[p];
            let proto = if pr == TCP { Protocol::Tcp } else { Protocol::Udp };
            prop_assert!(evaluate(&e, &query(&e, s, d, proto, port as u16)).allowed);
        }
        // An edge never picked, between pods, is denied when one of its
        // workloads got a policy (the other end is then not isolated).
        let known = |ip: &str| i.resolve(ip.parse().unwrap()).is_some_and(|id| g.workloads.contains_key(&workload_of(&id).0));
        for (n, &(s, d, pr, port)) in all.iter().enumerate() {
            if picks.contains(&n) || d.starts_with("203.") || !(known(s) || known(d)) {
                continue;
            }
            // frontend's two pods are one workload: picking one is picking both.
            let same = [0usize, 1];
            if same.contains(&n) && picks.iter().any(|p| same.contains(p)) {
                continue;
            }
            let proto = if pr == TCP { Protocol::Tcp } else { Protocol::Udp };
            prop_assert!(!evaluate(&e, &query(&e, s, d, proto, port as u16)).allowed, "{} -> {} allowed\n{}", s, d, yaml);
        }
    }
}
