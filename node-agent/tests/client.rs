//! The agent's sync client against the real controller service on loopback,
//! with an in-memory dataplane: it applies, acks, survives a controller
//! restart (fail-static, then resumes), and nacks what the kernel refuses.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead::index::NodeIndex;
use bulkhead::server::{StatusBoard, SyncService};
use bulkhead_agent::client::{self, ClientConfig};
use bulkhead_agent::dataplane::fake::Fake;
use bulkhead_agent::dataplane::{AgentSets, Dataplane, DataplaneError, KernelState};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::load_str;
use bulkhead_proto::v1 as pb;

/// A fake the test can look into while the client owns it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Fake>>);

impl Dataplane for Shared {
    fn state(&mut self) -> Result<KernelState, DataplaneError> {
        self.0.lock().unwrap().state()
    }
    fn apply_full(&mut self, rs: &pb::Ruleset, agent: &AgentSets) -> Result<(), DataplaneError> {
        self.0.lock().unwrap().apply_full(rs, agent)
    }
    fn apply_delta(
        &mut self,
        d: &pb::RulesetDelta,
        agent: Option<&AgentSets>,
    ) -> Result<(), DataplaneError> {
        self.0.lock().unwrap().apply_delta(d, agent)
    }
    fn set_agent_sets(&mut self, agent: &AgentSets) -> Result<(), DataplaneError> {
        self.0.lock().unwrap().set_agent_sets(agent)
    }
}

impl Shared {
    fn generation(&self) -> Option<u64> {
        self.0
            .lock()
            .unwrap()
            .applied
            .as_ref()
            .map(|r| r.generation)
    }
}

fn inv(pods: usize, deny: bool) -> Arc<Inventory> {
    let mut y = String::new();
    for i in 0..pods {
        y += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x, labels: {{app: web}}}}\nspec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.0.0.{}}}\n",
            i + 1
        );
    }
    if deny {
        y += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {}\n";
    }
    let (i, d) = Inventory::from_loaded(&load_str("t.yaml", &y));
    assert!(d.is_empty());
    Arc::new(i)
}

struct Controller {
    index: Arc<Mutex<NodeIndex>>,
    status: Arc<StatusBoard>,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Controller {
    /// What a killed controller looks like to its agents: every stream and
    /// the listener go away.
    async fn kill(self) {
        let _ = self.stop.send(true);
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn controller(
    listener: tokio::net::TcpListener,
    first_generation: u64,
    inventory: Arc<Inventory>,
) -> Controller {
    let index = Arc::new(Mutex::new(NodeIndex::new(first_generation)));
    index.lock().unwrap().update(inventory);
    let status = Arc::new(StatusBoard::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let svc = SyncService {
        index: Arc::clone(&index),
        status: Arc::clone(&status),
        auth: Arc::new(|_| Ok(None)),
        keepalive: Duration::from_millis(100),
        stop,
        flows: None,
    };
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(pb::sync_server::SyncServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    Controller {
        index,
        status,
        task,
        stop: stop_tx,
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config(url: String) -> ClientConfig {
    ClientConfig {
        controller: url,
        node: "n1".into(),
        tls: None,
        links: false,
        pod_iface_prefix: None,
        keepalive: Duration::from_millis(100),
        version: "test".into(),
        flows: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_survives_a_controller_restart_and_resumes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ctl = controller(listener, 1000, inv(1, false)).await;
    let dp = Shared::default();
    let agent = tokio::spawn(client::run(config(format!("http://{addr}")), dp.clone()));

    let g1 = ctl.index.lock().unwrap().generation();
    until("the first snapshot", || dp.generation() == Some(g1)).await;
    until("the ack", || {
        ctl.status
            .snapshot()
            .get("n1")
            .and_then(|s| s.acked_generation)
            == Some(g1)
    })
    .await;

    // A change: applied as a delta.
    ctl.index.lock().unwrap().update(inv(2, true));
    let g2 = ctl.index.lock().unwrap().generation();
    until("the delta", || dp.generation() == Some(g2)).await;
    assert_eq!(ctl.status.snapshot()["n1"].deltas_sent, 1);
    let transactions = dp.0.lock().unwrap().transactions;

    // The controller goes away: the agent keeps what it has (fail-static).
    ctl.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a window in which nothing may change
    assert_eq!(dp.generation(), Some(g2));
    assert_eq!(
        dp.0.lock().unwrap().transactions,
        transactions,
        "touched the dataplane without a controller"
    );

    // A new controller on the same address, with newer state: the agent
    // reconnects, says what it has, and gets the new state.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let ctl2 = controller(listener, g2 + 100, inv(3, true)).await;
    let g3 = ctl2.index.lock().unwrap().generation();
    until("the new controller's ruleset", || {
        dp.generation() == Some(g3)
    })
    .await;
    // The ack follows the apply over the stream: wait for it, as for g1.
    until("the new controller's ack", || {
        ctl2.status
            .snapshot()
            .get("n1")
            .and_then(|s| s.acked_generation)
            == Some(g3)
    })
    .await;
    assert_eq!(
        dp.0.lock()
            .unwrap()
            .applied
            .as_ref()
            .unwrap()
            .endpoints
            .len(),
        3
    );
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_transaction_is_nacked_and_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ctl = controller(listener, 1000, inv(1, false)).await;
    let dp = Shared::default();
    dp.0.lock().unwrap().fail_next = Some("Error: Could not process rule".into());
    let agent = tokio::spawn(client::run(config(format!("http://{addr}")), dp.clone()));
    until("the nack", || {
        ctl.status
            .snapshot()
            .get("n1")
            .is_some_and(|s| s.nacks == 1)
    })
    .await;
    assert!(
        ctl.status.snapshot()["n1"]
            .last_error
            .as_deref()
            .unwrap()
            .contains("Could not process rule")
    );
    assert_eq!(
        dp.generation(),
        None,
        "a refused ruleset must not count as applied"
    );
    // The retry succeeds.
    let g = ctl.index.lock().unwrap().generation();
    until("the retry", || dp.generation() == Some(g)).await;
    until("the error to clear", || {
        ctl.status.snapshot()["n1"].last_error.is_none()
    })
    .await;
    agent.abort();
    ctl.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_table_is_refused_before_connecting() {
    #[derive(Clone)]
    struct Foreign;
    impl Dataplane for Foreign {
        fn state(&mut self) -> Result<KernelState, DataplaneError> {
            Ok(KernelState::Foreign {
                why: "not ours".into(),
            })
        }
        fn apply_full(&mut self, _: &pb::Ruleset, _: &AgentSets) -> Result<(), DataplaneError> {
            panic!("touched a foreign table")
        }
        fn apply_delta(
            &mut self,
            _: &pb::RulesetDelta,
            _: Option<&AgentSets>,
        ) -> Result<(), DataplaneError> {
            panic!("touched a foreign table")
        }
        fn set_agent_sets(&mut self, _: &AgentSets) -> Result<(), DataplaneError> {
            panic!("touched a foreign table")
        }
    }
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        client::run(config("http://127.0.0.1:1".into()), Foreign),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            r,
            Err(client::ClientError::Dataplane(
                DataplaneError::ForeignTable { .. }
            ))
        ),
        "{r:?}"
    );
}
