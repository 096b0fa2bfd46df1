//! The dataplane: where rulesets take effect. `nft` for the kernel, `fake`
//! for tests of the logic above it.

pub mod conntrack;
pub mod fake;
pub mod nfnl;
pub mod nft;
pub mod render;

use bulkhead_proto::v1 as pb;
use serde::Serialize;

pub use render::AgentSets;

/// What the kernel holds where our table would be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum KernelState {
    /// No table `inet bulkhead`.
    Absent,
    /// Our table, recording what it holds.
    Ours {
        schema: u32,
        generation: u64,
        node: String,
    },
    /// A table of that name that we did not write: never touched.
    Foreign { why: String },
}

/// Counts of what the table holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub sets: usize,
    pub elements: usize,
    pub maps: usize,
    pub map_entries: usize,
    pub chains: usize,
    pub rules: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// nft refused the transaction; nothing changed.
    #[error("nft refused to {op}; the previous ruleset stays in force: {stderr}")]
    Nft { op: String, stderr: String },
    /// The netlink socket to nf_tables failed (not a refusal of the batch).
    #[error("netlink: cannot {op}: {error}")]
    Netlink { op: String, error: String },
    #[error("cannot run {binary}: {error}")]
    Spawn { binary: String, error: String },
    #[error("refusing to touch table inet bulkhead: {why}")]
    ForeignTable { why: String },
    #[error(
        "table inet bulkhead was written by a newer agent (schema {schema}); refusing to touch it"
    )]
    NewerSchema { schema: u32 },
    #[error("delta is based on generation {base}, but {}", match have { Some(h) => format!("generation {h} is applied"), None => "nothing is applied".to_owned() })]
    BaseMismatch { base: u64, have: Option<u64> },
    #[error("read back after apply: {0}")]
    Verify(String),
    #[error("nothing is applied yet")]
    NothingApplied,
    #[error("cannot read nft's answer: {0}")]
    Parse(String),
}

/// Where rulesets are applied. Every method is one atomic transaction: on
/// error, what was in force stays in force.
pub trait Dataplane {
    /// What is applied now.
    fn state(&mut self) -> Result<KernelState, DataplaneError>;
    /// Replaces everything with `rs`, filling agent-managed sets from `agent`.
    fn apply_full(&mut self, rs: &pb::Ruleset, agent: &AgentSets) -> Result<(), DataplaneError>;
    /// Applies a delta whose base must be what is applied; `agent` replaces
    /// the agent-managed sets' contents in the same transaction when given.
    fn apply_delta(
        &mut self,
        d: &pb::RulesetDelta,
        agent: Option<&AgentSets>,
    ) -> Result<(), DataplaneError>;
    /// Replaces only the agent-managed sets' contents.
    fn set_agent_sets(&mut self, agent: &AgentSets) -> Result<(), DataplaneError>;
}
