//! An in-memory dataplane with the kernel's strictness (a delta must apply
//! to exactly what is there), for testing what drives a dataplane.

use bulkhead_core::compile::diff;
use bulkhead_proto::v1 as pb;

use super::{AgentSets, Dataplane, DataplaneError, KernelState};

#[derive(Debug, Default, Clone)]
pub struct Fake {
    pub applied: Option<pb::Ruleset>,
    pub agent: Vec<(String, Vec<pb::Element>)>,
    /// When set, the next transaction fails with this message.
    pub fail_next: Option<String>,
    pub transactions: usize,
}

impl Fake {
    fn fail(&mut self) -> Result<(), DataplaneError> {
        match self.fail_next.take() {
            Some(stderr) => Err(DataplaneError::Nft {
                op: "fake".into(),
                stderr,
            }),
            None => {
                self.transactions += 1;
                Ok(())
            }
        }
    }
}

impl Dataplane for Fake {
    fn state(&mut self) -> Result<KernelState, DataplaneError> {
        Ok(match &self.applied {
            None => KernelState::Absent,
            Some(rs) => KernelState::Ours {
                schema: super::render::SCHEMA,
                generation: rs.generation,
                node: rs.node.clone(),
            },
        })
    }

    fn apply_full(&mut self, rs: &pb::Ruleset, agent: &AgentSets) -> Result<(), DataplaneError> {
        super::render::full(rs, agent)?;
        self.fail()?;
        self.applied = Some(rs.clone());
        self.agent = agent.to_vec();
        Ok(())
    }

    fn apply_delta(
        &mut self,
        d: &pb::RulesetDelta,
        agent: Option<&AgentSets>,
    ) -> Result<(), DataplaneError> {
        let Some(cur) = &self.applied else {
            return Err(DataplaneError::BaseMismatch {
                base: d.base_generation,
                have: None,
            });
        };
        let next = diff::apply(cur, d).map_err(|e| match e {
            diff::DeltaError::BaseMismatch { base, have } => DataplaneError::BaseMismatch {
                base,
                have: Some(have),
            },
            other => DataplaneError::Nft {
                op: "fake delta".into(),
                stderr: other.to_string(),
            },
        })?;
        super::render::delta(d, agent)?;
        self.fail()?;
        self.applied = Some(next);
        if let Some(a) = agent {
            self.agent = a.to_vec();
        }
        Ok(())
    }

    fn set_agent_sets(&mut self, agent: &AgentSets) -> Result<(), DataplaneError> {
        if self.applied.is_none() {
            return Err(DataplaneError::NothingApplied);
        }
        self.fail()?;
        self.agent = agent.to_vec();
        Ok(())
    }
}
