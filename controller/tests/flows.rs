//! Flow reports over real gRPC on loopback: a scripted agent reports flows;
//! the controller's flow store learns them, persists them, logs them, and
//! raises an alert (once per edge) for a flow outside the baseline.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead::flowlog::FlowLog;
use bulkhead::flows::{Alert, AlertSink, FileStore, FlowHub, GraphStore};
use bulkhead::index::NodeIndex;
use bulkhead::server::{StatusBoard, SyncService};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::load_str;
use bulkhead_proto::v1 as pb;
use pb::agent_message::Kind as A;
use support::agent::{Agent, agent, serve};
use tokio::sync::mpsc;

fn cluster(mode: &str) -> Arc<Inventory> {
    let pod = |name: &str, node: &str, ip: &str, app: &str, port: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: i, ports: [{port}]}}]}}\nstatus: {{podIP: {ip}}}\n"
        )
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{bulkhead.io/mode: {mode}}}}}\n{}{}{}",
        pod("web-0", "n1", "10.0.0.1", "web", ""),
        pod(
            "api-0",
            "n2",
            "10.0.0.2",
            "api",
            "{name: http, containerPort: 8080}"
        ),
        pod("db-0", "n2", "10.0.0.3", "db", ""),
    );
    let (i, d) = Inventory::from_loaded(&load_str("t.yaml", &yaml));
    assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
    Arc::new(i)
}

struct Capture(mpsc::UnboundedSender<Alert>);

impl AlertSink for Capture {
    fn alert(&self, a: &Alert) {
        let _ = self.0.send(a.clone());
    }
}

struct Controller {
    index: Arc<Mutex<NodeIndex>>,
    hub: Arc<FlowHub>,
    url: String,
    task: tokio::task::JoinHandle<()>,
    alerts: mpsc::UnboundedReceiver<Alert>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn controller(dir: &std::path::Path, mode: &str) -> Controller {
    let index = Arc::new(Mutex::new(NodeIndex::new(1000)));
    index.lock().unwrap().update(cluster(mode));
    let store: Box<dyn GraphStore> = Box::new(FileStore { dir: dir.into() });
    let log = FlowLog::open(dir.join("flows.log").to_str().unwrap(), 1 << 20, 2).unwrap();
    let mut hub = FlowHub::new(Some(store), Some(log), u64::MAX).unwrap();
    let (tx, alerts) = mpsc::unbounded_channel();
    hub.add_sink(Box::new(Capture(tx)));
    let hub = Arc::new(hub);
    let svc = SyncService {
        index: Arc::clone(&index),
        status: Arc::new(StatusBoard::default()),
        auth: Arc::new(|_| Ok(None)),
        keepalive: Duration::from_millis(200),
        stop: tokio::sync::watch::channel(false).1,
        flows: Some(Arc::clone(&hub)),
    };
    let (url, task) = serve(svc).await;
    Controller {
        index,
        hub,
        url,
        task,
        alerts,
    }
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
    rule: &str,
) -> pb::Flow {
    pb::Flow {
        src_addr: src.0.into(),
        dst_addr: dst.0.into(),
        protocol: pb::L4Proto::Tcp as i32,
        dst_port: port,
        verdict: verdict as i32,
        rule: rule.into(),
        count: 1,
        first_seen_unix_millis: 1,
        last_seen_unix_millis: 2,
        src: Some(peer(src.1, src.2)),
        dst: Some(peer(dst.1, dst.2)),
    }
}

const WEB: (&str, &str, &str) = ("10.0.0.1", "web-0", "web");
const API: (&str, &str, &str) = ("10.0.0.2", "api-0", "api");
const DB: (&str, &str, &str) = ("10.0.0.3", "db-0", "db");

async fn report(a: &Agent, flows: Vec<pb::Flow>) {
    a.say(A::Flows(pb::FlowReport {
        flows,
        dropped: 0,
        sample_rate: 1,
    }))
    .await;
}

async fn wait_edges(hub: &FlowHub, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.doc().edges.len() < n {
        assert!(Instant::now() < deadline, "edges: {:?}", hub.doc().edges);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn learned_then_enforced_an_unlearned_flow_alerts_once_within_2_s() {
    let dir = tempfile::tempdir().unwrap();
    // Learn: web -> api, api -> db. No alert.
    {
        let mut ctl = controller(dir.path(), "learn").await;
        let a = agent(&ctl.url, "n2", 0).await.unwrap();
        report(
            &a,
            vec![
                flow(
                    WEB,
                    API,
                    8080,
                    pb::FlowVerdict::WouldDeny,
                    "np shop/deny ingress",
                ),
                flow(API, DB, 5432, pb::FlowVerdict::Allowed, "default allow"),
            ],
        )
        .await;
        wait_edges(&ctl.hub, 2).await;
        assert!(ctl.hub.doc().edges.iter().all(|e| e.stats.learned));
        assert!(ctl.alerts.try_recv().is_err());
        ctl.hub.persist(10);
    }
    // The controller restarts in enforce: the baseline is back from the
    // state directory; a learned flow raises nothing, a new one an alert.
    let mut ctl = controller(dir.path(), "enforce").await;
    assert_eq!(
        ctl.hub.doc().edges.len(),
        2,
        "the baseline survived the restart"
    );
    let ag = agent(&ctl.url, "n2", 0).await.unwrap();
    report(
        &ag,
        vec![flow(
            WEB,
            API,
            8080,
            pb::FlowVerdict::Denied,
            "np shop/deny ingress",
        )],
    )
    .await;
    let sent = Instant::now();
    report(
        &ag,
        vec![
            flow(
                WEB,
                DB,
                5432,
                pb::FlowVerdict::Denied,
                "np shop/bulkhead-learned-db ingress",
            ),
            flow(
                WEB,
                DB,
                5432,
                pb::FlowVerdict::Denied,
                "np shop/bulkhead-learned-db ingress",
            ),
        ],
    )
    .await;
    let a = tokio::time::timeout(Duration::from_secs(2), ctl.alerts.recv())
        .await
        .expect("no alert within 2 s")
        .unwrap();
    assert!(sent.elapsed() < Duration::from_secs(2));
    assert_eq!(
        (a.src_workload.as_str(), a.dst_workload.as_str()),
        ("shop/web", "shop/db")
    );
    assert_eq!(
        (a.port, a.protocol.as_str(), a.verdict.as_str()),
        (5432, "TCP", "DENIED")
    );
    assert_eq!(a.rule, "np shop/bulkhead-learned-db ingress");
    assert_eq!(a.node, "n2");
    assert_eq!(a.mode, "enforce");
    // Once per edge, even across reports.
    report(&ag, vec![flow(WEB, DB, 5432, pb::FlowVerdict::Denied, "r")]).await;
    wait_edges(&ctl.hub, 3).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while ctl
        .hub
        .doc()
        .edges
        .iter()
        .map(|e| e.stats.count)
        .sum::<u64>()
        < 6
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ctl.alerts.try_recv().is_err(),
        "a second alert for one edge"
    );
    let counted: u64 = {
        let mut text = String::new();
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register("a", "a", ctl.hub.alerts.clone());
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        text.lines()
            .filter(|l| l.starts_with("a_total{") && l.contains("dst=\"shop/db\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(counted, 1);
    // Every flow is in the flow log, with its mode and workloads.
    let log = std::fs::read_to_string(dir.path().join("flows.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert!(
        lines.iter().any(|l| l["mode"] == "enforce"
            && l["anomaly"] == true
            && l["dst"]["workload"] == "db")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["mode"] == "learn" && l["dst"]["port"].is_null() && l["port"] == 8080)
    );
    drop(ctl.index.lock().unwrap());
}
