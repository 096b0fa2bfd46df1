//! The flow log: one JSON object per line per reported flow (schema in
//! `docs/FLOWS.md`), to a file or stdout, rate-limited per node and rotated
//! by size.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bulkhead_core::flows::{Observation, Vertex, mode_str};
use serde_json::{Value, json};

/// Where the lines go.
#[derive(Debug)]
enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: File,
        size: u64,
        max_bytes: u64,
        keep: u32,
    },
}

/// The flow log writer.
#[derive(Debug)]
pub struct FlowLog {
    sink: Sink,
    /// Per node: the second of the current window and the lines written in it.
    windows: HashMap<String, (u64, u32)>,
    /// Lines not written because of the rate limit.
    pub suppressed: u64,
    /// Lines written.
    pub written: u64,
    /// Write errors (the line is lost, the controller goes on).
    pub errors: u64,
}

impl FlowLog {
    /// `-` is stdout; a path is a file, appended to, rotated when it would
    /// grow past `max_bytes` (`PATH.1` is the newest old file, `keep` old
    /// files are kept).
    pub fn open(target: &str, max_bytes: u64, keep: u32) -> std::io::Result<FlowLog> {
        let sink = if target == "-" {
            Sink::Stdout
        } else {
            let path = PathBuf::from(target);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let size = file.metadata()?.len();
            Sink::File {
                path,
                file,
                size,
                max_bytes: max_bytes.max(1024),
                keep,
            }
        };
        Ok(FlowLog {
            sink,
            windows: HashMap::new(),
            suppressed: 0,
            written: 0,
            errors: 0,
        })
    }

    /// Writes the line of one observation unless `node` is over `rate` lines
    /// in the second `now_millis` falls in.
    pub fn write(&mut self, node: &str, o: &Observation, now_millis: u64, rate: u32) {
        let second = now_millis / 1000;
        let w = self.windows.entry(node.to_owned()).or_insert((second, 0));
        if w.0 != second {
            *w = (second, 0);
        }
        if w.1 >= rate {
            self.suppressed += 1;
            return;
        }
        w.1 += 1;
        let mut line = record(node, o, now_millis).to_string();
        line.push('\n');
        match self.put(line.as_bytes()) {
            Ok(()) => self.written += 1,
            Err(_) => self.errors += 1,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File {
                path,
                file,
                size,
                max_bytes,
                keep,
            } => {
                if *size > 0 && *size + bytes.len() as u64 > *max_bytes {
                    rotate(path, *keep)?;
                    *file = OpenOptions::new().create(true).append(true).open(&*path)?;
                    *size = 0;
                }
                file.write_all(bytes)?;
                *size += bytes.len() as u64;
                Ok(())
            }
        }
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// `PATH.(keep-1)` → `PATH.keep` (the oldest is dropped) ... `PATH` → `PATH.1`.
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(path, keep));
    for n in (1..keep).rev() {
        let from = numbered(path, n);
        if from.exists() {
            std::fs::rename(&from, numbered(path, n + 1))?;
        }
    }
    std::fs::rename(path, numbered(path, 1))
}

fn end(v: &Vertex, pod: &Option<String>, addr: std::net::IpAddr) -> Value {
    match v {
        Vertex::Workload { namespace, name } => json!({
            "namespace": namespace,
            "pod": pod,
            "workload": name,
            "addr": addr.to_string(),
        }),
        Vertex::External { cidr } => json!({
            "external": cidr.to_string(),
            "addr": addr.to_string(),
        }),
    }
}

/// One flow-log record (see `docs/FLOWS.md`).
pub fn record(node: &str, o: &Observation, now_millis: u64) -> Value {
    let f = &o.flow;
    json!({
        "time": rfc3339(now_millis),
        "node": node,
        "src": end(&o.src, &o.src_pod, f.src_addr),
        "dst": end(&o.dst, &o.dst_pod, f.dst_addr),
        "protocol": f.protocol.as_str(),
        "port": f.dst_port,
        "verdict": f.verdict.as_str(),
        "rule": f.rule,
        "mode": mode_str(o.mode),
        "count": f.count,
        "firstSeen": rfc3339(f.first_seen_unix_millis),
        "lastSeen": rfc3339(f.last_seen_unix_millis),
        "anomaly": o.anomaly,
    })
}

/// `2026-11-23T09:00:00.123Z`.
pub fn rfc3339(unix_millis: u64) -> String {
    let secs = unix_millis / 1000;
    let ms = unix_millis % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bulkhead_core::crd::PolicyMode;
    use bulkhead_core::flows::{FlowVerdict, ObservedFlow};
    use bulkhead_core::model::Protocol;

    fn obs() -> Observation {
        Observation {
            flow: ObservedFlow {
                src_addr: "10.0.0.1".parse().unwrap(),
                dst_addr: "10.0.0.2".parse().unwrap(),
                protocol: Protocol::Tcp,
                dst_port: 80,
                verdict: FlowVerdict::Allowed,
                rule: "np x/y ingress[0]".into(),
                count: 2,
                first_seen_unix_millis: 0,
                last_seen_unix_millis: 1000,
                src: None,
                dst: None,
            },
            src: Vertex::Workload {
                namespace: "x".into(),
                name: "web".into(),
            },
            dst: Vertex::External {
                cidr: "10.0.0.2/32".parse().unwrap(),
            },
            src_pod: Some("web-0".into()),
            dst_pod: None,
            mode: PolicyMode::Monitor,
            anomaly: false,
        }
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_424_400_000), "2026-11-23T09:00:00.000Z");
    }

    #[test]
    fn the_record_has_the_documented_fields() {
        let r = record("n1", &obs(), 0);
        for k in [
            "time",
            "node",
            "src",
            "dst",
            "protocol",
            "port",
            "verdict",
            "rule",
            "mode",
            "count",
            "firstSeen",
            "lastSeen",
            "anomaly",
        ] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        assert_eq!(r["src"]["workload"], "web");
        assert_eq!(r["src"]["pod"], "web-0");
        assert_eq!(r["dst"]["external"], "10.0.0.2/32");
        assert_eq!(r["mode"], "monitor");
    }

    #[test]
    fn rate_limited_per_node_and_second_and_rotated_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.log");
        let mut log = FlowLog::open(path.to_str().unwrap(), 1024, 2).unwrap();
        for _ in 0..5 {
            log.write("n1", &obs(), 10_000, 3);
        }
        log.write("n2", &obs(), 10_000, 3);
        assert_eq!((log.written, log.suppressed), (4, 2));
        log.write("n1", &obs(), 11_000, 3);
        assert_eq!(log.written, 5);
        // ~300 bytes a line: 1 KiB holds 3; 20 more lines rotate several
        // times, and only 2 old files are kept.
        for s in 0..20 {
            log.write("n1", &obs(), 20_000 + s * 1000, 3);
        }
        assert_eq!(log.errors, 0);
        assert!(numbered(&path, 1).exists() && numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists());
        for p in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.len() <= 1024,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["port"], 80);
            }
        }
    }
}
