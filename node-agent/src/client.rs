//! The agent's side of the sync stream: connect, say hello with the
//! generation in the kernel, apply what the controller sends, ack or nack,
//! and keep the anti-spoofing sets in step with the node's pod interfaces.
//! When the controller is unreachable nothing is touched (fail-static) and the
//! agent reconnects with jittered exponential backoff.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bulkhead_core::compile::anti_spoof_elements;
use bulkhead_proto::v1 as pb;
use pb::agent_message::Kind as A;
use pb::controller_message::Kind as C;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tracing::{info, warn};

use crate::dataplane::{Dataplane, DataplaneError, KernelState};
use crate::links::{self, PodLink};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://host:port` (or `http://` with `--insecure`).
    pub controller: String,
    pub node: String,
    pub tls: Option<ClientTlsConfig>,
    /// Learn pod interfaces with rtnetlink for anti-spoofing.
    pub links: bool,
    pub pod_iface_prefix: Option<String>,
    pub keepalive: Duration,
    pub version: String,
    /// Observed flows to report (see `flows`); `None`: no flow reports.
    pub flows: Option<crate::flows::Flows>,
}

/// How often observed flows are reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Flows per `FlowReport` message (a report window may need several).
const FLOWS_PER_MESSAGE: usize = 2000;

/// Sends the window's flows; never waits: what the stream cannot take now is
/// counted as shed in the next report.
fn report_flows(flows: &crate::flows::Flows, tx: &mpsc::Sender<pb::AgentMessage>) {
    let Some(mut report) = flows.drain() else {
        return;
    };
    let mut rest = std::mem::take(&mut report.flows);
    loop {
        let tail = rest.split_off(rest.len().min(FLOWS_PER_MESSAGE));
        let chunk = pb::FlowReport {
            flows: std::mem::replace(&mut rest, tail),
            ..report
        };
        // Shedding is reported once per window.
        report.dropped = 0;
        let n: u64 = chunk.flows.iter().map(|f| f.count).sum();
        if let Err(e) = tx.try_send(send(A::Flows(chunk))) {
            let lost = n + rest.iter().map(|f| f.count).sum::<u64>();
            warn!(error = %e, lost, "the sync stream is busy; flows are shed");
            flows.lost(lost);
            return;
        }
        if rest.is_empty() {
            return;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("controller: {0}")]
    Transport(String),
    #[error("controller: {0}")]
    Status(#[from] tonic::Status),
    #[error("the controller has been silent for {0:?}")]
    Silent(Duration),
    #[error("the controller sent a ruleset for node {got:?}, but this is {want:?}")]
    WrongNode { got: String, want: String },
}

/// Jittered exponential backoff.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// Somewhere between half and all of the current step; then doubles it.
    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

fn agent_sets(links: &[PodLink]) -> Vec<(String, Vec<pb::Element>)> {
    let pairs: Vec<(String, Vec<IpAddr>)> = links
        .iter()
        .map(|l| (l.ifname.clone(), l.addrs.clone()))
        .collect();
    anti_spoof_elements(&pairs).to_vec()
}

fn send(kind: A) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

/// Runs until the process is stopped. Refuses at once (an error) to manage a
/// table `inet bulkhead` it did not write.
pub async fn run<D: Dataplane + Send>(cfg: ClientConfig, mut dp: D) -> Result<(), ClientError> {
    match tokio::task::block_in_place(|| dp.state())? {
        KernelState::Foreign { why } => return Err(DataplaneError::ForeignTable { why }.into()),
        KernelState::Ours { schema, .. } if schema > crate::dataplane::render::SCHEMA => {
            return Err(DataplaneError::NewerSchema { schema }.into());
        }
        KernelState::Ours {
            generation, node, ..
        } => {
            info!(%node, generation, "adopting the table in the kernel; enforcing it until the controller answers")
        }
        KernelState::Absent => {
            info!("no table yet; nothing is enforced until the controller answers")
        }
    }
    let (links_tx, links_rx) = watch::channel(Vec::new());
    if cfg.links {
        let prefix = cfg.pod_iface_prefix.clone();
        tokio::spawn(async move {
            if let Err(e) = links::watch(prefix, links_tx).await {
                warn!(error = %e, "pod interface watcher stopped; anti-spoofing entries are no longer updated");
            }
        });
    }
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let started = Instant::now();
        match session(&cfg, &mut dp, links_rx.clone()).await {
            Ok(()) => info!("the controller closed the stream; reconnecting"),
            Err(ClientError::Dataplane(
                e @ (DataplaneError::ForeignTable { .. } | DataplaneError::NewerSchema { .. }),
            )) => {
                return Err(e.into());
            }
            Err(e) => warn!(error = %e, "sync failed; enforcing the last ruleset and reconnecting"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff.reset();
        }
        tokio::time::sleep(backoff.step()).await;
    }
}

async fn session<D: Dataplane>(
    cfg: &ClientConfig,
    dp: &mut D,
    mut links: watch::Receiver<Vec<PodLink>>,
) -> Result<(), ClientError> {
    let mut endpoint = Endpoint::from_shared(cfg.controller.clone())
        .map_err(|e| ClientError::Transport(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(cfg.keepalive)
        .keep_alive_timeout(cfg.keepalive * 2)
        .keep_alive_while_idle(true);
    if let Some(tls) = &cfg.tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| ClientError::Transport(e.to_string()))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Transport(format!("{e}: {e:?}")))?;
    let mut client = pb::sync_client::SyncClient::new(channel);

    let mut applied = match tokio::task::block_in_place(|| dp.state())? {
        KernelState::Ours {
            generation, node, ..
        } if node == cfg.node => Some(generation),
        _ => None,
    };
    let (tx, rx) = mpsc::channel(16);
    let hello = pb::Hello {
        node: cfg.node.clone(),
        agent_version: cfg.version.clone(),
        applied_generation: applied.unwrap_or(0),
    };
    let _ = tx.send(send(A::Hello(hello))).await;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    info!(controller = %cfg.controller, node = %cfg.node, applied = applied.unwrap_or(0), "connected");

    let mut quarantined = crate::dataplane::conntrack::Quarantined::default();
    let mut sets = agent_sets(&links.borrow_and_update());
    let mut sets_dirty = false;
    let mut heard = Instant::now();
    let mut ticker = tokio::time::interval(cfg.keepalive);
    ticker.tick().await;
    let mut report_ticker = tokio::time::interval(REPORT_EVERY);
    report_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = inbound.message() => {
                let Some(m) = m? else { return Ok(()) };
                heard = Instant::now();
                match m.kind {
                    Some(C::Snapshot(rs)) => {
                        if rs.node != cfg.node {
                            return Err(ClientError::WrongNode { got: rs.node, want: cfg.node.clone() });
                        }
                        let t = Instant::now();
                        let r = tokio::task::block_in_place(|| dp.apply_full(&rs, &sets));
                        if r.is_ok() {
                            cut_quarantined(quarantined.after_full(&rs));
                        }
                        let reply = answer(rs.generation, t, r, &mut applied);
                        if reply.is_ok() {
                            sets_dirty = false;
                            if let Some(f) = &cfg.flows {
                                f.set_endpoints(&rs.endpoints);
                            }
                        }
                        let _ = tx.send(send(reply.unwrap_or_else(|n| n))).await;
                    }
                    Some(C::Delta(d)) => {
                        if applied != Some(d.base_generation) {
                            info!(have = applied.unwrap_or(0), base = d.base_generation, "delta does not fit what is applied; asking for a snapshot");
                            let _ = tx.send(send(A::NeedSnapshot(pb::NeedSnapshot {
                                have: applied.unwrap_or(0),
                                reason: format!("delta is based on {}, {} is applied", d.base_generation, applied.unwrap_or(0)),
                            }))).await;
                            continue;
                        }
                        let t = Instant::now();
                        let with_sets = sets_dirty.then_some(sets.as_slice());
                        let r = tokio::task::block_in_place(|| dp.apply_delta(&d, with_sets));
                        if r.is_ok() {
                            cut_quarantined(quarantined.after_delta(&d));
                        }
                        let reply = answer(d.generation, t, r, &mut applied);
                        if reply.is_ok() {
                            sets_dirty = false;
                            if let (Some(f), Some(eps)) = (&cfg.flows, &d.endpoints) {
                                f.set_endpoints(&eps.endpoints);
                            }
                        }
                        let _ = tx.send(send(reply.unwrap_or_else(|n| n))).await;
                    }
                    Some(C::Keepalive(_)) | None => {}
                }
            }
            changed = links.changed() => {
                if changed.is_err() {
                    continue;
                }
                sets = agent_sets(&links.borrow_and_update());
                if applied.is_some() {
                    if let Err(e) = tokio::task::block_in_place(|| dp.set_agent_sets(&sets)) {
                        warn!(error = %e, "could not update the anti-spoofing sets; retrying with the next change");
                        sets_dirty = true;
                    }
                } else {
                    sets_dirty = true;
                }
            }
            _ = report_ticker.tick(), if cfg.flows.is_some() => {
                if let Some(f) = &cfg.flows {
                    report_flows(f, &tx);
                }
            }
            _ = ticker.tick() => {
                if heard.elapsed() > cfg.keepalive * 3 {
                    return Err(ClientError::Silent(heard.elapsed()));
                }
                let _ = tx.send(send(A::Keepalive(pb::Keepalive { unix_millis: 0 }))).await;
            }
        }
    }
}

/// Right after the transaction that quarantined `addrs` committed, and
/// before the ack: deletes their conntrack entries. A failure is logged (the
/// quarantine chain drops their packets anyway, established or not).
fn cut_quarantined(addrs: Vec<std::net::IpAddr>) {
    if addrs.is_empty() {
        return;
    }
    let t = Instant::now();
    match tokio::task::block_in_place(|| crate::dataplane::conntrack::cut(&addrs)) {
        Ok(n) => {
            info!(addrs = ?addrs, deleted = n, micros = t.elapsed().as_micros() as u64, "quarantine: connections cut")
        }
        Err(e) => warn!(addrs = ?addrs, error = %e, "quarantine: could not cut connections"),
    }
}

/// An ack, or a nack naming what the kernel refused.
fn answer(
    generation: u64,
    started: Instant,
    r: Result<(), DataplaneError>,
    applied: &mut Option<u64>,
) -> Result<A, A> {
    match r {
        Ok(()) => {
            *applied = Some(generation);
            info!(
                generation,
                micros = started.elapsed().as_micros() as u64,
                "applied"
            );
            Ok(A::Ack(pb::Ack {
                generation,
                apply_micros: started.elapsed().as_micros() as u64,
            }))
        }
        Err(e) => {
            warn!(generation, error = %e, "could not apply; the previous ruleset stays in force");
            Err(A::Nack(pb::Nack {
                generation,
                error: e.to_string(),
            }))
        }
    }
}
