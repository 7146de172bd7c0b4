//! Bounded waiting: every wait has a deadline and fails showing what it saw last.

use std::time::{Duration, Instant};

/// Poll interval of every wait.
const TICK: Duration = Duration::from_millis(200);

/// A deadline for one condition.
pub struct Deadline {
    what: String,
    limit: Duration,
    start: Instant,
}

impl Deadline {
    /// Starts waiting `limit` for `what`.
    pub fn new(what: impl Into<String>, limit: Duration) -> Self {
        Deadline {
            what: what.into(),
            limit,
            start: Instant::now(),
        }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.start.elapsed() >= self.limit
    }

    /// Sleeps one tick, or panics with `seen` once the deadline has passed.
    pub async fn tick(&self, seen: &dyn std::fmt::Debug) {
        if self.expired() {
            panic!(
                "timed out after {:?} waiting for {}; last seen: {seen:#?}",
                self.limit, self.what
            );
        }
        tokio::time::sleep(TICK).await;
    }
}
