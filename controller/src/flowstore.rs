//! Kube mode's side of the flow store: the graph persisted as one
//! `FlowBaseline` per namespace ([`KubeStore`]), and anomaly alerts as
//! Kubernetes Events ([`EventSink`]). Every replica writes what its own
//! agents reported: agents are spread over the replicas, so a flow that
//! reached only a follower would otherwise be lost.
//!
//! ```text
//!  FlowHub::persist (every second, when changed) ──save──▶ KubeStore ──▶ list (when stale) ─┐
//!                                                             merge(API, own) ─▶ expire ─▶ split per namespace
//!                                                             └─ changed? ─▶ create | replace(resourceVersion)
//!  start, and every refresh period ──load──▶ KubeStore ──list──▶ join ──▶ FlowHub (merge)
//!  FlowHub::report ──anomaly──▶ EventSink ──bounded queue──▶ task ──▶ Event on the destination pod
//! ```
//!
//! Writes: a namespace's object is written only when its content differs
//! from what the API holds (as last listed or written). A new edge, or one
//! newly learned or alerted, is written at the next persist (within about a
//! second); changes of counts and times alone at most once per
//! `stats_interval` per namespace. Every replace carries the resourceVersion
//! read; a 409 Conflict (another replica wrote first) makes the next save
//! relist and merge again. Because the merge is a join (idempotent and
//! commutative), replicas writing in any order lose nothing any of them
//! wrote, and a restarted replica starts from the union.
//!
//! An object that does not parse (edited by hand) is reported by name and
//! field and never overwritten: that namespace is not persisted until it is
//! fixed or deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bulkhead_core::baseline;
use bulkhead_core::crd::{FLOW_BASELINE_NAME, FlowBaseline, FlowBaselineSpec};
use bulkhead_core::flows::{FlowGraph, GRAPH_VERSION, GraphDoc};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::events::{EventSpec, Recorder};
use crate::flows::{Alert, AlertSink, GraphStore};
use crate::lease::LeaderState;
use crate::server::unix_millis;

/// The verbs this module uses on `bulkhead.io` `flowbaselines` (the RBAC
/// test checks `manifests/rbac.yaml` grants exactly these).
pub const VERBS: [&str; 3] = ["list", "create", "update"];

/// The leader state, set once the election runs (the replica competes for
/// the Lease only after its first list); not leading until then.
pub type LeaderSlot = Arc<OnceLock<LeaderState>>;

/// Whether this replica leads now.
pub fn leading(slot: &LeaderSlot) -> bool {
    slot.get().is_some_and(LeaderState::is_leader)
}

#[derive(Clone, Debug)]
pub struct KubeStoreOptions {
    /// Edges not seen for this long are not written back (the retention).
    pub retention_millis: u64,
    /// Counts and times alone are written at most this often per namespace.
    pub stats_interval: Duration,
}

impl Default for KubeStoreOptions {
    fn default() -> Self {
        Self {
            retention_millis: 7 * 24 * 3_600_000,
            stats_interval: Duration::from_secs(60),
        }
    }
}

/// What the API holds for one namespace.
#[derive(Clone, Debug)]
struct Remote {
    resource_version: Option<String>,
    spec: FlowBaselineSpec,
}

#[derive(Debug, Default)]
struct State {
    remote: BTreeMap<String, Remote>,
    /// Namespaces whose object does not parse: never written.
    broken: BTreeSet<String>,
    /// `remote` is what the API held at the last list or write.
    fresh: bool,
    last_write: BTreeMap<String, Instant>,
    pending: bool,
    /// The CRD is not installed (logged once).
    absent: bool,
}

/// The flow graph as FlowBaseline objects. Its methods block on the runtime
/// given at construction: call them off it (`spawn_blocking`), as the hub's
/// persist task does.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    runtime: tokio::runtime::Handle,
    options: KubeStoreOptions,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("options", &self.options)
            .finish()
    }
}

impl KubeStore {
    pub fn new(client: Client, runtime: tokio::runtime::Handle, options: KubeStoreOptions) -> Self {
        Self {
            client,
            runtime,
            options,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn api(&self, ns: &str) -> Api<FlowBaseline> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Lists every FlowBaseline into `state.remote`; `None`: the CRD is not
    /// installed.
    async fn relist(&self) -> anyhow::Result<Option<FlowGraph>> {
        // As untyped objects: one bad object must not fail the whole list.
        let ar = kube::api::ApiResource::erase::<FlowBaseline>(&());
        let api: Api<kube::api::DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let mut st = self.lock();
                if !st.absent {
                    warn!(
                        "FlowBaseline is not served (CRD not installed): the learned flow graph is not persisted"
                    );
                    st.absent = true;
                }
                st.remote.clear();
                st.fresh = true;
                return Ok(None);
            }
            Err(e) => anyhow::bail!("cannot list FlowBaselines: {e}"),
        };
        let mut remote = BTreeMap::new();
        let mut broken = BTreeSet::new();
        let mut graph = FlowGraph::default();
        for o in list.items {
            let ns = o.metadata.namespace.clone().unwrap_or_default();
            let name = o.metadata.name.clone().unwrap_or_default();
            if name != FLOW_BASELINE_NAME {
                debug!(%ns, %name, "not the controller's FlowBaseline; ignored");
                continue;
            }
            let spec: Result<FlowBaselineSpec, String> = o
                .data
                .get("spec")
                .cloned()
                .ok_or_else(|| "spec: missing".to_owned())
                .and_then(|v| serde_json::from_value(v).map_err(|e| format!("spec: {e}")));
            match spec.and_then(|s| baseline::graph_of(&s).map(|g| (s, g))) {
                Ok((spec, g)) => {
                    baseline::merge(&mut graph, &g);
                    remote.insert(
                        ns,
                        Remote {
                            resource_version: o.metadata.resource_version.clone(),
                            spec,
                        },
                    );
                }
                Err(e) => {
                    warn!(object = %format!("FlowBaseline {ns}/{name}"), error = %e, "cannot read the learned flows of this namespace; they are not loaded and the object is not overwritten until it is fixed or deleted");
                    broken.insert(ns);
                }
            }
        }
        let mut st = self.lock();
        st.remote = remote;
        st.broken = broken;
        st.fresh = true;
        st.absent = false;
        Ok(Some(graph))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere; the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn save_async(&self, doc: &GraphDoc) -> anyhow::Result<()> {
        self.lock().pending = false;
        let fresh = self.lock().fresh;
        let mut merged = if fresh {
            let st = self.lock();
            let mut g = FlowGraph::default();
            for r in st.remote.values() {
                if let Ok(rg) = baseline::graph_of(&r.spec) {
                    baseline::merge(&mut g, &rg);
                }
            }
            g
        } else {
            match self.relist().await? {
                Some(g) => g,
                None => return Ok(()),
            }
        };
        let absent = self.lock().absent;
        if absent {
            return Ok(());
        }
        let mine = FlowGraph::from_doc(doc.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        baseline::merge(&mut merged, &mine);
        merged.expire(unix_millis(), self.options.retention_millis);
        let want = baseline::split(&merged);
        let (remote, broken) = {
            let st = self.lock();
            (st.remote.clone(), st.broken.clone())
        };
        let namespaces: BTreeSet<&String> = want.keys().chain(remote.keys()).collect();
        let mut errors = Vec::new();
        for ns in namespaces {
            if broken.contains(ns) {
                continue;
            }
            let spec = want.get(ns).cloned().unwrap_or_else(|| FlowBaselineSpec {
                version: GRAPH_VERSION,
                ..FlowBaselineSpec::default()
            });
            let have = remote.get(ns);
            if have.map(|h| &h.spec) == Some(&spec) {
                continue;
            }
            let recent = {
                let st = self.lock();
                st.last_write
                    .get(ns)
                    .is_some_and(|t| t.elapsed() < self.options.stats_interval)
            };
            if let Some(h) = have
                && recent
                && baseline::skeleton(&h.spec) == baseline::skeleton(&spec)
            {
                // Only statistics changed, and recently written: later.
                self.lock().pending = true;
                continue;
            }
            let api = self.api(ns);
            let object = FlowBaseline {
                metadata: ObjectMeta {
                    name: Some(FLOW_BASELINE_NAME.into()),
                    namespace: Some(ns.clone()),
                    resource_version: have.and_then(|h| h.resource_version.clone()),
                    ..ObjectMeta::default()
                },
                spec: spec.clone(),
            };
            let result = match have {
                Some(_) => {
                    api.replace(FLOW_BASELINE_NAME, &PostParams::default(), &object)
                        .await
                }
                None => api.create(&PostParams::default(), &object).await,
            };
            match result {
                Ok(written) => {
                    debug!(%ns, edges = spec.edges.len(), "FlowBaseline written");
                    let mut st = self.lock();
                    st.remote.insert(
                        ns.clone(),
                        Remote {
                            resource_version: written.metadata.resource_version,
                            spec,
                        },
                    );
                    st.last_write.insert(ns.clone(), Instant::now());
                }
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                    debug!(%ns, code = s.code, "FlowBaseline changed under us; relisting at the next save");
                    let mut st = self.lock();
                    st.fresh = false;
                    st.pending = true;
                }
                Err(e) => {
                    self.lock().pending = true;
                    errors.push(format!("FlowBaseline {ns}/{FLOW_BASELINE_NAME}: {e}"));
                }
            }
        }
        if !errors.is_empty() {
            anyhow::bail!("cannot write {}", errors.join("; "));
        }
        Ok(())
    }
}

impl GraphStore for KubeStore {
    fn load(&self) -> anyhow::Result<Option<GraphDoc>> {
        let graph = self.runtime.block_on(self.relist())?;
        if let Some(g) = &graph {
            info!(
                namespaces = self.lock().remote.len(),
                edges = g.edges.len(),
                "flow baselines read from the API"
            );
        }
        Ok(graph.map(|g| g.to_doc()))
    }

    fn save(&self, doc: &GraphDoc) -> anyhow::Result<()> {
        self.runtime.block_on(self.save_async(doc))
    }

    fn pending(&self) -> bool {
        self.lock().pending
    }
}

/// How many alerts may wait for their Event; more are dropped (and logged:
/// the log line and the counter have them).
pub const EVENT_QUEUE: usize = 256;

/// Records each anomaly alert as a `Warning` Event `FlowAnomaly` regarding
/// the destination pod (the source pod when the destination is outside the
/// cluster), related to the other pod, naming both workloads, the protocol,
/// port, verdict and rule. Leader only.
pub struct EventSink {
    tx: mpsc::Sender<Alert>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").finish()
    }
}

fn pod_ref(ns: &Option<String>, pod: &Option<String>) -> Option<ObjectReference> {
    Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(ns.clone()?),
        name: Some(pod.clone()?),
        ..ObjectReference::default()
    })
}

/// The Event of one alert; `None` when no end is a pod.
pub fn alert_event(a: &Alert) -> Option<EventSpec> {
    let dst = pod_ref(&a.dst_namespace, &a.dst_pod);
    let src = pod_ref(&a.src_namespace, &a.src_pod);
    let (regarding, related) = match (dst, src) {
        (Some(d), s) => (d, s),
        (None, Some(s)) => (s, None),
        (None, None) => return None,
    };
    let pods = format!(
        "{} -> {}",
        a.src_pod.as_deref().unwrap_or(&a.src_addr),
        a.dst_pod.as_deref().unwrap_or(&a.dst_addr)
    );
    Some(EventSpec {
        regarding,
        related,
        type_: "Warning".into(),
        reason: "FlowAnomaly".into(),
        action: "Observe".into(),
        note: format!(
            "flow {} -> {} {}/{} is outside the learned baseline and no declared policy allows it: verdict {}, rule {:?}, mode {}, node {}, pods {pods}",
            a.src_workload, a.dst_workload, a.protocol, a.port, a.verdict, a.rule, a.mode, a.node
        ),
    })
}

impl EventSink {
    /// Starts the task that writes the Events (on the current runtime).
    pub fn spawn(recorder: Recorder) -> Self {
        let (tx, mut rx) = mpsc::channel::<Alert>(EVENT_QUEUE);
        tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                let Some(spec) = alert_event(&a) else {
                    continue;
                };
                if let Err(e) = recorder.publish(spec).await {
                    warn!(src = %a.src_workload, dst = %a.dst_workload, port = a.port, error = %e, "cannot write the alert's Event");
                }
            }
        });
        Self { tx }
    }
}

impl AlertSink for EventSink {
    fn alert(&self, alert: &Alert) {
        if self.tx.try_send(alert.clone()).is_err() {
            warn!(src = %alert.src_workload, dst = %alert.dst_workload, port = alert.port, "too many alerts waiting for their Event; this one gets none");
        }
    }
}
