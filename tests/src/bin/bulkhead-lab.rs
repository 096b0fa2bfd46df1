//! `bulkhead-lab`: the traffic tools of the netns lab, run inside pod network
//! namespaces by `bulkhead_tests::netns`.
//!
//! - `serve --tcp 80,81 --udp 53 --tcp-echo 7000`: answer on every address;
//!   prints `ready` once every socket is bound, then runs until killed.
//! - `probe --timeout-ms 1000 tcp:10.0.0.1:80 udp:[fd00::1]:53 ...`: probe
//!   all targets in parallel, print one JSON object per target and line, in
//!   the order given; exit 0 when every probe passed, 1 otherwise.
//! - `send-udp --bind-src 10.0.9.9 --to 10.0.1.1:5000 --count 5`: send
//!   datagrams from any source address, owned or not; prints `sent N from
//!   ADDR:PORT`.
//! - `hold --to 10.0.1.1:7000`: hold one connection to an echo port; prints
//!   `connected LOCAL`, then `echo SEQ MICROS` for every round trip, until one
//!   fails (`error ...`, exit 1) or it is killed.
//!
//! The lab (`bulkhead_tests::lab`): a multi-node cluster with the real
//! controller and agents, from Kubernetes YAML.
//!
//! - `up -f CLUSTER.yaml [--nodes N] [--name NAME]`, `apply -f FILE`,
//!   `delete -f FILE`, `down`: build, change, remove it;
//! - `probe [--port 80] [--protocol TCP] [-o table|json]` (no targets): every
//!   pod to every pod, printed like `bulkhead reachability`;
//! - `demo`: the guided tour; `bench`: propagation times.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bulkhead_tests::lab;
use bulkhead_tests::traffic::{HoldEvent, Server, Target, hold, probe_all, send_udp};
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
        /// TCP echo ports, comma separated: each connection gets back all it sends.
        #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
        tcp_echo: Vec<u16>,
    },
    /// Probe targets in parallel; print one JSON line per target
    /// `{"target": ..., "ok": ..., "detail": ...}`. Exit status 0 when all
    /// passed, 1 when some failed. Without targets: probe every pod of lab
    /// `--name` to every pod and print the matrix like `bulkhead
    /// reachability` (a refused connection got through: allowed).
    Probe {
        /// How long each probe may take.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: u64,
        /// `tcp:ADDR:PORT` or `udp:ADDR:PORT`; IPv6 as `tcp:[fd00::1]:80`.
        targets: Vec<Target>,
        /// Lab matrix: the port.
        #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Lab matrix: TCP or UDP.
        #[arg(long, default_value = "TCP")]
        protocol: String,
        /// Lab matrix: the output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = lab::cli::MatrixFormat::Table)]
        output: lab::cli::MatrixFormat,
        /// Lab matrix: the lab.
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Bring a lab up from Kubernetes YAML: nodes, pods and their servers,
    /// certificates, the controller and one agent per node; returns once
    /// every agent acked. The lab keeps running.
    Up(lab::cli::UpArgs),
    /// Put objects into the lab's source and wait until every agent acked.
    Apply(lab::cli::ApplyArgs),
    /// Remove objects from the lab and wait until every agent acked.
    Delete(lab::cli::DeleteArgs),
    /// Remove everything a lab made, whatever state it is in.
    Down(lab::cli::DownArgs),
    /// A guided tour: a multi-tenant cluster, its matrix before and after
    /// policies, checked against `bulkhead reachability`; then tear down.
    Demo(lab::cli::DemoArgs),
    /// Measure how fast changes reach every agent and the dataplane.
    Bench(lab::cli::BenchArgs),
    /// Measure what flow observation costs at a rate of new connections
    /// through one node (see `lab::flowbench`); prints markdown.
    BenchFlows {
        #[arg(long, default_value_t = 10_000)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 16_384)]
        flows_max: usize,
        /// Destination ports, from 9000: the number of distinct flow keys.
        #[arg(long, default_value_t = lab::flowbench::DEFAULT_PORTS)]
        ports: u16,
    },
    /// Bench load: UDP datagrams to ADDR ports 9000 to 9000 + PORTS - 1 in
    /// turn, each from a new source port, `rate` a second; prints how many
    /// were sent.
    Flood {
        #[arg(long)]
        to: IpAddr,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = lab::flowbench::DEFAULT_PORTS)]
        ports: u16,
    },
    /// Bench sink: counts datagrams on UDP 9000 to 9000 + PORTS - 1; prints
    /// `ready`, then the count once idle.
    FlowSink {
        #[arg(long, default_value_t = 2)]
        idle_seconds: u64,
        #[arg(long, default_value_t = 60)]
        limit_seconds: u64,
        #[arg(long, default_value_t = lab::flowbench::DEFAULT_PORTS)]
        ports: u16,
    },
    /// Times `bulkhead quarantine` cutting a live TCP session (3 nodes, 50
    /// rounds by default).
    BenchQuarantine(lab::cli::BenchQuarantineArgs),
    /// Send UDP datagrams from a source address that need not be ours
    /// (IP_FREEBIND and IP_TRANSPARENT: needs root); prints `sent N from
    /// ADDR:PORT`.
    SendUdp {
        /// The source address to send from.
        #[arg(long)]
        bind_src: IpAddr,
        /// `ADDR:PORT`; IPv6 as `[fd00::1]:53`.
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Hold one TCP connection to an echo port, checking a round trip every
    /// interval; prints `connected LOCAL`, then `echo SEQ MICROS` per round
    /// trip; on the first failure prints `error ...` and exits 1.
    Hold {
        /// `ADDR:PORT` of an echo port.
        #[arg(long)]
        to: SocketAddr,
        /// Pause between round trips.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// How long one round trip (and the connect) may take.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: u64,
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
        Cmd::Serve { tcp, udp, tcp_echo } => {
            let server = Server::bind(&tcp, &udp)?.with_tcp_echo(&tcp_echo)?;
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
            port,
            protocol,
            output,
            name,
        } if targets.is_empty() => lab::cli::probe(&name, port, &protocol, output, timeout_ms),
        Cmd::Up(a) => lab::cli::up(a),
        Cmd::Apply(a) => lab::cli::apply(a),
        Cmd::Delete(a) => lab::cli::delete(a),
        Cmd::Down(a) => lab::cli::down(a),
        Cmd::Demo(a) => lab::cli::demo(a),
        Cmd::Bench(a) => lab::cli::bench(a),
        Cmd::BenchFlows {
            rate,
            seconds,
            flows_max,
            ports,
        } => {
            let exe = std::env::current_exe().context("finding bulkhead-lab")?;
            let md = lab::flowbench::run(
                exe,
                &lab::flowbench::FlowBenchOptions {
                    rate,
                    seconds,
                    flows_max,
                    ports,
                },
            )?;
            print!("{md}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Flood {
            to,
            rate,
            seconds,
            ports,
        } => {
            println!("{}", lab::flowbench::flood(to, rate, seconds, ports)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::FlowSink {
            idle_seconds,
            limit_seconds,
            ports,
        } => {
            let (received, overflow) = lab::flowbench::sink(idle_seconds, limit_seconds, ports)?;
            println!("{received} {overflow}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchQuarantine(a) => lab::cli::bench_quarantine(a),
        Cmd::Probe {
            timeout_ms,
            targets,
            ..
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
        Cmd::SendUdp {
            bind_src,
            to,
            count,
        } => {
            let local = send_udp(bind_src, to, count)?;
            println!("sent {count} from {local}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Hold {
            to,
            interval_ms,
            timeout_ms,
        } => {
            let mut out = std::io::stdout().lock();
            let mut write_failed = None;
            let held = hold(
                to,
                Duration::from_millis(interval_ms),
                Duration::from_millis(timeout_ms),
                |event| {
                    let line = match event {
                        HoldEvent::Connected { local } => format!("connected {local}"),
                        HoldEvent::Echo { seq, micros } => format!("echo {seq} {micros}"),
                    };
                    // Whoever reads may be gone: then there is no point going on.
                    match writeln!(out, "{line}").and_then(|()| out.flush()) {
                        Ok(()) => true,
                        Err(e) => {
                            write_failed = Some(e);
                            false
                        }
                    }
                },
            );
            if let Some(e) = write_failed {
                return Err(anyhow::Error::new(e).context("writing to stdout"));
            }
            match held {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    writeln!(out, "error {e:#}")
                        .and_then(|()| out.flush())
                        .context("writing to stdout")?;
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
