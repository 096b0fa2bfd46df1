//! The netlink delta path (`dataplane::nfnl`) against the nft path, in the
//! kernel: two network namespaces of this test's own (`bhn<pid><tag>a|b`,
//! deleted on drop, even when the test fails); one `Nft` sends element-only
//! deltas as its own nf_tables batch, the other always runs nft. After every
//! delta, `nft -j list table inet bulkhead` must read the same in both
//! (handles dropped, elements sorted: hash sets list in their own order).
//! Needs root and `ip` (iproute2) and `nft`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::net::IpAddr;
use std::process::Command;
use std::thread;

use bulkhead_agent::dataplane::nft::{Nft, Path};
use bulkhead_agent::dataplane::{Dataplane, DataplaneError, KernelState, render};
use bulkhead_core::compile::{anti_spoof_elements, compile_node, diff::diff};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::load_str;
use bulkhead_core::model::Object;
use bulkhead_core::synth::{self, Shape};
use bulkhead_proto::v1 as pb;
use nix::sched::{CloneFlags, setns};
use serde_json::Value;

const NODE: &str = "node-0";

struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("bhn{}{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(format!("/run/netns/{}", self.name)).unwrap();
        let h = thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
            drop(file);
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e),
        }
    }

    /// Our table as nft lists it, normalised.
    fn table(&self) -> Value {
        let name = self.name.clone();
        let out = Command::new("ip")
            .args([
                "netns", "exec", &name, "nft", "-j", "list", "table", "inet", "bulkhead",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft list in {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
        normalise(&mut v);
        v
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Drops handles and the metainfo, sorts element lists.
fn normalise(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("handle");
            o.remove("metainfo");
            for (k, x) in o.iter_mut() {
                normalise(x);
                if k == "elem"
                    && let Value::Array(a) = x
                {
                    a.sort_by_key(|e| e.to_string());
                }
            }
        }
        Value::Array(a) => {
            a.iter_mut().for_each(normalise);
            a.retain(|x| !(x.is_object() && x.as_object().is_some_and(|o| o.is_empty())));
        }
        _ => {}
    }
}

/// A netlink side and an nft side, each in its own namespace.
struct Pair {
    a: Netns,
    b: Netns,
    nl: Option<Nft>,
    nft: Option<Nft>,
}

impl Pair {
    fn new(tag: &str) -> Self {
        let mut nft = Nft::new("nft");
        nft.netlink = false;
        Self {
            a: Netns::new(&format!("{tag}a")),
            b: Netns::new(&format!("{tag}b")),
            nl: Some(Nft::new("nft")),
            nft: Some(nft),
        }
    }

    /// Runs `f` with each side's dataplane in its namespace; both results.
    fn both<T: Send + 'static>(
        &mut self,
        f: impl Fn(&mut Nft) -> T + Send + Sync + Clone + 'static,
    ) -> (T, T) {
        let (mut nl, mut nft) = (self.nl.take().unwrap(), self.nft.take().unwrap());
        let g = f.clone();
        let (r1, nl) = self.a.run(move || (g(&mut nl), nl));
        let (r2, nft) = self.b.run(move || (f(&mut nft), nft));
        self.nl = Some(nl);
        self.nft = Some(nft);
        (r1, r2)
    }

    fn same(&self, what: &str) {
        let (ta, tb) = (self.a.table(), self.b.table());
        if ta != tb {
            let (sa, sb) = (
                serde_json::to_string_pretty(&ta).unwrap(),
                serde_json::to_string_pretty(&tb).unwrap(),
            );
            let first = sa
                .lines()
                .zip(sb.lines())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            let ctx = |s: &str| {
                s.lines()
                    .skip(first.saturating_sub(5))
                    .take(12)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "{what}: the kernel differs after the netlink path (left) and nft (right):\n{}\n----\n{}",
                ctx(&sa),
                ctx(&sb)
            );
        }
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn cluster() -> Vec<Object> {
    let yaml = synth::cluster_yaml(&Shape {
        namespaces: 12,
        pods: 240,
        policies: 160,
        nodes: 2,
        seed: 11,
    });
    load_str("synthetic.yaml", &yaml)
        .objects
        .iter()
        .map(|l| l.object.clone())
        .collect()
}

fn compile(objects: &[Object], generation: u64) -> pb::Ruleset {
    compile_node(&Inventory::new(objects.iter().cloned()).0, NODE, generation)
}

fn agent_sets(links: &[(String, Vec<IpAddr>)]) -> Vec<(String, Vec<pb::Element>)> {
    anti_spoof_elements(links).to_vec()
}

/// One random change of the cluster: a pod relabelled, added (dual-stack,
/// on this node or the other), or removed.
fn mutate(objects: &mut Vec<Object>, rng: &mut Rng, step: usize) {
    let pods: Vec<usize> = objects
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Object::Pod(_)))
        .map(|(i, _)| i)
        .collect();
    let i = pods[rng.below(pods.len())];
    match rng.below(4) {
        0 | 1 => {
            if let Object::Pod(p) = &mut objects[i] {
                p.labels
                    .insert("app".into(), format!("app-{}", rng.below(12)));
                let tiers = ["web", "api", "db", "cache", "worker"];
                p.labels
                    .insert("tier".into(), tiers[rng.below(tiers.len())].into());
            }
        }
        2 => {
            if let Object::Pod(p) = &objects[i] {
                let mut p = p.clone();
                p.name = format!("{}-n{step}", p.name);
                p.ips = vec![
                    format!("10.250.{}.{}", step / 250, step % 250 + 1)
                        .parse()
                        .unwrap(),
                    format!("fd00:250::{:x}", step + 1).parse().unwrap(),
                ];
                p.node = Some(format!("node-{}", rng.below(2)));
                objects.push(Object::Pod(p));
            }
        }
        _ => {
            objects.remove(i);
        }
    }
}

#[test]
fn netlink_deltas_leave_the_kernel_as_nft_does() {
    let mut pair = Pair::new("d");
    let mut objects = cluster();
    let mut rs = compile(&objects, 1);
    let mut links: Vec<(String, Vec<IpAddr>)> = (0..20)
        .map(|i| {
            (
                format!("bhv{i}"),
                vec![format!("10.9.0.{i}").parse().unwrap()],
            )
        })
        .collect();
    let agent = agent_sets(&links);
    let (r1, r2) = pair.both({
        let (rs, agent) = (rs.clone(), agent.clone());
        move |dp| dp.apply_full(&rs, &agent)
    });
    r1.unwrap();
    r2.unwrap();
    pair.same("full apply");

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut via_netlink, mut via_nft) = (0, 0);
    for step in 0..40 {
        mutate(&mut objects, &mut rng, step);
        let next = compile(&objects, rs.generation + 1);
        let d = diff(&rs, &next);
        // Every third delta also changes the pod links (one veth comes, one
        // goes); every fifth passes the unchanged sets, as the one-shot
        // `apply --delta` does.
        let agent = if step % 3 == 0 {
            links.remove(0);
            links.push((
                format!("bhw{step}"),
                vec![
                    format!("10.8.0.{}", step + 1).parse().unwrap(),
                    format!("fd00:8::{:x}", step + 1).parse().unwrap(),
                ],
            ));
            Some(agent_sets(&links))
        } else if step % 5 == 0 {
            Some(agent_sets(&links))
        } else {
            None
        };
        let (r1, r2) = pair.both({
            let (d, agent) = (d.clone(), agent.clone());
            move |dp| {
                let r = dp.apply_delta(&d, agent.as_deref());
                (r, dp.last_path)
            }
        });
        r1.0.unwrap_or_else(|e| panic!("step {step}, netlink side: {e}"));
        r2.0.unwrap_or_else(|e| panic!("step {step}, nft side: {e}"));
        assert_eq!(r2.1, Some(Path::Nft));
        let elements_only = d.add_sets.is_empty()
            && d.delete_sets.is_empty()
            && d.add_maps.is_empty()
            && d.delete_maps.is_empty()
            && d.add_chains.is_empty()
            && d.replace_chains.is_empty()
            && d.delete_chains.is_empty();
        if elements_only {
            assert_eq!(r1.1, Some(Path::Netlink), "step {step}: {d:?}");
            via_netlink += 1;
        } else {
            assert_eq!(r1.1, Some(Path::Nft), "step {step}");
            via_nft += 1;
        }
        pair.same(&format!("step {step}"));
        rs = next;
    }
    assert!(via_netlink >= 10, "only {via_netlink} netlink deltas");
    eprintln!("{via_netlink} deltas over netlink, {via_nft} through nft");

    // A restarted agent: nothing known about the sets' flags (it asks the
    // kernel) nor about the agent sets (it refills them).
    pair.nl = Some(Nft::new("nft"));
    let mut fresh = Nft::new("nft");
    fresh.netlink = false;
    pair.nft = Some(fresh);
    for step in 40..46 {
        let mut d;
        let mut next;
        loop {
            mutate(&mut objects, &mut rng, step);
            next = compile(&objects, rs.generation + 1);
            d = diff(&rs, &next);
            if d.add_chains.is_empty()
                && d.replace_chains.is_empty()
                && d.delete_chains.is_empty()
                && d.add_sets.is_empty()
                && d.delete_sets.is_empty()
            {
                break;
            }
            // Keep the cluster in step with the kernel: apply it by nft.
            let (r1, r2) = pair.both({
                let d = d.clone();
                move |dp| {
                    let n = dp.netlink;
                    dp.netlink = false;
                    let r = dp.apply_delta(&d, None);
                    dp.netlink = n;
                    r
                }
            });
            r1.unwrap();
            r2.unwrap();
            rs = next;
        }
        let agent = agent_sets(&links);
        let (r1, r2) = pair.both({
            let (d, agent) = (d.clone(), agent.clone());
            move |dp| (dp.apply_delta(&d, Some(&agent)), dp.last_path)
        });
        r1.0.unwrap();
        r2.0.unwrap();
        assert_eq!(r1.1, Some(Path::Netlink));
        pair.same(&format!("after restart, step {step}"));
        rs = next;
    }
    let (st, _) = pair.both(|dp| dp.state());
    assert_eq!(
        st.unwrap(),
        KernelState::Ours {
            schema: render::SCHEMA,
            generation: rs.generation,
            node: NODE.into()
        }
    );
}

#[test]
fn links_changes_touch_only_the_changed_elements() {
    let mut pair = Pair::new("l");
    let objects = cluster();
    let rs = compile(&objects, 1);
    let mut links: Vec<(String, Vec<IpAddr>)> = (0..300)
        .map(|i| {
            (
                format!("bhv{i}"),
                vec![format!("10.9.{}.{}", i / 250, i % 250).parse().unwrap()],
            )
        })
        .collect();
    let agent = agent_sets(&links);
    let (r1, r2) = pair.both(move |dp| dp.apply_full(&rs, &agent));
    r1.unwrap();
    r2.unwrap();
    // Unchanged: nothing is sent.
    let agent = agent_sets(&links);
    let (r1, _) = pair.both(move |dp| (dp.set_agent_sets(&agent), dp.last_path));
    r1.0.unwrap();
    assert_eq!(r1.1, Some(Path::Nothing));
    // One veth goes, one comes with two addresses.
    links.remove(7);
    links.push((
        "bhx1".into(),
        vec!["10.9.200.1".parse().unwrap(), "fd00:9::1".parse().unwrap()],
    ));
    let agent = agent_sets(&links);
    let (r1, r2) = pair.both(move |dp| (dp.set_agent_sets(&agent), dp.last_path));
    r1.0.unwrap();
    r2.0.unwrap();
    assert_eq!(r1.1, Some(Path::Netlink));
    pair.same("links changed");
}

#[test]
fn a_refused_netlink_batch_changes_nothing_and_names_the_element() {
    let mut pair = Pair::new("e");
    let objects = cluster();
    let rs = compile(&objects, 1);
    let set = rs
        .sets
        .iter()
        .find(|s| s.name.starts_with("p4_") && !s.elements.is_empty())
        .expect("a pod set")
        .clone();
    let map = rs
        .maps
        .iter()
        .find(|m| !m.entries.is_empty())
        .expect("a map with entries")
        .clone();
    let agent = agent_sets(&[]);
    let before = {
        let (rs, agent) = (rs.clone(), agent.clone());
        let (r1, r2) = pair.both(move |dp| dp.apply_full(&rs, &agent));
        r1.unwrap();
        r2.unwrap();
        pair.a.table()
    };
    // A valid change first, then the removal of an element the set does not
    // hold: the kernel refuses the whole batch.
    let d = pb::RulesetDelta {
        node: NODE.into(),
        base_generation: 1,
        generation: 2,
        set_changes: vec![
            pb::SetChange {
                set: set.name.clone(),
                add: vec![pb::Element {
                    value: Some(pb::element::Value::Addr("10.77.0.1".into())),
                }],
                remove: vec![],
            },
            pb::SetChange {
                set: set.name.clone(),
                add: vec![],
                remove: vec![
                    set.elements[0].clone(),
                    pb::Element {
                        value: Some(pb::element::Value::Addr("10.77.0.99".into())),
                    },
                ],
            },
        ],
        map_changes: vec![pb::MapChange {
            map: map.name.clone(),
            add: vec![],
            remove: vec![map.entries[0].key.clone().unwrap()],
        }],
        ..Default::default()
    };
    let (r1, r2) = pair.both(move |dp| (dp.apply_delta(&d, None), dp.last_path));
    let e = r1.0.unwrap_err();
    assert!(
        r2.0.is_err(),
        "nft accepts what the kernel refused over netlink"
    );
    assert_eq!(r1.1, Some(Path::Netlink));
    let DataplaneError::Nft { stderr, .. } = &e else {
        panic!("not a refusal: {e}");
    };
    assert!(
        stderr.contains(&set.name) && stderr.contains("10.77.0.99"),
        "the error names the set and the element: {e}"
    );
    assert_eq!(
        pair.a.table(),
        before,
        "the refused batch changed the kernel"
    );
    // And the generation record stays.
    let (st, _) = pair.both(|dp| dp.state());
    assert!(matches!(
        st.unwrap(),
        KernelState::Ours { generation: 1, .. }
    ));
    // An element nothing can encode is refused before the kernel sees it.
    let d = pb::RulesetDelta {
        node: NODE.into(),
        base_generation: 1,
        generation: 2,
        set_changes: vec![pb::SetChange {
            set: set.name.clone(),
            add: vec![pb::Element {
                value: Some(pb::element::Value::Addr("10.77.0.300".into())),
            }],
            remove: vec![],
        }],
        ..Default::default()
    };
    let (r1, _) = pair.both(move |dp| dp.apply_delta(&d, None));
    let e = r1.unwrap_err().to_string();
    assert!(e.contains("10.77.0.300") && e.contains(&set.name), "{e}");
}

#[test]
fn interval_set_changes_go_through_nft() {
    let mut pair = Pair::new("i");
    let objects = cluster();
    let rs = compile(&objects, 1);
    let set = rs
        .sets
        .iter()
        .find(|s| s.interval && s.elements.len() > 2)
        .expect("an ipBlock set")
        .clone();
    let agent = agent_sets(&[]);
    let (r1, r2) = pair.both(move |dp| dp.apply_full(&rs, &agent));
    r1.unwrap();
    r2.unwrap();
    let change = |base: u64, add: bool| pb::RulesetDelta {
        node: NODE.into(),
        base_generation: base,
        generation: base + 1,
        set_changes: vec![pb::SetChange {
            set: set.name.clone(),
            add: if add {
                vec![set.elements[1].clone()]
            } else {
                vec![]
            },
            remove: if add {
                vec![]
            } else {
                vec![set.elements[1].clone()]
            },
        }],
        ..Default::default()
    };
    for (base, add) in [(1, false), (2, true)] {
        let d = change(base, add);
        let (r1, r2) = pair.both(move |dp| (dp.apply_delta(&d, None), dp.last_path));
        r1.0.unwrap();
        r2.0.unwrap();
        assert_eq!(r1.1, Some(Path::Nft));
        pair.same(&format!("interval set, add={add}"));
    }
}

impl Netns {
    /// `nft CMD` in the namespace; panics when nft refuses.
    fn nft(&self, cmd: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {cmd} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether `nft list chain inet bulkhead NAME` finds it.
    fn has_chain(&self, name: &str) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", &self.name, "nft", "list", "chain", "inet", "bulkhead", name,
            ])
            .output()
            .unwrap()
            .status
            .success()
    }
}

/// Turns our table in `ns` into what an agent of schema 1 left: the record
/// as the comment of the one rule of chain `bhmeta`, no set `bhmeta`.
fn as_schema_1(ns: &Netns, generation: u64) {
    ns.nft("delete set inet bulkhead bhmeta");
    ns.nft("add chain inet bulkhead bhmeta");
    ns.nft(&format!(
        "add rule inet bulkhead bhmeta return comment \"bulkhead schema=1 generation={generation} node={NODE}\""
    ));
}

#[test]
fn a_schema_1_table_is_adopted_and_upgraded_by_the_next_change() {
    let mut pair = Pair::new("u");
    let objects = cluster();
    let rs = compile(&objects, 1);
    let set = rs
        .sets
        .iter()
        .find(|s| s.name.starts_with("p4_") && !s.interval)
        .expect("a pod set")
        .name
        .clone();
    let agent = agent_sets(&[("bhv1".into(), vec!["10.9.0.1".parse().unwrap()])]);
    let (r1, r2) = pair.both({
        let agent = agent.clone();
        move |dp| dp.apply_full(&rs, &agent)
    });
    r1.unwrap();
    r2.unwrap();
    let add = |base: u64, addr: &str| pb::RulesetDelta {
        node: NODE.into(),
        base_generation: base,
        generation: base + 1,
        set_changes: vec![pb::SetChange {
            set: set.clone(),
            add: vec![pb::Element {
                value: Some(pb::element::Value::Addr(addr.into())),
            }],
            remove: vec![],
        }],
        ..Default::default()
    };

    // Restarted agents (of schema 2) find a schema-1 table: adopted.
    as_schema_1(&pair.a, 1);
    as_schema_1(&pair.b, 1);
    pair.nl = Some(Nft::new("nft"));
    let mut fresh = Nft::new("nft");
    fresh.netlink = false;
    pair.nft = Some(fresh);
    let (st, _) = pair.both(|dp| dp.state());
    assert_eq!(
        st.unwrap(),
        KernelState::Ours {
            schema: 1,
            generation: 1,
            node: NODE.into()
        }
    );
    // An element-only delta: through nft, once, with the upgrade in the same
    // transaction; both sides end the same, with the record in the set.
    let d = add(1, "10.77.0.1");
    let (r1, r2) = pair.both(move |dp| (dp.apply_delta(&d, None), dp.last_path));
    r1.0.unwrap();
    r2.0.unwrap();
    assert_eq!(r1.1, Some(Path::Nft), "the upgrade goes through nft");
    pair.same("after the upgrading delta");
    assert!(!pair.a.has_chain("bhmeta"), "chain bhmeta is gone");
    let upgraded = pair.a.table();
    // A freshly started agent reads the new record.
    let (st, _) = pair.both(|_| Nft::new("nft").state());
    assert_eq!(
        st.unwrap(),
        KernelState::Ours {
            schema: render::SCHEMA,
            generation: 2,
            node: NODE.into()
        }
    );
    // And the next delta goes over netlink again, changing no rule.
    let d = add(2, "10.77.0.2");
    let (r1, r2) = pair.both(move |dp| (dp.apply_delta(&d, None), dp.last_path));
    r1.0.unwrap();
    r2.0.unwrap();
    assert_eq!(r1.1, Some(Path::Netlink));
    pair.same("after the next delta");
    let rules = |v: &Value| {
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o.get("rule").is_some())
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(rules(&pair.a.table()), rules(&upgraded), "a rule changed");

    // The anti-spoofing sets of a schema-1 table: also upgraded on the way.
    as_schema_1(&pair.a, 3);
    as_schema_1(&pair.b, 3);
    pair.nl = Some(Nft::new("nft"));
    let mut fresh = Nft::new("nft");
    fresh.netlink = false;
    pair.nft = Some(fresh);
    let (r1, r2) = pair.both(move |dp| {
        dp.state().unwrap();
        (dp.set_agent_sets(&agent), dp.last_path)
    });
    r1.0.unwrap();
    r2.0.unwrap();
    assert_eq!(r1.1, Some(Path::Nft));
    pair.same("after the upgrading links change");
    let (st, _) = pair.both(|_| Nft::new("nft").state());
    assert_eq!(
        st.unwrap(),
        KernelState::Ours {
            schema: render::SCHEMA,
            generation: 3,
            node: NODE.into()
        }
    );
}

#[test]
fn a_newer_record_or_none_is_refused_and_left_alone() {
    let mut pair = Pair::new("n");
    let rs = compile(&cluster(), 1);
    let agent = agent_sets(&[]);
    let (r1, r2) = pair.both(move |dp| dp.apply_full(&rs, &agent));
    r1.unwrap();
    r2.unwrap();
    let newer = render::SCHEMA + 1;
    pair.a.nft("flush set inet bulkhead bhmeta");
    pair.a.nft(&format!(
        "add element inet bulkhead bhmeta {{ 0 comment \"bulkhead schema={newer} generation=9 node={NODE}\" }}"
    ));
    // No record at all: neither the set nor the chain.
    pair.b.nft("delete set inet bulkhead bhmeta");
    let (before_a, before_b) = (pair.a.table(), pair.b.table());
    pair.nl = Some(Nft::new("nft"));
    pair.nft = Some(Nft::new("nft"));
    let d = pb::RulesetDelta {
        node: NODE.into(),
        base_generation: 9,
        generation: 10,
        ..Default::default()
    };
    let (r1, r2) = pair.both(move |dp| dp.apply_delta(&d, None));
    assert_eq!(
        r1.unwrap_err(),
        DataplaneError::NewerSchema { schema: newer }
    );
    assert!(
        matches!(r2.unwrap_err(), DataplaneError::ForeignTable { .. }),
        "no record: foreign"
    );
    assert_eq!(pair.a.table(), before_a);
    assert_eq!(pair.b.table(), before_b);
}
