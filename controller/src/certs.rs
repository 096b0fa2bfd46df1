//! mTLS for the sync channel: a small CA that issues node (client) and
//! controller (server) certificates, the tonic TLS configurations built from
//! them, and the identity check that ties a stream to one node.
//!
//! ```text
//!   <dir>/ca.pem, ca-key.pem                 bulkhead CA (ECDSA P-256, 10 years)
//!     ├── node-<node>.pem, -key.pem          EKU clientAuth, DNS SAN = <node>, 1 year
//!     └── <server>.pem, <server>-key.pem     EKU serverAuth, SANs = <server> + --dns + --ip
//!
//!   agent ──TLS(node-<node>.pem)──▶ controller: handshake verifies the chain
//!     Hello{node} ── authorize(Hello.node, peer_node(peer_certs)) ── equal, or PermissionDenied
//! ```
//!
//! Keys are written with mode 0600, certificates 0644; every file is written
//! to a temporary name and renamed into place, so a reader never sees half a
//! key.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use clap::{ArgGroup, Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use tonic::transport::{Certificate, CertificateDer, ClientTlsConfig, Identity, ServerTlsConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// The CA certificate, in the certificate directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA private key, in the certificate directory.
pub const CA_KEY: &str = "ca-key.pem";
/// The CA's subject common name.
pub const CA_COMMON_NAME: &str = "bulkhead CA";

/// How long the CA is valid.
pub const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// How long node and server certificates are valid (never past the CA's end).
pub const LEAF_VALIDITY: time::Duration = time::Duration::days(365);
/// Certificates start this long before "now", for clocks slightly behind.
const BACKDATE: time::Duration = time::Duration::minutes(5);
/// Bound on a TLS handshake, both sides: a silent peer cannot hold a socket.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// Issuing or loading certificates failed. Every variant names its file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing to overwrite the existing CA {} (use --force to replace it; every certificate it issued stops working)", path.display())]
    CaExists { path: PathBuf },
    #[error("no CA at {}: run `bulkhead certs init --dir {}` first", path.display(), dir.display())]
    NoCa { path: PathBuf, dir: PathBuf },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("generating {}: {source}", path.display())]
    Generate {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
}

/// The certificate of a peer does not identify one node.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no client certificate: the sync channel requires mTLS")]
    NoCertificate,
    #[error("client certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("client certificate has no DNS subject alternative name naming the node")]
    NoDnsName,
    #[error("client certificate has {} DNS subject alternative names ({}); a node certificate has exactly one", .0.len(), .0.join(", "))]
    ManyDnsNames(Vec<String>),
    #[error("client certificate names {name:?}, which is not a valid node name: {reason}")]
    InvalidNodeName { name: String, reason: String },
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        tonic::Status::unauthenticated(e.to_string())
    }
}

/// What one issuing call wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub not_after: SystemTime,
}

// ---------------------------------------------------------------------------
// Issuing
// ---------------------------------------------------------------------------

/// Creates the CA in `dir` (created if missing): `ca.pem` and `ca-key.pem`,
/// ECDSA P-256, CN "bulkhead CA", valid 10 years. Refuses to replace an
/// existing CA (either file) unless `force`.
pub fn init_ca(dir: &Path, force: bool) -> Result<Issued, CertError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    if !force {
        for path in [&cert_path, &key_path] {
            match fs::symlink_metadata(path) {
                Ok(_) => return Err(CertError::CaExists { path: path.clone() }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CertError::Io {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
    }
    create_dir(dir)?;

    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    // Path length 0: the CA signs leaf certificates only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;

    let key = KeyPair::generate().map_err(|source| CertError::Generate {
        path: key_path.clone(),
        source,
    })?;
    let cert = params
        .self_signed(&key)
        .map_err(|source| CertError::Generate {
            path: cert_path.clone(),
            source,
        })?;
    // Key first: a CA certificate without its key is useless, a key without
    // its certificate is simply overwritten by the next `init`.
    write_file(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_file(&cert_path, cert.pem().as_bytes(), CERT_MODE)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        not_after: params.not_after.into(),
    })
}

/// The files `issue_node(dir, node)` writes: (`node-<node>.pem`, `node-<node>-key.pem`).
pub fn node_paths(dir: &Path, node: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("node-{node}.pem")),
        dir.join(format!("node-{node}-key.pem")),
    )
}

/// The files `issue_server(dir, name, ..)` writes: (`<name>.pem`, `<name>-key.pem`).
pub fn server_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    )
}

/// Issues the client certificate of node `node`, signed by the CA in `dir`:
/// EKU clientAuth, exactly one DNS SAN (the node name), valid 1 year.
/// Replaces an earlier certificate of the same node.
pub fn issue_node(dir: &Path, node: &str) -> Result<Issued, CertError> {
    check_name("node name", node)?;
    let (cert_path, key_path) = node_paths(dir, node);
    check_file_name("node name", node, &key_path)?;
    let mut params = leaf_params(node);
    params.subject_alt_names = vec![dns_san(node, &cert_path)?];
    params
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::ClientAuth);
    issue(dir, params, cert_path, key_path)
}

/// Issues a server certificate `<name>.pem` for the controller, signed by the
/// CA in `dir`: EKU serverAuth; DNS SANs `name` and `dns`, IP SANs `ips`;
/// valid 1 year. Replaces an earlier certificate of the same name.
pub fn issue_server(
    dir: &Path,
    name: &str,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<Issued, CertError> {
    check_name("server name", name)?;
    if name == "ca" || name.starts_with("node-") {
        return Err(CertError::InvalidName {
            what: "server name",
            name: name.to_owned(),
            reason: "its files would collide with the CA's or a node's (`ca`, `node-*`)".to_owned(),
        });
    }
    for d in dns {
        validate_node_name(d).map_err(|reason| CertError::InvalidName {
            what: "DNS name",
            name: d.clone(),
            reason,
        })?;
    }
    let (cert_path, key_path) = server_paths(dir, name);
    check_file_name("server name", name, &key_path)?;
    let mut params = leaf_params(name);
    let mut names: Vec<&str> = vec![name];
    for d in dns {
        if !names.contains(&d.as_str()) {
            names.push(d);
        }
    }
    params.subject_alt_names = names
        .into_iter()
        .map(|n| dns_san(n, &cert_path))
        .collect::<Result<_, _>>()?;
    let mut seen = Vec::new();
    for ip in ips {
        if !seen.contains(ip) {
            seen.push(*ip);
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
    }
    params
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::ServerAuth);
    issue(dir, params, cert_path, key_path)
}

fn leaf_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

fn dns_san(name: &str, cert_path: &Path) -> Result<SanType, CertError> {
    let ia5 = name.try_into().map_err(|source| CertError::Generate {
        path: cert_path.to_owned(),
        source,
    })?;
    Ok(SanType::DnsName(ia5))
}

/// Signs `params` with the CA in `dir` and writes key and certificate.
fn issue(
    dir: &Path,
    mut params: CertificateParams,
    cert_path: PathBuf,
    key_path: PathBuf,
) -> Result<Issued, CertError> {
    let ca = load_ca(dir)?;
    let now = OffsetDateTime::now_utc();
    if ca.not_after <= now {
        return Err(CertError::Invalid {
            path: ca.cert_path,
            reason: format!(
                "the CA expired at {}; run `bulkhead certs init --force`",
                ca.not_after
            ),
        });
    }
    params.not_before = now - BACKDATE;
    params.not_after = (now + LEAF_VALIDITY).min(ca.not_after);

    let key = KeyPair::generate().map_err(|source| CertError::Generate {
        path: key_path.clone(),
        source,
    })?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|source| CertError::Generate {
            path: cert_path.clone(),
            source,
        })?;
    write_file(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_file(&cert_path, cert.pem().as_bytes(), CERT_MODE)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        not_after: params.not_after.into(),
    })
}

struct Ca {
    cert_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

fn load_ca(dir: &Path) -> Result<Ca, CertError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let read = |path: &Path| match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CertError::NoCa {
            path: path.to_owned(),
            dir: dir.to_owned(),
        }),
        Err(source) => Err(CertError::Io {
            path: path.to_owned(),
            source,
        }),
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;

    let invalid = |path: &Path, reason: String| CertError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let der = certificates(&cert_path, cert_pem.as_bytes())?
        .into_iter()
        .next()
        .ok_or_else(|| invalid(&cert_path, "no certificate".to_owned()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| invalid(&cert_path, format!("not an X.509 certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(invalid(&cert_path, "not a CA certificate".to_owned()));
    }
    let not_after = OffsetDateTime::from_unix_timestamp(x509.validity().not_after.timestamp())
        .map_err(|e| invalid(&cert_path, format!("bad notAfter: {e}")))?;

    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| invalid(&key_path, format!("not a PKCS#8 private key: {e}")))?;
    if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
        return Err(invalid(
            &key_path,
            format!("does not match the CA certificate {}", cert_path.display()),
        ));
    }
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(der), key)
        .map_err(|e| invalid(&cert_path, format!("cannot sign with this CA: {e}")))?;
    Ok(Ca {
        cert_path,
        issuer,
        not_after,
    })
}

/// Checks `name` is an RFC 1123 subdomain (what Kubernetes requires of a
/// node name) and a valid DNS name (labels of at most 63 characters).
pub fn validate_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > 253 {
        return Err(format!("{} characters, at most 253 allowed", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (leading, trailing or doubled `.`)".to_owned());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!(
                "character {c:?} not allowed: use lower-case letters, digits, `-` and `.` \
                 (RFC 1123 subdomain)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "label {label:?} must start and end with a letter or digit"
            ));
        }
    }
    Ok(())
}

fn check_name(what: &'static str, name: &str) -> Result<(), CertError> {
    validate_node_name(name).map_err(|reason| CertError::InvalidName {
        what,
        name: name.to_owned(),
        reason,
    })?;
    // `<x>-key.pem` is the key of `<x>`: a name ending in `-key` would
    // overwrite another name's key.
    if name.ends_with("-key") {
        return Err(CertError::InvalidName {
            what,
            name: name.to_owned(),
            reason:
                "must not end in `-key` (its certificate file would be another name's key file)"
                    .to_owned(),
        });
    }
    Ok(())
}

/// File names are limited to 255 bytes (`NAME_MAX`): a 253-character node
/// name is valid, `node-<it>-key.pem` is not.
fn check_file_name(what: &'static str, name: &str, longest: &Path) -> Result<(), CertError> {
    const NAME_MAX: usize = 255;
    let len = longest.file_name().map_or(0, |n| n.len());
    if len > NAME_MAX {
        return Err(CertError::InvalidName {
            what,
            name: name.to_owned(),
            reason: format!(
                "too long for its files: {len} bytes, at most {NAME_MAX} \
                 (names of at most {} characters fit)",
                NAME_MAX - (len - name.len())
            ),
        });
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `contents` to `path` with `mode`: a fresh temporary file in the same
/// directory, synced, then renamed over `path`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| CertError::Io { path, source }
    };
    // Unique per process and call: concurrent writers never share a temporary.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_file_name(format!(
        ".bulkhead-certs-{}-{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        })
        .map_err(io_err(&tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err(path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

// ---------------------------------------------------------------------------
// Loading for tonic
// ---------------------------------------------------------------------------

/// The controller's TLS: serves `cert`/`key` and requires every client to
/// present a certificate that chains to `client_ca` (and has EKU clientAuth).
/// The files are read and checked here, so a bad path or file fails at start
/// with its name rather than at the first handshake.
pub fn server_tls(cert: &Path, key: &Path, client_ca: &Path) -> Result<ServerTlsConfig, CertError> {
    let cert_pem = read_certificates(cert)?;
    let key_pem = read_private_key(key)?;
    let ca_pem = read_certificates(client_ca)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(ca_pem))
        .client_auth_optional(false)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// An agent's TLS: trusts only `ca`, presents `cert`/`key`, and expects the
/// controller's certificate to name `server_name` (a DNS name or IP address
/// among its SANs).
pub fn client_tls(
    ca: &Path,
    cert: &Path,
    key: &Path,
    server_name: &str,
) -> Result<ClientTlsConfig, CertError> {
    let ca_pem = read_certificates(ca)?;
    let cert_pem = read_certificates(cert)?;
    let key_pem = read_private_key(key)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name(server_name)
        .timeout(HANDSHAKE_TIMEOUT))
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads a PEM file of one or more certificates, each parsed.
fn read_certificates(path: &Path) -> Result<Vec<u8>, CertError> {
    let pem = read(path)?;
    certificates(path, &pem)?;
    Ok(pem)
}

/// The DER certificates of a PEM buffer; at least one, all parseable.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    let invalid = |reason: String| CertError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let mut ders = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| invalid(format!("bad PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        block
            .parse_x509()
            .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
        ders.push(block.contents);
    }
    if ders.is_empty() {
        return Err(invalid("no PEM CERTIFICATE block".to_owned()));
    }
    Ok(ders)
}

/// Reads a PEM file holding a private key (PKCS#8, SEC1 or PKCS#1).
fn read_private_key(path: &Path) -> Result<Vec<u8>, CertError> {
    let pem = read(path)?;
    let mut found = false;
    for block in Pem::iter_from_buffer(&pem) {
        let block = block.map_err(|e| CertError::Invalid {
            path: path.to_owned(),
            reason: format!("bad PEM: {e}"),
        })?;
        found |= block.label.ends_with("PRIVATE KEY");
    }
    if !found {
        return Err(CertError::Invalid {
            path: path.to_owned(),
            reason: "no PEM PRIVATE KEY block".to_owned(),
        });
    }
    Ok(pem)
}

// ---------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------

/// The node a TLS peer is, from `Request::peer_certs()`: the single DNS SAN
/// of the leaf certificate. The handshake has already verified the chain.
pub fn peer_node(
    peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
) -> Result<String, AuthError> {
    let certs = peer_certs.ok_or(AuthError::NoCertificate)?;
    node_of_chain(&certs)
}

/// [`peer_node`] for a borrowed chain, leaf first.
pub fn node_of_chain(chain: &[CertificateDer<'_>]) -> Result<String, AuthError> {
    let leaf = chain.first().ok_or(AuthError::NoCertificate)?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| AuthError::Parse(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| AuthError::Parse(e.to_string()))?;
    let mut names: Vec<String> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    match names.len() {
        0 => Err(AuthError::NoDnsName),
        1 => {
            let name = names.remove(0);
            match validate_node_name(&name) {
                Ok(()) => Ok(name),
                Err(reason) => Err(AuthError::InvalidNodeName { name, reason }),
            }
        }
        _ => Err(AuthError::ManyDnsNames(names)),
    }
}

/// Allows a stream only when the node named in the agent's Hello is the node
/// of its certificate.
pub fn authorize(claimed: &str, peer: &str) -> Result<(), tonic::Status> {
    if claimed == peer {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(format!(
            "Hello names node {claimed:?} but the client certificate is for node {peer:?}: \
             a node may only sync its own ruleset"
        )))
    }
}

// ---------------------------------------------------------------------------
// CLI: `bulkhead certs ...`
// ---------------------------------------------------------------------------

/// `bulkhead certs`: the sync channel's certificates.
#[derive(Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create the CA: `ca.pem` and `ca-key.pem` in DIR.
    Init(InitArgs),
    /// Issue a node (client) or controller (server) certificate signed by the CA in DIR.
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The certificate directory (created if missing).
    #[arg(long, env = "BULKHEAD_CERTS_DIR")]
    pub dir: PathBuf,
    /// Replace an existing CA. Every certificate it issued stops being accepted.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("subject").required(true).args(["node", "server"])))]
pub struct IssueArgs {
    /// The certificate directory, holding the CA.
    #[arg(long, env = "BULKHEAD_CERTS_DIR")]
    pub dir: PathBuf,
    /// Issue `node-NAME.pem`: a client certificate for the agent on node NAME.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Issue `NAME.pem`: a server certificate for the controller (DNS SAN NAME).
    #[arg(long, value_name = "NAME")]
    pub server: Option<String>,
    /// Another DNS SAN of the server certificate. Repeatable.
    #[arg(long, value_name = "NAME", conflicts_with = "node")]
    pub dns: Vec<String>,
    /// An IP SAN of the server certificate. Repeatable.
    #[arg(long, value_name = "ADDR", conflicts_with = "node")]
    pub ip: Vec<IpAddr>,
}

/// Runs a `bulkhead certs` subcommand; returns what to print.
pub fn run(args: CertsArgs) -> anyhow::Result<String> {
    let CertsArgs { command } = args;
    match command {
        CertsCommand::Init(InitArgs { dir, force }) => {
            let issued = init_ca(&dir, force)?;
            Ok(describe("CA", &issued))
        }
        CertsCommand::Issue(IssueArgs {
            dir,
            node,
            server,
            dns,
            ip,
        }) => match (node, server) {
            (Some(node), None) => {
                let issued = issue_node(&dir, &node)?;
                Ok(describe(
                    &format!("client certificate for node {node}"),
                    &issued,
                ))
            }
            (None, Some(server)) => {
                let issued = issue_server(&dir, &server, &dns, &ip)?;
                Ok(describe(&format!("server certificate {server}"), &issued))
            }
            // clap's `subject` group makes exactly one of them present.
            _ => anyhow::bail!("give exactly one of --node and --server"),
        },
    }
}

fn describe(what: &str, issued: &Issued) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "wrote {what}, valid until {} (UTC):",
        OffsetDateTime::from(issued.not_after).date()
    );
    let _ = writeln!(out, "  certificate: {}", issued.cert.display());
    let _ = write!(out, "  key:         {}", issued.key.display());
    out
}
