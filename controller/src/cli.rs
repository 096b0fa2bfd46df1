//! The offline subcommands: `reachability` and `explain`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use bulkhead_core::compile::{self, diff};
use bulkhead_core::explain;
use bulkhead_core::verdict::{self, Endpoint, Family, Matrix, Query};
use bulkhead_core::{Diagnostic, Inventory, Protocol};
use bulkhead_proto::v1 as pb;
use clap::{Args, ValueEnum};

/// Exit status for bad input (files, objects, arguments that name nothing).
pub const EXIT_BAD_INPUT: u8 = 2;

/// A failure with the exit status it deserves.
#[derive(Debug)]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

impl Failure {
    fn bad_input(message: impl Into<String>) -> Self {
        Self {
            status: EXIT_BAD_INPUT,
            message: message.into(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct Input {
    /// Kubernetes YAML: a file (multi-document, or a `kind: List`) or a
    /// directory of `*.yaml`/`*.yml` files. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum MatrixFormat {
    Table,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    Text,
    Json,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse()
}

#[derive(Args, Debug)]
pub struct ReachabilityArgs {
    #[command(flatten)]
    pub input: Input,
    /// Destination port.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    pub protocol: Protocol,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = MatrixFormat::Table)]
    pub output: MatrixFormat,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub input: Input,
    /// Source: `<namespace>/<pod>` or an IP address.
    #[arg(long)]
    pub from: String,
    /// Destination: `<namespace>/<pod>` or an IP address.
    #[arg(long)]
    pub to: String,
    /// Destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    pub protocol: Protocol,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ExplainFormat::Text)]
    pub output: ExplainFormat,
}

/// Loads the input; prints warnings; fails (exit 2) on any error, printing all.
pub fn load(input: &Input, stderr: &mut String) -> Result<Inventory, Failure> {
    let (inv, diags) = crate::files::inventory(&input.files);
    report(&diags, stderr);
    let errors = diags.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        return Err(Failure::bad_input(format!(
            "{errors} error{} in the input; nothing was evaluated",
            if errors == 1 { "" } else { "s" }
        )));
    }
    Ok(inv)
}

fn report(diags: &[Diagnostic], stderr: &mut String) {
    for d in diags {
        let _ = writeln!(stderr, "{d}");
    }
}

/// Runs `reachability`, returning what goes to stdout.
pub fn reachability(args: &ReachabilityArgs, stderr: &mut String) -> Result<String, Failure> {
    let inv = load(&args.input, stderr)?;
    let m = verdict::reachability(&inv, args.protocol, args.port);
    Ok(match args.output {
        MatrixFormat::Json => matrix_json(&inv, &m),
        MatrixFormat::Table => matrix_table(&inv, &m),
    })
}

/// The matrix as `-o json` prints it.
pub fn matrix_json(inv: &Inventory, m: &Matrix) -> String {
    let pods: Vec<String> = inv.pods.iter().map(|p| p.key()).collect();
    explain::matrix_json(m.protocol.as_str(), m.port, &pods, &m.allowed)
}

/// The matrix as `-o table` prints it.
pub fn matrix_table(inv: &Inventory, m: &Matrix) -> String {
    let pods: Vec<String> = inv.pods.iter().map(|p| p.key()).collect();
    explain::matrix_table(m.protocol.as_str(), m.port, &pods, &m.allowed)
}

/// Resolves `<namespace>/<pod>` or an address (a pod's address is that pod).
pub fn endpoint(inv: &Inventory, text: &str, flag: &str) -> Result<Endpoint, Failure> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(inv
            .pod_by_ip(ip)
            .map(Endpoint::Pod)
            .unwrap_or(Endpoint::Ip(ip)));
    }
    let Some((ns, name)) = text.split_once('/') else {
        return Err(Failure::bad_input(format!(
            "{flag} {text:?}: expected <namespace>/<pod> or an IP address"
        )));
    };
    inv.pod_id(ns, name).map(Endpoint::Pod).ok_or_else(|| {
        Failure::bad_input(format!("{flag} {text:?}: no pod {ns}/{name} in the input"))
    })
}

/// Runs `explain`, returning what goes to stdout.
pub fn explain(args: &ExplainArgs, stderr: &mut String) -> Result<String, Failure> {
    let inv = load(&args.input, stderr)?;
    let src = endpoint(&inv, &args.from, "--from")?;
    let dst = endpoint(&inv, &args.to, "--to")?;
    // An address given for either end fixes the family of the connection.
    let given = |t: &str| t.parse::<IpAddr>().ok().map(|ip| Family::of(&ip));
    let family = given(&args.from).or(given(&args.to));
    if let (Some(a), Some(b)) = (given(&args.from), given(&args.to))
        && a != b
    {
        return Err(Failure::bad_input(format!(
            "--from {} and --to {} are of different address families",
            args.from, args.to
        )));
    }
    let q = Query {
        src,
        dst,
        protocol: args.protocol,
        port: args.port,
        family,
    };
    let e = explain::explain(&inv, &q);
    Ok(match args.output {
        ExplainFormat::Text => explain::render_text(&e),
        ExplainFormat::Json => {
            let mut s = serde_json::to_string_pretty(&e).unwrap_or_default();
            s.push('\n');
            s
        }
    })
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub input: Input,
    /// The node whose ruleset to print; every node's when absent (JSON only).
    #[arg(long)]
    pub node: Option<String>,
    /// The generation to stamp on the ruleset.
    #[arg(long, default_value_t = 1)]
    pub generation: u64,
}

/// Runs `compile`: the ruleset of a node (or of every node, as a map).
pub fn compile(args: &CompileArgs, stderr: &mut String) -> Result<String, Failure> {
    let inv = load(&args.input, stderr)?;
    let value = match &args.node {
        Some(node) => {
            if !compile::node_names(&inv).contains(node) {
                return Err(Failure::bad_input(format!(
                    "--node {node:?}: no such node in the input (nodes: {})",
                    compile::node_names(&inv).join(", ")
                )));
            }
            serde_json::to_value(compile::compile_node(&inv, node, args.generation))
        }
        None => serde_json::to_value(compile::compile_all(&inv, args.generation)),
    }
    .map_err(|e| Failure {
        status: 1,
        message: e.to_string(),
    })?;
    let mut s = serde_json::to_string_pretty(&value).unwrap_or_default();
    s.push('\n');
    Ok(s)
}

#[derive(Args, Debug)]
pub struct DeltaArgs {
    /// The ruleset the node has (JSON, as `compile` prints it).
    #[arg(long)]
    pub old: PathBuf,
    /// The ruleset it should have.
    #[arg(long)]
    pub new: PathBuf,
}

fn read_ruleset(path: &PathBuf) -> Result<pb::Ruleset, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::bad_input(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Failure::bad_input(format!("{}: {e}", path.display())))
}

/// Runs `delta`: what turns one ruleset of a node into the next.
pub fn delta(args: &DeltaArgs) -> Result<String, Failure> {
    let old = read_ruleset(&args.old)?;
    let new = read_ruleset(&args.new)?;
    if old.node != new.node {
        return Err(Failure::bad_input(format!(
            "the rulesets are for different nodes ({} and {})",
            old.node, new.node
        )));
    }
    let d = diff::diff(&old, &new);
    let mut s = serde_json::to_string_pretty(&d).unwrap_or_default();
    s.push('\n');
    Ok(s)
}
