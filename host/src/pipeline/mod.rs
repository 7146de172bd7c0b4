//! Start-up planning and supervision: what a pipeline does when it starts, and
//! how a running stage is retried and stopped.
//!
//! Both are decisions over plain values, unit-tested without servers; the
//! commands in `cli/` gather the facts and carry the decisions out.

pub mod plan;
pub mod supervise;

pub use plan::{Facts, History, Offsets, Plan, Refusal, Start, decide};
pub use supervise::{Backoff, CLEAN_RUN, Failure, GRACE, NotDrained, Retry, Up, supervise};
