//! Talking from inside a network namespace without leaving the root one:
//! every socket the lab opens lives on a dedicated thread that first moved
//! itself into the namespace (`setns(2)` changes only the calling thread),
//! so the lab CLI itself never sends a packet from the root namespace.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) -> anyhow::Result<()> {
    let path = PathBuf::from(NETNS_DIR).join(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {ns}"))?;
    Ok(())
}

/// Starts `f` on a new thread inside namespace `ns`; `f` runs only if the
/// thread got there (threads it starts inherit the namespace).
pub fn spawn_in<T, F>(ns: &str, what: &str, f: F) -> anyhow::Result<JoinHandle<anyhow::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let ns = ns.to_owned();
    thread::Builder::new()
        .name(format!("netns {what}"))
        .spawn(move || {
            enter(&ns)?;
            f()
        })
        .context("spawning a thread")
}

/// Runs `f` inside namespace `ns` (on a thread of its own) and returns what
/// it returns.
pub fn run_in<T, F>(ns: &str, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    spawn_in(ns, "call", f)?
        .join()
        .map_err(|_| anyhow!("a thread in namespace {ns} panicked"))?
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET path` from `addr`, in namespace `ns`, with HTTP/1.1 and
/// `Connection: close`, within `timeout` for each step.
pub fn http_get(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let owned = path.to_owned();
    run_in(ns, move || get(addr, &owned, timeout))
        .with_context(|| format!("GET http://{addr}{path} in namespace {ns}"))
}

fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).context("connecting")?;
    s.set_read_timeout(Some(timeout))
        .context("set_read_timeout")?;
    s.set_write_timeout(Some(timeout))
        .context("set_write_timeout")?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .context("sending the request")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the answer")?;
    parse_response(&raw)
}

/// Parses a whole HTTP/1.1 answer (read until the server closed).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("an empty answer")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = v.parse::<usize>().ok();
        }
    }
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(n) = length {
        ensure!(
            body.len() >= n,
            "the answer was cut short ({} of {n} bytes)",
            body.len()
        );
        body.truncate(n);
    }
    Ok(Response {
        status,
        body: String::from_utf8(body).context("the body is not UTF-8")?,
    })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without a size line")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("a chunk was cut short");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
