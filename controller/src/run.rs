//! `bulkhead controller`: wires a cluster source to the node index, serves
//! agents over gRPC, and answers health, readiness, status and metrics over
//! HTTP.
//!
//! ```text
//!  source (dir | kube) ──snapshots──▶ update loop ──▶ NodeIndex ──watch per node──▶ Sync sessions ──▶ agents
//!                                   └──▶ status board ◀── acks/nacks ──────────────┘
//!                                                │
//!                                 HTTP /healthz /readyz /status /metrics
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use bulkhead_core::inventory::Inventory;
use bulkhead_proto::v1 as pb;
use clap::{Args, ValueEnum};
use serde_json::json;
use tonic::transport::Server;
use tracing::{error, info, warn};

use crate::certs;
use crate::flowlog::FlowLog;
use crate::flows::{AlertSink, FileStore, FlowHub, GraphStore, Hub};
use crate::flowstore::{EventSink, KubeStore, KubeStoreOptions, LeaderSlot};
use crate::index::NodeIndex;
use crate::lease::LeaseOptions;
use crate::server::{Authenticator, StatusBoard, SyncService, unix_millis};
use crate::source::{DirOptions, DirSource, KubeSource};
use crate::status::{Applied, StatusOptions, StatusWriter};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Where the cluster comes from: `dir:PATH`, a directory of Kubernetes
    /// YAML that is watched for changes; or `kube`, the Kubernetes API (the
    /// in-cluster configuration, or KUBECONFIG), with leader election.
    #[arg(long, env = "BULKHEAD_SOURCE")]
    pub source: String,
    /// With `--source kube`: this replica's identity in the leader Lease
    /// (its pod name, from the downward API). Defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// With `--source kube`: the namespace of the leader Lease (the
    /// controller's own). Defaults to the client's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// With `--source kube`: the name of the leader Lease.
    #[arg(long, env = "BULKHEAD_LEASE_NAME", default_value = crate::lease::LEASE_NAME)]
    pub lease_name: String,
    /// The gRPC address agents connect to.
    #[arg(long, env = "BULKHEAD_LISTEN", default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// The HTTP address for /healthz, /readyz, /status and /metrics.
    #[arg(long, env = "BULKHEAD_HTTP", default_value = "127.0.0.1:9443")]
    pub http: SocketAddr,
    /// A directory with `ca.pem`, `<server-name>.pem` and `<server-name>-key.pem`
    /// (what `bulkhead certs` writes).
    #[arg(long, env = "BULKHEAD_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// The controller's certificate (instead of --tls-dir).
    #[arg(long, env = "BULKHEAD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The controller's key (instead of --tls-dir).
    #[arg(long, env = "BULKHEAD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA agents' certificates must be signed by (instead of --tls-dir).
    #[arg(long, env = "BULKHEAD_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// The name of the controller's certificate in --tls-dir.
    #[arg(
        long,
        env = "BULKHEAD_SERVER_NAME",
        default_value = "bulkhead-controller"
    )]
    pub server_name: String,
    /// Plaintext and no authentication. Only for tests on one machine.
    #[arg(long, env = "BULKHEAD_INSECURE")]
    pub insecure: bool,
    /// Keepalive interval on every agent stream.
    #[arg(long, env = "BULKHEAD_KEEPALIVE_MS", default_value_t = 2000)]
    pub keepalive_ms: u64,
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// Where the learned flow graph is kept (`flows.json`), so the baseline
    /// survives a restart. Without it the graph lives in memory only.
    #[arg(long, env = "BULKHEAD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The flow log: a file (rotated by size) or `-` for stdout.
    #[arg(long, env = "BULKHEAD_FLOW_LOG")]
    pub flow_log: Option<String>,
    /// Rotate the flow log file when it would grow past this many bytes.
    #[arg(long, env = "BULKHEAD_FLOW_LOG_MAX_BYTES", default_value_t = 100 << 20)]
    pub flow_log_max_bytes: u64,
    /// How many rotated flow log files to keep (`PATH.1` is the newest).
    #[arg(long, env = "BULKHEAD_FLOW_LOG_KEEP", default_value_t = 5)]
    pub flow_log_keep: u32,
    /// Edges of the flow graph not seen for this long are forgotten.
    #[arg(long, env = "BULKHEAD_FLOW_RETENTION_HOURS", default_value_t = 24 * 7)]
    pub flow_retention_hours: u64,
    /// The quarantine audit log (JSON lines). Default for `dir:PATH`:
    /// `PATH/.bulkhead-audit.jsonl`.
    #[arg(long, env = "BULKHEAD_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// With `--source kube`: when a namespace moves from learn (or monitor)
    /// to enforce, the leader creates the recommended NetworkPolicies,
    /// labelled `bulkhead.io/generated: "true"`, never changing a policy
    /// without that label. Needs manifests/rbac-auto-apply.yaml.
    #[arg(long, env = "BULKHEAD_AUTO_APPLY_RECOMMENDATIONS")]
    pub auto_apply_recommendations: bool,
}

/// What the HTTP endpoints read.
#[derive(Debug, Default)]
struct Shared {
    ready: AtomicBool,
    source: Mutex<(u64, Vec<String>)>,
    generation: Mutex<u64>,
}

#[derive(Clone)]
struct Http {
    shared: Arc<Shared>,
    status: Arc<StatusBoard>,
    flows: Hub,
}

type Sinks = Vec<Box<dyn AlertSink>>;

/// The flow store: loaded from the state directory (a corrupt file stops the
/// controller rather than forgetting the baseline), with its flow log.
fn flow_hub(
    store: Option<Box<dyn GraphStore>>,
    sinks: Vec<Box<dyn AlertSink>>,
    flow_log: Option<&str>,
    max_bytes: u64,
    keep: u32,
    retention_hours: u64,
) -> anyhow::Result<Hub> {
    let log = flow_log
        .map(|t| {
            FlowLog::open(t, max_bytes, keep).with_context(|| format!("opening the flow log {t}"))
        })
        .transpose()?;
    let mut hub = FlowHub::new(store, log, retention_hours.saturating_mul(3_600_000))
        .context("loading the flow graph")?;
    for sink in sinks {
        hub.add_sink(sink);
    }
    let doc = hub.doc();
    info!(
        edges = doc.edges.len(),
        workloads = doc.workloads.len(),
        "flow graph loaded"
    );
    Ok(Arc::new(hub))
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

fn tls(args: &ControllerArgs) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    if args.insecure {
        warn!("--insecure: agents are not authenticated and the channel is plaintext");
        return Ok(None);
    }
    let (cert, key, ca) = match (
        &args.tls_dir,
        &args.tls_cert,
        &args.tls_key,
        &args.client_ca,
    ) {
        (Some(d), None, None, None) => {
            let (c, k) = certs::server_paths(d, &args.server_name);
            (c, k, d.join("ca.pem"))
        }
        (None, Some(c), Some(k), Some(ca)) => (c.clone(), k.clone(), ca.clone()),
        _ => bail!(
            "give --tls-dir, or all of --tls-cert, --tls-key and --client-ca (or --insecure for plaintext)"
        ),
    };
    Ok(Some(certs::server_tls(&cert, &key, &ca)?))
}

/// Runs the controller until SIGINT or SIGTERM.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    run_with(args, Hooks::default()).await
}

/// What a test (or an embedding) gives [`run_with`] instead of the process's
/// environment.
#[derive(Default)]
pub struct Hooks {
    /// With `--source kube`: this client instead of the in-cluster
    /// configuration or KUBECONFIG.
    pub kube_client: Option<kube::Client>,
    /// Stops the controller as SIGTERM would (`None`: the signals).
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Told the addresses bound (`"http"`, then `"grpc"`), so that port 0
    /// can be given.
    pub bound: Option<tokio::sync::mpsc::UnboundedSender<(&'static str, SocketAddr)>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("kube_client", &self.kube_client.is_some())
            .finish_non_exhaustive()
    }
}

/// Resolves when `stop` says so (or its sender is gone); the signals
/// without one.
async fn stopped(stop: Option<tokio::sync::watch::Receiver<bool>>) {
    match stop {
        Some(mut rx) => {
            let _ = rx.wait_for(|s| *s).await;
        }
        None => shutdown().await,
    }
}

/// [`run`] with [`Hooks`].
pub async fn run_with(args: ControllerArgs, hooks: Hooks) -> anyhow::Result<()> {
    let Hooks {
        kube_client: given_client,
        stop: stop_hook,
        bound,
    } = hooks;
    let tell = |what: &'static str, addr: SocketAddr| {
        if let Some(b) = &bound {
            let _ = b.send((what, addr));
        }
    };
    let tls = tls(&args)?;
    let ControllerArgs {
        source,
        identity,
        lease_namespace,
        lease_name,
        listen,
        http,
        tls_dir: _,
        tls_cert: _,
        tls_key: _,
        client_ca: _,
        server_name: _,
        insecure,
        keepalive_ms,
        log_format: _,
        state_dir,
        flow_log,
        flow_log_max_bytes,
        flow_log_keep,
        flow_retention_hours,
        audit_log,
        auto_apply_recommendations,
    } = args;
    if auto_apply_recommendations && source != "kube" {
        bail!("--auto-apply-recommendations works with --source kube only");
    }
    if source != "kube" && !source.starts_with("dir:") {
        bail!("--source {source:?}: expected dir:PATH or kube");
    }
    // Kube mode: the client, this replica's identity, and the flow graph
    // kept in FlowBaseline objects (written by the leader once elected).
    let leader_slot = LeaderSlot::default();
    let kube_client = if source == "kube" {
        let client = match given_client {
            Some(c) => c,
            None => kube::Client::try_default()
                .await
                .context("Kubernetes client (in-cluster configuration or KUBECONFIG)")?,
        };
        let identity = identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("bulkhead-controller-{}", std::process::id()));
        Some((client, identity))
    } else {
        None
    };
    let (store, sinks): (Option<Box<dyn GraphStore>>, Sinks) = match &kube_client {
        Some((client, identity)) => {
            if state_dir.is_some() {
                warn!(
                    "--state-dir is not used with --source kube: the flow graph is kept in FlowBaseline objects"
                );
            }
            let store = KubeStore::new(
                client.clone(),
                tokio::runtime::Handle::current(),
                KubeStoreOptions {
                    retention_millis: flow_retention_hours.saturating_mul(3_600_000),
                    ..KubeStoreOptions::default()
                },
            );
            let events = crate::events::Recorder::new(client.clone(), identity.clone());
            (
                Some(Box::new(store)),
                vec![Box::new(EventSink::spawn(events))],
            )
        }
        None => (
            state_dir.map(|dir| Box::new(FileStore { dir }) as Box<dyn GraphStore>),
            Vec::new(),
        ),
    };
    let flows = {
        tokio::task::spawn_blocking(move || {
            flow_hub(
                store,
                sinks,
                flow_log.as_deref(),
                flow_log_max_bytes,
                flow_log_keep,
                flow_retention_hours,
            )
        })
        .await
        .context("loading the flow graph")??
    };
    let audit_log = audit_log.or_else(|| crate::quarantine::default_audit_path(&source));
    let auditor = Arc::new(Mutex::new(crate::quarantine::Auditor::new(audit_log)));
    // Generations grow across restarts: they start from the clock.
    let index = Arc::new(Mutex::new(NodeIndex::new(unix_millis())));
    let status = Arc::new(StatusBoard::default());
    let shared = Arc::new(Shared::default());
    let (applied_tx, mut applied_rx) = tokio::sync::watch::channel(Applied::default());

    // Probes answer while the source lists the cluster (readyz says "loading").
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .route("/flows", get(flows_json))
        .with_state(Http {
            shared: Arc::clone(&shared),
            status: Arc::clone(&status),
            flows: Arc::clone(&flows),
        });
    let http_listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("binding {http}"))?;
    let http = http_listener.local_addr().unwrap_or(http);
    info!(%http, "HTTP endpoints listening");
    tell("http", http);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(http_listener, app).await {
            error!(error = %e, "HTTP server failed");
        }
    });

    // With `--source kube`: how to step down and release the Lease on the way out.
    let mut lease_handle = None;
    let mut rx = match source.strip_prefix("dir:") {
        Some(dir) => {
            DirSource::spawn(PathBuf::from(dir), DirOptions::default())
                .with_context(|| format!("watching {dir}"))?
                .0
        }
        None => {
            let Some((client, identity)) = kube_client else {
                bail!("--source {source:?}: expected dir:PATH or kube");
            };
            let namespace =
                lease_namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let mut lease = LeaseOptions::new(&namespace, &identity);
            lease.name = lease_name;
            info!(%identity, %namespace, lease = %lease.name, "listing the cluster");
            let (rx, _source_task) = tokio::select! {
                r = KubeSource::new(client.clone()).spawn() => r.context("Kubernetes source")?,
                () = stopped(stop_hook.clone()) => return Ok(()),
            };
            let (lease_stop, stop_rx) = tokio::sync::watch::channel(false);
            let (leader, lease_task) =
                crate::lease::spawn_with_stop(client.clone(), lease, stop_rx);
            lease_handle = Some((lease_stop, lease_task));
            let _ = leader_slot.set(leader.clone());
            tokio::spawn(refresh_flows(Arc::clone(&flows)));
            if auto_apply_recommendations {
                let recorder = crate::events::Recorder::new(client.clone(), identity.clone());
                let apply = crate::autoapply::AutoApply::new(
                    client.clone(),
                    Arc::clone(&leader_slot),
                    Arc::new(recorder),
                );
                tokio::spawn(crate::autoapply::run(
                    apply,
                    Arc::clone(&flows),
                    applied_rx.clone(),
                ));
            }
            let writer = StatusWriter::new(
                client,
                leader,
                Arc::clone(&status),
                StatusOptions {
                    identity,
                    tick: Duration::from_secs(1),
                },
            );
            tokio::spawn(writer.run(applied_rx.clone()));
            rx
        }
    };
    {
        let (index, status, shared, auditor) = (
            Arc::clone(&index),
            Arc::clone(&status),
            Arc::clone(&shared),
            Arc::clone(&auditor),
        );
        let applied_tx = applied_tx.clone();
        tokio::spawn(async move {
            let mut reported: Vec<String> = Vec::new();
            loop {
                let snap = Arc::clone(&rx.borrow_and_update());
                // Quarantines: expiry needs the clock, which the core has not.
                let mut next_expiry = None;
                let inv = if crate::quarantine::has_quarantines(&snap.loaded) {
                    let captured = auditor
                        .lock()
                        .map(|a| a.captured.clone())
                        .unwrap_or_default();
                    let (loaded, next) = crate::quarantine::prepare(
                        &snap.loaded,
                        k8s_openapi::jiff::Timestamp::now(),
                        &captured,
                    );
                    next_expiry = next;
                    Inventory::from_loaded(&loaded).0
                } else {
                    Inventory::from_loaded(&snap.loaded).0
                };
                let inv = Arc::new(inv);
                let diags: Vec<String> = snap.diagnostics.iter().map(|d| d.to_string()).collect();
                for d in diags.iter().filter(|d| !reported.contains(d)) {
                    warn!(problem = %d, "input problem; the last good state of that file stays in force");
                }
                reported = diags.clone();
                let (generation, current, changed) = match index.lock() {
                    Ok(mut i) => {
                        let changed = i.update(Arc::clone(&inv));
                        (i.generation(), i.current(), changed)
                    }
                    Err(_) => {
                        error!("node index lock poisoned");
                        return;
                    }
                };
                status.set_current(&current);
                if let Ok(mut a) = auditor.lock() {
                    a.on_update(&inv, &current);
                }
                if let Ok(mut s) = shared.source.lock() {
                    *s = (snap.revision, diags);
                }
                if let Ok(mut g) = shared.generation.lock() {
                    *g = generation;
                }
                if !changed.is_empty() {
                    info!(revision = snap.revision, generation, nodes = ?changed, "new rulesets");
                }
                shared.ready.store(true, Ordering::SeqCst);
                applied_tx.send_replace(Applied {
                    snapshot: Arc::clone(&snap),
                    generation,
                });
                let wait = next_expiry.map(|t| {
                    let ms =
                        t.as_millisecond() - k8s_openapi::jiff::Timestamp::now().as_millisecond();
                    Duration::from_millis(ms.clamp(0, 86_400_000) as u64 + 1)
                });
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    () = async { match wait { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {
                        info!("a quarantine expired; recompiling");
                    }
                }
            }
        });
    }

    // The audit's enforcement records: nodes' acks of quarantines.
    {
        let (auditor, status) = (Arc::clone(&auditor), Arc::clone(&status));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                if let Ok(mut a) = auditor.lock()
                    && a.has_pending()
                {
                    a.on_status(&status.snapshot());
                }
            }
        });
    }

    // Agents are served only once the first snapshot is compiled: an
    // agent served before would be told that no pod exists.
    let _ = applied_rx.changed().await;

    let auth: Authenticator = if insecure {
        Arc::new(|_req| Ok(None))
    } else {
        Arc::new(|req| {
            certs::peer_node(req.peer_certs())
                .map(Some)
                .map_err(|e| tonic::Status::unauthenticated(e.to_string()))
        })
    };
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let svc = SyncService {
        index,
        status: Arc::clone(&status),
        auth,
        keepalive: Duration::from_millis(keepalive_ms.max(100)),
        stop,
        flows: Some(Arc::clone(&flows)),
    };
    {
        let flows = Arc::clone(&flows);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let flows = Arc::clone(&flows);
                let _ = tokio::task::spawn_blocking(move || flows.persist(unix_millis())).await;
            }
        });
    }

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_millis(keepalive_ms.max(100))))
        .http2_keepalive_timeout(Some(Duration::from_millis(keepalive_ms.max(100) * 2)));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("TLS configuration")?;
    }
    let grpc_listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let listen = grpc_listener.local_addr().unwrap_or(listen);
    info!(%listen, tls = !insecure, "serving agents");
    tell("grpc", listen);
    let serve = builder
        .add_service(pb::sync_server::SyncServer::new(svc))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
            grpc_listener,
        ));
    // Agent streams never end by themselves: on a signal, stop at once
    // (agents keep enforcing and reconnect to the next controller).
    tokio::select! {
        r = serve => r.context("gRPC server")?,
        () = stopped(stop_hook) => {
            info!("signal received; closing agent streams");
            let _ = stop_tx.send(true);
        }
    }
    // Saved while still leading (kube mode writes only as the leader).
    {
        let flows = Arc::clone(&flows);
        let _ = tokio::task::spawn_blocking(move || flows.persist(unix_millis())).await;
    }
    if let Some((lease_stop, lease_task)) = lease_handle {
        let _ = lease_stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), lease_task).await;
    }
    info!("stopped");
    Ok(())
}

/// Kube mode: every replica merges what the leader persisted, so that a
/// replica that comes to lead (or serves agents meanwhile) knows the
/// baseline learned through the others.
async fn refresh_flows(flows: Hub) {
    let mut tick = tokio::time::interval(FLOW_REFRESH);
    tick.tick().await;
    loop {
        tick.tick().await;
        let flows = Arc::clone(&flows);
        let _ = tokio::task::spawn_blocking(move || flows.refresh()).await;
    }
}

/// How often [`refresh_flows`] reads the FlowBaselines.
const FLOW_REFRESH: Duration = Duration::from_secs(30);

/// SIGINT or SIGTERM.
pub async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn readyz(State(h): State<Http>) -> impl IntoResponse {
    if h.shared.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading\n")
    }
}

async fn status_json(State(h): State<Http>) -> impl IntoResponse {
    let (revision, diagnostics) = h
        .shared
        .source
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let generation = h.shared.generation.lock().map(|g| *g).unwrap_or_default();
    let body = json!({
        "ready": h.shared.ready.load(Ordering::SeqCst),
        "generation": generation,
        "sourceRevision": revision,
        "diagnostics": diagnostics,
        "nodes": h.status.snapshot(),
    });
    ([("content-type", "application/json")], body.to_string())
}

/// The service graph learned from flow reports (see docs/FLOWS.md).
async fn flows_json(State(h): State<Http>) -> impl IntoResponse {
    let body = serde_json::to_string(&h.flows.doc()).unwrap_or_default();
    ([("content-type", "application/json")], body)
}

async fn metrics(State(h): State<Http>) -> impl IntoResponse {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    let mut registry = Registry::with_prefix("bulkhead");
    let generation: Gauge = Gauge::default();
    generation.set(
        h.shared
            .generation
            .lock()
            .map(|g| *g as i64)
            .unwrap_or_default(),
    );
    registry.register(
        "generation",
        "The controller's current generation",
        generation,
    );
    let problems: Gauge = Gauge::default();
    problems.set(
        h.shared
            .source
            .lock()
            .map(|s| s.1.len() as i64)
            .unwrap_or_default(),
    );
    registry.register("input_problems", "Current problems in the input", problems);
    let connected: Family<Vec<(String, String)>, Gauge> = Family::default();
    let acked: Family<Vec<(String, String)>, Gauge> = Family::default();
    let nacks: Family<Vec<(String, String)>, Gauge> = Family::default();
    for (node, s) in h.status.snapshot() {
        let l = vec![("node".to_owned(), node)];
        connected.get_or_create(&l).set(i64::from(s.connected));
        acked
            .get_or_create(&l)
            .set(s.acked_generation.unwrap_or_default() as i64);
        nacks.get_or_create(&l).set(s.nacks as i64);
    }
    registry.register(
        "agent_connected",
        "Whether the node's agent is connected",
        connected,
    );
    registry.register(
        "agent_acked_generation",
        "The last generation the node's agent acked",
        acked,
    );
    registry.register(
        "agent_nacks",
        "Transactions the node's kernel refused",
        nacks,
    );
    registry.register(
        "flow_alerts",
        "Flows outside the baseline and declared policy, by edge",
        h.flows.alerts.clone(),
    );
    registry.register(
        "flow_reports",
        "Flow reports received from agents",
        h.flows.reports.clone(),
    );
    registry.register(
        "flows_reported",
        "Flows received from agents",
        h.flows.flows.clone(),
    );
    let (written, suppressed, errors) = h.flows.log_counts();
    let log: Family<Vec<(String, String)>, Gauge> = Family::default();
    for (what, n) in [
        ("written", written),
        ("rate_limited", suppressed),
        ("failed", errors),
    ] {
        log.get_or_create(&vec![("result".to_owned(), what.to_owned())])
            .set(n as i64);
    }
    registry.register(
        "flow_log_lines",
        "Flow log lines written, held back by the rate limit, and lost to write errors",
        log,
    );
    let mut out = String::new();
    let _ = encode(&mut out, &registry);
    ([("content-type", "text/plain; version=0.0.4")], out)
}
