//! `cargo bench -p bulkhead-agent --bench apply` (as root): how long the agent
//! takes to put a ruleset into the kernel, in a fresh network namespace
//! `bhb<pid>` (deleted at the end, also after a panic).
//!
//! - (a) a full ruleset of one node with ~10,000 set elements and ~1,000
//!   chains (a synthetic cluster of many policies on one node), median of 10
//!   replaces of the table; target < 300 ms;
//! - (b) a one-pod delta (one pod's labels change; and one pod added), median
//!   of 50 applications alternating the forward and the backward delta, so
//!   that each applies on its own base; target < 5 ms. Through nft and over
//!   netlink (`dataplane::nfnl`, the agent's own nf_tables batch), interleaved
//!   in one run;
//! - (c) the pod links change: the agent-managed sets through nft (flush and
//!   refill) and over netlink (the difference only).
//!
//! Render time (ruleset → JSON text) is measured apart from the whole apply
//! (`Nft::apply_full` / `apply_delta`: render + `nft -j -f -` + the kernel).
//! nft runs on a thread that entered the namespace with `setns`, so it
//! inherits the namespace without `ip netns exec`.
//!
//! Prints markdown table rows for docs/BENCHMARKS.md.

use std::fs::File;
use std::net::IpAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use bulkhead_agent::dataplane::nft::{Nft, Path};
use bulkhead_agent::dataplane::{Dataplane, render};
use bulkhead_core::compile::{anti_spoof_elements, compile_node, diff::diff};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::load_str;
use bulkhead_core::model::{Object, Pod};
use bulkhead_core::synth::{self, Shape};
use bulkhead_proto::v1 as pb;
use nix::sched::{CloneFlags, setns};

const NODE: &str = "node-0";
const FULL_RUNS: usize = 10;
const DELTA_RUNS: usize = 50;

/// A network namespace of our own, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = format!("bhb{}", std::process::id());
        // Left behind by an earlier process that had our pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("running ip (iproute2)");
        assert!(
            out.status.success(),
            "ip netns add {name} (are we root?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    /// Runs `f` on a new thread inside the namespace, and waits for it.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("opening the netns");
        let worker = thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the bench namespace");
            drop(file);
            f()
        });
        match worker.join() {
            Ok(v) => v,
            // The namespace is deleted when `self` drops during unwinding.
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("ip netns del {}: {e}", self.name),
        }
    }
}

fn path(netlink: bool) -> Path {
    if netlink { Path::Netlink } else { Path::Nft }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn met(d: Duration, target: Duration) -> &'static str {
    if d < target { "met" } else { "NOT met" }
}

fn inventory(objects: &[Object]) -> Inventory {
    Inventory::new(objects.iter().cloned()).0
}

/// Set elements, map entries, chains and rules of a ruleset.
fn counts(rs: &pb::Ruleset) -> (usize, usize, usize, usize, usize) {
    (
        rs.sets.len(),
        rs.sets.iter().map(|s| s.elements.len()).sum(),
        rs.maps.iter().map(|m| m.entries.len()).sum(),
        rs.chains.len(),
        rs.chains.iter().map(|c| c.rules.len()).sum(),
    )
}

fn describe(d: &pb::RulesetDelta) -> String {
    let elems: usize = d
        .set_changes
        .iter()
        .map(|c| c.add.len() + c.remove.len())
        .sum();
    let entries: usize = d
        .map_changes
        .iter()
        .map(|c| c.add.len() + c.remove.len())
        .sum();
    format!(
        "{} set element adds/removes in {} sets, {} new sets, {} deleted sets, {} map entry adds/removes, {} new chains, {} replaced chains, {} deleted chains",
        elems,
        d.set_changes.len(),
        d.add_sets.len(),
        d.delete_sets.len(),
        entries,
        d.add_chains.len(),
        d.replace_chains.len(),
        d.delete_chains.len()
    )
}

/// One `(forward, backward)` pair of deltas, named.
struct DeltaCase {
    what: &'static str,
    forward: pb::RulesetDelta,
    backward: pb::RulesetDelta,
}

/// One delta case's medians.
struct DeltaFigures {
    what: String,
    render: Duration,
    /// Through nft, without / with the (unchanged) agent sets.
    nft: Duration,
    nft_agent: Duration,
    /// Over netlink, without / with the (unchanged) agent sets.
    netlink: Duration,
    netlink_agent: Duration,
    /// Of `netlink`: sendmsg to the last ack.
    netlink_kernel: Duration,
}

struct Figures {
    spawn: Duration,
    empty: Duration,
    empty_netlink: Duration,
    empty_netlink_kernel: Duration,
    /// One veth replaced: `set_agent_sets` through nft (flush + refill) and
    /// over netlink (the difference only).
    links_nft: Duration,
    links_netlink: Duration,
    links_netlink_kernel: Duration,
    /// The agent sets refilled over netlink by an agent that knows nothing
    /// of them (after a restart): flush + all elements.
    refill_netlink: Duration,
    full_render: Duration,
    full_apply: Duration,
    full_first: Duration,
    kernel: String,
    deltas: Vec<DeltaFigures>,
}

fn main() {
    // Many policies on one node: ~10,000 set elements and ~1,000 chains.
    let shape = Shape {
        namespaces: 240,
        pods: 4_000,
        policies: 4_800,
        nodes: 1,
        seed: 7,
    };
    let yaml = synth::cluster_yaml(&shape);
    let loaded = load_str("synthetic.yaml", &yaml);
    let objects: Vec<Object> = loaded.objects.iter().map(|l| l.object.clone()).collect();
    let inv = inventory(&objects);
    let rs = compile_node(&inv, NODE, 1);
    let (sets, elements, entries, chains, rules) = counts(&rs);
    println!(
        "cluster: {} pods, {} namespaces, {} policies ({} generated), all on {NODE}",
        inv.pods.len(),
        inv.namespaces.len(),
        inv.policies.len(),
        shape.policies
    );
    println!(
        "ruleset of {NODE}: {sets} sets with {elements} elements, 4 verdict maps with {entries} entries, {chains} chains with {rules} rules"
    );

    // The agent-managed anti-spoofing sets: one veth per local pod.
    let links: Vec<(String, Vec<IpAddr>)> = inv
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("bhv{i}"), p.ips.clone()))
        .collect();
    let agent: Vec<(String, Vec<pb::Element>)> = anti_spoof_elements(&links).to_vec();
    let agent_elements: usize = agent.iter().map(|(_, e)| e.len()).sum();
    println!("agent-managed sets: {agent_elements} elements");

    // (b) One pod's labels change: an app-1 pod (tier api) becomes app-2
    // (tier db), picked so that the policies selecting it change (its
    // verdict-map entries move to other chains).
    let relabel = |p: &Pod| {
        let mut p = p.clone();
        p.labels.insert("app".into(), "app-2".into());
        p.labels.insert("tier".into(), "db".into());
        p
    };
    let selection_changes = |p: &Pod| {
        let q = relabel(p);
        inv.namespace_policies(&p.namespace).iter().any(|&id| {
            let sel = &inv.policies[id].pod_selector;
            sel.matches(&p.labels) != sel.matches(&q.labels)
        })
    };
    let pod_index = objects
        .iter()
        .position(|o| {
            matches!(o, Object::Pod(p)
                if p.labels.get("app").map(String::as_str) == Some("app-1") && selection_changes(p))
        })
        .expect("an app-1 pod whose selection changes with its labels");
    let mut relabelled = objects.clone();
    if let Object::Pod(p) = &mut relabelled[pod_index] {
        *p = relabel(p);
    }
    // And one pod added: a copy of that pod under a new name and address.
    let mut added = objects.clone();
    if let Object::Pod(p) = &objects[pod_index] {
        let mut p = p.clone();
        p.name = format!("{}-new", p.name);
        p.ips = vec!["10.127.255.254".parse().expect("an address")];
        added.push(Object::Pod(p));
    }
    let mut cases = Vec::new();
    for (what, other) in [
        ("one pod's labels change", &relabelled),
        ("one pod added / removed", &added),
    ] {
        let rs_b = compile_node(&inventory(other), NODE, 2);
        cases.push(DeltaCase {
            what,
            forward: diff(&rs, &rs_b),
            backward: diff(&rs_b, &rs),
        });
    }
    for c in &cases {
        println!("delta, {}: {}", c.what, describe(&c.forward));
    }
    // For looking at nft by hand: the batches as nft reads them.
    if let Some(dir) = std::env::var_os("BULKHEAD_BENCH_DUMP") {
        let dir = std::path::PathBuf::from(dir);
        let write = |name: &str, b: render::Batch| {
            std::fs::write(dir.join(name), b.to_json()).expect("writing a dump");
        };
        write("full.json", render::full(&rs, &agent).expect("render"));
        for (i, c) in cases.iter().enumerate() {
            write(
                &format!("delta{i}-forward.json"),
                render::delta(&c.forward, None).expect("render"),
            );
            write(
                &format!("delta{i}-forward-agent.json"),
                render::delta(&c.forward, Some(&agent)).expect("render"),
            );
        }
        println!("batches written to {}", dir.display());
    }

    let ns = Netns::new();
    println!("namespace {}", ns.name);
    let f = ns.run(move || measure(rs, agent, cases));

    println!("in the kernel after the full applies: {}", f.kernel);
    println!();
    println!("| what | median | target | |");
    println!("|---|---|---|---|");
    println!(
        "| full ruleset ({elements} set elements + {entries} map entries + {agent_elements} agent-set elements, {chains} chains, {rules} rules): render to JSON | {} | | |",
        ms(f.full_render)
    );
    println!(
        "| full ruleset: apply_full end to end (render + nft + kernel), replacing the table, median of {FULL_RUNS} | {} | < 300 ms | {} |",
        ms(f.full_apply),
        met(f.full_apply, Duration::from_millis(300))
    );
    println!(
        "| full ruleset: of which nft + kernel (apply_full minus render) | {} | | |",
        ms(f.full_apply.saturating_sub(f.full_render))
    );
    println!(
        "| full ruleset: first apply_full into an empty namespace (one run) | {} | | |",
        ms(f.full_first)
    );
    println!(
        "| floor: nft on an empty batch (process start, no cache, no transaction), median of {DELTA_RUNS} | {} | | |",
        ms(f.spawn)
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "| floor: an empty delta (only the generation record changes), apply_delta end to end, through nft / over netlink (of which kernel: sendmsg to last ack), median of {DELTA_RUNS} each | {} / {} ({}) ({:.0}x) | | |",
        ms(f.empty),
        ms(f.empty_netlink),
        ms(f.empty_netlink_kernel),
        ratio(f.empty, f.empty_netlink)
    );
    for d in &f.deltas {
        println!(
            "| {}: render delta to JSON (nft path) | {} | | |",
            d.what,
            ms(d.render)
        );
        println!(
            "| {}: apply_delta(d, None) through nft, median of {DELTA_RUNS} | {} | | |",
            d.what,
            ms(d.nft)
        );
        println!(
            "| {}: apply_delta(d, Some(unchanged agent sets)) through nft (no refill), median of {DELTA_RUNS} | {} | | |",
            d.what,
            ms(d.nft_agent)
        );
        println!(
            "| {}: apply_delta(d, None) over netlink (of which kernel), median of {DELTA_RUNS} | {} ({}) ({:.0}x faster than nft) | < 5 ms | {} |",
            d.what,
            ms(d.netlink),
            ms(d.netlink_kernel),
            ratio(d.nft, d.netlink),
            met(d.netlink, Duration::from_millis(5))
        );
        println!(
            "| {}: apply_delta(d, Some(unchanged agent sets)) over netlink, median of {DELTA_RUNS} | {} | < 5 ms | {} |",
            d.what,
            ms(d.netlink_agent),
            met(d.netlink_agent, Duration::from_millis(5))
        );
    }
    println!(
        "| pod links change (one veth replaced): set_agent_sets through nft (flush + refill of {agent_elements}) / over netlink (the difference; of which kernel), median of {} each | {} / {} ({}) ({:.0}x) | | |",
        2 * DELTA_RUNS,
        ms(f.links_nft),
        ms(f.links_netlink),
        ms(f.links_netlink_kernel),
        ratio(f.links_nft, f.links_netlink)
    );
    println!(
        "| agent sets refilled whole over netlink after a restart (flush + {agent_elements} elements, set flags read from the kernel), median of 10 | {} | | |",
        ms(f.refill_netlink)
    );
    drop(ns);
}

/// Runs inside the namespace.
fn measure(
    mut rs: pb::Ruleset,
    agent: Vec<(String, Vec<pb::Element>)>,
    cases: Vec<DeltaCase>,
) -> Figures {
    let mut dp = Nft::new("nft");
    assert_eq!(
        dp.state().expect("nft list"),
        bulkhead_agent::dataplane::KernelState::Absent,
        "a fresh namespace has no table"
    );

    // (a) Full applies.
    let mut render_times = Vec::new();
    let mut apply_times = Vec::new();
    let mut generation = 1;
    rs.generation = generation;
    let t = Instant::now();
    dp.apply_full(&rs, &agent).expect("first full apply");
    let full_first = t.elapsed();
    for _ in 0..FULL_RUNS {
        generation += 1;
        rs.generation = generation;
        let t = Instant::now();
        let batch = render::full(&rs, &agent).expect("render");
        std::hint::black_box(batch.to_json());
        render_times.push(t.elapsed());
        let t = Instant::now();
        dp.apply_full(&rs, &agent).expect("full apply");
        apply_times.push(t.elapsed());
    }
    let summary = dp.summary().expect("nft list table").expect("our table");
    let kernel = format!(
        "{} sets with {} elements, {} maps with {} entries, {} chains, {} rules",
        summary.sets,
        summary.elements,
        summary.maps,
        summary.map_entries,
        summary.chains,
        summary.rules
    );

    // The floors under any delta: starting nft on an empty batch (no cache
    // fetch, no transaction), and an empty delta (only the generation
    // record changes; nft fetches its cache of our table first; netlink
    // sends the two rule messages of the record).
    let mut spawn = Vec::new();
    let mut empty = Vec::new();
    let mut empty_netlink = Vec::new();
    let mut empty_netlink_kernel = Vec::new();
    for i in 0..2 * DELTA_RUNS {
        let netlink = i % 2 == 1;
        if !netlink {
            let t = Instant::now();
            dp.run("nothing", &render::Batch::default())
                .expect("empty batch");
            spawn.push(t.elapsed());
        }
        let d = pb::RulesetDelta {
            node: NODE.to_owned(),
            base_generation: generation,
            generation: generation + 1,
            ..Default::default()
        };
        generation += 1;
        dp.netlink = netlink;
        let t = Instant::now();
        dp.apply_delta(&d, None).expect("empty delta");
        let took = t.elapsed();
        assert_eq!(dp.last_path, Some(path(netlink)));
        if netlink {
            empty_netlink.push(took);
            empty_netlink_kernel.push(dp.last_kernel.expect("a netlink batch"));
        } else {
            empty.push(took);
        }
    }

    // (b) Deltas, alternating forward and backward so that each applies on
    // its own base; interleaved: nft, nft with the agent sets, netlink,
    // netlink with the agent sets. The agent sets are unchanged, so neither
    // path refills them.
    let mut deltas = Vec::new();
    for case in cases {
        let mut render_times = Vec::new();
        let mut runs: [Vec<Duration>; 4] = Default::default();
        let mut kernel = Vec::new();
        for i in 0..4 * DELTA_RUNS {
            let mut d = if i % 2 == 0 {
                case.forward.clone()
            } else {
                case.backward.clone()
            };
            d.base_generation = generation;
            generation += 1;
            d.generation = generation;
            let kind = (i / 2) % 4;
            let netlink = kind >= 2;
            let agent_too = kind % 2 == 1;
            if kind == 0 {
                let t = Instant::now();
                let batch = render::delta(&d, None).expect("render delta");
                std::hint::black_box(batch.to_json());
                render_times.push(t.elapsed());
            }
            dp.netlink = netlink;
            let t = Instant::now();
            dp.apply_delta(&d, agent_too.then_some(agent.as_slice()))
                .expect("delta apply");
            runs[kind].push(t.elapsed());
            assert_eq!(dp.last_path, Some(path(netlink)), "{}", case.what);
            if kind == 2 {
                kernel.push(dp.last_kernel.expect("a netlink batch"));
            }
        }
        // An even number of deltas: back where we started.
        let after = dp.summary().expect("nft list table").expect("our table");
        assert_eq!(
            (after.elements, after.map_entries, after.rules),
            (summary.elements, summary.map_entries, summary.rules),
            "{}: forward and backward deltas do not cancel out",
            case.what
        );
        let [nft, nft_agent, netlink, netlink_agent] = runs.map(median);
        deltas.push(DeltaFigures {
            what: case.what.to_owned(),
            render: median(render_times),
            nft,
            nft_agent,
            netlink,
            netlink_agent,
            netlink_kernel: median(kernel),
        });
    }

    // The pod links change: one veth goes, another comes (and back).
    let mut other = agent.clone();
    for (name, elems) in other.iter_mut() {
        if let Some(e) = elems.first_mut() {
            *e = match name.as_str() {
                "pod_ifaces" => pb::Element {
                    value: Some(pb::element::Value::Ifname("bhz0".into())),
                },
                _ => continue,
            };
        }
    }
    let mut links_nft = Vec::new();
    let mut links_netlink = Vec::new();
    let mut links_netlink_kernel = Vec::new();
    for i in 0..4 * DELTA_RUNS {
        let sets = if i % 2 == 0 { &other } else { &agent };
        let netlink = (i / 2) % 2 == 1;
        dp.netlink = netlink;
        let t = Instant::now();
        dp.set_agent_sets(sets).expect("agent sets");
        let took = t.elapsed();
        assert_eq!(dp.last_path, Some(path(netlink)));
        if netlink {
            links_netlink.push(took);
            links_netlink_kernel.push(dp.last_kernel.expect("a netlink batch"));
        } else {
            links_nft.push(took);
        }
    }
    // A restarted agent refills them whole (it asks the kernel for the
    // sets' flags first).
    let mut refill_netlink = Vec::new();
    for _ in 0..10 {
        let mut fresh = Nft::new("nft");
        fresh.state().expect("state");
        let t = Instant::now();
        fresh.set_agent_sets(&agent).expect("refill");
        refill_netlink.push(t.elapsed());
        assert_eq!(fresh.last_path, Some(path(true)));
    }
    let after = dp.summary().expect("nft list table").expect("our table");
    assert_eq!(
        after.elements, summary.elements,
        "agent sets back as they were"
    );

    Figures {
        spawn: median(spawn),
        empty: median(empty),
        empty_netlink: median(empty_netlink),
        empty_netlink_kernel: median(empty_netlink_kernel),
        links_nft: median(links_nft),
        links_netlink: median(links_netlink),
        links_netlink_kernel: median(links_netlink_kernel),
        refill_netlink: median(refill_netlink),
        full_render: median(render_times),
        full_apply: median(apply_times),
        full_first,
        kernel,
        deltas,
    }
}
