//! Start-up planning: from what the servers say about a pipeline, decide
//! whether to copy, resume, create the slot, or refuse.
//!
//! A slot that is missing or ahead of the target means changes the target
//! needs may be gone; the plan then fails closed instead of starting fresh.

use crate::change::Lsn;

/// The command that is starting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// `wasmcdc run`: it can copy the tables, so a missing slot is recoverable while nothing was applied.
    Run,
    /// `wasmcdc capture`: it cannot copy, so it creates a slot only for a pipeline with no history.
    Capture,
}

/// What the offsets table in MariaDB says about the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offsets {
    /// MariaDB could not be read.
    Unknown,
    /// No row: nothing was ever copied or applied.
    Absent,
    /// An initial copy started and did not finish.
    Copying,
    /// Streaming, applied up to this commit LSN (0: nothing yet).
    Applied(Lsn),
}

/// What the servers say about a pipeline, read just before it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The slot's `confirmed_flush_lsn`, if the slot exists.
    pub slot: Option<Lsn>,
    /// The pipeline's offsets row.
    pub offsets: Offsets,
    /// Messages ready in the pipeline's queue; 0 when the queue does not exist.
    pub queued: u64,
    /// Messages in its dead-letter queue; 0 when it does not exist.
    pub dead_letters: u64,
}

/// What to do at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Copy the tables, which creates the slot, then stream.
    Copy,
    /// Drop the slot of an interrupted initial copy, then copy again.
    RedoCopy,
    /// The pipeline is new: create its slot and stream from it.
    CreateSlot,
    /// Stream from the existing slot.
    Resume,
    /// Do not start.
    Refuse(Refusal),
}

/// What shows that a pipeline has run before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum History {
    /// The target applied changes up to this commit LSN.
    Applied(Lsn),
    /// An initial copy was started.
    Copying,
    /// Messages wait in its queue and dead-letter queue.
    Queued(u64),
}

/// Why a pipeline may not start; each says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The slot is gone but the pipeline has history: changes since are missing.
    #[error(
        "{}, but its replication slot is gone, so changes made since are missing; run `wasmcdc slot drop` and start again with `wasmcdc run` (the initial copy re-copies the tables)",
        .history.describe(.pipeline)
    )]
    SlotGone {
        /// The pipeline's name.
        pipeline: String,
        /// What shows it ran before.
        history: History,
    },
    /// The slot was confirmed past what the target holds and nothing is queued in between.
    #[error(
        "replication slot '{pipeline}' was confirmed up to {confirmed}, but the target has applied only up to {applied} and the queue is empty, so changes in between were lost; run `wasmcdc slot drop` and start again (the initial copy re-copies the tables)"
    )]
    SlotAhead {
        /// The pipeline's name.
        pipeline: String,
        /// The slot's `confirmed_flush_lsn`.
        confirmed: Lsn,
        /// The offsets row's LSN.
        applied: Lsn,
    },
    /// The slot is missing and MariaDB cannot say whether the pipeline is new.
    #[error(
        "replication slot '{pipeline}' does not exist and MariaDB cannot be read, so it cannot be told whether the pipeline is new; the slot is created only for a new pipeline, so check --mariadb-url and that MariaDB is running"
    )]
    Undecidable {
        /// The pipeline's name.
        pipeline: String,
    },
}

impl Refusal {
    /// True when the slot cannot deliver what the target is missing; no retry helps.
    pub fn is_diverged(&self) -> bool {
        !matches!(self, Refusal::Undecidable { .. })
    }
}

impl History {
    /// The clause that starts a refusal, naming `pipeline`.
    fn describe(&self, pipeline: &str) -> String {
        match self {
            History::Applied(lsn) => format!("the target has applied up to {lsn} for pipeline '{pipeline}'"),
            History::Copying => format!("an initial copy was started for pipeline '{pipeline}'"),
            History::Queued(n) => format!("pipeline '{pipeline}' has {n} messages in its queue and dead-letter queue"),
        }
    }
}

/// Decides what `start` does for `pipeline`, given `facts`.
pub fn decide(start: Start, pipeline: &str, facts: &Facts) -> Plan {
    let gone = |history| {
        Plan::Refuse(Refusal::SlotGone {
            pipeline: pipeline.to_owned(),
            history,
        })
    };
    let Some(confirmed) = facts.slot else {
        return match (start, facts.offsets) {
            (_, Offsets::Unknown) => Plan::Refuse(Refusal::Undecidable {
                pipeline: pipeline.to_owned(),
            }),
            (_, Offsets::Applied(lsn)) if lsn > Lsn(0) => gone(History::Applied(lsn)),
            // The initial copy starts over and re-copies every row.
            (Start::Run, _) => Plan::Copy,
            (Start::Capture, Offsets::Copying) => gone(History::Copying),
            (Start::Capture, _) if facts.queued + facts.dead_letters > 0 => {
                gone(History::Queued(facts.queued + facts.dead_letters))
            }
            (Start::Capture, _) => Plan::CreateSlot,
        };
    };
    match (start, facts.offsets) {
        // The capture alone does not read the target: the slot is where it resumes.
        (Start::Capture, _) => Plan::Resume,
        (Start::Run, Offsets::Copying) => Plan::RedoCopy,
        // Messages still queued may carry what lies in between; the apply's gap check guards the rest.
        (Start::Run, Offsets::Applied(applied)) if confirmed > applied && facts.queued == 0 => {
            Plan::Refuse(Refusal::SlotAhead {
                pipeline: pipeline.to_owned(),
                confirmed,
                applied,
            })
        }
        (Start::Run, _) => Plan::Resume,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(slot: Option<u64>, offsets: Offsets, queued: u64, dead_letters: u64) -> Facts {
        Facts {
            slot: slot.map(Lsn),
            offsets,
            queued,
            dead_letters,
        }
    }

    fn run(f: Facts) -> Plan {
        decide(Start::Run, "p", &f)
    }

    fn capture(f: Facts) -> Plan {
        decide(Start::Capture, "p", &f)
    }

    fn slot_gone(history: History) -> Plan {
        Plan::Refuse(Refusal::SlotGone {
            pipeline: "p".into(),
            history,
        })
    }

    #[test]
    fn run_copies_when_there_is_no_slot_and_nothing_applied() {
        assert_eq!(run(facts(None, Offsets::Absent, 0, 0)), Plan::Copy);
        assert_eq!(run(facts(None, Offsets::Applied(Lsn(0)), 0, 0)), Plan::Copy);
        assert_eq!(run(facts(None, Offsets::Copying, 0, 0)), Plan::Copy);
        // Old messages are skipped by LSN once the copy has set the offset.
        assert_eq!(run(facts(None, Offsets::Absent, 5, 2)), Plan::Copy);
    }

    #[test]
    fn run_refuses_when_the_slot_is_gone_after_changes_were_applied() {
        assert_eq!(
            run(facts(None, Offsets::Applied(Lsn(100)), 0, 0)),
            slot_gone(History::Applied(Lsn(100)))
        );
    }

    #[test]
    fn run_redoes_an_interrupted_copy() {
        assert_eq!(run(facts(Some(50), Offsets::Copying, 0, 0)), Plan::RedoCopy);
    }

    #[test]
    fn run_refuses_a_slot_ahead_of_the_target_with_an_empty_queue() {
        assert_eq!(
            run(facts(Some(200), Offsets::Applied(Lsn(100)), 0, 3)),
            Plan::Refuse(Refusal::SlotAhead {
                pipeline: "p".into(),
                confirmed: Lsn(200),
                applied: Lsn(100),
            })
        );
    }

    #[test]
    fn run_resumes_a_slot_ahead_while_messages_are_queued() {
        assert_eq!(run(facts(Some(200), Offsets::Applied(Lsn(100)), 1, 0)), Plan::Resume);
    }

    #[test]
    fn run_resumes_a_slot_at_or_behind_the_target() {
        assert_eq!(run(facts(Some(100), Offsets::Applied(Lsn(100)), 0, 0)), Plan::Resume);
        assert_eq!(run(facts(Some(90), Offsets::Applied(Lsn(100)), 0, 0)), Plan::Resume);
        assert_eq!(run(facts(Some(90), Offsets::Absent, 0, 0)), Plan::Resume);
    }

    #[test]
    fn capture_resumes_an_existing_slot_without_reading_the_target() {
        assert_eq!(capture(facts(Some(200), Offsets::Unknown, 0, 0)), Plan::Resume);
        assert_eq!(
            capture(facts(Some(200), Offsets::Applied(Lsn(100)), 0, 0)),
            Plan::Resume
        );
    }

    #[test]
    fn capture_creates_the_slot_only_for_a_new_pipeline() {
        assert_eq!(capture(facts(None, Offsets::Absent, 0, 0)), Plan::CreateSlot);
        assert_eq!(capture(facts(None, Offsets::Applied(Lsn(0)), 0, 0)), Plan::CreateSlot);
    }

    #[test]
    fn capture_refuses_a_missing_slot_when_the_pipeline_has_history() {
        assert_eq!(
            capture(facts(None, Offsets::Applied(Lsn(7)), 0, 0)),
            slot_gone(History::Applied(Lsn(7)))
        );
        assert_eq!(
            capture(facts(None, Offsets::Copying, 0, 0)),
            slot_gone(History::Copying)
        );
        assert_eq!(
            capture(facts(None, Offsets::Absent, 2, 0)),
            slot_gone(History::Queued(2))
        );
        assert_eq!(
            capture(facts(None, Offsets::Applied(Lsn(0)), 0, 1)),
            slot_gone(History::Queued(1))
        );
    }

    #[test]
    fn a_missing_slot_with_an_unreadable_target_is_refused_but_not_as_diverged() {
        let plan = capture(facts(None, Offsets::Unknown, 0, 0));
        let Plan::Refuse(refusal) = plan else {
            panic!("expected a refusal, got {plan:?}");
        };
        assert_eq!(refusal, Refusal::Undecidable { pipeline: "p".into() });
        assert!(!refusal.is_diverged());
        assert!(refusal.to_string().contains("created only for a new pipeline"));
    }

    #[test]
    fn refusals_say_what_to_do() {
        let Plan::Refuse(r) = run(facts(None, Offsets::Applied(Lsn(0x1_0000_0010)), 0, 0)) else {
            panic!("expected a refusal");
        };
        assert!(r.is_diverged());
        let text = r.to_string();
        assert!(
            text.starts_with("the target has applied up to 1/10 for pipeline 'p'"),
            "{text}"
        );
        assert!(text.contains("its replication slot is gone, so changes made since are missing"));
        assert!(text.contains("run `wasmcdc slot drop` and start again"));
    }
}
