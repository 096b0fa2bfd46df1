//! Applying batches with `nft -j -f -` and reading our table back.
//! Our own runner rather than the `nftables` crate's: it captures nft's
//! stderr, which names what the kernel rejected.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bulkhead_core::compile::names;
use bulkhead_proto::v1 as pb;
use serde_json::Value;

use super::render::{self, AgentSets, Batch};
use super::{Dataplane, DataplaneError, KernelState, Summary};

#[derive(Debug, Clone)]
pub struct Nft {
    pub binary: PathBuf,
    /// What this process knows is applied, to check a delta's base without
    /// asking the kernel every time. Cleared on any failure.
    known: Option<KernelState>,
}

impl Nft {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            known: None,
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
        let chain = match self.list(&["-j", "list", "chain", "inet", names::TABLE, names::META])? {
            Ok(s) => s,
            Err(_) => {
                return Ok(KernelState::Foreign {
                    why: format!("table inet {} has no {} chain", names::TABLE, names::META),
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
            Some((schema, generation, node)) => Ok(KernelState::Ours {
                schema,
                generation,
                node,
            }),
            None => Ok(KernelState::Foreign {
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
            sets: rs.sets.len(),
            elements: got.elements,
            maps: rs.maps.len(),
            map_entries: rs.maps.iter().map(|m| m.entries.len()).sum(),
            // Plus the meta chain and its one rule.
            chains: rs.chains.len() + 1,
            rules: rs.chains.iter().map(|c| c.rules.len()).sum::<usize>() + 1,
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
        r
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
        match self.check_ours()? {
            KernelState::Ours { generation, .. } if generation == d.base_generation => {}
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
        }
        let batch = render::delta(d, agent)?;
        let r = self.run(
            &format!(
                "apply generation {} (delta from {})",
                d.generation, d.base_generation
            ),
            &batch,
        );
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
            generation, node, ..
        } = self.check_ours()?
        else {
            return Err(DataplaneError::NothingApplied);
        };
        let batch = render::agent_only(&node, generation, agent)?;
        let r = self.run("update pod interfaces", &batch);
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
