//! Bulkhead's policy core. Pure: no I/O, no async, no clock. Text and values
//! in, values and diagnostics out, so it can be unit-, property- and
//! benchmark-tested alone.
//!
//! ```text
//!  YAML ──load──▶ Objects ──Inventory::new──▶ Inventory (+ indexes)
//!                                                │
//!                       Query ──verdict::evaluate─┴─▶ Verdict ──explain──▶ words / JSON
//!                                                └─▶ reachability ──▶ Matrix
//! ```

pub mod baseline;
pub mod cnp;
pub mod crd;
pub mod diag;
pub mod explain;
pub mod flows;
pub mod guard;
pub mod inventory;
pub mod labels;
pub mod load;
pub mod model;
pub mod quarantine;
pub mod recommend;
pub mod synth;
pub mod tenant;
pub mod tiers;
pub mod tiers_explain;
pub mod verdict;

pub use diag::{Diagnostic, Origin, Severity};
pub use inventory::{Inventory, PodId, PolicyId};
pub use load::{Loaded, Located, load_object, load_str};
pub use model::{Direction, Object, Protocol};
pub use verdict::{Endpoint, Matrix, Query, Side, Verdict, allowed, evaluate, reachability};
pub mod compile;
