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
