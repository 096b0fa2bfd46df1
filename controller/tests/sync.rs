//! The sync protocol, controller side, over real gRPC on loopback: a scripted
//! agent checks what the controller sends for each thing it says.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead::index::NodeIndex;
use bulkhead::server::{Authenticator, StatusBoard, SyncService};
use bulkhead_core::inventory::Inventory;
use bulkhead_core::load_str;
use bulkhead_proto::v1 as pb;
use pb::agent_message::Kind as A;
use support::agent::{agent, delta, serve, snapshot};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

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

const DENY: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {}\n";

struct Controller {
    index: Arc<Mutex<NodeIndex>>,
    status: Arc<StatusBoard>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn controller(auth: Authenticator) -> Controller {
    let index = Arc::new(Mutex::new(NodeIndex::new(1000)));
    index.lock().unwrap().update(inv(&format!(
        "{}{}",
        pod("a", "n1", "10.0.0.1", "web"),
        pod("b", "n2", "10.0.0.2", "db")
    )));
    let status = Arc::new(StatusBoard::default());
    let svc = SyncService {
        index: Arc::clone(&index),
        status: Arc::clone(&status),
        auth,
        keepalive: Duration::from_millis(200),
        stop: tokio::sync::watch::channel(false).1,
        flows: None,
    };
    let (url, task) = serve(svc).await;
    Controller {
        index,
        status,
        url,
        task,
    }
}

fn insecure() -> Authenticator {
    Arc::new(|_| Ok(None))
}

#[tokio::test]
async fn snapshot_then_deltas_against_what_was_acked() {
    let ctl = controller(insecure()).await;
    let mut a = agent(&ctl.url, "n1", 0).await.unwrap();
    let rs = snapshot(a.next().await);
    assert_eq!(rs.node, "n1", "a node gets its own ruleset");
    assert_eq!(rs.endpoints.len(), 1);
    a.ack(rs.generation).await;

    // A policy arrives: a delta from the acked generation.
    ctl.index.lock().unwrap().update(inv(&format!(
        "{}{}{DENY}",
        pod("a", "n1", "10.0.0.1", "web"),
        pod("b", "n2", "10.0.0.2", "db")
    )));
    let d = delta(a.next().await);
    assert_eq!(d.base_generation, rs.generation);
    assert!(d.generation > rs.generation);
    assert!(
        !d.add_chains.is_empty(),
        "the deny policy isolates the pod: a new chain"
    );
    let applied = bulkhead_core::compile::diff::apply(&rs, &d).unwrap();
    a.ack(d.generation).await;

    // Nothing changes: nothing is sent.
    a.quiet(Duration::from_millis(400)).await;
    let st = ctl.status.snapshot();
    assert_eq!(st["n1"].acked_generation, Some(d.generation));
    assert!(st["n1"].connected);
    assert_eq!(st["n1"].deltas_sent, 1);
    assert_eq!(applied.generation, d.generation);
}

#[tokio::test]
async fn changes_while_unacked_are_coalesced_into_one_delta() {
    let ctl = controller(insecure()).await;
    let mut a = agent(&ctl.url, "n1", 0).await.unwrap();
    let rs = snapshot(a.next().await);
    // Two changes before the ack.
    ctl.index
        .lock()
        .unwrap()
        .update(inv(&format!("{}{DENY}", pod("a", "n1", "10.0.0.1", "web"))));
    ctl.index.lock().unwrap().update(inv(&format!(
        "{}{}{DENY}",
        pod("a", "n1", "10.0.0.1", "web"),
        pod("c", "n1", "10.0.0.3", "web")
    )));
    let latest = ctl.index.lock().unwrap().generation();
    // Still waiting for the ack of the snapshot: nothing else is sent.
    a.quiet(Duration::from_millis(300)).await;
    a.ack(rs.generation).await;
    let d = delta(a.next().await);
    assert_eq!(d.base_generation, rs.generation);
    assert_eq!(d.generation, latest, "one delta straight to the latest");
    let applied = bulkhead_core::compile::diff::apply(&rs, &d).unwrap();
    assert_eq!(applied.endpoints.len(), 2);
}

#[tokio::test]
async fn a_returning_agent_gets_a_delta_if_its_generation_is_known() {
    let ctl = controller(insecure()).await;
    let mut a = agent(&ctl.url, "n1", 0).await.unwrap();
    let rs = snapshot(a.next().await);
    a.ack(rs.generation).await;
    drop(a);
    ctl.index
        .lock()
        .unwrap()
        .update(inv(&format!("{}{DENY}", pod("a", "n1", "10.0.0.1", "web"))));
    // Back with the generation it had: a delta.
    let mut a = agent(&ctl.url, "n1", rs.generation).await.unwrap();
    let d = delta(a.next().await);
    assert_eq!(d.base_generation, rs.generation);
    // Back with a generation the controller never made: a snapshot.
    let mut b = agent(&ctl.url, "n1", 42).await.unwrap();
    let s = snapshot(b.next().await);
    assert_eq!(s.generation, d.generation);
}

#[tokio::test]
async fn need_snapshot_and_nack_get_a_snapshot() {
    let ctl = controller(insecure()).await;
    let mut a = agent(&ctl.url, "n1", 0).await.unwrap();
    let rs = snapshot(a.next().await);
    a.ack(rs.generation).await;
    ctl.index
        .lock()
        .unwrap()
        .update(inv(&format!("{}{DENY}", pod("a", "n1", "10.0.0.1", "web"))));
    let d = delta(a.next().await);
    // The agent cannot use the delta.
    a.say(A::NeedSnapshot(pb::NeedSnapshot {
        have: 7,
        reason: "test".into(),
    }))
    .await;
    let s = snapshot(a.next().await);
    assert_eq!(s.generation, d.generation);
    // The kernel refuses it: after a backoff, a snapshot again.
    let t = tokio::time::Instant::now();
    a.say(A::Nack(pb::Nack {
        generation: s.generation,
        error: "no such set".into(),
    }))
    .await;
    let again = snapshot(a.next().await);
    assert_eq!(again.generation, s.generation);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "retried without backoff"
    );
    let st = ctl.status.snapshot();
    assert_eq!(st["n1"].nacks, 1);
    assert_eq!(st["n1"].last_error.as_deref(), Some("no such set"));
    a.ack(again.generation).await;
    a.quiet(Duration::from_millis(200)).await;
    assert_eq!(ctl.status.snapshot()["n1"].last_error, None);
}

#[tokio::test]
async fn an_agent_may_only_claim_its_own_node() {
    // An authenticator that says every peer is n2's agent.
    let ctl = controller(Arc::new(|_| Ok(Some("n2".to_owned())))).await;
    let refused = agent(&ctl.url, "n1", 0).await;
    let status = match refused {
        Err(s) => s,
        Ok(mut a) => match a.rx.message().await {
            Err(s) => s,
            other => panic!("n1's ruleset was served to n2's certificate: {other:?}"),
        },
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let mut ok = agent(&ctl.url, "n2", 0).await.unwrap();
    assert_eq!(snapshot(ok.next().await).node, "n2");
}

#[tokio::test]
async fn the_first_message_must_be_a_hello() {
    let ctl = controller(insecure()).await;
    let mut client = pb::sync_client::SyncClient::connect(ctl.url.clone())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentMessage {
        kind: Some(A::Ack(pb::Ack {
            generation: 1,
            apply_micros: 0,
        })),
    })
    .await
    .unwrap();
    let r = client.stream(ReceiverStream::new(rx)).await;
    let status = match r {
        Err(s) => s,
        Ok(resp) => resp.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}
