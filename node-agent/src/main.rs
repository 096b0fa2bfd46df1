//! `bulkhead-agent`: the node agent.
//!
//! One-shot modes for tests and debugging: `apply` a ruleset or a delta from
//! a JSON file, `show` what is applied, list the pod `links` it sees.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bulkhead_agent::dataplane::nft::Nft;
use bulkhead_agent::dataplane::{Dataplane, DataplaneError, KernelState};
use bulkhead_agent::links;
use bulkhead_core::compile::anti_spoof_elements;
use bulkhead_proto::v1 as pb;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "bulkhead-agent", version, about = "Bulkhead node agent")]
struct Args {
    /// The nft binary.
    #[arg(long, env = "BULKHEAD_NFT", default_value = "nft", global = true)]
    nft: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Links {
    /// Learn pod interfaces and addresses with rtnetlink (anti-spoofing).
    Auto,
    /// No anti-spoofing entries.
    None,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Applies a ruleset (full replace) or a delta, as one transaction.
    Apply {
        /// A `Ruleset` as JSON (what `bulkhead compile -o json` prints).
        #[arg(long, conflicts_with = "delta", required_unless_present = "delta")]
        ruleset: Option<PathBuf>,
        /// A `RulesetDelta` as JSON; applies only on top of its base generation.
        #[arg(long)]
        delta: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Links::Auto)]
        links: Links,
        /// Only interfaces whose name starts with this are pod interfaces.
        #[arg(long, env = "BULKHEAD_POD_IFACE_PREFIX")]
        pod_iface_prefix: Option<String>,
    },
    /// Prints the applied generation and a summary of the table.
    Show {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Prints the pod interfaces and addresses this node has.
    Links {
        #[arg(long, env = "BULKHEAD_POD_IFACE_PREFIX")]
        pod_iface_prefix: Option<String>,
    },
    /// Runs the agent: syncs with the controller and enforces its rulesets.
    Run(RunArgs),
    /// Runs only the flow observer for a while (benchmarks): prints `ready`
    /// once listening, then a JSON summary of what it saw and what it cost.
    Observe {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 16_384)]
        flows_max: usize,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The controller, e.g. `https://172.31.0.254:7443`.
    #[arg(long, env = "BULKHEAD_CONTROLLER")]
    controller: String,
    /// This node's name; must match the certificate's DNS name.
    #[arg(long, env = "BULKHEAD_NODE")]
    node: String,
    /// A directory with `ca.pem`, `node-<node>.pem` and `node-<node>-key.pem`
    /// (what `bulkhead certs` writes).
    #[arg(long, env = "BULKHEAD_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// The CA that signed the controller's certificate (instead of --tls-dir).
    #[arg(long, env = "BULKHEAD_TLS_CA")]
    ca: Option<PathBuf>,
    /// This agent's certificate (instead of --tls-dir).
    #[arg(long, env = "BULKHEAD_TLS_CERT")]
    cert: Option<PathBuf>,
    /// This agent's key (instead of --tls-dir).
    #[arg(long, env = "BULKHEAD_TLS_KEY")]
    key: Option<PathBuf>,
    /// The name in the controller's certificate.
    #[arg(
        long,
        env = "BULKHEAD_SERVER_NAME",
        default_value = "bulkhead-controller"
    )]
    server_name: String,
    /// Plaintext, no authentication. Only for tests on one machine.
    #[arg(long, env = "BULKHEAD_INSECURE")]
    insecure: bool,
    #[arg(long, value_enum, default_value_t = Links::Auto)]
    links: Links,
    #[arg(long, env = "BULKHEAD_POD_IFACE_PREFIX")]
    pod_iface_prefix: Option<String>,
    /// Keepalive interval; the controller is declared gone after three.
    #[arg(long, env = "BULKHEAD_KEEPALIVE_MS", default_value_t = 2000)]
    keepalive_ms: u64,
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    /// Observe flows (nflog group 100) and report them to the controller.
    #[arg(long, env = "BULKHEAD_FLOWS", value_enum, default_value_t = FlowsMode::On)]
    flows: FlowsMode,
    /// Distinct flows kept per one-second report window; past half of it,
    /// new flows are sampled (and the rate reported).
    #[arg(long, env = "BULKHEAD_FLOWS_MAX", default_value_t = 16_384)]
    flows_max: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum FlowsMode {
    On,
    Off,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::bad(format!("cannot read {}: {e}", path.display())))
}

fn run_agent(args: RunArgs, nft: PathBuf) -> Result<String, Failure> {
    let RunArgs {
        controller,
        node,
        tls_dir,
        ca,
        cert,
        key,
        server_name,
        insecure,
        links,
        pod_iface_prefix,
        keepalive_ms,
        log_format,
        flows,
        flows_max,
    } = args;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
    let tls = if insecure {
        if controller.starts_with("https://") {
            return Err(Failure::bad(
                "--insecure needs an http:// controller URL".into(),
            ));
        }
        None
    } else {
        let (ca, cert, key) = match (tls_dir, ca, cert, key) {
            (Some(d), None, None, None) => (
                d.join("ca.pem"),
                d.join(format!("node-{node}.pem")),
                d.join(format!("node-{node}-key.pem")),
            ),
            (None, Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            _ => {
                return Err(Failure::bad(
                    "give --tls-dir, or all of --ca, --cert and --key (or --insecure for plaintext)".into(),
                ));
            }
        };
        if !controller.starts_with("https://") {
            return Err(Failure::bad(
                "with TLS the controller URL must start with https://".into(),
            ));
        }
        Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(&ca)?))
                .identity(tonic::transport::Identity::from_pem(
                    read(&cert)?,
                    read(&key)?,
                ))
                .domain_name(server_name),
        )
    };
    let cfg = bulkhead_agent::client::ClientConfig {
        controller,
        node,
        tls,
        links: links == Links::Auto,
        pod_iface_prefix,
        keepalive: std::time::Duration::from_millis(keepalive_ms.max(100)),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        flows: start_flows(flows, flows_max),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        tokio::select! {
            r = bulkhead_agent::client::run(cfg, Nft::new(nft)) => r.map(|()| String::new()).map_err(|e| Failure {
                status: EXIT_BAD_INPUT,
                message: e.to_string(),
            }),
            () = shutdown() => Ok("stopped; the last ruleset stays in force\n".to_owned()),
        }
    })
}

/// Binds nflog and starts the observer thread. Observation is not
/// enforcement: when it cannot start, the agent runs without it and says so.
fn start_flows(mode: FlowsMode, max: usize) -> Option<bulkhead_agent::flows::Flows> {
    use bulkhead_agent::flows::{Flows, Limits, observer::Observer};
    if mode == FlowsMode::Off {
        return None;
    }
    let obs = match Observer::bind(bulkhead_core::compile::observe::LOG_GROUP) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "cannot observe flows; running without flow reports");
            return None;
        }
    };
    let flows = Flows::new(Limits {
        max_flows: max.max(1),
        ..Limits::default()
    });
    let handle = flows.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("flows".into())
        .spawn(move || obs.run(handle))
    {
        tracing::warn!(error = %e, "cannot start the flow observer; running without flow reports");
        return None;
    }
    Some(flows)
}

/// Exit status for input that cannot be used (a bad file, a foreign table).
const EXIT_BAD_INPUT: u8 = 2;

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::bad(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Failure::bad(format!("{}: {e}", path.display())))
}

#[derive(Debug)]
struct Failure {
    status: u8,
    message: String,
}

impl Failure {
    fn bad(message: String) -> Self {
        Self {
            status: EXIT_BAD_INPUT,
            message,
        }
    }
}

impl From<DataplaneError> for Failure {
    fn from(e: DataplaneError) -> Self {
        let status = match e {
            DataplaneError::Render(_)
            | DataplaneError::ForeignTable { .. }
            | DataplaneError::NewerSchema { .. }
            | DataplaneError::BaseMismatch { .. } => EXIT_BAD_INPUT,
            _ => 1,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self {
            status: 1,
            message: format!("{e:#}"),
        }
    }
}

fn agent_sets(
    mode: Links,
    prefix: Option<&str>,
) -> Result<Vec<(String, Vec<pb::Element>)>, Failure> {
    let found = match mode {
        Links::None => Vec::new(),
        Links::Auto => links::dump_blocking(prefix).context("learning pod interfaces")?,
    };
    let pairs: Vec<(String, Vec<std::net::IpAddr>)> =
        found.into_iter().map(|l| (l.ifname, l.addrs)).collect();
    Ok(anti_spoof_elements(&pairs).to_vec())
}

/// SIGINT or SIGTERM.
async fn shutdown() {
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
        () = term => {}
    }
}

fn run(args: Args) -> Result<String, Failure> {
    let Args { nft, command } = args;
    let mut dp = Nft::new(nft);
    match command {
        Cmd::Apply {
            ruleset,
            delta,
            links,
            pod_iface_prefix,
        } => {
            let agent = agent_sets(links, pod_iface_prefix.as_deref())?;
            if let Some(path) = ruleset {
                let rs: pb::Ruleset = read_json(&path)?;
                dp.apply_full(&rs, &agent)?;
                Ok(format!(
                    "applied generation {} for node {} (full)\n",
                    rs.generation, rs.node
                ))
            } else if let Some(path) = delta {
                let d: pb::RulesetDelta = read_json(&path)?;
                dp.apply_delta(&d, Some(&agent))?;
                Ok(format!(
                    "applied generation {} for node {} (delta from {})\n",
                    d.generation, d.node, d.base_generation
                ))
            } else {
                Err(Failure::bad("give --ruleset or --delta".into()))
            }
        }
        Cmd::Show { output } => {
            let state = dp.state()?;
            let summary = dp.summary()?;
            Ok(match output {
                Format::Json => {
                    let mut s = serde_json::to_string_pretty(
                        &serde_json::json!({"kernel": state, "summary": summary}),
                    )
                    .unwrap_or_default();
                    s.push('\n');
                    s
                }
                Format::Text => {
                    let head = match &state {
                        KernelState::Absent => "no table inet bulkhead: nothing applied".to_owned(),
                        KernelState::Ours {
                            schema,
                            generation,
                            node,
                        } => {
                            format!(
                                "node {node}: generation {generation} applied (schema {schema})"
                            )
                        }
                        KernelState::Foreign { why } => {
                            format!("table inet bulkhead is not ours: {why}")
                        }
                    };
                    match summary {
                        Some(s) => format!(
                            "{head}\n  {} sets with {} elements, {} maps with {} entries, {} chains with {} rules\n",
                            s.sets, s.elements, s.maps, s.map_entries, s.chains, s.rules
                        ),
                        None => format!("{head}\n"),
                    }
                }
            })
        }
        Cmd::Run(run) => run_agent(run, dp.binary.clone()),
        Cmd::Observe { seconds, flows_max } => {
            use bulkhead_agent::flows::{Limits, measure};
            let limits = Limits {
                max_flows: flows_max.max(1),
                ..Limits::default()
            };
            let s = measure::observe_for(
                bulkhead_core::compile::observe::LOG_GROUP,
                limits,
                std::time::Duration::from_secs(seconds),
                || {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "ready").and_then(|()| out.flush());
                },
            )
            .map_err(|e| Failure::bad(e.to_string()))?;
            Ok(format!(
                "{}\n",
                serde_json::to_string(&s).unwrap_or_default()
            ))
        }
        Cmd::Links { pod_iface_prefix } => {
            let found = links::dump_blocking(pod_iface_prefix.as_deref())
                .context("learning pod interfaces")?;
            let mut s = serde_json::to_string_pretty(&found).unwrap_or_default();
            s.push('\n');
            Ok(s)
        }
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure { status, message }) => {
            eprintln!("bulkhead-agent: {message}");
            ExitCode::from(status)
        }
    }
}
