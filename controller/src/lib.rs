//! The `bulkhead` binary's library: reading inputs, and the CLI subcommands.
//! The policy logic itself lives in the pure `bulkhead-core` crate.

pub mod cli;
pub mod files;
