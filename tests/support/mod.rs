//! Shared harness: per-test resources, the wasmcdc binary, and bounded waits.

pub mod binary;
pub mod broker;
pub mod cluster;
pub mod db;
pub mod env;
pub mod http;
pub mod proxy;
pub mod wait;

pub use binary::Pipeline;
pub use env::Env;
pub use wait::Deadline;

use std::time::Duration;

/// Shorthand for a duration in seconds.
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One row as text, for building expected results.
pub fn row(cells: &[Option<&str>]) -> Vec<Option<String>> {
    cells.iter().map(|c| c.map(str::to_owned)).collect()
}
