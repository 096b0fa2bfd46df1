//! The lab's `bulkhead-lab` subcommands: `up`, `apply`, `delete`, `probe`
//! (the matrix form), `down`, `demo`, `bench`. The binary only dispatches.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::{Bins, Input, Lab, LabOptions, down_named};

/// `-o` of `bulkhead-lab probe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MatrixFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Kubernetes YAML (multi-document, `kind: List`, typed lists): files,
    /// or directories of `*.yaml`/`*.yml`. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// How many nodes (`node-1`...) when the files name none (no Node
    /// objects, no pod with `spec.nodeName`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=253))]
    pub nodes: u16,
    /// The lab's name; its state is in `$BULKHEAD_LAB_DIR`, else
    /// `/run/bulkhead-lab/<name>`.
    #[arg(long, default_value = "lab")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Kubernetes YAML: files or directories. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// Put the files into the controller's source directory as they are,
    /// without checking them (to see what the controller does with bad input).
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kubernetes YAML naming what to delete: files or directories.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[arg(long, default_value = "lab")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[arg(long, default_value = "lab")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The demo lab's name.
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// The directory with the demo's `cluster.yaml` and `policies.yaml`.
    #[arg(long)]
    pub examples: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "bench")]
    pub name: String,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    #[arg(long, default_value_t = 300)]
    pub pods: usize,
    /// Successive changes, alternately a label change and a policy change.
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// The benchmarks document to add the results to.
    #[arg(long)]
    pub doc: Option<PathBuf>,
    /// Print the results only.
    #[arg(long)]
    pub no_doc: bool,
}

fn inputs(files: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let inputs = Input::read_paths(files)?;
    anyhow::ensure!(!inputs.is_empty(), "no YAML files in {files:?}");
    Ok(inputs)
}

/// `bulkhead-lab up`.
pub fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    let mut opts = LabOptions::new(&a.name, Bins::beside_current_exe()?);
    opts.nodes = usize::from(a.nodes);
    let started = Instant::now();
    let lab = Lab::up(&opts, &inputs(&a.files)?)?;
    let status = lab.status()?;
    println!(
        "lab {} is up in {:.1}s: {} nodes, {} pods; every agent acked generation {}",
        lab.name(),
        started.elapsed().as_secs_f64(),
        lab.node_names().len(),
        lab.pods().len(),
        status.generation
    );
    println!(
        "  controller: 172.31.0.254:{} (gRPC, mTLS) in namespace {}, log {}",
        super::GRPC_PORT,
        lab.fabric_netns()?,
        lab.controller_log().display()
    );
    for n in lab.node_names() {
        println!(
            "  node {n}: namespace {}, agent log {}",
            lab.node_netns(&n)?,
            lab.agent_log(&n).display()
        );
    }
    for p in lab.pods() {
        let ips: Vec<String> = p.ips.iter().map(ToString::to_string).collect();
        let mut ports: Vec<String> = p.tcp_ports.iter().map(|x| format!("{x}/TCP")).collect();
        ports.extend(p.udp_ports.iter().map(|x| format!("{x}/UDP")));
        println!(
            "  pod {}: {} on {}, serving {}, namespace {}",
            p.key,
            ips.join(","),
            p.node,
            ports.join(","),
            p.netns
        );
    }
    println!(
        "  source directory (what the controller reads): {}",
        lab.source_dir().display()
    );
    let name = lab.name().to_owned();
    lab.persist()?;
    let flag = if name == "lab" {
        String::new()
    } else {
        format!(" --name {name}")
    };
    println!(
        "next: bulkhead-lab probe{flag}, bulkhead-lab apply{flag} -f FILE, bulkhead-lab down{flag}"
    );
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead-lab apply`.
pub fn apply(a: ApplyArgs) -> anyhow::Result<ExitCode> {
    let mut lab = Lab::open(&a.name, None)?;
    let inputs = inputs(&a.files)?;
    let synced = if a.raw {
        let mut last = None;
        for i in &inputs {
            let name = std::path::Path::new(&i.name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .context("a file without a name")?;
            last = Some(lab.write_raw(&name, &i.text)?);
        }
        lab.wait_written(last.context("nothing to write")?)?
    } else {
        lab.apply(&inputs)?
    };
    report("wrote", &synced);
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead-lab delete`.
pub fn delete(a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let mut lab = Lab::open(&a.name, None)?;
    let synced = lab.delete(&inputs(&a.files)?)?;
    report("removed", &synced);
    Ok(ExitCode::SUCCESS)
}

fn report(verb: &str, s: &super::Synced) {
    for w in &s.written.warnings {
        eprintln!("bulkhead-lab: {w}");
    }
    if s.written.files.is_empty() {
        println!(
            "nothing changed; every agent has generation {}",
            s.status.generation
        );
        return;
    }
    let n = s.written.files.len();
    println!(
        "{verb} {} ({n} file{}); every agent acked generation {} within {} ms",
        s.written.files.join(", "),
        if n == 1 { "" } else { "s" },
        s.status.generation,
        s.elapsed.as_millis()
    );
    for d in &s.status.diagnostics {
        println!("  the controller reports: {d}");
    }
}

/// `bulkhead-lab probe` without targets: the matrix of lab `name`.
pub fn probe(
    name: &str,
    port: u16,
    protocol: &str,
    output: MatrixFormat,
    timeout_ms: u64,
) -> anyhow::Result<ExitCode> {
    let lab = Lab::open(name, None)?;
    let m = lab.probe(port, protocol, Duration::from_millis(timeout_ms))?;
    print!(
        "{}",
        match output {
            MatrixFormat::Json => m.to_json(),
            MatrixFormat::Table => m.to_table(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead-lab down`.
pub fn down(a: DownArgs) -> anyhow::Result<ExitCode> {
    let report = down_named(&a.name, None)?;
    println!("lab {}: {report}", a.name);
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead-lab demo`.
pub fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let examples = a
        .examples
        .unwrap_or_else(|| crate::workspace_dir().join("examples").join("lab"));
    super::demo::run(&a.name, &examples, Bins::beside_current_exe()?)
}

#[derive(Debug, Args)]
pub struct BenchQuarantineArgs {
    #[arg(long, default_value = "benchq")]
    pub name: String,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Quarantines (and releases) to time.
    #[arg(long, default_value_t = 50)]
    pub rounds: usize,
}

/// `bulkhead-lab bench-quarantine`.
pub fn bench_quarantine(a: BenchQuarantineArgs) -> anyhow::Result<ExitCode> {
    super::bench_quarantine::run(&super::bench_quarantine::QuarantineBenchOptions {
        name: a.name,
        nodes: a.nodes,
        rounds: a.rounds,
        bins: Bins::beside_current_exe()?,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead-lab bench`.
pub fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let doc = if a.no_doc {
        None
    } else {
        Some(
            a.doc
                .unwrap_or_else(|| crate::workspace_dir().join("docs").join("BENCHMARKS.md")),
        )
    };
    super::bench::run(&super::bench::BenchOptions {
        name: a.name,
        nodes: a.nodes,
        pods: a.pods,
        changes: a.changes,
        doc,
        bins: Bins::beside_current_exe()?,
    })?;
    Ok(ExitCode::SUCCESS)
}
