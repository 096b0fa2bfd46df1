//! `--source kube` against a mock Kubernetes API (tests/support/mock_api.rs):
//! the same inventory as the directory source, changes reaching node
//! rulesets, relists without transient state, rejected objects reported
//! with Events and status conditions, one writer across a leader handover,
//! and the CLI's kube mode of `quarantine` / `release`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bulkhead::index::NodeIndex;
use bulkhead::lease::{self, LeaderState, LeaseOptions};
use bulkhead::server::StatusBoard;
use bulkhead::source::kube::{cluster_network_policy, origin_label};
use bulkhead::source::{
    DirOptions, DirSource, KubeOptions, KubeSource, ObjectRef, SnapshotRx, SourceSnapshot,
};
use bulkhead::status::{Applied, StatusOptions, StatusWriter};
use bulkhead_core::crd::{Quarantine, Tenant};
use bulkhead_core::diag::{Diagnostic, Origin, Severity};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::{Object, compile};
use kube::Resource as _;
use kube::api::ApiResource;
use serde_json::Value;
use support::mock_api::{MockApi, collection_key};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const DEADLINE: Duration = Duration::from_secs(20);

fn mk_ns(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{kubernetes.io/metadata.name: {name}}}}}\n"
    )
}

fn mk_node(name: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n"
    )
}

fn mk_pod(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: i, ports: [{{containerPort: 8080, name: http}}]}}]}}\nstatus: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
    )
}

/// db pods accept only web pods, on `port`.
fn mk_policy(ns: &str, name: &str, port: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]\n    ports: [{{port: {port}}}]\n"
    )
}

const API_SERVER: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: kubernetes, namespace: default}\nspec: {clusterIP: 10.96.0.1, ports: [{name: https, port: 443, targetPort: 6443}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}\naddressType: IPv4\nendpoints: [{addresses: [192.168.0.10]}]\nports: [{name: https, port: 6443, protocol: TCP}]\n";

const QUARANTINE: &str = "---\napiVersion: bulkhead.io/v1alpha1\nkind: Quarantine\nmetadata: {name: q1, namespace: x}\nspec: {podName: a, reason: incident 42}\n";

/// A small cluster: two nodes, web pod `a` on n1, db pod `b` on n2, a policy.
fn cluster() -> String {
    [
        mk_ns("default"),
        mk_ns("x"),
        mk_node("n1", "192.168.0.1"),
        mk_node("n2", "192.168.0.2"),
        mk_pod("x", "a", "n1", "10.0.0.1", "web"),
        mk_pod("x", "b", "n2", "10.0.0.2", "db"),
        mk_policy("x", "db", "8080"),
        API_SERVER.to_owned(),
    ]
    .concat()
}

fn quarantines() -> ApiResource {
    ApiResource::erase::<Quarantine>(&())
}

fn options(tap: Option<mpsc::UnboundedSender<Arc<SourceSnapshot>>>) -> KubeOptions {
    KubeOptions {
        debounce: Duration::from_millis(20),
        waiting_log: Duration::from_secs(10),
        tap,
    }
}

async fn start(
    api: &MockApi,
    who: &str,
    tap: Option<mpsc::UnboundedSender<Arc<SourceSnapshot>>>,
) -> SnapshotRx {
    let mut source = KubeSource::new(api.client(who));
    source.options = options(tap);
    timeout(DEADLINE, source.spawn())
        .await
        .expect("the first snapshot in time")
        .unwrap()
        .0
}

/// Waits until the latest snapshot satisfies `ok`.
async fn wait_for(
    rx: &mut SnapshotRx,
    what: &str,
    ok: impl Fn(&SourceSnapshot) -> bool,
) -> Arc<SourceSnapshot> {
    let until = Instant::now() + DEADLINE;
    loop {
        let snap = Arc::clone(&rx.borrow_and_update());
        if ok(&snap) {
            return snap;
        }
        tokio::time::timeout_at(until, rx.changed())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {what}; last: {:#?}",
                    snap.diagnostics
                )
            })
            .unwrap();
    }
}

/// Waits for a condition on something other than a channel.
async fn eventually(what: &str, ok: impl Fn() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn objects(snap: &SourceSnapshot) -> Vec<String> {
    let mut v: Vec<String> = snap
        .loaded
        .objects
        .iter()
        .map(|l| format!("{:?}", l.object))
        .collect();
    v.sort();
    v
}

fn pods(snap: &SourceSnapshot) -> Vec<String> {
    let mut v: Vec<String> = snap
        .loaded
        .objects
        .iter()
        .filter_map(|l| match &l.object {
            Object::Pod(p) => Some(p.name.clone()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn inventory(snap: &SourceSnapshot) -> Arc<Inventory> {
    Arc::new(Inventory::from_loaded(&snap.loaded).0)
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn initial_sync_gives_the_same_inventory_as_the_directory_source() {
    let api = MockApi::new();
    // Quarantines are installed, ClusterNetworkPolicies are not (absent CRD).
    api.install(&quarantines(), true);
    let text = format!("{}{QUARANTINE}", cluster());
    api.apply_yaml(&text);
    // Something the watch must not see: another namespace's slices.
    api.apply_yaml("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: other, namespace: x, labels: {kubernetes.io/service-name: other}}\naddressType: IPv4\nendpoints: []\n");

    let snap = start(&api, "a", None).await.borrow().clone();
    assert_eq!(snap.revision, 1);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), &text).unwrap();
    let (dir_rx, _task) = DirSource::spawn(dir.path().to_owned(), DirOptions::default()).unwrap();
    let from_dir = dir_rx.borrow().clone();

    assert!(!snap.loaded.objects.is_empty());
    assert_eq!(objects(&snap), objects(&from_dir), "the same objects");
    let errors = |s: &SourceSnapshot| s.diagnostics.iter().filter(|d| d.is_error()).count();
    assert_eq!(errors(&snap), 0, "{:#?}", snap.diagnostics);
    assert_eq!(errors(&from_dir), 0);
    // The same warnings (kinds the loader does not use), in number.
    assert_eq!(
        snap.diagnostics.len(),
        from_dir.diagnostics.len(),
        "{:#?}\n{:#?}",
        snap.diagnostics,
        from_dir.diagnostics
    );
    // The same rulesets for every node.
    let (ki, di) = (inventory(&snap), inventory(&from_dir));
    for node in ["n1", "n2"] {
        assert_eq!(
            compile::compile_node(&ki, node, 7),
            compile::compile_node(&di, node, 7),
            "{node}"
        );
    }
    // Every object is known by reference, for Events and statuses.
    let q = &snap.refs[&origin_label("quarantines", Some("x"), "q1")];
    assert_eq!((q.kind.as_str(), q.name.as_str()), ("Quarantine", "q1"));
    assert!(q.uid.is_some());
    assert!(
        !snap.refs.keys().any(|k| k.contains("/other")),
        "only default/kubernetes slices are watched"
    );
    // A stable order: kind, namespace, name.
    let labels: Vec<&str> = snap
        .loaded
        .objects
        .iter()
        .map(|l| l.origin.file.as_str())
        .collect();
    let again = start(&api, "b", None).await.borrow().clone();
    let labels2: Vec<&str> = again
        .loaded
        .objects
        .iter()
        .map(|l| l.origin.file.as_str())
        .collect();
    assert_eq!(labels, labels2);
    assert!(again.same_content(&snap));
}

#[tokio::test]
async fn nothing_is_published_before_every_kind_is_listed() {
    let api = MockApi::new();
    api.apply_yaml(&cluster());
    // Pods cannot be listed yet: the collection is not there.
    let pods_key = "api/v1/pods".to_owned();
    let held = api.clone();
    held.uninstall(&pods_key);
    let mut source = KubeSource::new(api.client("a"));
    source.options = options(None);
    let started = tokio::spawn(source.spawn());
    eventually("two failed pod lists", || {
        api.requests()
            .iter()
            .filter(|r| r.uri.starts_with("/api/v1/pods?") && r.status == 404)
            .count()
            >= 2
    })
    .await;
    assert!(
        !started.is_finished(),
        "a snapshot without pods must not be published"
    );
    api.reinstall(&pods_key, "v1", "Pod", true);
    api.apply_yaml(&mk_pod("x", "a", "n1", "10.0.0.1", "web"));
    let (rx, _) = timeout(DEADLINE, started).await.unwrap().unwrap().unwrap();
    assert_eq!(rx.borrow().revision, 1);
    assert_eq!(pods(&rx.borrow()), vec!["a".to_owned()]);
}

#[tokio::test]
async fn a_pod_label_change_reaches_a_node_ruleset() {
    let api = MockApi::new();
    api.apply_yaml(&cluster());
    let mut rx = start(&api, "a", None).await;
    let mut index = NodeIndex::new(100);
    index.update(inventory(&rx.borrow_and_update()));
    let mut n2 = index.subscribe("n2");
    let web = compile::addr_element("10.0.0.1".parse().unwrap());
    let has_web =
        |rs: &bulkhead_proto::v1::Ruleset| rs.sets.iter().any(|s| s.elements.contains(&web));
    assert!(
        has_web(&n2.borrow_and_update()),
        "db's ruleset on n2 admits web pod a"
    );

    // a is no longer a web pod: the policy on n2 no longer admits it.
    api.apply_yaml(&mk_pod("x", "a", "n1", "10.0.0.1", "batch"));
    let snap = wait_for(&mut rx, "a relabelled", |s| {
        s.loaded.objects.iter().any(|l| matches!(&l.object, Object::Pod(p) if p.name == "a" && p.labels.get("app").map(String::as_str) == Some("batch")))
    })
    .await;
    let changed = index.update(inventory(&snap));
    assert!(changed.contains(&"n2".to_owned()), "{changed:?}");
    assert!(n2.has_changed().unwrap());
    assert!(
        !has_web(&n2.borrow_and_update()),
        "pod a left the allowed set"
    );
}

#[tokio::test]
async fn a_relist_after_410_gone_never_publishes_a_transient_state() {
    let api = MockApi::new();
    api.apply_yaml(&cluster());
    api.apply_yaml(&mk_pod("x", "c", "n1", "10.0.0.3", "web"));
    let (tap_tx, mut tap) = mpsc::unbounded_channel();
    let mut rx = start(&api, "a", Some(tap_tx)).await;
    let before = pods(&rx.borrow());
    assert_eq!(before, ["a", "b", "c"]);
    let lists = |api: &MockApi| {
        api.requests()
            .iter()
            .filter(|r| r.uri.starts_with("/api/v1/pods?") && !r.uri.contains("watch=true"))
            .count()
    };
    let lists_before = lists(&api);

    // Bookmarks move the watch on and change nothing.
    eventually("the pod watch is open", || {
        api.open_watches("api/v1/pods") == 1
    })
    .await;
    api.bookmark();
    // A watch that ends cleanly resumes from its version: no relist.
    api.drop_watches();
    api.apply_yaml(&mk_pod("x", "d", "n2", "10.0.0.4", "db"));
    wait_for(&mut rx, "pod d", |s| pods(s).contains(&"d".to_owned())).await;
    assert_eq!(
        lists(&api),
        lists_before,
        "resuming a watch does not relist"
    );

    // History is compacted: 410 Gone mid-watch; while the watchers wait to
    // relist, c goes away and e arrives.
    eventually("the pod watch is open again", || {
        api.open_watches("api/v1/pods") == 1
    })
    .await;
    // Relists are slow: a source that cleared its store at `Init` would
    // publish the gap.
    api.set_list_delay(Duration::from_millis(300));
    api.expire_watches();
    api.delete("v1", "Pod", "x", "c");
    api.apply_yaml(&mk_pod("x", "e", "n2", "10.0.0.5", "db"));
    let snap = wait_for(&mut rx, "the relisted state", |s| {
        pods(s) == ["a", "b", "d", "e"]
    })
    .await;
    assert!(lists(&api) > lists_before, "the source relisted");
    assert!(snap.diagnostics.iter().all(|d| !d.is_error()));

    // Every snapshot ever published: complete, old or new, never in between.
    let mut seen = Vec::new();
    while let Ok(s) = tap.try_recv() {
        seen.push(s);
    }
    assert!(seen.len() >= 3, "{}", seen.len());
    let allowed: [&[&str]; 4] = [
        &["a", "b", "c"],
        &["a", "b", "c", "d"],
        &["a", "b", "d"],
        &["a", "b", "d", "e"],
    ];
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.revision, i as u64 + 1, "revisions grow by one");
        let p = pods(s);
        assert!(
            allowed.iter().any(|a| *a == p.as_slice()),
            "revision {}: pods {p:?}",
            s.revision
        );
        let kinds = |s: &SourceSnapshot, f: fn(&Object) -> bool| {
            s.loaded.objects.iter().filter(|l| f(&l.object)).count()
        };
        assert_eq!(
            kinds(s, |o| matches!(o, Object::Namespace(_))),
            2,
            "revision {}",
            s.revision
        );
        assert_eq!(
            kinds(s, |o| matches!(o, Object::Node(_))),
            2,
            "revision {}",
            s.revision
        );
        assert_eq!(
            kinds(s, |o| matches!(o, Object::NetworkPolicy(_))),
            1,
            "revision {}",
            s.revision
        );
    }
}

fn board_with_ack(node: &str, generation: u64, at: u64) -> Arc<StatusBoard> {
    let board = Arc::new(StatusBoard::default());
    board.with(node, |s| {
        s.acked_generation = Some(generation);
        s.acked_at_unix_millis = Some(at);
    });
    board
}

fn events(api: &MockApi) -> Vec<Value> {
    api.writes()
        .into_iter()
        .filter(|w| w.method == "POST" && w.path.ends_with("/events"))
        .map(|w| w.body)
        .collect()
}

#[tokio::test]
async fn a_malformed_network_policy_yields_an_event_and_the_rest_stays_enforced() {
    let api = MockApi::new();
    api.install(&quarantines(), true);
    api.apply_yaml(&cluster());
    api.apply_yaml(&mk_policy("x", "bad", "0"));
    api.apply_yaml(QUARANTINE);
    let rx = start(&api, "a", None).await;
    let snap = rx.borrow().clone();

    // The bad policy is rejected, named with its field; the good one stays.
    let bad: Vec<&Diagnostic> = snap.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert_eq!(bad[0].object.as_deref(), Some("NetworkPolicy x/bad"));
    assert_eq!(
        bad[0].field.as_deref(),
        Some("spec.ingress[0].ports[0].port")
    );
    assert!(
        snap.loaded
            .objects
            .iter()
            .any(|l| matches!(&l.object, Object::NetworkPolicy(p) if p.name == "db"))
    );
    let inv = inventory(&snap);
    let n2 = compile::compile_node(&inv, "n2", 1);
    let web = compile::addr_element("10.0.0.1".parse().unwrap());
    assert!(
        n2.sets.iter().any(|s| s.elements.contains(&web)),
        "the good policy is compiled"
    );

    // The leader reports it once.
    let mut writer = StatusWriter::new(
        api.client("a"),
        LeaderState::always(),
        board_with_ack("n1", 5, 1_700_000_000_000),
        StatusOptions {
            identity: "a".into(),
            tick: Duration::from_millis(50),
        },
    );
    let applied = Applied {
        snapshot: Arc::clone(&snap),
        generation: 5,
    };
    writer.sync(&applied).await;
    writer.sync(&applied).await;
    let ev = events(&api);
    assert_eq!(ev.len(), 1, "one Event, not one per sync: {ev:#?}");
    let note = ev[0]["note"].as_str().unwrap();
    assert!(
        note.contains("NetworkPolicy x/bad") && note.contains("spec.ingress[0].ports[0].port"),
        "{note}"
    );
    assert_eq!(ev[0]["regarding"]["kind"], "NetworkPolicy");
    assert_eq!(ev[0]["regarding"]["name"], "bad");
    assert_eq!(
        ev[0]["regarding"]["uid"],
        api.get("networking.k8s.io/v1", "NetworkPolicy", "x", "bad")
            .unwrap()["metadata"]["uid"]
    );
    assert_eq!(ev[0]["type"], "Warning");

    // The Quarantine is accepted and enforced by n1 (acked generation 5).
    let q = api
        .get("bulkhead.io/v1alpha1", "Quarantine", "x", "q1")
        .unwrap();
    let cond = &q["status"]["conditions"][0];
    assert_eq!(
        (cond["type"].as_str(), cond["status"].as_str()),
        (Some("Accepted"), Some("True"))
    );
    let enforced = q["status"]["enforcedBy"].as_array().unwrap();
    assert_eq!(enforced.len(), 1);
    assert_eq!(enforced[0]["node"], "n1");
    assert_eq!(enforced[0]["generation"], 5);
    assert_eq!(enforced[0]["time"], "2023-11-14T22:13:20Z");
    let status_writes = |api: &MockApi| {
        api.writes()
            .iter()
            .filter(|w| w.path.ends_with("/status"))
            .count()
    };
    assert_eq!(
        status_writes(&api),
        1,
        "an unchanged status is not rewritten"
    );
}

#[tokio::test]
async fn a_rejected_custom_resource_gets_a_condition_naming_the_field() {
    let api = MockApi::new();
    let tenants = ApiResource::erase::<Tenant>(&());
    api.install(&tenants, false);
    api.apply_yaml("---\napiVersion: bulkhead.io/v1alpha1\nkind: Tenant\nmetadata: {name: t1}\nspec: {namespaceSelector: {matchLabels: {tenant: t1}}}\n");
    let t = api.get("bulkhead.io/v1alpha1", "Tenant", "", "t1").unwrap();
    let label = origin_label(&tenants.plural, None, "t1");
    // The loader's verdict on it, as it will be once it validates Tenants.
    let snap = SourceSnapshot {
        revision: 1,
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            origin: Some(Origin {
                file: label.clone(),
                document: 1,
                item: None,
            }),
            object: Some("Tenant t1".into()),
            field: Some("spec.allowFrom[0].cidr".into()),
            message: "invalid CIDR \"10.0.0.0/33\"".into(),
        }],
        refs: BTreeMap::from([(
            label,
            ObjectRef {
                api_version: Tenant::api_version(&()).into(),
                kind: "Tenant".into(),
                plural: tenants.plural.clone(),
                namespace: None,
                name: "t1".into(),
                uid: t["metadata"]["uid"].as_str().map(str::to_owned),
                generation: Some(3),
            },
        )]),
        ..SourceSnapshot::default()
    };
    let mut writer = StatusWriter::new(
        api.client("a"),
        LeaderState::always(),
        Arc::new(StatusBoard::default()),
        StatusOptions {
            identity: "a".into(),
            tick: Duration::from_millis(50),
        },
    );
    writer
        .sync(&Applied {
            snapshot: Arc::new(snap),
            generation: 1,
        })
        .await;
    let t = api.get("bulkhead.io/v1alpha1", "Tenant", "", "t1").unwrap();
    let cond = &t["status"]["conditions"][0];
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "Invalid");
    assert_eq!(cond["observedGeneration"], 3);
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .contains("spec.allowFrom[0].cidr"),
        "{cond}"
    );
    let ev = events(&api);
    assert_eq!(ev.len(), 1);
    // Cluster-scoped objects get their Events in `default`.
    assert!(
        api.writes()[0].path.contains("/namespaces/default/events"),
        "{}",
        api.writes()[0].path
    );
}

/// One controller replica: source, lease, status writer.
struct Replica {
    leader: LeaderState,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn replica(api: &MockApi, who: &str) -> Replica {
    let mut rx = start(api, who, None).await;
    let mut o = LeaseOptions::new("bulkhead-system", who);
    o.lease_duration = Duration::from_millis(1500);
    o.renew_deadline = Duration::from_millis(900);
    o.retry_period = Duration::from_millis(100);
    let (leader, lease_task) = lease::spawn(api.client(who), o);
    let writer = StatusWriter::new(
        api.client(who),
        leader.clone(),
        Arc::new(StatusBoard::default()),
        StatusOptions {
            identity: who.into(),
            tick: Duration::from_millis(30),
        },
    );
    let (applied_tx, applied_rx) = tokio::sync::watch::channel(Applied::default());
    let feed = tokio::spawn(async move {
        loop {
            let snapshot = Arc::clone(&rx.borrow_and_update());
            applied_tx.send_replace(Applied {
                snapshot,
                generation: 1,
            });
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    let writer = tokio::spawn(writer.run(applied_rx));
    Replica {
        leader,
        tasks: vec![lease_task, feed, writer],
    }
}

#[tokio::test]
async fn leader_handover_never_has_two_writers() {
    let api = MockApi::new();
    api.apply_yaml(&cluster());
    let a = replica(&api, "a").await;
    let b = replica(&api, "b").await;
    eventually("a leader", || a.leader.is_leader() || b.leader.is_leader()).await;
    let (first, second, first_name, second_name) = if a.leader.is_leader() {
        (&a, &b, "a", "b")
    } else {
        (&b, &a, "b", "a")
    };
    assert!(!second.leader.is_leader());

    // Bad policies keep arriving; the leader reports each one.
    let mut n = 0;
    let mut add_bad = |api: &MockApi| {
        n += 1;
        api.apply_yaml(&mk_policy("x", &format!("bad{n}"), "0"));
    };
    add_bad(&api);
    eventually("the first leader's event", || events(&api).len() == 1).await;

    // The leader loses the API for its lease (a partition), not for the
    // rest: it must stop writing before the other takes over.
    api.block_leases(first_name, true);
    let until = Instant::now() + DEADLINE;
    while !api.writes().iter().any(|w| w.who == second_name) {
        assert!(Instant::now() < until, "no handover");
        add_bad(&api);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!first.leader.is_leader());
    assert!(second.leader.is_leader());
    // A few more writes by the new leader.
    for _ in 0..3 {
        add_bad(&api);
    }
    let count = api.writes().len();
    eventually("the new leader's events", || {
        api.writes().len() >= count + 3
    })
    .await;

    let writes = api.writes();
    // The new leader took over only after the lease had expired: a full
    // lease duration after the old leader's last successful renewal.
    let requests = api.requests();
    let lease_writes: Vec<_> = requests
        .iter()
        .filter(|r| r.uri.contains("/leases") && r.method != "GET" && r.status < 300)
        .collect();
    let last_renew = lease_writes
        .iter()
        .rfind(|r| r.who == first_name)
        .unwrap()
        .at;
    let takeover = lease_writes
        .iter()
        .find(|r| r.who == second_name)
        .unwrap()
        .at;
    assert!(
        takeover.duration_since(last_renew) >= Duration::from_millis(1500),
        "{:?}",
        takeover.duration_since(last_renew)
    );
    let key = "bulkhead-system/bulkhead-controller";
    for w in &writes {
        assert_eq!(
            w.lease_holders.get(key).cloned().flatten().as_deref(),
            Some(w.who.as_str()),
            "{} wrote {} while the lease was {:?}",
            w.who,
            w.path,
            w.lease_holders
        );
    }
    let who: Vec<&str> = writes.iter().map(|w| w.who.as_str()).collect();
    let switch = who.iter().position(|w| *w == second_name).unwrap();
    assert!(who[..switch].iter().all(|w| *w == first_name), "{who:?}");
    assert!(
        who[switch..].iter().all(|w| *w == second_name),
        "writes interleave: {who:?}"
    );
    assert!(switch >= 1);
}

#[tokio::test]
async fn absent_cluster_network_policies_do_not_block_and_arrive_when_installed() {
    let api = MockApi::new();
    api.apply_yaml(&cluster());
    let mut rx = start(&api, "a", None).await;
    assert!(
        !rx.borrow()
            .refs
            .keys()
            .any(|k| k.starts_with("kube:clusternetworkpolicies/"))
    );
    api.install(&cluster_network_policy(), false);
    api.apply_yaml("---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: admin}\nspec: {tier: Admin, priority: 10, subject: {namespaces: {}}, ingress: []}\n");
    // The watcher retries with backoff and lists it once it is served.
    let snap = wait_for(&mut rx, "the ClusterNetworkPolicy", |s| {
        s.refs.contains_key("kube:clusternetworkpolicies/admin")
    })
    .await;
    assert!(snap.revision > 1);
    let _ = collection_key(&cluster_network_policy());
}

#[tokio::test]
async fn another_holder_seen_stops_writes_at_once() {
    let api = MockApi::new();
    api.apply_yaml(&cluster());
    let a = replica(&api, "a").await;
    eventually("a leads", || a.leader.is_leader()).await;
    // Someone else takes the Lease (e.g. after a partition we did not see).
    let mut lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "bulkhead-system",
            "bulkhead-controller",
        )
        .unwrap();
    lease["spec"]["holderIdentity"] = "z".into();
    let taken = Instant::now();
    api.apply(lease);
    eventually("a stops leading", || !a.leader.is_leader()).await;
    // Well before its renew deadline (900 ms): it saw the other holder.
    assert!(
        taken.elapsed() < Duration::from_millis(600),
        "{:?}",
        taken.elapsed()
    );
    // And it does not take the Lease back while z's record is fresh.
    api.apply_yaml(&mk_policy("x", "bad", "0"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!a.leader.is_leader());
    assert!(
        events(&api).is_empty(),
        "no writes by a non-leader: {:?}",
        events(&api)
    );
}

#[tokio::test]
async fn a_stopped_leader_steps_down_and_releases_the_lease() {
    let api = MockApi::new();
    let mut o = LeaseOptions::new("bulkhead-system", "a");
    o.lease_duration = Duration::from_secs(30);
    o.retry_period = Duration::from_millis(50);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (a, task) = lease::spawn_with_stop(api.client("a"), o.clone(), stop);
    eventually("a leads", || a.is_leader()).await;
    stop_tx.send(true).unwrap();
    timeout(DEADLINE, task).await.unwrap().unwrap();
    assert!(!a.is_leader());
    let l = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "bulkhead-system",
            "bulkhead-controller",
        )
        .unwrap();
    assert!(l["spec"]["holderIdentity"].is_null(), "{l}");
    // A successor need not wait the 30 s lease duration.
    o.identity = "b".into();
    let (b, _task) = lease::spawn(api.client("b"), o);
    eventually("b leads", || b.is_leader()).await;
}

/// Kube mode of `bulkhead quarantine` / `release` / `--list`: the CLI writes
/// the namespaced CR the controller's source reads, its audit records are
/// Events regarding the CR, and `--list` shows the nodes from the CR's
/// status as the leader writes it.
#[tokio::test]
async fn the_cli_quarantines_and_releases_through_the_api() {
    use bulkhead::quarantine::{
        CLI_REPORTER, CrStore, QuarantineArgs, ReleaseArgs, Store, quarantine_in, release_in,
    };
    let api = MockApi::new();
    api.install(&quarantines(), true);
    api.apply_yaml(&cluster());
    let mut rx = start(&api, "controller", None).await;
    let cli = Store::Kube(Box::new(CrStore::new(api.client("cli"))));
    let args = |pod: &str, reason: &str| QuarantineArgs {
        pod: Some(pod.into()),
        reason: Some(reason.into()),
        allow_from: vec!["x/b".into(), "10.9.0.0/16".into()],
        expires: Some("1h".into()),
        selector: None,
        list: false,
        source: "kube".into(),
        as_user: Some("alice".into()),
    };
    let list = |as_user: &str| QuarantineArgs {
        pod: None,
        reason: None,
        allow_from: vec![],
        expires: None,
        selector: None,
        list: true,
        source: "kube".into(),
        as_user: Some(as_user.into()),
    };
    let is_quarantined = |snap: &SourceSnapshot| {
        let inv = inventory(snap);
        inv.pods
            .iter()
            .position(|p| p.name == "a")
            .is_some_and(|a| !inv.quarantines_of(a).is_empty())
    };

    let out = quarantine_in(&cli, &args("x/a", "crypto miner"))
        .await
        .unwrap();
    assert_eq!(out, "quarantine x/a written\n");
    // The CR the controller reads, valid, with who and when.
    let q = api
        .get("bulkhead.io/v1alpha1", "Quarantine", "x", "a")
        .expect("the CR");
    assert_eq!(q["spec"]["podName"], "a");
    assert_eq!(q["spec"]["reason"], "crypto miner");
    assert_eq!(q["spec"]["allowFrom"][1], "10.9.0.0/16");
    assert!(q["spec"]["expires"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        q["metadata"]["annotations"]["bulkhead.io/quarantined-by"],
        "alice"
    );
    let snap = wait_for(
        &mut rx,
        "the controller to load the quarantine",
        is_quarantined,
    )
    .await;
    assert!(
        snap.diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        snap.diagnostics
    );
    // The audit record: an Event regarding the CR, reported by the CLI.
    let ev = events(&api);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["reason"], "Quarantined");
    assert_eq!(ev[0]["reportingController"], CLI_REPORTER);
    assert_eq!(ev[0]["regarding"]["kind"], "Quarantine");
    assert_eq!(ev[0]["regarding"]["uid"], q["metadata"]["uid"]);
    assert_eq!(ev[0]["related"]["kind"], "Pod");
    let note = ev[0]["note"].as_str().unwrap();
    assert!(
        note.contains("by alice: crypto miner") && note.contains("forensics: x/b, 10.9.0.0/16"),
        "{note}"
    );

    // Not yet enforced; then the leader records n1's ack in the status.
    let listed = quarantine_in(&cli, &list("carol")).await.unwrap();
    assert!(
        listed.contains("x/a: pod x/a; reason: crypto miner; by alice")
            && listed.contains("forensics: x/b, 10.9.0.0/16")
            && listed.contains("not yet acknowledged by any node"),
        "{listed}"
    );
    let mut writer = StatusWriter::new(
        api.client("controller"),
        LeaderState::always(),
        board_with_ack("n1", 5, 1_700_000_000_000),
        StatusOptions {
            identity: "controller".into(),
            tick: Duration::from_millis(50),
        },
    );
    writer
        .sync(&Applied {
            snapshot: Arc::clone(&snap),
            generation: 5,
        })
        .await;
    let listed = quarantine_in(&cli, &list("carol")).await.unwrap();
    assert!(
        listed.contains("enforced on n1: generation 5 at 2023-11-14T22:13:20Z"),
        "{listed}"
    );

    // Given again: the spec is replaced in place, the status kept.
    quarantine_in(&cli, &args("x/a", "miner, and exfiltration"))
        .await
        .unwrap();
    let q = api
        .get("bulkhead.io/v1alpha1", "Quarantine", "x", "a")
        .unwrap();
    assert_eq!(q["spec"]["reason"], "miner, and exfiltration");
    assert_eq!(q["status"]["enforcedBy"][0]["node"], "n1");

    // A pod that does not exist is quarantined in advance, with a warning.
    let out = quarantine_in(&cli, &args("x/nosuch", "typo?"))
        .await
        .unwrap();
    assert!(
        out.starts_with("warning: no pod x/nosuch exists now"),
        "{out}"
    );
    assert!(
        api.get("bulkhead.io/v1alpha1", "Quarantine", "x", "nosuch")
            .is_some()
    );

    // Release: the CR goes, the controller lifts it, an Event says who.
    let release = |pod: &str| ReleaseArgs {
        pod: pod.into(),
        source: "kube".into(),
        reason: Some("reimaged".into()),
        as_user: Some("bob".into()),
    };
    let out = release_in(&cli, &release("x/a")).await.unwrap();
    assert_eq!(out, "quarantine x/a released\n");
    assert!(
        api.get("bulkhead.io/v1alpha1", "Quarantine", "x", "a")
            .is_none()
    );
    wait_for(&mut rx, "the controller to lift the quarantine", |s| {
        !is_quarantined(s)
    })
    .await;
    let released: Vec<Value> = events(&api)
        .into_iter()
        .filter(|e| e["reason"] == "Released")
        .collect();
    assert_eq!(released.len(), 1, "{released:#?}");
    assert!(
        released[0]["note"]
            .as_str()
            .unwrap()
            .contains("by bob: reimaged")
    );
    // Releasing what is not quarantined is bad input, and writes nothing.
    let writes = api.writes().len();
    let err = release_in(&cli, &release("x/a")).await.unwrap_err();
    assert_eq!(err.status, 2);
    assert!(
        err.message.contains("x/a is not quarantined"),
        "{}",
        err.message
    );
    assert_eq!(api.writes().len(), writes);
    let listed = quarantine_in(&cli, &list("carol")).await.unwrap();
    assert!(
        listed.starts_with("x/nosuch:") && !listed.contains("x/a:"),
        "{listed}"
    );

    // A whole workload, by labels: the pods it matches are quarantined.
    let workload = QuarantineArgs {
        selector: Some("app=web".into()),
        ..args("x/web-workload", "worm")
    };
    let out = quarantine_in(&cli, &workload).await.unwrap();
    assert_eq!(out, "quarantine x/web-workload written\n", "pod a matches");
    let q = api
        .get("bulkhead.io/v1alpha1", "Quarantine", "x", "web-workload")
        .unwrap();
    assert_eq!(q["spec"]["podSelector"]["matchLabels"]["app"], "web");
    assert!(q["spec"].get("podName").is_none());
    wait_for(&mut rx, "the workload quarantine", is_quarantined).await;
    let listed = quarantine_in(&cli, &list("carol")).await.unwrap();
    assert!(
        listed.contains("x/web-workload: pods of x with labels app=web; reason: worm"),
        "{listed}"
    );
    let nobody = QuarantineArgs {
        selector: Some("app=nothing".into()),
        ..args("x/none", "x")
    };
    let out = quarantine_in(&cli, &nobody).await.unwrap();
    assert!(
        out.starts_with("warning: no pod of x has the labels app=nothing"),
        "{out}"
    );
    let bad = QuarantineArgs {
        selector: Some("app".into()),
        ..args("x/bad", "x")
    };
    assert_eq!(quarantine_in(&cli, &bad).await.unwrap_err().status, 2);
    release_in(&cli, &release("x/web-workload")).await.unwrap();
    wait_for(&mut rx, "the workload released", |s| !is_quarantined(s)).await;
    let ev = events(&api);
    let last = ev.last().unwrap();
    assert_eq!(last["reason"], "Released");
    assert!(
        last["note"]
            .as_str()
            .unwrap()
            .contains("pods with labels app=web"),
        "{last:#?}"
    );
    assert!(last.get("related").is_none_or(Value::is_null), "no one pod");

    // Without the CRD the error says what to install.
    api.uninstall(&collection_key(&quarantines()));
    let err = quarantine_in(&cli, &args("x/b", "x")).await.unwrap_err();
    assert!(
        err.message.contains("the Quarantine CRD is not installed"),
        "{}",
        err.message
    );
}

/// An HTTP/1.0 GET on loopback: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (code, body.unwrap_or_default())
}

/// The whole controller (`bulkhead controller --source kube`, as `main`
/// runs it) against the mock API: it takes the Lease, serves an agent its
/// node's ruleset, turns a Quarantine the CLI writes into a delta for that
/// agent, records the agent's ack in the CR's status, reports a bad object
/// with an Event, and on stop releases the Lease.
#[tokio::test]
async fn the_controller_runs_end_to_end_in_kube_mode() {
    use bulkhead::quarantine::{CrStore, QuarantineArgs, Store, quarantine_in};
    use bulkhead::run::{ControllerArgs, Hooks, run_with};
    use bulkhead_core::crd::{BulkheadConfig, FlowBaseline};
    use clap::Parser;
    use support::agent::{agent, delta, snapshot};
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    let api = MockApi::new();
    api.install(&quarantines(), true);
    api.install(&ApiResource::erase::<Tenant>(&()), false);
    api.install(&ApiResource::erase::<BulkheadConfig>(&()), false);
    api.install(&ApiResource::erase::<FlowBaseline>(&()), true);
    api.apply_yaml(&cluster());
    let args = Cli::parse_from([
        "bulkhead",
        "--source",
        "kube",
        "--identity",
        "ctl-0",
        "--lease-namespace",
        "bulkhead-system",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--keepalive-ms",
        "200",
    ])
    .args;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (bound_tx, mut bound) = mpsc::unbounded_channel();
    let controller = tokio::spawn(run_with(
        args,
        Hooks {
            kube_client: Some(api.client("ctl-0")),
            stop: Some(stop),
            bound: Some(bound_tx),
        },
    ));
    let mut addrs = BTreeMap::new();
    while addrs.len() < 2 {
        let (what, addr) = timeout(DEADLINE, bound.recv())
            .await
            .expect("the controller binds its ports")
            .unwrap();
        addrs.insert(what, addr);
    }
    let (http, grpc) = (addrs["http"], addrs["grpc"]);
    let lease_holder = |api: &MockApi| {
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "bulkhead-system",
            "bulkhead-controller",
        )
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    eventually("ctl-0 takes the Lease", || {
        lease_holder(&api).as_deref() == Some("ctl-0")
    })
    .await;
    assert_eq!(http_get(http, "/readyz").await, (200, "ready\n".into()));

    // n1's agent gets n1's ruleset: pod a (10.0.0.1) is in it.
    let mut n1 = agent(&format!("http://{grpc}"), "n1", 0).await.unwrap();
    let rs = snapshot(n1.next().await);
    assert_eq!(rs.node, "n1");
    let a = compile::addr_element("10.0.0.1".parse().unwrap());
    assert!(rs.sets.iter().any(|s| s.elements.contains(&a)), "{rs:#?}");
    n1.ack(rs.generation).await;

    // The CLI quarantines pod a: n1's agent gets the quarantine as a delta.
    let cli = Store::Kube(Box::new(CrStore::new(api.client("cli"))));
    quarantine_in(
        &cli,
        &QuarantineArgs {
            pod: Some("x/a".into()),
            reason: Some("incident 42".into()),
            allow_from: vec![],
            expires: None,
            selector: None,
            list: false,
            source: "kube".into(),
            as_user: Some("alice".into()),
        },
    )
    .await
    .unwrap();
    let d = delta(n1.next().await);
    let rs = compile::diff::apply(&rs, &d).unwrap();
    let qpods = rs.sets.iter().find(|s| s.name == "qpods4").unwrap();
    assert_eq!(
        qpods.elements,
        std::slice::from_ref(&a),
        "pod a is quarantined on n1"
    );
    n1.ack(rs.generation).await;
    // The leader records n1's ack in the Quarantine's status.
    eventually("the Quarantine's status names n1", || {
        api.get("bulkhead.io/v1alpha1", "Quarantine", "x", "a")
            .is_some_and(|q| {
                q["status"]["enforcedBy"][0]["node"] == "n1"
                    && q["status"]["enforcedBy"][0]["generation"] == rs.generation
            })
    })
    .await;

    // A bad NetworkPolicy: an Event names it and its field; /status too.
    api.apply_yaml(&mk_policy("x", "bad", "0"));
    eventually("an Event about x/bad", || {
        events(&api).iter().any(|e| {
            e["regarding"]["name"] == "bad" && e["reportingController"] == "bulkhead.io/controller"
        })
    })
    .await;
    let (_, status) = http_get(http, "/status").await;
    assert!(status.contains("spec.ingress[0].ports[0].port"), "{status}");

    // Stopped: it returns and gives the Lease up for the next replica.
    stop_tx.send(true).unwrap();
    timeout(DEADLINE, controller)
        .await
        .expect("the controller stops")
        .unwrap()
        .unwrap();
    assert_eq!(lease_holder(&api), None, "the Lease is released");
}
