//! `bulkhead-lab demo`: the README's first command. Brings up a small
//! multi-tenant cluster, shows the open matrix (probed with real
//! connections), applies a default-deny plus allow policies, shows the new
//! probed matrix next to `bulkhead reachability` on the same files, says
//! whether they agree, and tears everything down, also on error.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::objects::{self, get_path};
use super::{Bins, Input, Lab, LabOptions, Matrix, down_named};

/// How long a probe that must fail waits.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

fn say(text: &str) {
    println!("{text}");
}

fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|l| format!("{by}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Two texts side by side.
fn side_by_side(left: &str, right: &str, gap: usize) -> String {
    let l: Vec<&str> = left.lines().collect();
    let r: Vec<&str> = right.lines().collect();
    let width = l.iter().map(|x| x.chars().count()).max().unwrap_or(0);
    (0..l.len().max(r.len()))
        .map(|i| {
            let a = l.get(i).copied().unwrap_or("");
            let b = r.get(i).copied().unwrap_or("");
            let pad = width - a.chars().count() + gap;
            format!("{a}{:pad$}{b}", "")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The grid of a matrix without its first (header) line.
fn grid(m: &Matrix) -> String {
    m.to_table().lines().skip(1).collect::<Vec<_>>().join("\n")
}

/// `path` relative to the working directory when it is under it.
fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// Runs the demo on `examples/cluster.yaml` and `examples/policies.yaml`
/// (the narrative fits `examples/lab`, the default).
pub fn run(name: &str, examples: &Path, bins: Bins) -> anyhow::Result<ExitCode> {
    super::ensure_root()?;
    let ours = examples == crate::workspace_dir().join("examples").join("lab");
    let cluster_path = examples.join("cluster.yaml");
    let policies_path = examples.join("policies.yaml");
    let me = shown(&bins.lab);
    let cluster = Input::read_paths(std::slice::from_ref(&cluster_path))?;
    let policies = Input::read_paths(std::slice::from_ref(&policies_path))?;

    say("Bulkhead lab demo");
    say("=================");
    say("This builds a small cluster on this machine out of Linux network namespaces");
    say("(no Kubernetes needed), runs the real Bulkhead controller and one agent per");
    say("node, and shows with real TCP connections what the network allows before and");
    say("after NetworkPolicies are applied. Everything is removed at the end.");
    say("");

    // What an interrupted demo left behind goes first.
    let leftover = down_named(name, None).context("removing an earlier demo")?;
    if !leftover.namespaces.is_empty() || leftover.removed_dir.is_some() {
        say(&format!(
            "(removed what an earlier, interrupted demo left behind: {leftover})\n"
        ));
    }

    say(&format!(
        "[1/5] Building the cluster from {}",
        shown(&cluster_path)
    ));
    let started = Instant::now();
    let opts = LabOptions::new(name, bins);
    // Dropping `lab` (also on error or panic) tears everything down.
    let mut lab = Lab::up(&opts, &cluster)?;
    let status = lab.status()?;
    let nodes = lab.node_names();
    let pods = lab.pods();
    say(&format!(
        "      {} nodes ({}): each one a network namespace, joined by a bridge.",
        nodes.len(),
        nodes.join(", ")
    ));
    say(&format!(
        "      {} pods, each in a namespace of its own, wired to its node like a CNI plugin would:",
        pods.len()
    ));
    for p in &pods {
        let ips: Vec<String> = p.ips.iter().map(ToString::to_string).collect();
        say(&format!(
            "        {:<24} on {:<8} address {}",
            p.key,
            p.node,
            ips.join(", ")
        ));
    }
    say(&format!(
        "      The controller reads the cluster from {} and sends every node its own",
        lab.source_dir().display()
    ));
    say("      nftables ruleset over gRPC with mutual TLS; the agent on the node applies it.");
    say(&format!(
        "      Ready in {:.1} s: every agent has applied generation {}.",
        started.elapsed().as_secs_f64(),
        status.generation
    ));
    say("");

    say("[2/5] Who can reach whom, before any policy");
    say("      Every pod opens a TCP connection to port 80 of every pod, itself included.");
    say("      Rows are where the connection starts, columns where it goes;");
    say("      '.' means it connected, 'X' that it was blocked.");
    let open = lab.probe(80, "TCP", PROBE_TIMEOUT)?;
    say(&indent(&grid(&open), "        "));
    let total = open.pods.len() * open.pods.len();
    say(&format!(
        "      {} of {total} connections succeed: without NetworkPolicies Kubernetes allows all traffic,",
        open.count_allowed()
    ));
    say("      so one compromised pod could reach every database of every tenant.");
    say("");

    say(&format!("[3/5] Applying {}", shown(&policies_path)));
    for input in &policies {
        for item in objects::read(&input.name, &input.text)?.items {
            if let Some(d) = get_path(&item.raw, &["metadata", "annotations", "description"])
                .and_then(|v| v.as_str())
            {
                say(&format!("      - {d}"));
            } else {
                say(&format!("      - {}", objects::describe(&item.id())));
            }
        }
    }
    let synced = lab.apply(&policies)?;
    say(&format!(
        "      The lab wrote {} files into the controller's directory; {} ms later every",
        synced.written.files.len(),
        synced.elapsed.as_millis()
    ));
    say(&format!(
        "      agent had applied and acknowledged generation {}.",
        synced.status.generation
    ));
    say("");

    say("[4/5] Who can reach whom now");
    let after = lab.probe(80, "TCP", PROBE_TIMEOUT)?;
    let engine = lab.reachability(80, "TCP")?;
    let left = format!("probed: real connections\n\n{}", grid(&after));
    let right = format!(
        "computed: bulkhead reachability\n(the policy engine, no packets)\n{}",
        grid(&engine)
    );
    say(&indent(&side_by_side(&left, &right, 6), "      "));
    say("");
    say(&format!(
        "      {} of {total} connections succeed now.",
        after.count_allowed()
    ));
    if ours {
        say("      Each tenant's api and db only accept their own tenant's callers, the web");
        say("      front ends stay public, and Prometheus can still scrape everything.");
    }
    say("      The right-hand matrix is `bulkhead reachability -f <the controller's directory>`:");
    say("      the same policy engine the controller compiles from, on the same files;");
    say("      `bulkhead explain` says why for any pair.");
    let diffs = after.differences(&engine);
    let agree = diffs.is_empty();
    if agree {
        say(&format!(
            "      The dataplane and the policy engine agree on all {total} pairs."
        ));
    } else {
        say(&format!(
            "      They DISAGREE on {} pairs (this is a bug; please report it):",
            diffs.len()
        ));
        for d in &diffs {
            say(&format!("        {d}"));
        }
    }
    say("");

    say("[5/5] Tearing down");
    let namespaces = lab.pods().len() + nodes.len() + 1;
    lab.down()?;
    say(&format!(
        "      Stopped the controller and the agents, deleted the {namespaces} network namespaces."
    ));
    say("");
    say("To explore by hand (the lab stays up between commands):");
    say(&format!("  {me} up -f {}", shown(&cluster_path)));
    say(&format!("  {me} probe"));
    say(&format!("  {me} apply -f {}", shown(&policies_path)));
    say(&format!(
        "  {me} probe -o json      # the schema of `bulkhead reachability -o json`"
    ));
    say(&format!("  {me} down"));
    Ok(if agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
