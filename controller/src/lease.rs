//! Leader election with a `coordination.k8s.io/v1` Lease: every replica
//! serves agents; only the holder of the Lease writes statuses and Events.
//!
//! ```text
//!  Elector ──get / create / replace(resourceVersion)──▶ Lease bulkhead-controller
//!     │ every retry period
//!     ▼
//!  watch<Option<Instant>>: "leading until"  ──▶ LeaderState::is_leader() before every write
//! ```
//!
//! Hand-written rather than `kube-lease-manager`: it is client-go's
//! algorithm in ~200 lines with three verbs (get, create, update — what
//! the RBAC grants, and what the mock API in the tests implements), one
//! dependency fewer to build, and the property we need is explicit here:
//! a leader is leader only until `last successful renewal + renew_deadline`,
//! which is shorter than the `lease_duration` another replica waits before
//! it takes over, so two replicas never write at the same time (as long
//! as clocks run at the same rate; nothing depends on them agreeing).
//!
//! Optimistic concurrency: every write is a `replace` carrying the
//! `resourceVersion` that was read; a 409 Conflict means someone else wrote
//! first, and this round is lost. Expiry of another holder is judged on the
//! local clock from the moment its record was last seen to change (as
//! client-go does), never by comparing timestamps from other machines.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The Lease's default name.
pub const LEASE_NAME: &str = "bulkhead-controller";

#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long others wait, after the holder last renewed, before taking over.
    pub lease_duration: Duration,
    /// How long the holder goes on without a successful renewal before it
    /// stops writing. Must be shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often to renew, or to try to acquire.
    pub retry_period: Duration,
}

impl LeaseOptions {
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            name: LEASE_NAME.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this replica leads, checked before every write.
#[derive(Clone, Debug)]
pub struct LeaderState {
    rx: watch::Receiver<Option<Instant>>,
}

impl LeaderState {
    /// A state that always leads (tests, and a single replica without a Lease).
    pub fn always() -> Self {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let (tx, rx) = watch::channel(Some(far));
        // A receiver keeps the last value after its sender is gone.
        drop(tx);
        Self { rx }
    }

    /// True while the Lease is held and its last renewal is recent enough.
    pub fn is_leader(&self) -> bool {
        matches!(*self.rx.borrow(), Some(until) if Instant::now() < until)
    }

    /// Waits for the next change of leadership (or of the renewal).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

/// The holder's record, as last seen, and when it was seen to change.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renew: Option<MicroTime>,
    transitions: Option<i32>,
    duration: Option<i32>,
}

/// Runs the election; the returned state follows it. The task runs until
/// every [`LeaderState`] is dropped.
pub fn spawn(client: Client, options: LeaseOptions) -> (LeaderState, tokio::task::JoinHandle<()>) {
    // A stop channel whose sender is gone never stops the election.
    let (_, stop) = watch::channel(false);
    spawn_with_stop(client, options, stop)
}

/// [`spawn`], and stops when `stop` turns true: then it stops leading
/// first (writers see it at once), and releases the Lease (clears its
/// holder) so that a successor need not wait a lease duration. Await the
/// task to know the release is done.
pub fn spawn_with_stop(
    client: Client,
    options: LeaseOptions,
    stop: watch::Receiver<bool>,
) -> (LeaderState, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(run(client, options, tx, stop));
    (LeaderState { rx }, task)
}

async fn run(
    client: Client,
    o: LeaseOptions,
    tx: watch::Sender<Option<Instant>>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &o.namespace);
    let mut observed: Option<(Record, Instant)> = None;
    let mut last_renew: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let mut stoppable = true;
    loop {
        let started = Instant::now();
        match try_acquire_or_renew(&api, &o, &mut observed).await {
            Ok(true) => {
                if last_renew.is_none() {
                    info!(lease = %o.name, identity = %o.identity, "leading: this replica writes statuses and events");
                }
                last_renew = Some(started);
                last_error = None;
                tx.send_replace(Some(started + o.renew_deadline));
            }
            Ok(false) => {
                if last_renew.take().is_some() {
                    warn!(lease = %o.name, "another replica holds the lease; stopped writing");
                }
                tx.send_replace(None);
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(&text) {
                    warn!(lease = %o.name, error = %text, "cannot renew or acquire the lease");
                    last_error = Some(text);
                }
                if let Some(t) = last_renew
                    && Instant::now() >= t + o.renew_deadline
                {
                    warn!(lease = %o.name, "lease not renewed within the deadline; stopped writing");
                    last_renew = None;
                    tx.send_replace(None);
                }
            }
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            () = tx.closed() => break,
            r = stop.changed(), if stoppable => match r {
                Ok(()) => if *stop.borrow() { break },
                Err(_) => stoppable = false,
            },
            () = tokio::time::sleep(o.retry_period) => {}
        }
    }
    // Stop writing before anyone else can lead.
    tx.send_replace(None);
    if last_renew.is_some() {
        release(&api, &o).await;
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Whole seconds, rounded up (the Lease holds seconds).
fn secs(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s.max(1)).unwrap_or(i32::MAX)
}

/// One round: `Ok(true)` if this replica holds the Lease now.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    o: &LeaseOptions,
    observed: &mut Option<(Record, Instant)>,
) -> Result<bool, kube::Error> {
    let lease = match api.get(&o.name).await {
        Ok(l) => l,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let t = now();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(o.name.clone()),
                    namespace: Some(o.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(o.identity.clone()),
                    lease_duration_seconds: Some(secs(o.lease_duration)),
                    acquire_time: Some(t.clone()),
                    renew_time: Some(t),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Someone else created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let record = Record {
        holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
        renew: spec.renew_time.clone(),
        transitions: spec.lease_transitions,
        duration: spec.lease_duration_seconds,
    };
    let seen_at = match observed {
        Some((r, at)) if *r == record => *at,
        _ => {
            *observed = Some((record.clone(), Instant::now()));
            Instant::now()
        }
    };
    let mine = record.holder.as_deref() == Some(o.identity.as_str());
    if !mine && let Some(holder) = &record.holder {
        // The longer of ours and the holder's: never take over early.
        let duration = record
            .duration
            .and_then(|d| u64::try_from(d).ok())
            .map_or(o.lease_duration, |d| {
                o.lease_duration.max(Duration::from_secs(d))
            });
        if Instant::now() < seen_at + duration {
            debug!(%holder, "lease held by another replica");
            return Ok(false);
        }
        info!(%holder, "the lease expired; taking it over");
    }
    let t = now();
    let mut next = lease;
    let mut s = spec;
    if !mine {
        s.acquire_time = Some(t.clone());
        s.lease_transitions = Some(s.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    s.holder_identity = Some(o.identity.clone());
    s.lease_duration_seconds = Some(secs(o.lease_duration));
    s.renew_time = Some(t);
    next.spec = Some(s);
    // `next.metadata.resource_version` is the one read: the API server
    // refuses the write (409) if anyone wrote in between.
    match api.replace(&o.name, &PostParams::default(), &next).await {
        Ok(written) => {
            let spec = written.spec.unwrap_or_default();
            *observed = Some((
                Record {
                    holder: spec.holder_identity,
                    renew: spec.renew_time,
                    transitions: spec.lease_transitions,
                    duration: spec.lease_duration_seconds,
                },
                Instant::now(),
            ));
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (best effort) so that a successor takes over at once.
async fn release(api: &Api<Lease>, o: &LeaseOptions) {
    let Ok(mut lease) = api.get(&o.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(o.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = Some(now());
    match api.replace(&o.name, &PostParams::default(), &lease).await {
        Ok(_) => info!(lease = %o.name, "lease released"),
        Err(e) => debug!(lease = %o.name, error = %e, "could not release the lease"),
    }
}
