//! Applying batches with `nft -j -f -` and reading our table back.
//! Our own runner rather than the `nftables` crate's: it captures nft's
//! stderr, which names what the kernel rejected.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bulkhead_core::compile::names;
use bulkhead_proto::v1 as pb;
use serde_json::Value;

use super::nfnl::{self, AgentChange};
use super::render::{self, AgentSets, Batch};
use super::{Dataplane, DataplaneError, KernelState, Summary};

#[derive(Debug, Clone)]
pub struct Nft {
    pub binary: PathBuf,
    /// What this process knows is applied, to check a delta's base without
    /// asking the kernel every time. Cleared on any failure.
    known: Option<KernelState>,
    /// Send deltas that change only elements (and the generation record)
    /// as one nf_tables netlink batch of our own instead of through nft
    /// (`nfnl`). On by default.
    pub netlink: bool,
    /// Whether each set of our table is an interval set, as far as we know
    /// (from what we applied, or asked the kernel).
    interval: HashMap<String, bool>,
    /// What the agent-managed sets hold, as we last wrote them; `None`:
    /// unknown, so the next change refills them.
    agent_applied: Option<Vec<(String, Vec<pb::Element>)>>,
    /// How the last delta or agent-set change went into the kernel.
    pub last_path: Option<Path>,
    /// Of the last netlink batch: the time from `sendmsg` to the kernel's
    /// last answer (the kernel's share).
    pub last_kernel: Option<std::time::Duration>,
    /// One netlink socket for every batch, kept open: closing a
    /// NETLINK_NETFILTER socket makes the kernel flush nf_tables' pending
    /// destroy work, which waits for an RCU grace period after the last
    /// commit (~10 ms on a loaded machine). Dropped on any netlink error.
    conn: Option<std::sync::Arc<nfnl::Conn>>,
}

/// How a change went into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// An nf_tables netlink batch of our own.
    Netlink,
    /// `nft -j -f -`.
    Nft,
    /// Nothing to change.
    Nothing,
}

impl Nft {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            known: None,
            netlink: true,
            interval: HashMap::new(),
            agent_applied: None,
            last_path: None,
            last_kernel: None,
            conn: None,
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs one batch as one transaction. When the kernel refuses it, finds
    /// the command it refused (by checking ever shorter prefixes of the batch
    /// with `nft --check`, which changes nothing) and names it.
    pub fn run(&self, op: &str, batch: &Batch) -> Result<(), DataplaneError> {
        match self.exec(batch, false)? {
            Ok(()) => Ok(()),
            Err(stderr) => {
                let culprit = self.locate(batch).map(|i| batch.describe(i));
                Err(DataplaneError::Nft {
                    op: op.to_owned(),
                    stderr: match culprit {
                        Some(c) => format!("{c}: {stderr}"),
                        None => stderr,
                    },
                })
            }
        }
    }

    /// The index of the first command whose prefix the kernel refuses.
    fn locate(&self, batch: &Batch) -> Option<usize> {
        let (mut ok, mut bad) = (0usize, batch.len());
        if !matches!(self.exec(&batch.prefix(bad), true), Ok(Err(_))) {
            return None;
        }
        while bad - ok > 1 {
            let mid = ok + (bad - ok) / 2;
            match self.exec(&batch.prefix(mid), true) {
                Ok(Ok(())) => ok = mid,
                Ok(Err(_)) => bad = mid,
                Err(_) => return None,
            }
        }
        Some(bad - 1)
    }

    /// Runs nft on a batch: `Ok(Err(stderr))` when nft refuses it.
    fn exec(&self, batch: &Batch, check: bool) -> Result<Result<(), String>, DataplaneError> {
        let args: &[&str] = if check {
            &["-c", "-j", "-f", "-"]
        } else {
            &["-j", "-f", "-"]
        };
        let mut child = self
            .command()
            .args(args)
            .spawn()
            .map_err(|e| DataplaneError::Spawn {
                binary: self.binary.display().to_string(),
                error: e.to_string(),
            })?;
        let json = batch.to_json();
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(json.as_bytes())
                .map_err(|e| DataplaneError::Spawn {
                    binary: self.binary.display().to_string(),
                    error: format!("writing the batch: {e}"),
                })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| DataplaneError::Spawn {
                binary: self.binary.display().to_string(),
                error: e.to_string(),
            })?;
        Ok(if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        })
    }

    fn list(&self, args: &[&str]) -> Result<Result<String, String>, DataplaneError> {
        let out = self
            .command()
            .stdin(Stdio::null())
            .args(args)
            .output()
            .map_err(|e| DataplaneError::Spawn {
                binary: self.binary.display().to_string(),
                error: e.to_string(),
            })?;
        Ok(if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        })
    }

    /// Reads what the kernel holds, asking nft only about our own table.
    pub fn read_state(&self) -> Result<KernelState, DataplaneError> {
        let tables = self
            .list(&["-j", "list", "tables", "inet"])?
            .map_err(|stderr| DataplaneError::Nft {
                op: "list tables".into(),
                stderr,
            })?;
        let v: Value =
            serde_json::from_str(&tables).map_err(|e| DataplaneError::Parse(e.to_string()))?;
        let exists = objects(&v)
            .filter_map(|o| o.get("table"))
            .any(|t| t.get("name").and_then(Value::as_str) == Some(names::TABLE));
        if !exists {
            return Ok(KernelState::Absent);
        }
        // Schema 2 and later: the record is the comment of the one element
        // of set `bhmeta`.
        if let Ok(text) = self.list(&["-j", "list", "set", "inet", names::TABLE, names::META])? {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| DataplaneError::Parse(format!("set {}: {e}", names::META)))?;
            let comment = objects(&v)
                .filter_map(|o| o.get("set"))
                .filter_map(|s| s.get("elem").and_then(Value::as_array))
                .flatten()
                .find_map(|e| e.get("elem")?.get("comment")?.as_str());
            return Ok(match comment.and_then(render::parse_meta_comment) {
                Some((schema, generation, node)) => KernelState::Ours {
                    schema,
                    generation,
                    node,
                },
                None => KernelState::Foreign {
                    why: format!("the set {} holds no bulkhead record", names::META),
                },
            });
        }
        // Schema 1: the comment of the one rule of chain `bhmeta`.
        let chain = match self.list(&["-j", "list", "chain", "inet", names::TABLE, names::META])? {
            Ok(s) => s,
            Err(_) => {
                return Ok(KernelState::Foreign {
                    why: format!(
                        "table inet {} has no {} set or chain",
                        names::TABLE,
                        names::META
                    ),
                });
            }
        };
        // Parsed with the nftables crate's schema: this chain holds only our
        // own simple rule.
        let parsed: nftables::schema::Nftables<'_> = serde_json::from_str(&chain)
            .map_err(|e| DataplaneError::Parse(format!("{} chain: {e}", names::META)))?;
        let comment = parsed.objects.iter().find_map(|o| match o {
            nftables::schema::NfObject::ListObject(nftables::schema::NfListObject::Rule(r)) => {
                r.comment.as_ref().map(|c| c.to_string())
            }
            _ => None,
        });
        match comment.as_deref().and_then(render::parse_meta_comment) {
            // Only schema 1 wrote its record there (a newer schema is
            // reported as such, and refused).
            Some((schema, generation, node)) if schema == 1 || schema > render::SCHEMA => {
                Ok(KernelState::Ours {
                    schema,
                    generation,
                    node,
                })
            }
            _ => Ok(KernelState::Foreign {
                why: format!("the {} chain holds no bulkhead record", names::META),
            }),
        }
    }

    /// Counts what our table holds.
    pub fn summary(&self) -> Result<Option<Summary>, DataplaneError> {
        let text = match self.list(&["-j", "list", "table", "inet", names::TABLE])? {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        let v: Value =
            serde_json::from_str(&text).map_err(|e| DataplaneError::Parse(e.to_string()))?;
        let mut s = Summary::default();
        for o in objects(&v) {
            if let Some(set) = o.get("set") {
                s.sets += 1;
                s.elements += set
                    .get("elem")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
            } else if let Some(map) = o.get("map") {
                s.maps += 1;
                s.map_entries += map
                    .get("elem")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
            } else if o.get("chain").is_some() {
                s.chains += 1;
            } else if o.get("rule").is_some() {
                s.rules += 1;
            }
        }
        Ok(Some(s))
    }

    /// Reads the table back after a full apply and checks that it holds what
    /// was sent: every set, map and chain, and every rule.
    pub fn verify(&self, rs: &pb::Ruleset) -> Result<(), DataplaneError> {
        let Some(got) = self.summary()? else {
            return Err(DataplaneError::Verify(
                "table inet bulkhead is missing after apply".into(),
            ));
        };
        let want = Summary {
            // Plus the set of the generation record.
            sets: rs.sets.len() + 1,
            elements: got.elements,
            maps: rs.maps.len(),
            map_entries: rs.maps.iter().map(|m| m.entries.len()).sum(),
            chains: rs.chains.len(),
            rules: rs.chains.iter().map(|c| c.rules.len()).sum::<usize>(),
        };
        if got == want {
            Ok(())
        } else {
            Err(DataplaneError::Verify(format!(
                "the kernel holds {got:?}, expected {want:?}"
            )))
        }
    }

    /// Refuses to touch a table we did not write, or one from a newer agent.
    fn check_ours(&mut self) -> Result<KernelState, DataplaneError> {
        let st = match &self.known {
            Some(k) => k.clone(),
            None => self.read_state()?,
        };
        match &st {
            KernelState::Foreign { why } => Err(DataplaneError::ForeignTable { why: why.clone() }),
            KernelState::Ours { schema, .. } if *schema > render::SCHEMA => {
                Err(DataplaneError::NewerSchema { schema: *schema })
            }
            _ => Ok(st),
        }
    }

    fn after<T>(
        &mut self,
        r: Result<T, DataplaneError>,
        ok: KernelState,
    ) -> Result<T, DataplaneError> {
        self.known = if r.is_ok() { Some(ok) } else { None };
        if r.is_err() {
            self.agent_applied = None;
        }
        r
    }

    /// Tries `c` as a netlink batch: `Ok(false)` when something in it is for
    /// nft to encode (or names a set the kernel does not have).
    fn try_netlink(&mut self, op: &str, c: &nfnl::Changes<'_>) -> Result<bool, DataplaneError> {
        let r = self.try_netlink_on(op, c);
        if matches!(r, Err(DataplaneError::Netlink { .. })) {
            self.conn = None;
        }
        r
    }

    fn try_netlink_on(&mut self, op: &str, c: &nfnl::Changes<'_>) -> Result<bool, DataplaneError> {
        let conn = match &self.conn {
            Some(c) => c.clone(),
            None => {
                let c = std::sync::Arc::new(nfnl::Conn::open()?);
                self.conn = Some(c.clone());
                c
            }
        };
        let names = c
            .sets
            .iter()
            .map(|sc| sc.set.as_str())
            .chain(c.refill.iter().map(|(n, _)| *n));
        for name in names {
            if !self.interval.contains_key(name) {
                match conn.set_is_interval(name)? {
                    Some(iv) => {
                        self.interval.insert(name.to_owned(), iv);
                    }
                    None => return Ok(false),
                }
            }
        }
        let Some(plan) = nfnl::plan(c, &self.interval)? else {
            return Ok(false);
        };
        self.last_path = Some(Path::Netlink);
        let batch = plan.encode();
        let t = std::time::Instant::now();
        let r = conn.apply(op, &batch);
        self.last_kernel = Some(t.elapsed());
        r.map(|()| true)
    }

    /// Applies `c` over netlink when allowed and possible; otherwise runs
    /// `nft_batch` through nft.
    fn apply_changes(
        &mut self,
        op: &str,
        c: &nfnl::Changes<'_>,
        nft_batch: impl FnOnce() -> Result<Batch, DataplaneError>,
    ) -> Result<(), DataplaneError> {
        if self.netlink && self.try_netlink(op, c)? {
            return Ok(());
        }
        self.last_path = Some(Path::Nft);
        self.run(op, &nft_batch()?)
    }
}

fn objects(v: &Value) -> impl Iterator<Item = &Value> {
    v.get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

impl Dataplane for Nft {
    fn state(&mut self) -> Result<KernelState, DataplaneError> {
        let st = self.read_state()?;
        self.known = Some(st.clone());
        Ok(st)
    }

    fn apply_full(&mut self, rs: &pb::Ruleset, agent: &AgentSets) -> Result<(), DataplaneError> {
        self.check_ours()?;
        let batch = render::full(rs, agent)?;
        let r = self.run(
            &format!("apply generation {} (full)", rs.generation),
            &batch,
        );
        if r.is_ok() {
            self.agent_applied = Some(agent.to_vec());
            self.interval = rs
                .sets
                .iter()
                .map(|st| (st.name.clone(), st.interval))
                .collect();
        }
        self.after(
            r,
            KernelState::Ours {
                schema: render::SCHEMA,
                generation: rs.generation,
                node: rs.node.clone(),
            },
        )
    }

    fn apply_delta(
        &mut self,
        d: &pb::RulesetDelta,
        agent: Option<&AgentSets>,
    ) -> Result<(), DataplaneError> {
        let upgrade = match self.check_ours()? {
            KernelState::Ours {
                generation, schema, ..
            } if generation == d.base_generation => schema < render::SCHEMA,
            KernelState::Ours { generation, .. } => {
                return Err(DataplaneError::BaseMismatch {
                    base: d.base_generation,
                    have: Some(generation),
                });
            }
            _ => {
                return Err(DataplaneError::BaseMismatch {
                    base: d.base_generation,
                    have: None,
                });
            }
        };
        let change = agent.map(|a| nfnl::agent_change(self.agent_applied.as_deref(), a));
        let op = format!(
            "apply generation {} (delta from {})",
            d.generation, d.base_generation
        );
        let r = if nfnl::elements_only(d) && !upgrade {
            let mut c = nfnl::Changes {
                sets: d.set_changes.iter().collect(),
                maps: &d.map_changes,
                refill: vec![],
                meta: Some((&d.node, d.generation)),
            };
            match (&change, agent) {
                (Some(AgentChange::Diff(diffs)), _) => c.sets.extend(diffs),
                (Some(AgentChange::Refill), Some(a)) => {
                    c.refill = a.iter().map(|(n, e)| (n.as_str(), e.as_slice())).collect();
                }
                _ => {}
            }
            // nft refills the agent sets whole when they changed at all.
            let nft_agent = agent.filter(|_| change != Some(AgentChange::Same));
            self.apply_changes(&op, &c, || Ok(render::delta(d, nft_agent)?))
        } else {
            // A table of an older schema is brought to this one in the
            // same transaction.
            self.last_path = Some(Path::Nft);
            let nft_agent = agent.filter(|_| change != Some(AgentChange::Same));
            render::delta(d, nft_agent)
                .map_err(DataplaneError::from)
                .map(|b| if upgrade { render::upgrading(b) } else { b })
                .and_then(|b| self.run(&op, &b))
        };
        if r.is_ok() {
            if let Some(a) = agent.filter(|_| change != Some(AgentChange::Same)) {
                self.agent_applied = Some(a.to_vec());
            }
            for st in &d.add_sets {
                self.interval.insert(st.name.clone(), st.interval);
            }
            for name in &d.delete_sets {
                self.interval.remove(name);
            }
        }
        self.after(
            r,
            KernelState::Ours {
                schema: render::SCHEMA,
                generation: d.generation,
                node: d.node.clone(),
            },
        )
    }

    fn set_agent_sets(&mut self, agent: &AgentSets) -> Result<(), DataplaneError> {
        let KernelState::Ours {
            generation,
            node,
            schema,
        } = self.check_ours()?
        else {
            return Err(DataplaneError::NothingApplied);
        };
        let r = match nfnl::agent_change(self.agent_applied.as_deref(), agent) {
            // A table of an older schema is brought to this one (through
            // nft, once), whatever changed.
            _ if schema < render::SCHEMA => {
                self.last_path = Some(Path::Nft);
                render::agent_only(&node, generation, agent)
                    .map_err(DataplaneError::from)
                    .and_then(|b| self.run("update pod interfaces", &render::upgrading(b)))
            }
            AgentChange::Same => {
                self.last_path = Some(Path::Nothing);
                Ok(())
            }
            change => {
                let mut c = nfnl::Changes::default();
                match &change {
                    AgentChange::Diff(diffs) => c.sets.extend(diffs),
                    _ => {
                        c.refill = agent
                            .iter()
                            .map(|(n, e)| (n.as_str(), e.as_slice()))
                            .collect();
                    }
                }
                self.apply_changes("update pod interfaces", &c, || {
                    Ok(render::agent_only(&node, generation, agent)?)
                })
            }
        };
        if r.is_ok() {
            self.agent_applied = Some(agent.to_vec());
        }
        self.after(
            r,
            KernelState::Ours {
                schema: render::SCHEMA,
                generation,
                node,
            },
        )
    }
}
