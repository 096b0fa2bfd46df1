//! Flow observation: the kernel logs every new connection from or to a pod
//! on this node to nflog (see `bulkhead_core::compile::observe` for the rules
//! and prefixes); the observer reads them, the aggregator counts them in
//! bounded memory, and the sync client sends a `FlowReport` every second.
//!
//! ```text
//!  nft `log group 100` ─nflog (netlink)─▶ observer thread ─▶ Aggregator ─drain (1 s)─▶ FlowReport on the sync stream
//!                                                               ▲
//!                                     applied ruleset endpoints ┘ (pod identity)
//! ```
//!
//! Why nflog and not conntrack events: conntrack events carry no verdict and
//! no rule, and a dropped first packet never becomes a confirmed conntrack
//! entry, so denials would be invisible. nflog gets exactly the packets our
//! rules decide, with the deciding rule in the prefix. The kernel batches
//! nflog messages and drops them (never the packet) when our socket is full;
//! sequence numbers let us count what was lost.

pub mod aggregate;
pub mod measure;
pub mod observer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bulkhead_proto::v1 as pb;

pub use aggregate::{Aggregator, Limits, Observation};

/// A shared handle on the node's aggregator and the observer's counters.
#[derive(Clone, Debug)]
pub struct Flows {
    agg: Arc<Mutex<Aggregator>>,
    pub counters: Arc<Counters>,
}

/// What the observer saw, since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// nflog messages read.
    pub messages: AtomicU64,
    /// Connection attempts recorded (after merging one packet's records).
    pub observations: AtomicU64,
    /// Messages the kernel could not deliver (sequence gaps).
    pub lost: AtomicU64,
    /// Times the socket overflowed (ENOBUFS).
    pub overruns: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

impl Flows {
    pub fn new(limits: Limits) -> Self {
        Flows {
            agg: Arc::new(Mutex::new(Aggregator::new(limits))),
            counters: Arc::new(Counters::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Aggregator) -> T) -> T {
        // A panic elsewhere must not stop observation: the aggregator holds
        // only counts, which stay consistent record by record.
        let mut g = self.agg.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g)
    }

    /// The pods of the applied ruleset.
    pub fn set_endpoints(&self, endpoints: &[pb::Endpoint]) {
        self.with(|a| a.set_endpoints(endpoints));
    }

    pub fn record_all(&self, obs: &[Observation]) {
        self.with(|a| {
            for o in obs {
                a.record(o);
            }
        });
        self.counters
            .observations
            .fetch_add(obs.len() as u64, Ordering::Relaxed);
    }

    pub fn lost(&self, n: u64) {
        self.with(|a| a.lost(n));
        self.counters.lost.fetch_add(n, Ordering::Relaxed);
    }

    /// The report of the window that ends now; `None` when there is nothing to say.
    pub fn drain(&self) -> Option<pb::FlowReport> {
        self.with(|a| (!a.is_empty()).then(|| a.drain()))
    }
}
