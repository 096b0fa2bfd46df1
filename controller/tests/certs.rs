//! mTLS of the sync channel over real sockets: a tonic `Sync` server on
//! 127.0.0.1 that authorizes each stream by its client certificate, and
//! clients with good, mismatched, foreign, missing or no TLS at all.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bulkhead::certs::{
    self, AuthError, CertError, CertsArgs, CertsCommand, authorize, client_tls, init_ca,
    issue_node, issue_server, node_of_chain, peer_node, server_tls,
};
use bulkhead_proto::v1::sync_client::SyncClient;
use bulkhead_proto::v1::sync_server::{Sync, SyncServer};
use bulkhead_proto::v1::{
    AgentMessage, ControllerMessage, Hello, Keepalive, agent_message, controller_message,
};
use clap::{CommandFactory as _, Parser};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{CertificateDer, ClientTlsConfig, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};

/// Bound on every network wait in these tests.
const WAIT: Duration = Duration::from_secs(10);
const SERVER: &str = "bulkhead-controller";

// ---------------------------------------------------------------------------
// A test `Sync` service: Hello → peer_node + authorize → one Keepalive.
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct TestSync {
    /// Streams that reached the handler (i.e. got through the TLS handshake).
    calls: Arc<AtomicUsize>,
}

type Out = Pin<Box<dyn Stream<Item = Result<ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Sync for TestSync {
    type StreamStream = Out;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let peer = peer_node(request.peer_certs())?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(WAIT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello"))??;
        let hello = match first.and_then(|m| m.kind) {
            Some(agent_message::Kind::Hello(h)) => h,
            other => {
                return Err(Status::invalid_argument(format!(
                    "first message must be Hello, got {other:?}"
                )));
            }
        };
        authorize(&hello.node, &peer)?;
        let reply = ControllerMessage {
            kind: Some(controller_message::Kind::Keepalive(Keepalive {
                unix_millis: 1,
            })),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(reply)]))))
    }
}

struct TestServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    _shutdown: oneshot::Sender<()>,
}

async fn start_server(dir: &Path) -> TestServer {
    let tls = server_tls(
        &dir.join(format!("{SERVER}.pem")),
        &dir.join(format!("{SERVER}-key.pem")),
        &dir.join(certs::CA_CERT),
    )
    .unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = TestSync {
        calls: calls.clone(),
    };
    let (tx, rx) = oneshot::channel::<()>();
    let router = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(SyncServer::new(svc));
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    TestServer {
        addr,
        calls,
        _shutdown: tx,
    }
}

/// Connects (with `tls`, or in plaintext when `None`), sends a Hello naming
/// `claimed`, and returns the first controller message — all within `WAIT`.
async fn hello(
    addr: SocketAddr,
    tls: Option<ClientTlsConfig>,
    claimed: &str,
) -> Result<ControllerMessage, Status> {
    let attempt = async {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .unwrap()
            .connect_timeout(WAIT)
            .timeout(WAIT);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("connect: {e:?}")))?;
        let mut client = SyncClient::new(channel);
        let hello = AgentMessage {
            kind: Some(agent_message::Kind::Hello(Hello {
                node: claimed.to_owned(),
                agent_version: "test".to_owned(),
                applied_generation: 0,
            })),
        };
        let mut inbound = client
            .stream(tokio_stream::iter([hello]))
            .await?
            .into_inner();
        inbound
            .message()
            .await?
            .ok_or_else(|| Status::unknown("stream ended without a message"))
    };
    tokio::time::timeout(WAIT, attempt)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("test timeout")))
}

/// A certificate directory: CA, server certificate (SANs SERVER, 127.0.0.1),
/// and node certificates for `node-a` and `node-b`.
fn mk_pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path(), false).unwrap();
    issue_server(
        dir.path(),
        SERVER,
        &["bulkhead.bulkhead-system.svc".to_owned()],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
    )
    .unwrap();
    issue_node(dir.path(), "node-a").unwrap();
    issue_node(dir.path(), "node-b").unwrap();
    dir
}

fn node_tls(ca_dir: &Path, cert_dir: &Path, node: &str, server_name: &str) -> ClientTlsConfig {
    let (cert, key) = certs::node_paths(cert_dir, node);
    client_tls(&ca_dir.join(certs::CA_CERT), &cert, &key, server_name).unwrap()
}

fn keepalive(m: &ControllerMessage) -> bool {
    matches!(m.kind, Some(controller_message::Kind::Keepalive(_)))
}

// ---------------------------------------------------------------------------
// Over the wire
// ---------------------------------------------------------------------------

#[tokio::test]
async fn own_node_gets_keepalive() {
    let pki = mk_pki();
    let server = start_server(pki.path()).await;
    let tls = node_tls(pki.path(), pki.path(), "node-a", SERVER);
    let reply = hello(server.addr, Some(tls), "node-a").await.unwrap();
    assert!(keepalive(&reply), "{reply:?}");
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn server_verified_by_ip_san() {
    let pki = mk_pki();
    let server = start_server(pki.path()).await;
    let tls = node_tls(pki.path(), pki.path(), "node-b", "127.0.0.1");
    let reply = hello(server.addr, Some(tls), "node-b").await.unwrap();
    assert!(keepalive(&reply), "{reply:?}");
}

#[tokio::test]
async fn wrong_server_name_fails() {
    let pki = mk_pki();
    let server = start_server(pki.path()).await;
    let tls = node_tls(pki.path(), pki.path(), "node-a", "not-the-controller");
    let err = hello(server.addr, Some(tls), "node-a").await.unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn other_node_is_permission_denied() {
    let pki = mk_pki();
    let server = start_server(pki.path()).await;
    let tls = node_tls(pki.path(), pki.path(), "node-a", SERVER);
    let err = hello(server.addr, Some(tls), "node-b").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("\"node-b\""), "{}", err.message());
    assert!(err.message().contains("\"node-a\""), "{}", err.message());
}

#[tokio::test]
async fn foreign_ca_client_fails_handshake() {
    let pki = mk_pki();
    let other = tempfile::tempdir().unwrap();
    init_ca(other.path(), false).unwrap();
    issue_node(other.path(), "node-a").unwrap();
    let server = start_server(pki.path()).await;
    // Trusts the right CA for the server, presents a node-a cert from another CA.
    let tls = node_tls(pki.path(), other.path(), "node-a", SERVER);
    let err = hello(server.addr, Some(tls), "node-a").await.unwrap_err();
    // rustls answers a chain it cannot verify with a fatal alert.
    assert!(format!("{err:?}").contains("fatal alert"), "{err:?}");
    assert_ne!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        0,
        "reached the handler"
    );
}

#[tokio::test]
async fn server_certificate_as_client_fails_handshake() {
    // Signed by the right CA, but EKU serverAuth only.
    let pki = mk_pki();
    let server = start_server(pki.path()).await;
    let (cert, key) = certs::server_paths(pki.path(), SERVER);
    let tls = client_tls(&pki.path().join(certs::CA_CERT), &cert, &key, SERVER).unwrap();
    let err = hello(server.addr, Some(tls), SERVER).await.unwrap_err();
    assert!(format!("{err:?}").contains("fatal alert"), "{err:?}");
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        0,
        "reached the handler"
    );
}

#[tokio::test]
async fn client_without_certificate_fails() {
    let pki = mk_pki();
    let server = start_server(pki.path()).await;
    let ca = std::fs::read(pki.path().join(certs::CA_CERT)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name(SERVER)
        .timeout(WAIT);
    let err = hello(server.addr, Some(tls), "node-a").await.unwrap_err();
    assert!(
        format!("{err:?}").contains("CertificateRequired"),
        "{err:?}"
    );
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        0,
        "reached the handler"
    );
}

#[tokio::test]
async fn plaintext_client_fails() {
    let pki = mk_pki();
    let server = start_server(pki.path()).await;
    let err = hello(server.addr, None, "node-a").await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        0,
        "reached the handler"
    );
}

// ---------------------------------------------------------------------------
// Issuing
// ---------------------------------------------------------------------------

#[test]
fn issue_node_rejects_invalid_names() {
    let pki = mk_pki();
    for bad in [
        "",
        "Node-A",
        "node_a",
        "-node",
        "node-",
        "node..a",
        ".node",
        "node.",
        "a/b",
        "../../etc/x",
        "node a",
        &"x".repeat(64),
        &format!("{}a", ["a"; 127].join(".")), // 254 characters
        "node-a-key",
    ] {
        match issue_node(pki.path(), bad) {
            Err(CertError::InvalidName { name, reason, .. }) => {
                assert_eq!(name, bad);
                assert!(!reason.is_empty());
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // A valid 253-character name does not fit in a file name: a clear error.
    let long = ["a"; 127].join(".");
    let msg = issue_node(pki.path(), &long).unwrap_err().to_string();
    assert!(msg.contains("too long for its files"), "{msg}");
    issue_node(pki.path(), &"a".repeat(63)).unwrap();
    let msg = issue_node(pki.path(), "Node-A").unwrap_err().to_string();
    assert!(
        msg.contains("\"Node-A\"") && msg.contains("RFC 1123"),
        "{msg}"
    );
    // Good names, including a dotted one.
    issue_node(pki.path(), "ip-10-0-0-1.eu-west-1.compute.internal").unwrap();
    issue_node(pki.path(), "7").unwrap();
}

#[test]
fn init_ca_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path(), false).unwrap();
    let before = std::fs::read(dir.path().join(certs::CA_KEY)).unwrap();
    let err = init_ca(dir.path(), false).unwrap_err();
    assert!(matches!(err, CertError::CaExists { .. }), "{err:?}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join(certs::CA_KEY)).unwrap(),
        before
    );

    // Only the key left behind still counts as a CA.
    std::fs::remove_file(dir.path().join(certs::CA_CERT)).unwrap();
    let err = init_ca(dir.path(), false).unwrap_err();
    assert!(err.to_string().contains("ca-key.pem"), "{err}");

    init_ca(dir.path(), true).unwrap();
    assert_ne!(
        std::fs::read(dir.path().join(certs::CA_KEY)).unwrap(),
        before
    );
}

#[test]
fn issue_without_ca_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = issue_node(dir.path(), "node-a").unwrap_err();
    assert!(matches!(err, CertError::NoCa { .. }), "{err:?}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
}

#[test]
fn files_modes_and_identity() {
    let pki = mk_pki();
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(pki.path().join(certs::CA_KEY)), 0o600);
    assert_eq!(mode(pki.path().join("node-node-a-key.pem")), 0o600);
    assert_eq!(mode(pki.path().join(format!("{SERVER}-key.pem"))), 0o600);
    for f in [
        "ca.pem",
        "node-node-a.pem",
        "node-node-b.pem",
        "bulkhead-controller.pem",
    ] {
        assert!(pki.path().join(f).is_file(), "{f}");
    }
    // No temporary files left behind.
    let stray: Vec<_> = std::fs::read_dir(pki.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    // A node certificate identifies its node; a server certificate (two DNS
    // SANs) identifies none.
    assert_eq!(
        node_of_chain(&der(&pki.path().join("node-node-a.pem"))).unwrap(),
        "node-a"
    );
    let server = der(&pki.path().join(format!("{SERVER}.pem")));
    assert!(matches!(node_of_chain(&server), Err(AuthError::ManyDnsNames(n)) if n.len() == 2));
    // The CA certificate has no SAN at all.
    let ca = der(&pki.path().join(certs::CA_CERT));
    assert!(matches!(node_of_chain(&ca), Err(AuthError::NoDnsName)));
    assert!(matches!(peer_node(None), Err(AuthError::NoCertificate)));
    assert_eq!(
        Status::from(AuthError::NoCertificate).code(),
        Code::Unauthenticated
    );
    assert!(authorize("node-a", "node-a").is_ok());
    assert_eq!(
        authorize("node-b", "node-a").unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[test]
fn server_names_must_not_collide() {
    let pki = mk_pki();
    for bad in ["ca", "node-x", "foo-key"] {
        let err = issue_server(pki.path(), bad, &[], &[]).unwrap_err();
        assert!(
            matches!(err, CertError::InvalidName { .. }),
            "{bad}: {err:?}"
        );
    }
    let err = issue_server(pki.path(), "ok", &["Bad_Name".to_owned()], &[]).unwrap_err();
    assert!(err.to_string().contains("Bad_Name"), "{err}");
}

#[test]
fn loading_names_the_bad_file() {
    let pki = mk_pki();
    let p = pki.path();
    let missing = p.join("nope.pem");
    let err = server_tls(&missing, &p.join("ca-key.pem"), &p.join("ca.pem")).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    // A key where a certificate belongs, and the other way round.
    let err = client_tls(
        &p.join("node-node-a-key.pem"),
        &p.join("node-node-a.pem"),
        &p.join("node-node-a-key.pem"),
        SERVER,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("node-node-a-key.pem") && err.to_string().contains("CERTIFICATE"),
        "{err}"
    );
    let err = client_tls(
        &p.join("ca.pem"),
        &p.join("node-node-a.pem"),
        &p.join("node-node-a.pem"),
        SERVER,
    )
    .unwrap_err();
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
}

fn der(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read_to_string(path).unwrap();
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| CertificateDer::from(p.unwrap().contents))
        .collect()
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(clap::Subcommand, Debug)]
enum Top {
    Certs(CertsArgs),
}

fn cli(args: &[&str]) -> Result<CertsArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("bulkhead").chain(args.iter().copied())).map(|c| {
        let Top::Certs(a) = c.command;
        a
    })
}

#[test]
fn cli_init_and_issue() {
    Cli::command().debug_assert();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("pki");
    let d = d.to_str().unwrap();

    let out = certs::run(cli(&["certs", "init", "--dir", d]).unwrap()).unwrap();
    assert!(out.contains("ca.pem"), "{out}");
    let err = certs::run(cli(&["certs", "init", "--dir", d]).unwrap()).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    certs::run(cli(&["certs", "init", "--dir", d, "--force"]).unwrap()).unwrap();

    let out =
        certs::run(cli(&["certs", "issue", "--dir", d, "--node", "worker-1"]).unwrap()).unwrap();
    assert!(
        out.contains("node-worker-1.pem") && out.contains("node-worker-1-key.pem"),
        "{out}"
    );

    let args = cli(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--server",
        "ctl",
        "--dns",
        "ctl.ns.svc",
        "--dns",
        "ctl.ns.svc.cluster.local",
        "--ip",
        "10.0.0.1",
        "--ip",
        "::1",
    ])
    .unwrap();
    match &args.command {
        CertsCommand::Issue(i) => {
            assert_eq!(i.dns.len(), 2);
            assert_eq!(i.ip.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    let out = certs::run(args).unwrap();
    assert!(out.contains("ctl.pem"), "{out}");

    // Exactly one of --node / --server; --dns and --ip only with --server.
    assert!(cli(&["certs", "issue", "--dir", d]).is_err());
    assert!(cli(&["certs", "issue", "--dir", d, "--node", "a", "--server", "b"]).is_err());
    assert!(cli(&["certs", "issue", "--dir", d, "--node", "a", "--dns", "x"]).is_err());
    assert!(
        cli(&[
            "certs", "issue", "--dir", d, "--server", "s", "--ip", "nope"
        ])
        .is_err()
    );
}

#[test]
fn certificate_contents() {
    use x509_parser::extensions::GeneralName;
    let pki = mk_pki();
    let days = |x: &x509_parser::certificate::X509Certificate<'_>| {
        let v = x.validity();
        (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400
    };
    let ecdsa_p256 = |x: &x509_parser::certificate::X509Certificate<'_>| {
        let alg = &x.public_key().algorithm;
        alg.algorithm.to_id_string() == "1.2.840.10045.2.1"
            && alg
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .as_deref()
                == Some("1.2.840.10045.3.1.7")
    };

    let ca = der(&pki.path().join(certs::CA_CERT)).remove(0);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
    assert!(ca.is_ca());
    assert!(ecdsa_p256(&ca));
    assert_eq!(ca.subject().to_string(), "CN=bulkhead CA");
    assert_eq!(days(&ca), 3650);

    let node = der(&pki.path().join("node-node-a.pem")).remove(0);
    let (_, node) = x509_parser::parse_x509_certificate(&node).unwrap();
    assert!(!node.is_ca());
    assert!(ecdsa_p256(&node));
    assert_eq!(node.issuer().to_string(), "CN=bulkhead CA");
    let eku = node.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(days(&node), 365);
    let sans = &node
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans, &vec![GeneralName::DNSName("node-a")]);

    let server = der(&pki.path().join(format!("{SERVER}.pem"))).remove(0);
    let (_, server) = x509_parser::parse_x509_certificate(&server).unwrap();
    let eku = server.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let sans = &server
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        sans,
        &vec![
            GeneralName::DNSName(SERVER),
            GeneralName::DNSName("bulkhead.bulkhead-system.svc"),
            GeneralName::IPAddress(&[127, 0, 0, 1]),
        ]
    );
}
