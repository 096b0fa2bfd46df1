//! The node index: the inventory compiled into one ruleset per node, each
//! published on its own `watch` channel, with a short history of past
//! generations so that a returning agent can be sent a delta.
//!
//! ```text
//!  Inventory ──update──▶ compile_all ──▶ node "a": watch<Arc<Ruleset>> ──▶ agent stream
//!                                   └──▶ node "b": …                 (send_if_modified:
//!                                                                      an equal ruleset wakes nobody)
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bulkhead_core::compile;
use bulkhead_core::compile::incremental::{self, Incremental, Path};
use bulkhead_core::inventory::Inventory;
use bulkhead_proto::v1 as pb;
use tokio::sync::watch;

/// How many past rulesets per node are kept for deltas.
const HISTORY: usize = 32;

#[derive(Debug)]
struct NodeEntry {
    tx: watch::Sender<Arc<pb::Ruleset>>,
    history: VecDeque<Arc<pb::Ruleset>>,
}

/// Compiled rulesets per node. Not thread-safe by itself: wrap it in a mutex.
#[derive(Debug)]
pub struct NodeIndex {
    generation: u64,
    inventory: Arc<Inventory>,
    nodes: BTreeMap<String, NodeEntry>,
    /// Kept between updates that change pods only (see [`Incremental`]).
    incremental: Option<Incremental>,
}

/// Equal but for the generation stamp.
pub fn same_content(a: &pb::Ruleset, b: &pb::Ruleset) -> bool {
    a.node == b.node
        && a.sets == b.sets
        && a.maps == b.maps
        && a.chains == b.chains
        && a.endpoints == b.endpoints
}

impl NodeIndex {
    /// `first_generation` should grow across restarts (the controller seeds it
    /// from the clock), so that an agent never sees generations go back.
    pub fn new(first_generation: u64) -> Self {
        Self {
            generation: first_generation,
            inventory: Arc::new(Inventory::default()),
            nodes: BTreeMap::new(),
            incremental: None,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    /// Recompiles every node for a new inventory and publishes the rulesets
    /// that changed under a new generation. Returns the nodes that changed.
    /// When only pods changed, they are compiled incrementally instead.
    pub fn update(&mut self, inventory: Arc<Inventory>) -> Vec<String> {
        let next = self.generation + 1;
        if let Some(changed) = self.update_pods(&inventory, next) {
            if !changed.is_empty() {
                self.generation = next;
            }
            self.inventory = inventory;
            return changed;
        }
        self.incremental = None;
        let mut compiler = compile::Compiler::new(&inventory);
        let mut names = compile::node_names(&inventory);
        for known in self.nodes.keys() {
            if !names.contains(known) {
                names.push(known.clone());
            }
        }
        let mut changed = Vec::new();
        for name in names {
            let rs = compiler.node(&name, next);
            if self.publish(&name, rs) {
                changed.push(name);
            }
        }
        if !changed.is_empty() {
            self.generation = next;
        }
        self.inventory = inventory;
        changed
    }

    /// Publishes a node's ruleset; whether it changed.
    fn publish(&mut self, name: &str, rs: pb::Ruleset) -> bool {
        match self.nodes.get_mut(name) {
            Some(e) => {
                let modified = e.tx.send_if_modified(move |cur| {
                    if same_content(cur, &rs) {
                        false
                    } else {
                        *cur = Arc::new(rs);
                        true
                    }
                });
                if modified {
                    e.history.push_back(Arc::clone(&e.tx.borrow()));
                    if e.history.len() > HISTORY {
                        e.history.pop_front();
                    }
                }
                modified
            }
            None => {
                let rs = Arc::new(rs);
                let (tx, _) = watch::channel(Arc::clone(&rs));
                self.nodes.insert(
                    name.to_owned(),
                    NodeEntry {
                        tx,
                        history: VecDeque::from([rs]),
                    },
                );
                true
            }
        }
    }

    /// The incremental path: when `inventory` differs from the current one in
    /// pods only, and no change needs every node recompiled, compiles the
    /// changes and publishes the nodes they touch. `None`: recompile all.
    fn update_pods(&mut self, inventory: &Inventory, next: u64) -> Option<Vec<String>> {
        let changes = incremental::pod_changes(&self.inventory, inventory)?;
        let mut inc = match self.incremental.take() {
            Some(inc) => inc,
            None => {
                // Every published ruleset is the compiler's for the current
                // inventory (a node unknown to it has the empty node's).
                let rulesets = self
                    .nodes
                    .iter()
                    .map(|(n, e)| (n.clone(), (**e.tx.borrow()).clone()))
                    .collect();
                Incremental::from_compiled((*self.inventory).clone(), rulesets, self.generation)
            }
        };
        let mut touched = std::collections::BTreeSet::new();
        for change in changes {
            let out = inc.pod_changed_at(change, next);
            if let Path::Full(_) = out.path {
                return None;
            }
            touched.extend(out.deltas.into_keys());
            touched.extend(out.added.into_keys());
        }
        let mut changed = Vec::new();
        for name in touched {
            if let Some(rs) = inc.rulesets().get(&name).cloned()
                && self.publish(&name, rs)
            {
                changed.push(name);
            }
        }
        self.incremental = Some(inc);
        Some(changed)
    }

    /// The channel of a node's ruleset. A node the inventory does not know
    /// (an agent that connects before its pods exist) gets the ruleset of a
    /// node without pods.
    pub fn subscribe(&mut self, node: &str) -> watch::Receiver<Arc<pb::Ruleset>> {
        if let Some(e) = self.nodes.get(node) {
            return e.tx.subscribe();
        }
        let rs = Arc::new(compile::compile_node(
            &self.inventory,
            node,
            self.generation,
        ));
        let (tx, rx) = watch::channel(Arc::clone(&rs));
        self.nodes.insert(
            node.to_owned(),
            NodeEntry {
                tx,
                history: VecDeque::from([rs]),
            },
        );
        rx
    }

    /// A node's ruleset at a past generation, while it is remembered.
    pub fn at(&self, node: &str, generation: u64) -> Option<Arc<pb::Ruleset>> {
        self.nodes
            .get(node)?
            .history
            .iter()
            .rev()
            .find(|r| r.generation == generation)
            .cloned()
    }

    /// The current generation of every node's ruleset.
    pub fn current(&self) -> BTreeMap<String, u64> {
        self.nodes
            .iter()
            .map(|(n, e)| (n.clone(), e.tx.borrow().generation))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_core::load_str;

    fn inv(yaml: &str) -> Arc<Inventory> {
        let (i, d) = Inventory::from_loaded(&load_str("t.yaml", yaml));
        assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
        Arc::new(i)
    }

    fn pod(name: &str, node: &str, ip: &str, app: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: {ip}}}\n"
        )
    }

    const DENY: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: db}}\n";

    #[test]
    fn only_changed_nodes_get_a_new_ruleset() {
        let mut idx = NodeIndex::new(100);
        let base = format!(
            "{}{}{DENY}",
            pod("a", "n1", "10.0.0.1", "web"),
            pod("b", "n2", "10.0.0.2", "db")
        );
        idx.update(inv(&base));
        let mut n1 = idx.subscribe("n1");
        let mut n2 = idx.subscribe("n2");
        n1.mark_unchanged();
        n2.mark_unchanged();
        let g1 = idx.generation();
        // A new web pod on n1 that no policy selects and no peer set names:
        // n2's ruleset does not change, n1's endpoints do.
        let more = format!("{base}{}", pod("c", "n1", "10.0.0.3", "web"));
        let changed = idx.update(inv(&more));
        assert_eq!(changed, vec!["n1".to_owned()]);
        assert!(n1.has_changed().unwrap());
        assert!(!n2.has_changed().unwrap());
        assert!(idx.generation() > g1);
        assert_eq!(n1.borrow_and_update().generation, idx.generation());
        // The same inventory again wakes nobody and keeps the generation.
        let g2 = idx.generation();
        assert!(idx.update(inv(&more)).is_empty());
        assert_eq!(idx.generation(), g2);
        assert!(!n1.has_changed().unwrap());
        // The past is remembered for deltas.
        assert!(idx.at("n1", g1).is_some());
        assert!(idx.at("n1", g2).is_some());
        assert!(idx.at("n1", 7).is_none());
    }

    #[test]
    fn unknown_nodes_get_an_empty_ruleset_and_follow_updates() {
        let mut idx = NodeIndex::new(1);
        idx.update(inv(&pod("a", "n1", "10.0.0.1", "web")));
        let mut rx = idx.subscribe("n9");
        assert!(rx.borrow_and_update().endpoints.is_empty());
        idx.update(inv(&format!(
            "{}{}",
            pod("a", "n1", "10.0.0.1", "web"),
            pod("z", "n9", "10.0.0.9", "db")
        )));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().endpoints.len(), 1);
    }

    #[test]
    fn pod_only_updates_are_compiled_incrementally_and_match_a_full_compile() {
        let mut idx = NodeIndex::new(1);
        let base = format!(
            "{}{}{DENY}",
            pod("a", "n1", "10.0.0.1", "web"),
            pod("b", "n2", "10.0.0.2", "db")
        );
        idx.update(inv(&base));
        assert!(idx.incremental.is_none());
        let steps = [
            // b relabelled: leaves the deny group (its chain goes from n2).
            format!(
                "{}{}{DENY}",
                pod("a", "n1", "10.0.0.1", "web"),
                pod("b", "n2", "10.0.0.2", "web")
            ),
            // a new db pod on n1 (a group n1 lacks), a removed.
            format!(
                "{}{}{DENY}",
                pod("b", "n2", "10.0.0.2", "web"),
                pod("c", "n1", "10.0.0.3", "db")
            ),
            // c moves to a new node n3.
            format!(
                "{}{}{DENY}",
                pod("b", "n2", "10.0.0.2", "web"),
                pod("c", "n3", "10.0.0.3", "db")
            ),
        ];
        for (i, yaml) in steps.iter().enumerate() {
            let before = idx.generation();
            let new = inv(yaml);
            let changed = idx.update(Arc::clone(&new));
            assert!(idx.incremental.is_some(), "step {i} took the full path");
            assert!(!changed.is_empty() && idx.generation() == before + 1);
            for (node, e) in &idx.nodes {
                let want = compile::compile_node(&new, node, 0);
                assert!(same_content(&e.tx.borrow(), &want), "step {i}, node {node}");
            }
        }
        // Anything but pods: the full path, which drops the state.
        idx.update(inv(&format!("{}{DENY}", pod("b", "n2", "10.0.0.2", "web"))
            .replace("name: deny", "name: deny2")));
        assert!(idx.incremental.is_none());
    }
}
