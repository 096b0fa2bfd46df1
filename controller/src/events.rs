//! Kubernetes Events (`events.k8s.io/v1`) as the controller writes them:
//! rejected objects ([`crate::status`]), anomaly alerts
//! ([`crate::flowstore::EventSink`]), auto-applied recommendations
//! ([`crate::autoapply`]). Callers check leadership first.
//!
//! ```text
//!  writer ──EventSpec { regarding, related, type, reason, action, note }──▶ Recorder::publish ──create──▶ Event in regarding's namespace
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

/// The `reportingController` of every Event.
pub const REPORTING_CONTROLLER: &str = "bulkhead.io/controller";

/// What one Event says.
#[derive(Clone, Debug, Default)]
pub struct EventSpec {
    pub regarding: ObjectReference,
    pub related: Option<ObjectReference>,
    /// `Normal` or `Warning`.
    pub type_: String,
    pub reason: String,
    pub action: String,
    pub note: String,
}

/// Creates Events as one controller replica (`reportingInstance`).
pub struct Recorder {
    client: Client,
    controller: String,
    identity: String,
    seq: AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("controller", &self.controller)
            .field("identity", &self.identity)
            .finish()
    }
}

impl Recorder {
    pub fn new(client: Client, identity: String) -> Self {
        Self::with_controller(client, REPORTING_CONTROLLER, identity)
    }

    /// A recorder reporting as another component (the CLI).
    pub fn with_controller(client: Client, controller: &str, identity: String) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            identity,
            seq: AtomicU64::new(0),
        }
    }

    /// Creates the Event in the namespace of what it regards (`default` for
    /// a cluster-scoped object). The note is cut to the API's 1 kB.
    pub async fn publish(&self, spec: EventSpec) -> Result<(), kube::Error> {
        let ns = spec
            .regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let now = Timestamp::now();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let base = spec.regarding.name.clone().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{base}.{:x}{seq:x}", now.as_nanosecond())),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(spec.type_),
            reason: Some(spec.reason),
            action: Some(spec.action),
            note: Some(truncate(&spec.note, 1000)),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.identity.clone()),
            regarding: Some(spec.regarding),
            related: spec.related,
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        api.create(&PostParams::default(), &event).await.map(|_| ())
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), `...` marking
/// the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
