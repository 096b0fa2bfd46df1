//! The test bed: helpers to run the built `bulkhead` binary from end-to-end
//! tests, and the network-namespace lab ([`netns`]: a multi-node cluster of
//! namespaces; [`traffic`]: the `bulkhead-lab` server and prober run in it).
//!
//! `CARGO_BIN_EXE_<name>` only exists for the binaries of the package under
//! test, and `bulkhead` lives in another package, so [`bulkhead_bin`] builds
//! it (once per test process) with `cargo build -p bulkhead` and takes the
//! executable's path from cargo's own JSON messages: that works whatever the
//! target directory (`CARGO_TARGET_DIR`, `--target-dir` in a config, ...).
//! Set `BULKHEAD_BIN` to test an already built binary instead; [`agent_bin`]
//! does the same for `bulkhead-agent` (`BULKHEAD_AGENT_BIN`).
//!
//! [`cluster`] runs the whole dataplane: Kubernetes YAML in, a lab cluster
//! out, every node's compiled ruleset applied by the real agent.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, bail, ensure};

pub mod cluster;
pub mod lab;
pub mod netns;
pub mod traffic;

/// Fails the calling test, loudly, unless it runs as root: the lab tests
/// need network namespaces, veths and nftables.
#[track_caller]
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert!(
        uid == "0",
        "the lab tests need root (network namespaces, veths, nftables); effective uid is {uid}. Run them as root."
    );
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `examples/<name>` in the workspace.
pub fn example(name: &str) -> PathBuf {
    workspace_dir().join("examples").join(name)
}

/// The `bulkhead` executable: `$BULKHEAD_BIN`, or built once by cargo.
pub fn bulkhead_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("BULKHEAD_BIN") {
        Some(p) => PathBuf::from(p),
        None => build_bin("bulkhead", "bulkhead").unwrap_or_else(|e| panic!("{e:#}")),
    })
}

/// The `bulkhead-agent` executable: `$BULKHEAD_AGENT_BIN`, or built once by
/// cargo (see [`bulkhead_bin`]).
pub fn agent_bin() -> anyhow::Result<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| match std::env::var_os("BULKHEAD_AGENT_BIN") {
        Some(p) => Ok(PathBuf::from(p)),
        None => build_bin("bulkhead-agent", "bulkhead-agent").map_err(|e| format!("{e:#}")),
    });
    match found {
        Ok(p) => Ok(p.as_path()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Builds binary `bin` of package `package` with cargo and returns its path,
/// taken from cargo's own messages.
fn build_bin(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    // `cargo test` tells its children which cargo runs them.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = workspace_dir().join("Cargo.toml");
    let out = Command::new(&cargo)
        .args(["build", "-p", package, "--bin", bin])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} build", cargo.to_string_lossy()))?;
    ensure!(
        out.status.success(),
        "cargo build -p {package} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).context("cargo's messages are not UTF-8")?;
    let mut exe = None;
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_bin = msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == bin
            && msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
        if let (true, Some(path)) = (is_bin, msg["executable"].as_str()) {
            exe = Some(PathBuf::from(path));
        }
    }
    let exe =
        exe.with_context(|| format!("cargo build -p {package} reported no `{bin}` executable"))?;
    ensure!(exe.is_file(), "{} does not exist", exe.display());
    Ok(exe)
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The exit code; a run killed by a signal has already failed the test.
    pub fn code(&self) -> i32 {
        self.status.code().expect("checked in `bulkhead`")
    }

    /// Panics, showing everything, unless the run exited with `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), code, "unexpected exit status\n{self}");
        self
    }

    /// Panics unless the run succeeded; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        self.expect_code(0);
        &self.stdout
    }

    /// Panics unless the run exited 0 with stdout as JSON; returns it.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ bulkhead {}\n{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `bulkhead ARGS` with no stdin. Whatever the arguments, the binary
/// must end by itself with an exit status and never panic: both are checked
/// here, for every run.
#[track_caller]
pub fn bulkhead<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(bulkhead_bin())
        .args(&args)
        .current_dir(workspace_dir())
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bulkhead_bin().display()));
    let run = Run {
        args: args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        status: out.status,
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    };
    assert!(run.status.code().is_some(), "killed by a signal\n{run}");
    assert!(
        !run.stderr.contains("panicked"),
        "the binary panicked\n{run}"
    );
    run
}

/// `bulkhead reachability -o table`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The first line, e.g. `reachability TCP/80: rows are sources, ...`.
    pub header: String,
    /// Row `i` names pod `i`, which is also column `i`.
    pub pods: Vec<String>,
    /// `cells[src][dst]`: '.' is true, 'X' false.
    pub cells: Vec<Vec<bool>>,
}

impl Table {
    /// Parses the grid strictly: the column numbers (written vertically when
    /// they have several digits) must stand exactly above the cells and count
    /// 0, 1, 2, ...; rows must be numbered the same way; every row must have
    /// one cell per pod, each '.' or 'X'.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut lines = text.lines();
        let header = lines.next().context("empty output")?.to_owned();
        let rest: Vec<&str> = lines.collect();
        if rest == ["(no pods)"] {
            return Ok(Self {
                header,
                pods: vec![],
                cells: vec![],
            });
        }
        // Column-number lines start with blanks; rows start with a number.
        let digit_lines = rest
            .iter()
            .take_while(|l| l.trim_start().len() < l.len() && !has_pod_name(l))
            .count();
        ensure!(digit_lines > 0, "no column numbers above the grid");
        let (digits, rows) = rest.split_at(digit_lines);
        ensure!(!rows.is_empty(), "a grid with no rows");
        let n = rows.len();
        let mut pods = Vec::with_capacity(n);
        let mut cells = Vec::with_capacity(n);
        let mut columns: Option<Vec<usize>> = None;
        for (i, row) in rows.iter().enumerate() {
            let mut words = row.split_whitespace();
            let idx = words.next().context("blank row")?;
            ensure!(idx == i.to_string(), "row {i} is numbered {idx:?}: {row:?}");
            let name = words
                .next()
                .with_context(|| format!("row {i} has no pod"))?;
            ensure!(name.contains('/'), "row {i} names {name:?}, not ns/pod");
            pods.push(name.to_owned());
            // Where this row's cells are: the character positions after the name.
            let after_name = row.find(name).unwrap_or_default() + name.len();
            let here: Vec<usize> = row
                .char_indices()
                .filter(|&(at, c)| at >= after_name && !c.is_whitespace())
                .map(|(at, _)| at)
                .collect();
            ensure!(
                here.len() == n,
                "row {i} has {} cells, not {n}: {row:?}",
                here.len()
            );
            match &columns {
                None => columns = Some(here.clone()),
                Some(c) => ensure!(*c == here, "row {i}'s cells are not aligned: {row:?}"),
            }
            let mut r = Vec::with_capacity(n);
            for at in here {
                r.push(match &row[at..=at] {
                    "." => true,
                    "X" => false,
                    other => bail!("row {i}: cell {other:?} is neither '.' nor 'X'"),
                });
            }
            cells.push(r);
        }
        let columns = columns.context("no rows")?;
        for (d, &at) in columns.iter().enumerate() {
            let number: String = digits
                .iter()
                .map(|l| l.get(at..=at).unwrap_or(" "))
                .collect();
            ensure!(
                number.trim() == d.to_string(),
                "column {d} is numbered {number:?} (is the numbering aligned?)"
            );
        }
        for l in digits {
            let others = l
                .char_indices()
                .filter(|(at, c)| !c.is_whitespace() && !columns.contains(at))
                .count();
            ensure!(others == 0, "stray characters in column numbers: {l:?}");
        }
        Ok(Self {
            header,
            pods,
            cells,
        })
    }
}

fn has_pod_name(line: &str) -> bool {
    line.split_whitespace().any(|w| w.contains('/'))
}

/// A temporary file `name` in `dir` holding `text`; returns its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    p
}
