//! The controller's flow store: flow reports from the sync sessions feed the
//! pure service graph ([`bulkhead_core::flows`]); anomalies become alerts;
//! every flow goes to the flow log; the graph is persisted.
//!
//! ```text
//!  Sync session ──FlowReport──▶ FlowHub::report ──▶ FlowGraph::ingest (inventory as context)
//!                                   │                    │ observations
//!                                   │                    ├──▶ FlowLog (JSON lines, rate-limited, rotated)
//!                                   │                    └──▶ anomalies ──▶ AlertSink(s): log line
//!                                   │                                       (target bulkhead::alert),
//!                                   │                                       counter, (kube: Event)
//!                                   └── dirty ──▶ persist task ──▶ GraphStore (standalone: a file
//!                                                                  in --state-dir; kube: a hook)
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bulkhead_core::flows::{FlowGraph, GraphDoc, Observation, mode_str};
use bulkhead_core::inventory::Inventory;
use bulkhead_proto::v1 as pb;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use tracing::warn;

use crate::flowlog::FlowLog;

/// The name of the graph's file in the state directory.
pub const STATE_FILE: &str = "flows.json";

/// Where the graph lives between controller runs. Standalone: [`FileStore`].
/// Kube mode: an implementation that keeps the document in a Bulkhead object
/// in the API (issue 6's kube client) plugs in here.
pub trait GraphStore: Send + Sync {
    fn load(&self) -> anyhow::Result<Option<GraphDoc>>;
    fn save(&self, doc: &GraphDoc) -> anyhow::Result<()>;
    /// After a successful `save`: whether part of the graph was held back
    /// (debounced, or not written by a replica that does not lead), so the
    /// hub offers it again.
    fn pending(&self) -> bool {
        false
    }
}

/// The graph as `flows.json` in a state directory, replaced atomically
/// (written to a temporary file, synced, renamed over).
#[derive(Debug, Clone)]
pub struct FileStore {
    pub dir: PathBuf,
}

impl FileStore {
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

/// Reads a graph document from a file: `None` when there is none.
pub fn read_doc(path: &Path) -> anyhow::Result<Option<GraphDoc>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let doc = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a flow graph: {e}", path.display()))?;
    Ok(Some(doc))
}

impl GraphStore for FileStore {
    fn load(&self) -> anyhow::Result<Option<GraphDoc>> {
        read_doc(&self.path())
    }

    fn save(&self, doc: &GraphDoc) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", self.dir.display()))?;
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let body = serde_json::to_vec(doc)?;
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(&body)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.path())
            .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", self.path().display()))?;
        Ok(())
    }
}

/// One anomaly alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub node: String,
    pub src_workload: String,
    pub dst_workload: String,
    pub src_pod: Option<String>,
    pub dst_pod: Option<String>,
    pub src_addr: String,
    pub dst_addr: String,
    pub protocol: String,
    pub port: u16,
    pub verdict: String,
    pub rule: String,
    pub mode: String,
    pub unix_millis: u64,
    /// The namespaces of the pod ends (not in the JSON line: the workloads
    /// name them).
    #[serde(skip)]
    pub src_namespace: Option<String>,
    #[serde(skip)]
    pub dst_namespace: Option<String>,
}

impl Alert {
    fn of(node: &str, o: &Observation, now: u64) -> Alert {
        Alert {
            node: node.to_owned(),
            src_workload: o.src.to_string(),
            dst_workload: o.dst.to_string(),
            src_pod: o.src_pod.clone(),
            dst_pod: o.dst_pod.clone(),
            src_addr: o.flow.src_addr.to_string(),
            dst_addr: o.flow.dst_addr.to_string(),
            protocol: o.flow.protocol.as_str().to_owned(),
            port: o.flow.dst_port,
            verdict: o.flow.verdict.as_str().to_owned(),
            rule: o.flow.rule.clone(),
            mode: mode_str(o.mode).to_owned(),
            unix_millis: now,
            src_namespace: o.src_pod.as_ref().and(o.src.namespace().map(str::to_owned)),
            dst_namespace: o.dst_pod.as_ref().and(o.dst.namespace().map(str::to_owned)),
        }
    }
}

/// Where alerts go besides the log line and the counter. Kube mode adds a
/// sink that records a Kubernetes Event on the destination pod.
pub trait AlertSink: Send + Sync {
    fn alert(&self, alert: &Alert);
}

pub type AlertLabels = Vec<(String, String)>;

/// Shared by the sync sessions and the HTTP endpoints.
pub struct FlowHub {
    graph: Mutex<State>,
    store: Option<Box<dyn GraphStore>>,
    log: Option<Mutex<FlowLog>>,
    sinks: Vec<Box<dyn AlertSink>>,
    /// Alerts raised, by source and destination workload, protocol, port
    /// and verdict.
    pub alerts: Family<AlertLabels, Counter>,
    /// Flow reports received and flows in them.
    pub reports: Counter,
    pub flows: Counter,
    retention_millis: u64,
}

struct State {
    graph: FlowGraph,
    dirty: bool,
}

impl std::fmt::Debug for FlowHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowHub")
            .field("retention_millis", &self.retention_millis)
            .finish()
    }
}

impl FlowHub {
    /// A hub with the graph `store` holds (empty when it holds none).
    pub fn new(
        store: Option<Box<dyn GraphStore>>,
        log: Option<FlowLog>,
        retention_millis: u64,
    ) -> anyhow::Result<FlowHub> {
        let graph = match store.as_ref().map(|s| s.load()).transpose()?.flatten() {
            Some(doc) => {
                FlowGraph::from_doc(doc).map_err(|e| anyhow::anyhow!("flow graph: {e}"))?
            }
            None => FlowGraph::default(),
        };
        Ok(FlowHub {
            graph: Mutex::new(State {
                graph,
                dirty: false,
            }),
            store,
            log: log.map(Mutex::new),
            sinks: Vec::new(),
            alerts: Family::default(),
            reports: Counter::default(),
            flows: Counter::default(),
            retention_millis,
        })
    }

    pub fn add_sink(&mut self, sink: Box<dyn AlertSink>) {
        self.sinks.push(sink);
    }

    /// Takes one report of `node`'s agent: the graph, the flow log, alerts.
    /// Returns the alerts raised.
    pub fn report(
        &self,
        node: &str,
        report: &pb::FlowReport,
        inv: &Inventory,
        now: u64,
    ) -> Vec<Alert> {
        self.reports.inc();
        self.flows.inc_by(report.flows.len() as u64);
        let observations = match self.graph.lock() {
            Ok(mut s) => {
                s.dirty = true;
                s.graph.ingest(report, inv)
            }
            Err(_) => return Vec::new(),
        };
        if inv.config.flow_log.enabled
            && let Some(log) = &self.log
            && let Ok(mut log) = log.lock()
        {
            for o in &observations {
                log.write(node, o, now, inv.config.flow_log.rate_limit_per_second);
            }
        }
        let mut alerts = Vec::new();
        for o in observations.iter().filter(|o| o.anomaly) {
            let a = Alert::of(node, o, now);
            let json = serde_json::to_string(&a).unwrap_or_default();
            warn!(
                target: "bulkhead::alert",
                node = %a.node,
                src = %a.src_workload,
                dst = %a.dst_workload,
                protocol = %a.protocol,
                port = a.port,
                verdict = %a.verdict,
                rule = %a.rule,
                mode = %a.mode,
                "{json}"
            );
            self.alerts
                .get_or_create(&vec![
                    ("src".to_owned(), a.src_workload.clone()),
                    ("dst".to_owned(), a.dst_workload.clone()),
                    ("protocol".to_owned(), a.protocol.clone()),
                    ("port".to_owned(), a.port.to_string()),
                    ("verdict".to_owned(), a.verdict.clone()),
                ])
                .inc();
            for s in &self.sinks {
                s.alert(&a);
            }
            alerts.push(a);
        }
        alerts
    }

    /// The graph as JSON.
    pub fn doc(&self) -> GraphDoc {
        self.graph
            .lock()
            .map(|s| s.graph.to_doc())
            .unwrap_or_else(|_| FlowGraph::default().to_doc())
    }

    /// Merges a graph (what another replica persisted) into this one; see
    /// [`bulkhead_core::baseline::merge`].
    pub fn merge(&self, doc: GraphDoc) -> anyhow::Result<()> {
        let other = FlowGraph::from_doc(doc).map_err(|e| anyhow::anyhow!("flow graph: {e}"))?;
        if let Ok(mut s) = self.graph.lock() {
            let before = s.graph.clone();
            bulkhead_core::baseline::merge(&mut s.graph, &other);
            if s.graph != before {
                s.dirty = true;
            }
        }
        Ok(())
    }

    /// Reads the store again and merges what it holds (kube mode: what the
    /// leader wrote). Errors are logged.
    pub fn refresh(&self) {
        let Some(store) = &self.store else { return };
        match store.load() {
            Ok(Some(doc)) => {
                if let Err(e) = self.merge(doc) {
                    warn!(error = %format!("{e:#}"), "cannot merge the stored flow graph");
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %format!("{e:#}"), "cannot read the stored flow graph"),
        }
    }

    /// Lines the flow log held back (rate limit) and could not write.
    pub fn log_counts(&self) -> (u64, u64, u64) {
        self.log
            .as_ref()
            .and_then(|l| l.lock().ok().map(|l| (l.written, l.suppressed, l.errors)))
            .unwrap_or_default()
    }

    /// Expires old edges and saves the graph if it changed. Errors are
    /// logged; the graph stays in memory.
    pub fn persist(&self, now: u64) {
        let doc = match self.graph.lock() {
            Ok(mut s) => {
                let before = s.graph.edges.len();
                s.graph.expire(now, self.retention_millis);
                if s.graph.edges.len() != before {
                    s.dirty = true;
                }
                if !s.dirty {
                    return;
                }
                s.dirty = false;
                s.graph.to_doc()
            }
            Err(_) => return,
        };
        if let Some(store) = &self.store {
            let again = match store.save(&doc) {
                Ok(()) => store.pending(),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot save the flow graph; it is kept in memory and saved again later");
                    true
                }
            };
            if again && let Ok(mut s) = self.graph.lock() {
                s.dirty = true;
            }
        }
    }
}

/// A shared hub.
pub type Hub = Arc<FlowHub>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bulkhead_core::load_str;

    #[test]
    fn the_graph_survives_a_restart_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (inv, _) = Inventory::from_loaded(&load_str(
            "t.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {bulkhead.io/mode: learn}}\n",
        ));
        let store = || {
            Box::new(FileStore {
                dir: dir.path().into(),
            }) as Box<dyn GraphStore>
        };
        let hub = FlowHub::new(Some(store()), None, u64::MAX).unwrap();
        let peer = |pod: &str, app: &str| pb::FlowPeer {
            namespace: "x".into(),
            pod: pod.into(),
            labels: [("app".to_owned(), app.to_owned())].into(),
        };
        let report = pb::FlowReport {
            flows: vec![pb::Flow {
                src_addr: "10.0.0.1".into(),
                dst_addr: "10.0.0.2".into(),
                protocol: pb::L4Proto::Tcp as i32,
                dst_port: 80,
                verdict: pb::FlowVerdict::WouldDeny as i32,
                rule: "r".into(),
                count: 1,
                first_seen_unix_millis: 5,
                last_seen_unix_millis: 5,
                src: Some(peer("a-0", "a")),
                dst: Some(peer("b-0", "b")),
            }],
            dropped: 0,
            sample_rate: 1,
        };
        assert!(hub.report("n1", &report, &inv, 10).is_empty());
        hub.persist(10);
        let again = FlowHub::new(Some(store()), None, u64::MAX).unwrap();
        assert_eq!(again.doc(), hub.doc());
        assert!(again.doc().edges[0].stats.learned);
        // A corrupt state file is an error naming the file, not an empty graph.
        std::fs::write(dir.path().join(STATE_FILE), "{").unwrap();
        let e = FlowHub::new(Some(store()), None, u64::MAX).unwrap_err();
        assert!(format!("{e:#}").contains(STATE_FILE), "{e:#}");
    }
}
