//! The gRPC side of the controller: one `Sync` stream per agent, serving that
//! node (and only that node) its ruleset as snapshots and deltas, and keeping
//! what each agent acked on the status board.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_core::compile::diff;
use bulkhead_proto::v1 as pb;
use futures::Stream;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::index::NodeIndex;

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// What the controller knows of one node's agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub connected: bool,
    pub agent_version: String,
    /// The generation the node should have.
    pub current_generation: u64,
    /// The last generation sent, and the last one the agent acked.
    pub sent_generation: Option<u64>,
    pub acked_generation: Option<u64>,
    pub acked_at_unix_millis: Option<u64>,
    pub last_apply_micros: Option<u64>,
    pub last_error: Option<String>,
    pub nacks: u64,
    pub connects: u64,
    pub snapshots_sent: u64,
    pub deltas_sent: u64,
    pub flow_reports: u64,
}

/// Every node's status, shared by the sessions and the HTTP endpoints.
#[derive(Debug, Default)]
pub struct StatusBoard {
    nodes: Mutex<BTreeMap<String, NodeStatus>>,
}

impl StatusBoard {
    pub fn with(&self, node: &str, f: impl FnOnce(&mut NodeStatus)) {
        if let Ok(mut m) = self.nodes.lock() {
            f(m.entry(node.to_owned()).or_default());
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, NodeStatus> {
        self.nodes.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Records the generation every node should have.
    pub fn set_current(&self, current: &BTreeMap<String, u64>) {
        if let Ok(mut m) = self.nodes.lock() {
            for (n, g) in current {
                m.entry(n.clone()).or_default().current_generation = *g;
            }
        }
    }
}

/// Who the peer of a stream is: `Ok(Some(node))` from its client
/// certificate, `Ok(None)` when running without TLS (`--insecure`).
pub type Authenticator = Arc<
    dyn Fn(&Request<Streaming<pb::AgentMessage>>) -> Result<Option<String>, Status> + Send + Sync,
>;

#[derive(Clone)]
pub struct SyncService {
    pub index: Arc<Mutex<NodeIndex>>,
    pub status: Arc<StatusBoard>,
    pub auth: Authenticator,
    pub keepalive: Duration,
    /// Flips to `true` when the controller stops: every stream ends, so that
    /// agents reconnect (to this controller's successor) at once.
    pub stop: watch::Receiver<bool>,
    /// Where flow reports go; `None` ignores them (they are only counted).
    pub flows: Option<crate::flows::Hub>,
}

impl std::fmt::Debug for SyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncService")
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

type Out = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

fn msg(kind: pb::controller_message::Kind) -> Result<pb::ControllerMessage, Status> {
    Ok(pb::ControllerMessage { kind: Some(kind) })
}

#[tonic::async_trait]
impl pb::sync_server::Sync for SyncService {
    type StreamStream =
        Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send + 'static>>;

    async fn stream(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = (self.auth)(&req)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a stream must be a hello",
            ));
        };
        if hello.node.is_empty() {
            return Err(Status::invalid_argument("hello names no node"));
        }
        if let Some(peer) = peer {
            crate::certs::authorize(&hello.node, &peer).inspect_err(|_| {
                warn!(claimed = %hello.node, certificate = %peer, "agent refused: certificate is for another node");
            })?;
        }
        info!(node = %hello.node, version = %hello.agent_version, applied = hello.applied_generation, "agent connected");
        let (tx, rx) = mpsc::channel(16);
        let session = Session {
            node: hello.node.clone(),
            index: Arc::clone(&self.index),
            status: Arc::clone(&self.status),
            keepalive: self.keepalive,
            stop: self.stop.clone(),
            flows: self.flows.clone(),
        };
        self.status.with(&hello.node, |s| {
            s.connected = true;
            s.connects += 1;
            s.agent_version = hello.agent_version.clone();
        });
        tokio::spawn(session.run(hello.applied_generation, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Session {
    node: String,
    index: Arc<Mutex<NodeIndex>>,
    status: Arc<StatusBoard>,
    keepalive: Duration,
    stop: watch::Receiver<bool>,
    flows: Option<crate::flows::Hub>,
}

/// How long to wait before resending after a nack: doubling, capped.
fn nack_backoff(nacks: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << nacks.min(6))).min(Duration::from_secs(30))
}

impl Session {
    async fn run(self, applied: u64, mut inbound: Streaming<pb::AgentMessage>, out: Out) {
        let node = self.node.clone();
        let mut stop = self.stop.clone();
        let Ok(mut rx) = self.index.lock().map(|mut i| i.subscribe(&node)) else {
            return;
        };
        // A node the inventory does not know has no entry on the board yet.
        let first = rx.borrow().generation;
        self.status.with(&node, |s| s.current_generation = first);
        // What the agent has: a generation we may still know the ruleset of.
        let mut agent_has = (applied != 0).then_some(applied);
        let mut in_flight: Option<u64> = None;
        let mut force_snapshot = false;
        let mut retry_at: Option<Instant> = None;
        let mut nacks: u32 = 0;
        let mut ticker = tokio::time::interval(self.keepalive);
        ticker.tick().await;
        loop {
            let ready = retry_at.is_none_or(|t| Instant::now() >= t);
            if in_flight.is_none() && ready {
                let cur = Arc::clone(&rx.borrow_and_update());
                if force_snapshot || agent_has != Some(cur.generation) {
                    let base = if force_snapshot {
                        None
                    } else {
                        agent_has.and_then(|g| self.index.lock().ok().and_then(|i| i.at(&node, g)))
                    };
                    let kind = match base {
                        Some(base) => {
                            self.status.with(&node, |s| s.deltas_sent += 1);
                            pb::controller_message::Kind::Delta(diff::diff(&base, &cur))
                        }
                        None => {
                            self.status.with(&node, |s| s.snapshots_sent += 1);
                            pb::controller_message::Kind::Snapshot((*cur).clone())
                        }
                    };
                    if out.send(msg(kind)).await.is_err() {
                        break;
                    }
                    in_flight = Some(cur.generation);
                    force_snapshot = false;
                    retry_at = None;
                    self.status
                        .with(&node, |s| s.sent_generation = Some(cur.generation));
                }
            }
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = stop.changed() => {}
                changed = rx.changed(), if in_flight.is_none() && ready => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = async { if let Some(t) = retry_at { tokio::time::sleep_until(t).await } }, if retry_at.is_some() && in_flight.is_none() => {
                    retry_at = None;
                }
                m = inbound.message() => {
                    let m = match m {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(e) => {
                            warn!(node = %node, error = %e, "agent stream failed");
                            break;
                        }
                    };
                    use pb::agent_message::Kind as K;
                    match m.kind {
                        Some(K::Ack(a)) => {
                            if in_flight == Some(a.generation) {
                                in_flight = None;
                            }
                            agent_has = Some(a.generation);
                            nacks = 0;
                            self.status.with(&node, |s| {
                                s.acked_generation = Some(a.generation);
                                s.acked_at_unix_millis = Some(unix_millis());
                                s.last_apply_micros = Some(a.apply_micros);
                                s.last_error = None;
                            });
                        }
                        Some(K::Nack(n)) => {
                            warn!(node = %node, generation = n.generation, error = %n.error, "agent could not apply; it keeps its previous ruleset");
                            in_flight = None;
                            force_snapshot = true;
                            retry_at = Some(Instant::now() + nack_backoff(nacks));
                            nacks = nacks.saturating_add(1);
                            self.status.with(&node, |s| {
                                s.nacks += 1;
                                s.last_error = Some(n.error.clone());
                            });
                        }
                        Some(K::NeedSnapshot(n)) => {
                            info!(node = %node, have = n.have, reason = %n.reason, "agent asks for a snapshot");
                            in_flight = None;
                            force_snapshot = true;
                            agent_has = None;
                        }
                        Some(K::Flows(r)) => {
                            self.status.with(&node, |s| s.flow_reports += 1);
                            if let Some(hub) = &self.flows {
                                let inv = self.index.lock().map(|i| Arc::clone(i.inventory()));
                                if let Ok(inv) = inv {
                                    hub.report(&node, &r, &inv, unix_millis());
                                }
                            }
                        }
                        Some(K::Status(st)) => {
                            if !st.last_error.is_empty() {
                                self.status.with(&node, |s| s.last_error = Some(st.last_error.clone()));
                            }
                        }
                        Some(K::Keepalive(_)) | None => {}
                        Some(K::Hello(_)) => {
                            warn!(node = %node, "a second hello on one stream; closing it");
                            break;
                        }
                    }
                }
                _ = ticker.tick() => {
                    let k = pb::controller_message::Kind::Keepalive(pb::Keepalive { unix_millis: unix_millis() });
                    if out.send(msg(k)).await.is_err() {
                        break;
                    }
                }
            }
        }
        info!(node = %node, "agent disconnected");
        self.status.with(&node, |s| s.connected = false);
    }
}
