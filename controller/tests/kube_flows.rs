//! Kube mode's flow store against the mock Kubernetes API
//! (tests/support/mock_api.rs): the learned graph kept in FlowBaseline
//! objects and read back by a fresh controller instance, written only on
//! change, by every replica (concurrent writers converge); anomaly alerts as Events; learn → enforce
//! creating the recommended NetworkPolicies without touching a hand-written
//! one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bulkhead::autoapply::{AutoApply, ModeTracker};
use bulkhead::events::Recorder;
use bulkhead::flows::{FlowHub, GraphStore};
use bulkhead::flowstore::{EventSink, KubeStore, KubeStoreOptions, LeaderSlot};
use bulkhead::lease::LeaderState;
use bulkhead_core::crd::FlowBaseline;
use bulkhead_core::inventory::Inventory;
use bulkhead_core::load_str;
use bulkhead_proto::v1 as pb;
use kube::api::ApiResource;
use serde_json::Value;
use support::mock_api::MockApi;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

/// Namespace `shop` in `mode`: web → api → db, pods on two nodes.
fn cluster(mode: &str) -> Inventory {
    let pod = |name: &str, ip: &str, app: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\nspec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: {ip}}}\n"
        )
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{bulkhead.io/mode: {mode}, kubernetes.io/metadata.name: shop}}}}\n{}{}{}",
        pod("web-0", "10.0.0.1", "web"),
        pod("api-0", "10.0.0.2", "api"),
        pod("db-0", "10.0.0.3", "db"),
    );
    let (i, d) = Inventory::from_loaded(&load_str("t.yaml", &yaml));
    assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
    i
}

fn peer(pod: &str, app: &str) -> pb::FlowPeer {
    pb::FlowPeer {
        namespace: "shop".into(),
        pod: pod.into(),
        labels: [("app".to_owned(), app.to_owned())].into(),
    }
}

fn flow(
    src: (&str, &str, &str),
    dst: (&str, &str, &str),
    port: u32,
    verdict: pb::FlowVerdict,
) -> pb::Flow {
    pb::Flow {
        src_addr: src.2.into(),
        dst_addr: dst.2.into(),
        protocol: pb::L4Proto::Tcp as i32,
        dst_port: port,
        verdict: verdict as i32,
        rule: "np shop/default-deny ingress".into(),
        count: 1,
        first_seen_unix_millis: 1_000,
        last_seen_unix_millis: 2_000,
        src: Some(peer(src.0, src.1)),
        dst: Some(peer(dst.0, dst.1)),
    }
}

const WEB: (&str, &str, &str) = ("web-0", "web", "10.0.0.1");
const API: (&str, &str, &str) = ("api-0", "api", "10.0.0.2");
const DB: (&str, &str, &str) = ("db-0", "db", "10.0.0.3");

fn report(flows: Vec<pb::Flow>) -> pb::FlowReport {
    pb::FlowReport {
        flows,
        dropped: 0,
        sample_rate: 1,
    }
}

fn leader() -> LeaderSlot {
    let slot = LeaderSlot::default();
    slot.set(LeaderState::always()).unwrap();
    slot
}

fn mock() -> MockApi {
    let api = MockApi::new();
    api.install(&ApiResource::erase::<FlowBaseline>(&()), true);
    api
}

fn store(api: &MockApi, who: &str) -> KubeStore {
    KubeStore::new(
        api.client(who),
        tokio::runtime::Handle::current(),
        KubeStoreOptions {
            retention_millis: u64::MAX,
            stats_interval: Duration::from_secs(3600),
        },
    )
}

/// A hub over `store`, built off the runtime (the store blocks on it).
async fn hub(store: KubeStore) -> Arc<FlowHub> {
    tokio::task::spawn_blocking(move || {
        Arc::new(
            FlowHub::new(Some(Box::new(store) as Box<dyn GraphStore>), None, u64::MAX).unwrap(),
        )
    })
    .await
    .unwrap()
}

async fn persist(hub: &Arc<FlowHub>) {
    let hub = Arc::clone(hub);
    tokio::task::spawn_blocking(move || hub.persist(bulkhead::server::unix_millis()))
        .await
        .unwrap();
}

fn baseline_writes(api: &MockApi) -> Vec<support::mock_api::Write> {
    api.writes()
        .into_iter()
        .filter(|w| w.path.contains("/flowbaselines"))
        .collect()
}

fn baseline(api: &MockApi) -> Option<Value> {
    api.get("bulkhead.io/v1alpha1", "FlowBaseline", "shop", "baseline")
}

async fn eventually(what: &str, ok: impl Fn() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_is_kept_in_the_api_and_survives_a_restart() {
    let api = mock();
    let learn = cluster("learn");
    let a = hub(store(&api, "a")).await;
    assert!(a.doc().edges.is_empty());
    a.report(
        "n1",
        &report(vec![
            flow(WEB, API, 8080, pb::FlowVerdict::WouldDeny),
            flow(API, DB, 5432, pb::FlowVerdict::WouldDeny),
        ]),
        &learn,
        10,
    );
    persist(&a).await;
    let o = baseline(&api).expect("FlowBaseline shop/baseline written");
    let edges = o["spec"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2, "{o}");
    assert!(edges.iter().all(|e| e["learned"] == true), "{o}");
    assert_eq!(edges[0]["src"]["workload"], "api");
    assert_eq!(edges[0]["dst"]["workload"], "db");
    assert_eq!(o["spec"]["edgeCount"], 2);
    assert_eq!(baseline_writes(&api).len(), 1);

    // Nothing changed: nothing written.
    persist(&a).await;
    assert_eq!(
        baseline_writes(&api).len(),
        1,
        "an unchanged graph is not rewritten"
    );
    // Counts only: held back (stats interval), offered again later.
    a.report(
        "n1",
        &report(vec![flow(WEB, API, 8080, pb::FlowVerdict::WouldDeny)]),
        &learn,
        11,
    );
    persist(&a).await;
    assert_eq!(
        baseline_writes(&api).len(),
        1,
        "counts alone wait for the stats interval"
    );
    // A new edge: written at once, as a replace carrying the resourceVersion.
    a.report(
        "n1",
        &report(vec![flow(WEB, DB, 5432, pb::FlowVerdict::WouldDeny)]),
        &learn,
        12,
    );
    persist(&a).await;
    let writes = baseline_writes(&api);
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[1].method, "PUT");
    assert!(writes[1].body["metadata"]["resourceVersion"].is_string());
    assert_eq!(
        baseline(&api).unwrap()["spec"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // A fresh controller instance (another replica, or after a restart)
    // reads the baseline back: the same graph, the same counts.
    let b = hub(store(&api, "b")).await;
    assert_eq!(b.doc().edges, a.doc().edges);
    assert!(b.doc().edges.iter().all(|e| e.stats.learned));
    assert_eq!(b.doc().workloads, a.doc().workloads);
    // In enforce mode now, the learned edges raise no alert.
    let enforce = cluster("enforce");
    let alerts = b.report(
        "n1",
        &report(vec![flow(WEB, API, 8080, pb::FlowVerdict::Denied)]),
        &enforce,
        20,
    );
    assert!(alerts.is_empty(), "{alerts:?}");
    let alerts = b.report(
        "n1",
        &report(vec![flow(DB, WEB, 80, pb::FlowVerdict::Denied)]),
        &enforce,
        21,
    );
    assert_eq!(alerts.len(), 1, "an unlearned edge alerts");
}

/// Agents are spread over the replicas: each replica writes what its own
/// agents reported, and concurrent writers converge on the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_writes_and_concurrent_writers_lose_nothing() {
    let api = mock();
    let learn = cluster("learn");
    // Both replicas start (and list) before either writes.
    let f = hub(store(&api, "f")).await;
    let l = hub(store(&api, "l")).await;
    f.report(
        "n1",
        &report(vec![flow(WEB, API, 8080, pb::FlowVerdict::WouldDeny)]),
        &learn,
        10,
    );
    l.report(
        "n2",
        &report(vec![flow(API, DB, 5432, pb::FlowVerdict::WouldDeny)]),
        &learn,
        11,
    );
    persist(&f).await;
    assert_eq!(baseline_writes(&api).len(), 1, "f creates the object");
    // l's create conflicts (409); its next save relists, merges, replaces.
    persist(&l).await;
    let edges = |api: &MockApi| {
        baseline(api).unwrap()["spec"]["edges"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(edges(&api), 1, "the conflict wrote nothing");
    persist(&l).await;
    let writes = baseline_writes(&api);
    assert_eq!(
        (
            writes.len(),
            writes[1].who.as_str(),
            writes[1].method.as_str()
        ),
        (2, "l", "PUT")
    );
    assert_eq!(edges(&api), 2, "both replicas' edges");
    // f's cached version is stale now: its replace conflicts, then merges.
    f.report(
        "n1",
        &report(vec![flow(WEB, DB, 5432, pb::FlowVerdict::WouldDeny)]),
        &learn,
        12,
    );
    persist(&f).await;
    persist(&f).await;
    assert_eq!(edges(&api), 3, "nothing either replica learned is lost");
    let o = baseline(&api).unwrap();

    // A hand-edited object that does not parse is reported, not overwritten.
    let mut bad = o.clone();
    bad["spec"]["edges"][0]["protocol"] = "ICMP".into();
    api.apply(bad.clone());
    let again = hub(store(&api, "g")).await;
    assert!(
        again.doc().edges.is_empty(),
        "the broken namespace is not loaded"
    );
    again.report(
        "n1",
        &report(vec![flow(WEB, DB, 5432, pb::FlowVerdict::WouldDeny)]),
        &learn,
        12,
    );
    persist(&again).await;
    assert_eq!(
        baseline(&api).unwrap()["spec"],
        bad["spec"],
        "not overwritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_becomes_an_event_on_the_destination_pod() {
    let api = mock();
    let mut h = FlowHub::new(None, None, u64::MAX).unwrap();
    h.add_sink(Box::new(EventSink::spawn(Recorder::new(
        api.client("a"),
        "controller-0".into(),
    ))));
    let enforce = cluster("enforce");
    let alerts = h.report(
        "n1",
        &report(vec![flow(WEB, DB, 5432, pb::FlowVerdict::Denied)]),
        &enforce,
        10,
    );
    assert_eq!(alerts.len(), 1);
    let events = || -> Vec<Value> {
        api.writes()
            .into_iter()
            .filter(|w| w.method == "POST" && w.path.ends_with("/events"))
            .map(|w| w.body)
            .collect()
    };
    eventually("the alert's Event", || !events().is_empty()).await;
    let ev = &events()[0];
    assert!(api.writes()[0].path.contains("/namespaces/shop/events"));
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "FlowAnomaly");
    assert_eq!(ev["regarding"]["kind"], "Pod");
    assert_eq!(ev["regarding"]["namespace"], "shop");
    assert_eq!(ev["regarding"]["name"], "db-0");
    assert_eq!(ev["related"]["name"], "web-0");
    assert_eq!(ev["reportingController"], "bulkhead.io/controller");
    assert_eq!(ev["reportingInstance"], "controller-0");
    let note = ev["note"].as_str().unwrap();
    for part in [
        "shop/web -> shop/db",
        "TCP/5432",
        "DENIED",
        "np shop/default-deny ingress",
    ] {
        assert!(note.contains(part), "{part:?} in {note}");
    }
    // The same edge again: no second alert, no second Event.
    assert!(
        h.report(
            "n1",
            &report(vec![flow(WEB, DB, 5432, pb::FlowVerdict::Denied)]),
            &enforce,
            11
        )
        .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_to_enforce_creates_generated_policies_and_leaves_hand_written_ones() {
    let api = mock();
    // A hand-written policy that has the name of api's recommendation.
    api.apply_yaml("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bulkhead-learned-api, namespace: shop}\nspec: {podSelector: {matchLabels: {app: api}}, policyTypes: [Ingress]}\n");
    let hand_written = api
        .get(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "shop",
            "bulkhead-learned-api",
        )
        .unwrap();

    let h = FlowHub::new(None, None, u64::MAX).unwrap();
    let learn = cluster("learn");
    h.report(
        "n1",
        &report(vec![
            flow(WEB, API, 8080, pb::FlowVerdict::WouldDeny),
            flow(API, DB, 5432, pb::FlowVerdict::WouldDeny),
        ]),
        &learn,
        10,
    );
    let mut tracker = ModeTracker::default();
    assert!(
        tracker.update(&learn).is_empty(),
        "nothing to compare to yet"
    );
    assert!(tracker.update(&learn).is_empty());
    let moved = tracker.update(&cluster("enforce"));
    assert_eq!(moved, ["shop"]);
    assert!(tracker.update(&cluster("enforce")).is_empty(), "once");
    // enforce → learn is no trigger; monitor → enforce is.
    assert!(tracker.update(&cluster("monitor")).is_empty());
    assert_eq!(tracker.update(&cluster("enforce")), ["shop"]);

    let apply = AutoApply::new(
        api.client("a"),
        leader(),
        Arc::new(Recorder::new(api.client("a"), "controller-0".into())),
    );
    let graph = bulkhead_core::flows::FlowGraph::from_doc(h.doc()).unwrap();
    let out = apply.apply("shop", &graph).await;
    assert_eq!(out.created, ["bulkhead-learned-db", "bulkhead-learned-web"]);
    assert_eq!(out.skipped, ["bulkhead-learned-api"]);
    assert!(out.failed.is_empty());
    let np = |name: &str| api.get("networking.k8s.io/v1", "NetworkPolicy", "shop", name);
    let db = np("bulkhead-learned-db").unwrap();
    assert_eq!(db["metadata"]["labels"]["bulkhead.io/generated"], "true");
    assert_eq!(
        db["metadata"]["annotations"]["bulkhead.io/baseline"],
        "shop/baseline"
    );
    assert_eq!(db["spec"]["podSelector"]["matchLabels"]["app"], "db");
    assert_eq!(
        db["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"],
        "api"
    );
    // The hand-written one is untouched, and an Event says why.
    assert_eq!(np("bulkhead-learned-api").unwrap(), hand_written);
    let ev: Vec<Value> = api
        .writes()
        .into_iter()
        .filter(|w| w.path.ends_with("/events"))
        .map(|w| w.body)
        .collect();
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["reason"], "NotOverwritten");
    assert_eq!(ev[0]["regarding"]["name"], "bulkhead-learned-api");
    assert!(
        !api.writes()
            .iter()
            .any(|w| w.path.ends_with("/bulkhead-learned-api")),
        "no write to the hand-written policy"
    );

    // Again, after more learning: generated policies are replaced (with
    // their resourceVersion), the hand-written one is still left alone.
    h.report(
        "n1",
        &report(vec![flow(WEB, DB, 5432, pb::FlowVerdict::WouldDeny)]),
        &learn,
        11,
    );
    let graph = bulkhead_core::flows::FlowGraph::from_doc(h.doc()).unwrap();
    let out = apply.apply("shop", &graph).await;
    assert_eq!(
        out.replaced,
        ["bulkhead-learned-db", "bulkhead-learned-web"]
    );
    assert_eq!(out.skipped, ["bulkhead-learned-api"]);
    assert_eq!(np("bulkhead-learned-api").unwrap(), hand_written);
    let db = np("bulkhead-learned-db").unwrap();
    assert_eq!(db["spec"]["ingress"].as_array().unwrap().len(), 2, "{db}");
    // Unchanged recommendations are not rewritten.
    let before = api.writes().len();
    let out = apply.apply("shop", &graph).await;
    assert_eq!(
        out.unchanged,
        ["bulkhead-learned-db", "bulkhead-learned-web"]
    );
    let new_writes: Vec<_> = api.writes()[before..]
        .iter()
        .filter(|w| w.path.contains("networkpolicies"))
        .cloned()
        .collect();
    assert!(new_writes.is_empty());
}
