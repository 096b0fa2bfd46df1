//! Auto-apply (kube mode, `--auto-apply-recommendations`, off by default):
//! when a namespace moves into `enforce` from `learn` or `monitor`, the
//! leader creates the NetworkPolicies `bulkhead recommend -n NS` would write
//! from the baseline learned so far.
//!
//! ```text
//!  update loop ──watch<Applied>──▶ ModeTracker (effective mode per namespace)
//!                                     │ learn|monitor → enforce
//!                                     ▼ (leader only)
//!      FlowHub (refreshed from the FlowBaselines) ──recommend(ns)──▶ AutoApply ──create──▶ NetworkPolicy
//!                                                     409 ─▶ get: generated? replace(resourceVersion)
//!                                                               hand-written? skip, log, Event
//! ```
//!
//! Generated policies carry the label `bulkhead.io/generated: "true"` (and
//! `app.kubernetes.io/managed-by: bulkhead`) and the annotation
//! `bulkhead.io/baseline: <namespace>/baseline` naming the FlowBaseline they
//! come from. A policy without that label is never changed nor deleted: on
//! a name clash the recommendation for that workload is skipped, with a
//! warning and a `Warning` Event `NotOverwritten` on the existing policy.
//! Nothing is ever deleted.
//!
//! `monitor → enforce` counts because `learn → monitor → enforce` is the
//! usual path (monitor is enforce's dry run). The mode is the effective one
//! (the label, else the cluster's `defaultMode`). Only transitions this
//! replica saw while running are acted on; one that happens while no
//! controller runs, or in the instant leadership changes hands, is not
//! (apply `bulkhead recommend`'s output by hand then).

use std::collections::BTreeMap;
use std::sync::Arc;

use bulkhead_core::crd::{FLOW_BASELINE_NAME, PolicyMode};
use bulkhead_core::flows::FlowGraph;
use bulkhead_core::inventory::Inventory;
use bulkhead_core::recommend;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::events::{EventSpec, Recorder};
use crate::flows::Hub;
use crate::flowstore::LeaderSlot;
use crate::status::Applied;

/// The verbs this module uses on `networking.k8s.io` `networkpolicies`,
/// granted by `manifests/rbac-auto-apply.yaml` (a test checks it).
pub const VERBS: [&str; 3] = ["get", "create", "update"];

/// The label that marks a NetworkPolicy as Bulkhead's to replace.
pub use bulkhead_core::recommend::GENERATED_LABEL;
/// The annotation naming the FlowBaseline a generated policy comes from.
pub const BASELINE_ANNOTATION: &str = "bulkhead.io/baseline";

/// Follows every namespace's effective mode.
#[derive(Debug, Default)]
pub struct ModeTracker {
    modes: Option<BTreeMap<String, PolicyMode>>,
}

impl ModeTracker {
    /// The namespaces that moved into `enforce` from `learn` or `monitor`
    /// since the last call; none on the first call (nothing to compare to).
    pub fn update(&mut self, inv: &Inventory) -> Vec<String> {
        let now: BTreeMap<String, PolicyMode> = inv
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), inv.namespace_mode(&n.name)))
            .collect();
        let moved = match &self.modes {
            None => Vec::new(),
            Some(before) => now
                .iter()
                .filter(|(ns, m)| {
                    **m == PolicyMode::Enforce
                        && matches!(
                            before.get(*ns),
                            Some(PolicyMode::Learn | PolicyMode::Monitor)
                        )
                })
                .map(|(ns, _)| ns.clone())
                .collect(),
        };
        self.modes = Some(now);
        moved
    }
}

/// What one application did, by policy name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub created: Vec<String>,
    pub replaced: Vec<String>,
    pub unchanged: Vec<String>,
    /// Names held by a policy Bulkhead did not generate.
    pub skipped: Vec<String>,
    pub failed: Vec<String>,
}

/// The recommended policies of `ns` from `graph`, marked as generated.
pub fn generated_policies(graph: &FlowGraph, ns: &str) -> Vec<NetworkPolicy> {
    let mut policies = recommend::recommend(graph, Some(ns)).policies;
    for p in &mut policies {
        p.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                BASELINE_ANNOTATION.into(),
                format!("{ns}/{FLOW_BASELINE_NAME}"),
            );
    }
    policies
}

fn is_generated(p: &NetworkPolicy) -> bool {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(GENERATED_LABEL))
        .is_some_and(|v| v == "true")
}

/// Creates (or replaces, when Bulkhead generated them) NetworkPolicies.
pub struct AutoApply {
    client: Client,
    leader: LeaderSlot,
    recorder: Arc<Recorder>,
}

impl std::fmt::Debug for AutoApply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoApply").finish()
    }
}

impl AutoApply {
    pub fn new(client: Client, leader: LeaderSlot, recorder: Arc<Recorder>) -> Self {
        Self {
            client,
            leader,
            recorder,
        }
    }

    fn leading(&self) -> bool {
        crate::flowstore::leading(&self.leader)
    }

    /// Applies the recommendations of `ns` (leader only: otherwise nothing).
    pub async fn apply(&self, ns: &str, graph: &FlowGraph) -> Outcome {
        let mut out = Outcome::default();
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), ns);
        for p in generated_policies(graph, ns) {
            let name = p.metadata.name.clone().unwrap_or_default();
            if !self.leading() {
                return out;
            }
            match api.create(&PostParams::default(), &p).await {
                Ok(_) => {
                    out.created.push(name);
                    continue;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    warn!(policy = %format!("{ns}/{name}"), error = %e, "cannot create the recommended NetworkPolicy");
                    out.failed.push(name);
                    continue;
                }
            }
            let existing = match api.get(&name).await {
                Ok(e) => e,
                Err(e) => {
                    warn!(policy = %format!("{ns}/{name}"), error = %e, "cannot read the existing NetworkPolicy");
                    out.failed.push(name);
                    continue;
                }
            };
            if !is_generated(&existing) {
                warn!(policy = %format!("{ns}/{name}"), "a NetworkPolicy Bulkhead did not generate has this name: it is left alone and this recommendation is not applied");
                let note = format!(
                    "not overwritten: Bulkhead's recommendation for this name was not applied because this NetworkPolicy has no {GENERATED_LABEL}: \"true\" label; see `bulkhead recommend -n {ns}`"
                );
                let regarding = ObjectReference {
                    api_version: Some("networking.k8s.io/v1".into()),
                    kind: Some("NetworkPolicy".into()),
                    namespace: Some(ns.to_owned()),
                    name: Some(name.clone()),
                    uid: existing.metadata.uid.clone(),
                    ..ObjectReference::default()
                };
                if let Err(e) = self
                    .recorder
                    .publish(EventSpec {
                        regarding,
                        related: None,
                        type_: "Warning".into(),
                        reason: "NotOverwritten".into(),
                        action: "AutoApply".into(),
                        note,
                    })
                    .await
                {
                    warn!(policy = %format!("{ns}/{name}"), error = %e, "cannot write an event");
                }
                out.skipped.push(name);
                continue;
            }
            if existing.spec == p.spec
                && existing.metadata.annotations == p.metadata.annotations
                && existing.metadata.labels == p.metadata.labels
            {
                out.unchanged.push(name);
                continue;
            }
            let mut next = p;
            next.metadata.resource_version = existing.metadata.resource_version.clone();
            match api.replace(&name, &PostParams::default(), &next).await {
                Ok(_) => out.replaced.push(name),
                Err(e) => {
                    warn!(policy = %format!("{ns}/{name}"), error = %e, "cannot replace the generated NetworkPolicy");
                    out.failed.push(name);
                }
            }
        }
        out
    }
}

/// Follows the applied snapshots; applies the recommendations of every
/// namespace that moves into `enforce`, while this replica leads.
pub async fn run(apply: AutoApply, hub: Hub, mut applied: watch::Receiver<Applied>) {
    let mut tracker = ModeTracker::default();
    loop {
        let snap = Arc::clone(&applied.borrow_and_update().snapshot);
        let (inv, _) = Inventory::from_loaded(&snap.loaded);
        let moved = tracker.update(&inv);
        if !moved.is_empty() && apply.leading() {
            // The latest persisted baseline too (learned through other replicas).
            let h = Arc::clone(&hub);
            let _ = tokio::task::spawn_blocking(move || h.refresh()).await;
            let graph = match FlowGraph::from_doc(hub.doc()) {
                Ok(g) => g,
                Err(e) => {
                    warn!(error = %e, "cannot read the flow graph; no recommendation applied");
                    FlowGraph::default()
                }
            };
            for ns in moved {
                let out = apply.apply(&ns, &graph).await;
                info!(namespace = %ns, created = ?out.created, replaced = ?out.replaced, skipped = ?out.skipped, failed = ?out.failed, "namespace moved to enforce: recommended NetworkPolicies applied");
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}
