//! Supervision of a long-running stage: retry with backoff after a failure,
//! and stop within a bounded time after shutdown.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A stage up at least this long before it failed ran cleanly: its failure starts the backoff afresh.
pub const CLEAN_RUN: Duration = Duration::from_secs(10);
/// How long a stage may take to drain after shutdown before it is dropped.
pub const GRACE: Duration = Duration::from_secs(10);
/// The first retry delay, by default.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest retry delay, by default.
pub const LONGEST_DELAY: Duration = Duration::from_secs(30);

/// When one attempt came up (connected, checked and streaming), if it did.
#[derive(Debug, Default)]
pub struct Up(OnceLock<Instant>);

impl Up {
    /// Records that the attempt is up, now; later calls keep the first instant.
    pub fn mark_up(&self) {
        crate::observe::up();
        let _ = self.0.set(Instant::now());
    }

    /// How long the attempt has been up, if it came up.
    pub fn up_for(&self) -> Option<Duration> {
        self.0.get().map(Instant::elapsed)
    }
}

/// What the supervisor needs to know about an attempt's error.
pub trait Failure: std::fmt::Display {
    /// True when no retry can fix it, such as a target that diverged from the slot.
    fn is_permanent(&self) -> bool;
}

/// A stage that did not return within the grace period after shutdown, and was dropped.
#[derive(Debug, thiserror::Error)]
#[error(
    "{stage} did not drain within {secs} s of the shutdown and was stopped; nothing is lost: unacknowledged messages are redelivered, and the slot is confirmed only for what RabbitMQ holds"
)]
pub struct NotDrained {
    /// The stage, as in "the capture".
    pub stage: String,
    /// The grace period, in seconds.
    pub secs: u64,
}

/// The decision after a failure: wait `delay`, the stage having been failing for `failing_for`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// How long to wait before the next attempt.
    pub delay: Duration,
    /// Time since the first failure of this run of failures.
    pub failing_for: Duration,
}

/// Exponential backoff that starts afresh once a stage has run cleanly for [`CLEAN_RUN`].
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    longest: Duration,
    next: Duration,
    failing_since: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::with_delays(FIRST_DELAY, LONGEST_DELAY)
    }
}

impl Backoff {
    /// Delays from [`FIRST_DELAY`], doubling up to [`LONGEST_DELAY`].
    pub fn new() -> Self {
        Backoff::default()
    }

    /// Delays from `first`, doubling up to `longest`.
    pub fn with_delays(first: Duration, longest: Duration) -> Self {
        Backoff {
            first,
            longest,
            next: first,
            failing_since: None,
        }
    }

    /// The retry after a failure at `now` of an attempt that had been up for `ran_cleanly_for` (`None`: it never came up).
    pub fn next_delay(&mut self, ran_cleanly_for: Option<Duration>, now: Instant) -> Retry {
        if ran_cleanly_for.is_some_and(|ran| ran >= CLEAN_RUN) {
            self.next = self.first;
            self.failing_since = None;
        }
        let since = *self.failing_since.get_or_insert(now);
        let delay = self.next;
        self.next = (self.next * 2).min(self.longest);
        Retry {
            delay,
            failing_for: now.saturating_duration_since(since),
        }
    }
}

/// Runs `attempt` until it ends cleanly or `shutdown` fires.
///
/// An attempt that fails before any attempt was ever up ends the command: bad
/// settings should be reported at once. Once the stage has run, a failure (a
/// server restarting, a connection dropped) is retried with [`Backoff`], which
/// is safe because delivery is at-least-once and the apply skips what it
/// already holds. After shutdown the attempt gets [`GRACE`] to drain; one that
/// has not returned by then is dropped and [`NotDrained`] returned, so the
/// command stops within seconds in any state.
pub async fn supervise<E>(
    stage: &str,
    shutdown: &CancellationToken,
    backoff: Backoff,
    attempt: impl AsyncFnMut(&Up) -> Result<(), E>,
) -> Result<(), E>
where
    E: Failure + From<NotDrained>,
{
    supervise_with(stage, shutdown, GRACE, backoff, attempt).await
}

async fn supervise_with<E>(
    stage: &str,
    shutdown: &CancellationToken,
    grace: Duration,
    mut backoff: Backoff,
    mut attempt: impl AsyncFnMut(&Up) -> Result<(), E>,
) -> Result<(), E>
where
    E: Failure + From<NotDrained>,
{
    let mut ever_up = false;
    loop {
        let up = Up::default();
        let outcome = {
            let mut running = std::pin::pin!(attempt(&up));
            tokio::select! {
                outcome = &mut running => outcome,
                _ = shutdown.cancelled() => match tokio::time::timeout(grace, &mut running).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        return Err(NotDrained {
                            stage: stage.to_owned(),
                            secs: grace.as_secs(),
                        }
                        .into());
                    }
                },
            }
        };
        let ran = up.up_for();
        ever_up |= ran.is_some();
        let error = match outcome {
            Ok(()) => return Ok(()),
            Err(e) if e.is_permanent() || !ever_up || shutdown.is_cancelled() => return Err(e),
            Err(e) => e,
        };
        let retry = backoff.next_delay(ran, Instant::now());
        crate::observe::reconnecting(&error);
        tracing::warn!(
            "{stage} stopped: {error}; retrying in {} s (failing for {} s)",
            retry.delay.as_secs(),
            retry.failing_for.as_secs()
        );
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(retry.delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn delays_double_from_one_second_up_to_thirty() {
        let mut b = Backoff::new();
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..7).map(|i| b.next_delay(None, t0 + S(i)).delay.as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn a_clean_run_of_the_threshold_resets_the_delay() {
        let mut b = Backoff::new();
        let t0 = Instant::now();
        for i in 0..4 {
            b.next_delay(None, t0 + S(i));
        }
        // Up, but not long enough: the backoff goes on growing.
        assert_eq!(
            b.next_delay(Some(CLEAN_RUN - Duration::from_millis(1)), t0 + S(20))
                .delay,
            S(16)
        );
        assert_eq!(b.next_delay(Some(CLEAN_RUN), t0 + S(40)).delay, FIRST_DELAY);
        assert_eq!(b.next_delay(Some(S(0)), t0 + S(41)).delay, S(2));
    }

    #[test]
    fn the_failing_clock_restarts_after_a_clean_run() {
        let mut b = Backoff::new();
        let t0 = Instant::now();
        assert_eq!(b.next_delay(None, t0).failing_for, S(0));
        assert_eq!(b.next_delay(Some(S(3)), t0 + S(5)).failing_for, S(5));
        // A RabbitMQ restart healed, then the walsender was killed 20 s later.
        let after_clean = b.next_delay(Some(S(20)), t0 + S(30));
        assert_eq!(
            after_clean,
            Retry {
                delay: S(1),
                failing_for: S(0)
            }
        );
        assert_eq!(b.next_delay(None, t0 + S(33)).failing_for, S(3));
    }

    #[test]
    fn up_keeps_the_first_instant() {
        let up = Up::default();
        assert_eq!(up.up_for(), None);
        up.mark_up();
        std::thread::sleep(Duration::from_millis(20));
        up.mark_up();
        assert!(up.up_for().is_some_and(|d| d >= Duration::from_millis(20)));
    }

    #[derive(Debug, PartialEq)]
    enum TestError {
        Broken,
        Permanent,
        NotDrained,
    }

    impl std::fmt::Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Failure for TestError {
        fn is_permanent(&self) -> bool {
            *self == TestError::Permanent
        }
    }

    impl From<NotDrained> for TestError {
        fn from(_: NotDrained) -> Self {
            TestError::NotDrained
        }
    }

    fn fast() -> Backoff {
        Backoff::with_delays(Duration::from_millis(10), Duration::from_millis(40))
    }

    #[tokio::test]
    async fn a_failure_before_ever_being_up_ends_at_once() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let r = supervise_with("the test", &shutdown, GRACE, fast(), async |_: &Up| {
            calls += 1;
            Err(TestError::Broken)
        })
        .await;
        assert_eq!((r, calls), (Err(TestError::Broken), 1));
    }

    #[tokio::test]
    async fn a_failure_after_being_up_is_retried_but_a_permanent_one_is_not() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let r = supervise_with("the test", &shutdown, GRACE, fast(), async |up: &Up| {
            calls += 1;
            match calls {
                1 => {
                    up.mark_up();
                    Err(TestError::Broken)
                }
                // Never up this time, but the stage has run before: retried.
                2 => Err(TestError::Broken),
                3 => Err(TestError::Permanent),
                _ => Ok(()),
            }
        })
        .await;
        assert_eq!((r, calls), (Err(TestError::Permanent), 3));
    }

    #[tokio::test]
    async fn an_attempt_that_does_not_drain_is_dropped_after_the_grace() {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let started = Instant::now();
        let r = supervise_with(
            "the test",
            &shutdown,
            Duration::from_millis(100),
            fast(),
            async |up: &Up| {
                up.mark_up();
                stop.cancel();
                // Ignores the shutdown, like a call stuck waiting on a server.
                std::future::pending::<()>().await;
                Ok(())
            },
        )
        .await;
        assert_eq!(r, Err(TestError::NotDrained));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn an_attempt_that_drains_within_the_grace_returns_its_outcome() {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let r = supervise_with("the test", &shutdown, GRACE, fast(), async |up: &Up| {
            up.mark_up();
            stop.cancel();
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<(), TestError>(())
        })
        .await;
        assert_eq!(r, Ok(()));
    }

    #[tokio::test]
    async fn a_shutdown_during_the_backoff_returns_ok_promptly() {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let slow = Backoff::with_delays(Duration::from_secs(30), Duration::from_secs(30));
        let started = Instant::now();
        let r = supervise_with("the test", &shutdown, GRACE, slow, async |up: &Up| {
            up.mark_up();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stop.cancel();
            });
            Err(TestError::Broken)
        })
        .await;
        assert_eq!(r, Ok(()));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
