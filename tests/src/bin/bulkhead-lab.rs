//! `bulkhead-lab`: the traffic tools of the netns lab, run inside pod network
//! namespaces by `bulkhead_tests::netns`.
//!
//! - `serve --tcp 80,81 --udp 53`: answer on every address; prints `ready`
//!   once every socket is bound, then runs until killed.
//! - `probe --timeout-ms 1000 tcp:10.0.0.1:80 udp:[fd00::1]:53 ...`: probe
//!   all targets in parallel, print one JSON object per target and line, in
//!   the order given; exit 0 when every probe passed, 1 otherwise.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bulkhead_tests::traffic::{Server, Target, probe_all};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bulkhead-lab", about = "Traffic tools of Bulkhead's netns lab")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Listen on TCP and UDP ports on every address (IPv4 and IPv6). TCP:
    /// answer each connection with one line `<port>`, then close. UDP: echo
    /// every datagram. Prints `ready` once bound; runs until killed.
    Serve {
        /// TCP ports, comma separated.
        #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
        tcp: Vec<u16>,
        /// UDP ports, comma separated.
        #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
        udp: Vec<u16>,
    },
    /// Probe targets in parallel; print one JSON line per target
    /// `{"target": ..., "ok": ..., "detail": ...}`. Exit status 0 when all
    /// passed, 1 when some failed.
    Probe {
        /// How long each probe may take.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: u64,
        /// `tcp:ADDR:PORT` or `udp:ADDR:PORT`; IPv6 as `tcp:[fd00::1]:80`.
        #[arg(required = true)]
        targets: Vec<Target>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bulkhead-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Serve { tcp, udp } => {
            let server = Server::bind(&tcp, &udp)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready")
                .and_then(|()| out.flush())
                .context("writing to stdout")?;
            drop(out);
            server.run()?;
            Ok(ExitCode::FAILURE)
        }
        Cmd::Probe {
            timeout_ms,
            targets,
        } => {
            let results = probe_all(&targets, Duration::from_millis(timeout_ms));
            let mut out = std::io::stdout().lock();
            for r in &results {
                writeln!(out, "{}", r.to_json()).context("writing to stdout")?;
            }
            out.flush().context("writing to stdout")?;
            Ok(if results.iter().all(|r| r.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
