//! The offline subcommands: `reachability` and `explain`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use bulkhead_core::explain;
use bulkhead_core::verdict::{self, Endpoint, Matrix, Query};
use bulkhead_core::{Diagnostic, Inventory, Protocol};
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
    #[arg(long, default_value_t = 80)]
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
    #[arg(long)]
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

/// `{"port": 80, "protocol": "TCP", "allowed": {"ns/pod": {"ns/pod": true}}}`.
pub fn matrix_json(inv: &Inventory, m: &Matrix) -> String {
    let allowed: BTreeMap<String, BTreeMap<String, bool>> = m
        .allowed
        .iter()
        .enumerate()
        .map(|(s, row)| {
            let row = row
                .iter()
                .enumerate()
                .map(|(d, ok)| (inv.pods[d].key(), *ok))
                .collect();
            (inv.pods[s].key(), row)
        })
        .collect();
    let v = serde_json::json!({
        "port": m.port,
        "protocol": m.protocol.as_str(),
        "allowed": allowed,
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// A grid: one row per source, one numbered column per destination.
pub fn matrix_table(inv: &Inventory, m: &Matrix) -> String {
    let mut out = String::new();
    let n = inv.pods.len();
    let _ = writeln!(
        out,
        "reachability {}/{}: rows are sources, columns destinations; '.' allowed, 'X' denied",
        m.protocol, m.port
    );
    if n == 0 {
        let _ = writeln!(out, "(no pods)");
        return out;
    }
    let idx_w = (n - 1).to_string().len();
    let name_w = inv.pods.iter().map(|p| p.key().len()).max().unwrap_or(0);
    let prefix_w = idx_w + 1 + name_w + 1;
    // Column numbers, written vertically when they have several digits.
    for digit in 0..idx_w {
        let _ = write!(out, "{:prefix_w$}", "");
        for d in 0..n {
            let s = format!("{d:>idx_w$}");
            let _ = write!(out, " {}", &s[digit..=digit]);
        }
        out.push('\n');
    }
    for (s, row) in m.allowed.iter().enumerate() {
        let _ = write!(out, "{s:>idx_w$} {:<name_w$} ", inv.pods[s].key());
        for ok in row {
            let _ = write!(out, " {}", if *ok { '.' } else { 'X' });
        }
        out.push('\n');
    }
    out
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
    let q = Query {
        src: endpoint(&inv, &args.from, "--from")?,
        dst: endpoint(&inv, &args.to, "--to")?,
        protocol: args.protocol,
        port: args.port,
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
