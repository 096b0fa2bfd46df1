//! Deltas between two rulesets of one node: element adds and removes, new,
//! changed and deleted chains. `apply(a, diff(a, b))` is `b` (up to order).

use std::collections::{BTreeMap, BTreeSet};

use bulkhead_proto::v1 as pb;
use prost::Message;

/// Why a delta does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("delta is based on generation {base}, but generation {have} is applied")]
    BaseMismatch { base: u64, have: u64 },
    #[error("delta is for node {delta:?}, not {have:?}")]
    WrongNode { delta: String, have: String },
    #[error("{what} {name:?}: {problem}")]
    Inconsistent {
        what: &'static str,
        name: String,
        problem: String,
    },
}

/// A canonical, comparable form of an element.
pub fn element_key(e: &pb::Element) -> Vec<u8> {
    e.encode_to_vec()
}

fn entry_key(e: &pb::MapEntry) -> Vec<u8> {
    e.key.as_ref().map(element_key).unwrap_or_default()
}

/// The delta that turns `old` into `new` (both of the same node).
pub fn diff(old: &pb::Ruleset, new: &pb::Ruleset) -> pb::RulesetDelta {
    let mut d = pb::RulesetDelta {
        node: new.node.clone(),
        base_generation: old.generation,
        generation: new.generation,
        ..Default::default()
    };

    let old_sets: BTreeMap<&str, &pb::Set> =
        old.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_sets: BTreeMap<&str, &pb::Set> =
        new.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    for (name, ns) in &new_sets {
        match old_sets.get(name) {
            None => d.add_sets.push((*ns).clone()),
            Some(os)
                if os.r#type != ns.r#type
                    || os.interval != ns.interval
                    || os.agent_managed != ns.agent_managed =>
            {
                // Same name, other shape: cannot happen with hashed names, but
                // handle it: delete and re-create.
                d.delete_sets.push((*name).to_owned());
                d.add_sets.push((*ns).clone());
            }
            Some(_) if ns.agent_managed => {}
            Some(os) => {
                let (add, remove) = element_diff(&os.elements, &ns.elements);
                if !add.is_empty() || !remove.is_empty() {
                    d.set_changes.push(pb::SetChange {
                        set: (*name).to_owned(),
                        add,
                        remove,
                    });
                }
            }
        }
    }
    for name in old_sets.keys() {
        if !new_sets.contains_key(name) {
            d.delete_sets.push((*name).to_owned());
        }
    }

    let old_maps: BTreeMap<&str, &pb::Map> =
        old.maps.iter().map(|m| (m.name.as_str(), m)).collect();
    let new_maps: BTreeMap<&str, &pb::Map> =
        new.maps.iter().map(|m| (m.name.as_str(), m)).collect();
    for (name, nm) in &new_maps {
        match old_maps.get(name) {
            None => d.add_maps.push((*nm).clone()),
            Some(om) if om.key_type != nm.key_type => {
                d.delete_maps.push((*name).to_owned());
                d.add_maps.push((*nm).clone());
            }
            Some(om) => {
                let old_e: BTreeMap<Vec<u8>, &pb::MapEntry> =
                    om.entries.iter().map(|e| (entry_key(e), e)).collect();
                let new_e: BTreeMap<Vec<u8>, &pb::MapEntry> =
                    nm.entries.iter().map(|e| (entry_key(e), e)).collect();
                let mut add = Vec::new();
                let mut remove = Vec::new();
                for (k, e) in &new_e {
                    match old_e.get(k) {
                        Some(o) if o.verdict == e.verdict => {}
                        Some(o) => {
                            // A changed verdict is a remove and an add.
                            remove.extend(o.key.clone());
                            add.push((*e).clone());
                        }
                        None => add.push((*e).clone()),
                    }
                }
                for (k, o) in &old_e {
                    if !new_e.contains_key(k) {
                        remove.extend(o.key.clone());
                    }
                }
                if !add.is_empty() || !remove.is_empty() {
                    d.map_changes.push(pb::MapChange {
                        map: (*name).to_owned(),
                        add,
                        remove,
                    });
                }
            }
        }
    }
    for name in old_maps.keys() {
        if !new_maps.contains_key(name) {
            d.delete_maps.push((*name).to_owned());
        }
    }

    let old_chains: BTreeMap<&str, &pb::Chain> =
        old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let new_chains: BTreeMap<&str, &pb::Chain> =
        new.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    for (name, nc) in &new_chains {
        match old_chains.get(name) {
            None => d.add_chains.push((*nc).clone()),
            Some(oc) if oc.hook != nc.hook => {
                d.delete_chains.push((*name).to_owned());
                d.add_chains.push((*nc).clone());
            }
            Some(oc) if oc.rules != nc.rules => d.replace_chains.push((*nc).clone()),
            Some(_) => {}
        }
    }
    for name in old_chains.keys() {
        if !new_chains.contains_key(name) {
            d.delete_chains.push((*name).to_owned());
        }
    }

    if old.endpoints != new.endpoints {
        d.endpoints = Some(pb::EndpointList {
            endpoints: new.endpoints.clone(),
        });
    }
    d
}

fn element_diff(old: &[pb::Element], new: &[pb::Element]) -> (Vec<pb::Element>, Vec<pb::Element>) {
    let o: BTreeSet<Vec<u8>> = old.iter().map(element_key).collect();
    let n: BTreeSet<Vec<u8>> = new.iter().map(element_key).collect();
    let add = new
        .iter()
        .filter(|e| !o.contains(&element_key(e)))
        .cloned()
        .collect();
    let remove = old
        .iter()
        .filter(|e| !n.contains(&element_key(e)))
        .cloned()
        .collect();
    (add, remove)
}

/// Whether a delta changes nothing but the generation.
pub fn is_empty(d: &pb::RulesetDelta) -> bool {
    d.add_sets.is_empty()
        && d.set_changes.is_empty()
        && d.delete_sets.is_empty()
        && d.add_maps.is_empty()
        && d.map_changes.is_empty()
        && d.delete_maps.is_empty()
        && d.add_chains.is_empty()
        && d.replace_chains.is_empty()
        && d.delete_chains.is_empty()
        && d.endpoints.is_none()
}

fn inconsistent(what: &'static str, name: &str, problem: &str) -> DeltaError {
    DeltaError::Inconsistent {
        what,
        name: name.to_owned(),
        problem: problem.to_owned(),
    }
}

/// Applies a delta, as strictly as the kernel would: adding what exists or
/// removing what does not is an error, and nothing is changed then.
pub fn apply(rs: &pb::Ruleset, d: &pb::RulesetDelta) -> Result<pb::Ruleset, DeltaError> {
    if d.base_generation != rs.generation {
        return Err(DeltaError::BaseMismatch {
            base: d.base_generation,
            have: rs.generation,
        });
    }
    if d.node != rs.node {
        return Err(DeltaError::WrongNode {
            delta: d.node.clone(),
            have: rs.node.clone(),
        });
    }
    let mut out = rs.clone();
    out.generation = d.generation;

    for name in &d.delete_sets {
        let before = out.sets.len();
        out.sets.retain(|s| &s.name != name);
        if out.sets.len() == before {
            return Err(inconsistent("set", name, "deleted but absent"));
        }
    }
    for s in &d.add_sets {
        if out.sets.iter().any(|x| x.name == s.name) {
            return Err(inconsistent("set", &s.name, "added but present"));
        }
        out.sets.push(s.clone());
    }
    for c in &d.set_changes {
        let Some(s) = out.sets.iter_mut().find(|s| s.name == c.set) else {
            return Err(inconsistent("set", &c.set, "changed but absent"));
        };
        let mut have: BTreeMap<Vec<u8>, pb::Element> =
            s.elements.drain(..).map(|e| (element_key(&e), e)).collect();
        for e in &c.remove {
            if have.remove(&element_key(e)).is_none() {
                return Err(inconsistent(
                    "set",
                    &c.set,
                    "removes an element it does not hold",
                ));
            }
        }
        for e in &c.add {
            if have.insert(element_key(e), e.clone()).is_some() {
                return Err(inconsistent("set", &c.set, "adds an element it holds"));
            }
        }
        s.elements = have.into_values().collect();
    }

    for name in &d.delete_maps {
        let before = out.maps.len();
        out.maps.retain(|m| &m.name != name);
        if out.maps.len() == before {
            return Err(inconsistent("map", name, "deleted but absent"));
        }
    }
    for m in &d.add_maps {
        if out.maps.iter().any(|x| x.name == m.name) {
            return Err(inconsistent("map", &m.name, "added but present"));
        }
        out.maps.push(m.clone());
    }
    for c in &d.map_changes {
        let Some(m) = out.maps.iter_mut().find(|m| m.name == c.map) else {
            return Err(inconsistent("map", &c.map, "changed but absent"));
        };
        let mut have: BTreeMap<Vec<u8>, pb::MapEntry> =
            m.entries.drain(..).map(|e| (entry_key(&e), e)).collect();
        for k in &c.remove {
            if have.remove(&element_key(k)).is_none() {
                return Err(inconsistent(
                    "map",
                    &c.map,
                    "removes a key it does not hold",
                ));
            }
        }
        for e in &c.add {
            if have.insert(entry_key(e), e.clone()).is_some() {
                return Err(inconsistent("map", &c.map, "adds a key it holds"));
            }
        }
        m.entries = have.into_values().collect();
    }

    for name in &d.delete_chains {
        let before = out.chains.len();
        out.chains.retain(|c| &c.name != name);
        if out.chains.len() == before {
            return Err(inconsistent("chain", name, "deleted but absent"));
        }
    }
    for c in &d.add_chains {
        if out.chains.iter().any(|x| x.name == c.name) {
            return Err(inconsistent("chain", &c.name, "added but present"));
        }
        out.chains.push(c.clone());
    }
    for c in &d.replace_chains {
        let Some(x) = out.chains.iter_mut().find(|x| x.name == c.name) else {
            return Err(inconsistent("chain", &c.name, "replaced but absent"));
        };
        x.rules = c.rules.clone();
    }
    if let Some(e) = &d.endpoints {
        out.endpoints = e.endpoints.clone();
    }
    normalize(&mut out);
    Ok(out)
}

/// Sorts everything whose order carries no meaning, so that two equal
/// rulesets compare equal.
pub fn normalize(rs: &mut pb::Ruleset) {
    rs.sets.sort_by(|a, b| a.name.cmp(&b.name));
    for s in &mut rs.sets {
        s.elements.sort_by_key(element_key);
    }
    rs.maps.sort_by(|a, b| a.name.cmp(&b.name));
    for m in &mut rs.maps {
        m.entries.sort_by_key(entry_key);
    }
    rs.chains.sort_by(|a, b| a.name.cmp(&b.name));
}
