//! What the leader writes back to the cluster: an Event for every rejected
//! object (naming the object and the field), and the status of Bulkhead's
//! own objects (an `Accepted` condition; for a Quarantine, which nodes
//! enforce it and since when).
//!
//! ```text
//!  update loop ──watch<Applied { snapshot, generation }>──▶ StatusWriter ──(leader only)──▶ Events
//!  StatusBoard (acks per node) ─────────────────────────────────┘   └──────────────────▶ */status
//! ```
//!
//! Every write is preceded by [`LeaderState::is_leader`]: a replica that
//! lost the Lease stops writing at once. Writes are deduplicated: an Event
//! is sent once per object, uid and problem set (per process); a status is
//! written when it differs from what this leader last wrote (forgotten when
//! leadership is lost, so a new term writes everything once).
//!
//! `enforcedBy` is approximated: the first generation that contains a
//! Quarantine is taken to be the controller's generation right after the
//! first snapshot in which it appeared was compiled; a node enforces it
//! once it acked that generation or a later one, and the time recorded is
//! the time of the ack the leader saw. Only nodes whose agents are
//! connected to the leader (its [`StatusBoard`]) are seen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::events::{EventSpec, Recorder, truncate};
use crate::lease::LeaderState;
use crate::server::StatusBoard;
use crate::source::{ObjectRef, SourceSnapshot};

/// The API group of Bulkhead's own kinds (those with a status).
const GROUP: &str = "bulkhead.io";

/// A snapshot as compiled: the controller's generation right after the node
/// index took it in.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub snapshot: Arc<SourceSnapshot>,
    pub generation: u64,
}

#[derive(Clone, Debug)]
pub struct StatusOptions {
    /// `reportingInstance` of the Events (the pod name).
    pub identity: String,
    /// How often to look at the agents' acks.
    pub tick: Duration,
}

/// One Quarantine as the writer follows it.
#[derive(Clone, Debug)]
struct Tracked {
    uid: Option<String>,
    first_generation: u64,
    /// node → (generation acked, unix millis)
    enforced: BTreeMap<String, (u64, u64)>,
}

/// The content of a status this leader wrote, without timestamps.
#[derive(Clone, Debug, PartialEq)]
struct Written {
    accepted: bool,
    message: String,
    observed_generation: Option<i64>,
    enforced: BTreeMap<String, (u64, u64)>,
}

pub struct StatusWriter {
    client: Client,
    leader: LeaderState,
    board: Arc<StatusBoard>,
    options: StatusOptions,
    /// (origin label, uid, note) of every Event sent.
    events_sent: BTreeSet<(String, Option<String>, String)>,
    /// What this leader wrote per object (origin label), this term.
    written: BTreeMap<String, Written>,
    /// When each object's `Accepted` last changed, and to what.
    transitions: BTreeMap<String, (bool, Timestamp)>,
    quarantines: BTreeMap<String, Tracked>,
    recorder: Recorder,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("options", &self.options)
            .finish()
    }
}

impl StatusWriter {
    pub fn new(
        client: Client,
        leader: LeaderState,
        board: Arc<StatusBoard>,
        options: StatusOptions,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), options.identity.clone()),
            client,
            leader,
            board,
            options,
            events_sent: BTreeSet::new(),
            written: BTreeMap::new(),
            transitions: BTreeMap::new(),
            quarantines: BTreeMap::new(),
        }
    }

    /// Runs until the `applied` channel closes.
    pub async fn run(mut self, mut applied: watch::Receiver<Applied>) {
        let mut ticker = tokio::time::interval(self.options.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leader = self.leader.clone();
        loop {
            let current = applied.borrow_and_update().clone();
            self.sync(&current).await;
            tokio::select! {
                r = applied.changed() => if r.is_err() { return },
                _ = leader.changed() => {}
                _ = ticker.tick() => {}
            }
        }
    }

    /// Brings Events and statuses up to date with one applied snapshot.
    pub async fn sync(&mut self, applied: &Applied) {
        self.track(applied);
        if !self.leader.is_leader() {
            if !self.written.is_empty() {
                debug!("not leading: forgetting what this replica wrote");
                self.written.clear();
            }
            return;
        }
        let snap = &applied.snapshot;
        // Problems per object.
        let mut problems: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for d in snap.diagnostics.iter().filter(|d| d.is_error()) {
            let Some(label) = d.origin.as_ref().map(|o| o.file.as_str()) else {
                continue;
            };
            if !snap.refs.contains_key(label) {
                continue;
            }
            let text = match &d.field {
                Some(f) => format!("{f}: {}", d.message),
                None => d.message.clone(),
            };
            problems.entry(label).or_default().push(text);
        }
        for (label, list) in &problems {
            let Some(object) = snap.refs.get(*label) else {
                continue;
            };
            let note = truncate(
                &format!(
                    "{} {} rejected: {}; the rest of the cluster's policy stays in force",
                    object.kind,
                    object.display_name(),
                    list.join("; ")
                ),
                1000,
            );
            let key = (label.to_string(), object.uid.clone(), note.clone());
            if self.events_sent.contains(&key) {
                continue;
            }
            if self.event(object, &note).await {
                self.events_sent.insert(key);
            }
        }
        // Statuses of Bulkhead's own kinds.
        for (label, object) in &snap.refs {
            if !object.api_version.starts_with(&format!("{GROUP}/")) {
                continue;
            }
            let list = problems.get(label.as_str());
            let accepted = list.is_none();
            let message = match list {
                None => "accepted".to_owned(),
                Some(l) => l.join("; "),
            };
            let enforced = self
                .quarantines
                .get(label)
                .map(|q| q.enforced.clone())
                .unwrap_or_default();
            let want = Written {
                accepted,
                message,
                observed_generation: object.generation,
                enforced,
            };
            if self.written.get(label) == Some(&want) {
                continue;
            }
            if self.status(label, object, &want).await {
                self.written.insert(label.clone(), want);
            }
        }
        self.written.retain(|l, _| snap.refs.contains_key(l));
        self.events_sent
            .retain(|(l, _, _)| snap.refs.contains_key(l));
        self.transitions.retain(|l, _| snap.refs.contains_key(l));
    }

    /// Follows Quarantines and the nodes that acked a generation with them.
    fn track(&mut self, applied: &Applied) {
        let snap = &applied.snapshot;
        self.quarantines.retain(|l, _| snap.refs.contains_key(l));
        let board = self.board.snapshot();
        for (label, object) in &snap.refs {
            if object.api_version.starts_with(&format!("{GROUP}/")) && object.kind == "Quarantine" {
                let q = self.quarantines.entry(label.clone()).or_insert(Tracked {
                    uid: object.uid.clone(),
                    first_generation: applied.generation,
                    enforced: BTreeMap::new(),
                });
                if q.uid != object.uid {
                    *q = Tracked {
                        uid: object.uid.clone(),
                        first_generation: applied.generation,
                        enforced: BTreeMap::new(),
                    };
                }
                for (node, s) in &board {
                    if let (Some(g), Some(at)) = (s.acked_generation, s.acked_at_unix_millis)
                        && g >= q.first_generation
                    {
                        q.enforced.entry(node.clone()).or_insert((g, at));
                    }
                }
            }
        }
    }

    async fn event(&mut self, object: &ObjectRef, note: &str) -> bool {
        if !self.leader.is_leader() {
            return false;
        }
        let spec = EventSpec {
            regarding: ObjectReference {
                api_version: Some(object.api_version.clone()),
                kind: Some(object.kind.clone()),
                namespace: object.namespace.clone(),
                name: Some(object.name.clone()),
                uid: object.uid.clone(),
                ..ObjectReference::default()
            },
            related: None,
            type_: "Warning".into(),
            reason: "Rejected".into(),
            action: "Validate".into(),
            note: note.to_owned(),
        };
        match self.recorder.publish(spec).await {
            Ok(()) => {
                info!(object = %format!("{} {}", object.kind, object.display_name()), "event written");
                true
            }
            Err(e) => {
                warn!(object = %format!("{} {}", object.kind, object.display_name()), error = %e, "cannot write an event");
                false
            }
        }
    }

    async fn status(&mut self, label: &str, object: &ObjectRef, want: &Written) -> bool {
        if !self.leader.is_leader() {
            return false;
        }
        let since = match self.transitions.get(label) {
            Some((a, t)) if *a == want.accepted => *t,
            _ => {
                let t = Timestamp::now();
                self.transitions
                    .insert(label.to_owned(), (want.accepted, t));
                t
            }
        };
        let condition = json!({
            "type": "Accepted",
            "status": if want.accepted { "True" } else { "False" },
            "reason": if want.accepted { "Accepted" } else { "Invalid" },
            "message": truncate(&want.message, 32_000),
            "observedGeneration": object.generation,
            "lastTransitionTime": Time(since),
        });
        let mut status = json!({ "conditions": [condition] });
        if object.kind == "Quarantine" {
            let enforced: Vec<Value> = want
                .enforced
                .iter()
                .map(|(node, (generation, millis))| {
                    let t = Timestamp::from_millisecond(i64::try_from(*millis).unwrap_or(0))
                        .unwrap_or(Timestamp::UNIX_EPOCH);
                    json!({ "node": node, "generation": generation, "time": Time(t) })
                })
                .collect();
            status["enforcedBy"] = Value::Array(enforced);
        }
        let (group, version) = object
            .api_version
            .split_once('/')
            .unwrap_or(("", object.api_version.as_str()));
        let resource = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: object.api_version.clone(),
            kind: object.kind.clone(),
            plural: object.plural.clone(),
        };
        let api: Api<DynamicObject> = match &object.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let patch = Patch::Merge(json!({ "status": status }));
        match api
            .patch_status(&object.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                debug!(object = %format!("{} {}", object.kind, object.display_name()), "status written");
                true
            }
            Err(e) => {
                warn!(object = %format!("{} {}", object.kind, object.display_name()), error = %e, "cannot write a status");
                false
            }
        }
    }
}
