//! `bulkhead recommend`: NetworkPolicies that allow exactly the learned
//! edges, from the controller's state directory or its HTTP `/flows`.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_core::flows::{self, FlowGraph, GraphDoc};
use bulkhead_core::recommend;
use clap::{Args, ValueEnum};

use crate::cli::{EXIT_BAD_INPUT, Failure};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecommendFormat {
    Yaml,
    Json,
}

#[derive(Args, Debug)]
pub struct RecommendArgs {
    /// Only the workloads of this namespace (default: every namespace).
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = RecommendFormat::Yaml)]
    pub output: RecommendFormat,
    /// The controller's state directory (its `flows.json`).
    #[arg(
        long,
        env = "BULKHEAD_STATE_DIR",
        conflicts_with = "controller_http",
        required_unless_present = "controller_http"
    )]
    pub state_dir: Option<PathBuf>,
    /// The controller's HTTP address, e.g. `http://127.0.0.1:9443` (its `/flows`).
    #[arg(long)]
    pub controller_http: Option<String>,
    /// The cluster (`dir:PATH`), to name ports the pods name that the flows
    /// did not name.
    #[arg(long)]
    pub source: Option<String>,
}

fn bad(message: impl Into<String>) -> Failure {
    Failure {
        status: EXIT_BAD_INPUT,
        message: message.into(),
    }
}

/// GET `url` + `/flows` over plain HTTP/1.1.
fn fetch(url: &str) -> Result<String, Failure> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        bad(format!(
            "--controller-http {url:?}: expected http://HOST:PORT"
        ))
    })?;
    let host = rest.trim_end_matches('/');
    let fail = |e: std::io::Error| Failure {
        status: 1,
        message: format!("cannot read {url}/flows: {e}"),
    };
    let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(host)
        .map_err(|e| bad(format!("--controller-http {url:?}: {e}")))?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| bad(format!("--controller-http {url:?}: no address")))?;
    let mut s = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(5)).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    write!(
        s,
        "GET /flows HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(fail)?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or_else(|| Failure {
        status: 1,
        message: format!("{url}/flows: not an HTTP response"),
    })?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(Failure {
            status: 1,
            message: format!("{url}/flows answered {status}"),
        });
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(Failure {
            status: 1,
            message: format!("{url}/flows: chunked responses are not supported"),
        });
    }
    Ok(body.to_owned())
}

/// Runs `recommend`, returning what goes to stdout.
pub fn run(args: &RecommendArgs, stderr: &mut String) -> Result<String, Failure> {
    let doc: GraphDoc = match (&args.state_dir, &args.controller_http) {
        (Some(dir), _) => {
            let path = dir.join(crate::flows::STATE_FILE);
            crate::flows::read_doc(&path)
                .map_err(|e| bad(format!("{e:#}")))?
                .ok_or_else(|| {
                    bad(format!(
                        "{}: no flow graph yet (has the controller run with --state-dir {}?)",
                        path.display(),
                        dir.display()
                    ))
                })?
        }
        (None, Some(url)) => {
            let body = fetch(url)?;
            serde_json::from_str(&body)
                .map_err(|e| bad(format!("{url}/flows: not a flow graph: {e}")))?
        }
        (None, None) => return Err(bad("give --state-dir or --controller-http")),
    };
    let mut graph = FlowGraph::from_doc(doc).map_err(|e| bad(format!("flow graph: {e}")))?;
    if let Some(source) = &args.source {
        let dir = source
            .strip_prefix("dir:")
            .ok_or_else(|| bad(format!("--source {source:?}: expected dir:PATH")))?;
        let inv = crate::cli::load(
            &crate::cli::Input {
                files: vec![PathBuf::from(dir)],
            },
            stderr,
        )?;
        flows::name_ports(&mut graph, &inv);
    }
    let rec = recommend::recommend(&graph, args.namespace.as_deref());
    for w in &rec.warnings {
        stderr.push_str(&format!("warning: {w}\n"));
    }
    let out = match args.output {
        RecommendFormat::Yaml => recommend::to_yaml(&rec.policies),
        RecommendFormat::Json => recommend::to_json(&rec.policies),
    };
    out.map_err(|message| Failure { status: 1, message })
}
