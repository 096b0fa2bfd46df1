//! `bulkhead`: the controller and its CLI.

use std::io::Write as _;
use std::process::ExitCode;

use bulkhead::cli::{self, CompileArgs, DeltaArgs, ExplainArgs, Failure, ReachabilityArgs};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "bulkhead",
    version,
    about = "Network microsegmentation for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The truth table from every pod to every pod for one port.
    Reachability(ReachabilityArgs),
    /// Whether one connection is allowed, and which policies and rules decide it.
    Explain(ExplainArgs),
    /// The nftables ruleset of a node (what its agent applies), as JSON.
    Compile(CompileArgs),
    /// The delta between two rulesets of one node, as JSON.
    Delta(DeltaArgs),
    /// The Tenants: their namespaces, exceptions and conflicts.
    Tenants(bulkhead::tenants::TenantsArgs),
    /// Runs the controller: watches the cluster, serves agents their rulesets.
    Controller(Box<bulkhead::run::ControllerArgs>),
    /// Creates the CA and the certificates of the sync channel (mTLS).
    Certs(bulkhead::certs::CertsArgs),
    /// NetworkPolicies that allow exactly the flows learned in `learn` mode.
    Recommend(bulkhead::recommend::RecommendArgs),
    /// Prints Bulkhead's CustomResourceDefinitions (what manifests/crds.yaml holds).
    Crds,
    /// Cuts a pod off the network (except forensics sources); `--list` shows
    /// the active quarantines and which nodes enforce them.
    Quarantine(bulkhead::quarantine::QuarantineArgs),
    /// Ends a pod's quarantine.
    Release(bulkhead::quarantine::ReleaseArgs),
}

fn run_controller(args: bulkhead::run::ControllerArgs) -> Result<String, Failure> {
    bulkhead::run::init_tracing(args.log_format);
    let failed = |message: String| Failure { status: 1, message };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    rt.block_on(bulkhead::run::run(args))
        .map(|()| String::new())
        .map_err(|e| failed(format!("{e:#}")))
}

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let mut stderr = String::new();
    let result: Result<String, Failure> = match command {
        Command::Reachability(args) => cli::reachability(&args, &mut stderr),
        Command::Explain(args) => cli::explain(&args, &mut stderr),
        Command::Compile(args) => cli::compile(&args, &mut stderr),
        Command::Delta(args) => cli::delta(&args),
        Command::Tenants(args) => bulkhead::tenants::tenants(&args, &mut stderr),
        Command::Controller(args) => run_controller(*args),
        Command::Recommend(args) => bulkhead::recommend::run(&args, &mut stderr),
        Command::Crds => Ok(bulkhead::crd::crds_yaml()),
        Command::Quarantine(args) => bulkhead::quarantine::quarantine(&args),
        Command::Release(args) => bulkhead::quarantine::release(&args),
        Command::Certs(args) => bulkhead::certs::run(args).map_err(|e| Failure {
            status: 1,
            message: format!("{e:#}"),
        }),
    };
    let _ = std::io::stderr().write_all(stderr.as_bytes());
    match result {
        Ok(mut out) => {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(Failure { status, message }) => {
            eprintln!("bulkhead: {message}");
            ExitCode::from(status)
        }
    }
}
