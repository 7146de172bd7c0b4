//! Whether a pipeline is stalled, decided from two readings of its positions taken a
//! window apart. Pure: the readings come from the servers, the decision does not.
//!
//! A pipeline is stalled when nothing has been applied for a while and work waits
//! that a stage does not take:
//! - messages wait in the queue and their number does not fall: the apply takes none;
//! - WAL that the slot already held at the first reading is still unconfirmed at the
//!   second, and no capture holds the slot or the one that does has not answered the
//!   server for a while: the capture takes none, and the slot's lag grows.
//!
//! "Nothing applied for a while" means the offsets row did not move between the readings
//! and its last commit is at least [`QUIET`] (or the window, if longer) old. A healthy
//! capture sends a heartbeat every few seconds while the WAL moves, and the apply records
//! it, so a healthy pipeline never stays quiet that long while work waits. Likewise a
//! healthy capture answers the server at least every 10 s.

use std::time::Duration;

use crate::change::Lsn;

/// The least time without an apply commit, or without an answer from the capture, that
/// can be called a stall: three times the capture's heartbeat, and more than the 10 s
/// between its status updates to the server.
pub const QUIET: Duration = Duration::from_secs(15);

/// One reading of the positions that tell whether the pipeline moves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// The replication slot, if it exists.
    pub slot: Option<SlotPositions>,
    /// Messages ready in the pipeline's queue, if it exists.
    pub ready: Option<u32>,
    /// Where the target stands.
    pub applied: Applied,
}

/// Where the slot stands against the server's WAL, and who holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotPositions {
    /// The slot's `confirmed_flush_lsn`.
    pub confirmed: Lsn,
    /// The server's current WAL position.
    pub wal: Lsn,
    /// The capture reading the slot.
    pub holder: Holder,
}

/// Who reads a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// No process holds the slot.
    Nobody,
    /// A capture holds it and last answered the server `silent_for` seconds ago
    /// (`None` when this role may not see it).
    Capture {
        /// Seconds since the capture's last status update to the server.
        silent_for: Option<u64>,
    },
}

impl SlotPositions {
    /// WAL the slot holds that the capture has not confirmed, in bytes.
    pub fn pending(&self) -> u64 {
        self.wal.0.saturating_sub(self.confirmed.0)
    }

    /// Whether a capture holds the slot and answers the server.
    fn answered(&self) -> bool {
        match self.holder {
            Holder::Nobody => false,
            Holder::Capture { silent_for } => silent_for.is_none_or(|s| Duration::from_secs(s) < QUIET),
        }
    }
}

/// The offsets row, as far as the stall decision needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Applied {
    /// No row: nothing has been applied yet.
    #[default]
    Nothing,
    /// The initial copy is in progress; it is judged by its own progress, not here.
    Copying,
    /// Applied up to `lsn`, last committed `seconds_ago`.
    At {
        /// The last applied commit LSN.
        lsn: Lsn,
        /// Seconds since the apply last committed.
        seconds_ago: u64,
    },
}

impl Applied {
    /// The applied position, if there is one.
    fn lsn(self) -> Option<Lsn> {
        match self {
            Applied::At { lsn, .. } => Some(lsn),
            _ => None,
        }
    }
}

/// Why a pipeline is stalled: the stages that take no work, at least one of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// WAL bytes the slot holds unconfirmed, when the capture takes none.
    pub capture: Option<u64>,
    /// Messages ready in the queue, when the apply takes none.
    pub apply: Option<u32>,
    /// Seconds since the last apply commit; `None` if there never was one.
    pub quiet: Option<u64>,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut waits = Vec::new();
        let mut check = Vec::new();
        if let Some(pending) = self.capture {
            waits.push(format!(
                "the slot holds {pending} bytes of WAL that no capture confirms"
            ));
            check.push("a capture (`wasmcdc capture` or `wasmcdc run`) runs for this pipeline and can reach PostgreSQL and RabbitMQ");
        }
        if let Some(ready) = self.apply {
            let messages = match ready {
                1 => "1 message waits".to_owned(),
                n => format!("{n} messages wait"),
            };
            waits.push(format!("{messages} in the queue and the apply takes none"));
            check.push(
                "an apply (`wasmcdc apply` or `wasmcdc run`) runs for this pipeline and can reach RabbitMQ and MariaDB",
            );
        }
        let quiet = match self.quiet {
            Some(s) => format!("nothing has been applied for {s} s"),
            None => "nothing has ever been applied".to_owned(),
        };
        write!(
            f,
            "the pipeline is stalled: {}, and {quiet}; check that {}, and read its log",
            waits.join(", "),
            check.join(", and that ")
        )
    }
}

/// Decides from a reading and another taken `window` later whether the pipeline is stalled.
pub fn judge(first: &Reading, second: &Reading, window: Duration) -> Option<Stall> {
    let (before, after) = (first.slot?, second.slot?);
    if second.applied == Applied::Copying || first.applied.lsn() != second.applied.lsn() {
        return None;
    }
    let quiet = match second.applied {
        Applied::At { seconds_ago, .. } if Duration::from_secs(seconds_ago) < QUIET.max(window) => return None,
        Applied::At { seconds_ago, .. } => Some(seconds_ago),
        _ => None,
    };
    let apply = second
        .ready
        .filter(|&ready| ready > 0 && ready >= first.ready.unwrap_or(0));
    let capture = (after.confirmed == before.confirmed && after.confirmed < before.wal && !after.answered())
        .then(|| after.pending());
    (apply.is_some() || capture.is_some()).then_some(Stall { capture, apply, quiet })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(5);
    const ANSWERING: Holder = Holder::Capture { silent_for: Some(2) };
    const SILENT: Holder = Holder::Capture { silent_for: Some(40) };
    const UNSEEN: Holder = Holder::Capture { silent_for: None };

    /// A reading: slot `confirmed` and `wal`, the slot's holder, ready messages, the offsets row.
    fn r(confirmed: u64, wal: u64, holder: Holder, ready: u32, applied: Applied) -> Reading {
        Reading {
            slot: Some(SlotPositions {
                confirmed: Lsn(confirmed),
                wal: Lsn(wal),
                holder,
            }),
            ready: Some(ready),
            applied,
        }
    }

    fn at(lsn: u64, seconds_ago: u64) -> Applied {
        Applied::At {
            lsn: Lsn(lsn),
            seconds_ago,
        }
    }

    /// The decision for two readings a default window apart.
    fn judged(first: Reading, second: Reading) -> Option<Stall> {
        judge(&first, &second, WINDOW)
    }

    fn stall(capture: Option<u64>, apply: Option<u32>, quiet: Option<u64>) -> Option<Stall> {
        Some(Stall { capture, apply, quiet })
    }

    #[test]
    fn an_idle_pipeline_is_not_stalled_running_or_stopped() {
        let idle = r(100, 100, ANSWERING, 0, at(100, 600));
        assert_eq!(judged(idle.clone(), idle), None);
        let stopped = r(100, 100, Holder::Nobody, 0, at(100, 600));
        assert_eq!(judged(stopped.clone(), stopped), None);
    }

    #[test]
    fn work_that_waits_is_no_stall_while_something_is_applied() {
        // The offsets row moved.
        let (first, second) = (
            r(100, 900, Holder::Nobody, 40, at(50, 0)),
            r(100, 2000, Holder::Nobody, 80, at(60, 20)),
        );
        assert_eq!(judged(first, second), None);
        // The last commit is recent: between two heartbeats of a healthy pipeline.
        let (first, second) = (
            r(100, 150, Holder::Nobody, 0, at(100, 1)),
            r(100, 300, Holder::Nobody, 1, at(100, 6)),
        );
        assert_eq!(judged(first, second), None);
    }

    #[test]
    fn messages_the_apply_does_not_take_are_a_stall() {
        let first = r(500, 500, ANSWERING, 3, at(100, 30));
        assert_eq!(
            judged(first.clone(), r(700, 700, ANSWERING, 5, at(100, 35))),
            stall(None, Some(5), Some(35))
        );
        // A queue that drains is being taken, even while the apply has not committed yet.
        assert_eq!(judged(first, r(700, 700, ANSWERING, 2, at(100, 35))), None);
        // An apply that never committed is judged on the queue alone.
        let (first, second) = (
            r(500, 500, ANSWERING, 1, Applied::Nothing),
            r(600, 600, ANSWERING, 2, Applied::Nothing),
        );
        assert_eq!(judged(first, second), stall(None, Some(2), None));
        let empty = r(600, 600, ANSWERING, 0, Applied::Nothing);
        assert_eq!(judged(empty.clone(), empty), None);
    }

    #[test]
    fn wal_no_capture_takes_is_a_stall() {
        for holder in [Holder::Nobody, SILENT] {
            let (first, second) = (r(100, 400, holder, 0, at(100, 20)), r(100, 900, holder, 0, at(100, 25)));
            assert_eq!(judged(first, second), stall(Some(800), None, Some(25)), "{holder:?}");
        }
    }

    #[test]
    fn a_capture_that_answers_or_confirms_is_not_stalled() {
        // Its next heartbeat may fall after the second reading; the apply being down says nothing about it.
        let (first, second) = (
            r(100, 400, ANSWERING, 3, at(100, 20)),
            r(100, 900, ANSWERING, 3, at(100, 25)),
        );
        assert_eq!(judged(first, second), stall(None, Some(3), Some(25)));
        let (first, second) = (r(100, 400, UNSEEN, 0, at(100, 20)), r(100, 900, UNSEEN, 0, at(100, 25)));
        assert_eq!(judged(first, second), None);
        let (first, second) = (
            r(100, 400, Holder::Nobody, 0, at(100, 20)),
            r(400, 900, Holder::Nobody, 0, at(100, 25)),
        );
        assert_eq!(judged(first, second), None);
    }

    #[test]
    fn wal_written_after_the_first_reading_is_not_yet_a_stall() {
        // Quiet for long, then a transaction commits during the window.
        let (first, second) = (
            r(100, 100, Holder::Nobody, 0, at(100, 300)),
            r(100, 400, Holder::Nobody, 0, at(100, 305)),
        );
        assert_eq!(judged(first, second), None);
    }

    #[test]
    fn both_stages_are_named_when_both_take_nothing() {
        let (first, second) = (
            r(100, 400, Holder::Nobody, 2, at(100, 20)),
            r(100, 900, Holder::Nobody, 2, at(100, 25)),
        );
        let stall = judged(first, second).expect("stalled");
        assert_eq!((stall.capture, stall.apply), (Some(800), Some(2)));
        let text = stall.to_string();
        assert!(text.contains("800 bytes") && text.contains("2 messages"), "{text}");
        assert!(
            text.contains("wasmcdc capture") && text.contains("wasmcdc apply"),
            "{text}"
        );
        let text = Stall {
            capture: Some(800),
            apply: None,
            quiet: None,
        }
        .to_string();
        assert!(
            text.contains("RabbitMQ") && text.contains("ever been applied"),
            "{text}"
        );
    }

    #[test]
    fn the_initial_copy_and_a_missing_slot_are_not_judged() {
        let copying = Reading {
            applied: Applied::Copying,
            ..r(100, 9000, Holder::Nobody, 7, Applied::Nothing)
        };
        assert_eq!(judged(copying.clone(), copying), None);
        let no_slot = Reading {
            slot: None,
            ready: Some(7),
            applied: Applied::Nothing,
        };
        assert_eq!(judged(no_slot.clone(), no_slot), None);
    }

    #[test]
    fn a_window_longer_than_the_quiet_floor_asks_for_that_much_quiet() {
        let long = Duration::from_secs(60);
        let first = r(100, 100, ANSWERING, 4, at(100, 0));
        assert_eq!(judge(&first, &r(100, 100, ANSWERING, 4, at(100, 40)), long), None);
        assert!(judge(&first, &r(100, 100, ANSWERING, 4, at(100, 60)), long).is_some());
    }
}
