//! A scripted agent over real gRPC on loopback, and an in-process sync
//! server, for the controller's integration tests.
//!
//! ```text
//!  test ──say / ack──▶ Agent ──tonic stream──▶ SyncService (serve) or the whole controller (run_with)
//!       ◀──next / quiet──────────── snapshots, deltas (keepalives skipped)
//! ```
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use bulkhead::server::SyncService;
use bulkhead_proto::v1 as pb;
use pb::agent_message::Kind as A;
use pb::controller_message::Kind as C;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Serves `svc` on a loopback port: its URL and the server task.
pub async fn serve(svc: SyncService) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(pb::sync_server::SyncServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (url, task)
}

pub struct Agent {
    pub tx: mpsc::Sender<pb::AgentMessage>,
    pub rx: tonic::Streaming<pb::ControllerMessage>,
}

/// Connects as `node`'s agent, having applied generation `applied`.
pub async fn agent(url: &str, node: &str, applied: u64) -> Result<Agent, tonic::Status> {
    let mut client = pb::sync_client::SyncClient::connect(url.to_owned())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::AgentMessage {
        kind: Some(A::Hello(pb::Hello {
            node: node.into(),
            agent_version: "test".into(),
            applied_generation: applied,
        })),
    })
    .await
    .unwrap();
    let rx = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Agent { tx, rx })
}

impl Agent {
    /// The next message that is not a keepalive.
    pub async fn next(&mut self) -> C {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
                .await
                .expect("controller silent")
                .unwrap()
                .expect("stream closed");
            match m.kind.unwrap() {
                C::Keepalive(_) => continue,
                other => return other,
            }
        }
    }

    /// Asserts that nothing but keepalives comes within `d`.
    pub async fn quiet(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.message()).await {
                Err(_) => return,
                Ok(m) => match m.unwrap().unwrap().kind.unwrap() {
                    C::Keepalive(_) => {}
                    other => panic!("expected nothing, got {other:?}"),
                },
            }
        }
    }

    pub async fn say(&self, kind: A) {
        self.tx
            .send(pb::AgentMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    pub async fn ack(&self, generation: u64) {
        self.say(A::Ack(pb::Ack {
            generation,
            apply_micros: 1,
        }))
        .await;
    }
}

pub fn snapshot(c: C) -> pb::Ruleset {
    match c {
        C::Snapshot(rs) => rs,
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

pub fn delta(c: C) -> pb::RulesetDelta {
    match c {
        C::Delta(d) => d,
        other => panic!("expected a delta, got {other:?}"),
    }
}
