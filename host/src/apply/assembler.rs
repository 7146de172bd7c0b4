//! What the apply does with each message, decided without servers.
//!
//! The stream is a chain: every message names the commit LSN the stream stood
//! at before its first transaction (`prev_lsn`). The assembler knows the
//! position the target will hold once the pending group commits (`reached`),
//! and from the two it decides:
//!
//! - a message whose `prev_lsn` lies beyond `reached` comes after a gap: it is
//!   never applied (the capture re-sends from the slot, and the re-sent copy
//!   fills the gap);
//! - transactions at or below `reached` were applied already and are skipped one
//!   by one, by commit LSN, whatever message they come in;
//! - a large transaction arrives as chunks that are staged in order; a chunk out
//!   of sequence is never applied, and the final chunk applies the whole
//!   transaction at once.

use crate::change::{Lsn, Message, Transaction};

/// The large transaction whose chunks are being staged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    /// Its commit LSN.
    pub commit_lsn: Lsn,
    /// The stream position before it.
    pub prev_lsn: Lsn,
    /// The index of the next chunk expected; chunks `0..next` are staged.
    pub next: u32,
    /// The capture session that cut the staged chunks; only its chunks continue them.
    pub session: u64,
}

/// What to do with one message.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Apply these transactions with the pending group; the offset moves to `to`.
    /// `discard_staged` says that a large transaction staged so far was superseded.
    Apply {
        /// The transactions above the offset, in commit order.
        transactions: Vec<Transaction>,
        /// The stream position the message accounts for.
        to: Lsn,
        /// Chunks staged before are to be thrown away.
        discard_staged: bool,
    },
    /// A re-driven dead letter: applied whatever the offset, which it leaves alone.
    Replay {
        /// Its transactions.
        transactions: Vec<Transaction>,
    },
    /// Everything in it is applied already (a redelivery, or a re-send after a restart).
    Skip,
    /// Transactions between `reached` and `prev_lsn` are missing: this message must not be applied.
    Gap {
        /// The position the target holds (or will, once the pending group commits).
        reached: Lsn,
        /// The position this message starts from.
        prev_lsn: Lsn,
    },
    /// Stage chunk `index` of the transaction committing at `commit_lsn`.
    Stage {
        /// The transaction's commit LSN.
        commit_lsn: Lsn,
        /// The chunk's index.
        index: u32,
        /// Chunks staged for another (or an earlier copy of this) transaction are to be thrown away first.
        restart: bool,
    },
    /// The final chunk: apply staged chunks `0..index`, then this one, and move the offset to `commit_lsn`.
    Finish {
        /// The transaction's commit LSN.
        commit_lsn: Lsn,
        /// The final chunk's index (the number of chunks staged before it).
        index: u32,
        /// The stream position before the transaction.
        prev_lsn: Lsn,
    },
    /// A chunk arrived whose predecessors are not staged: it must not be applied.
    MissingChunk {
        /// The transaction's commit LSN.
        commit_lsn: Lsn,
        /// The chunk expected next, if a transaction is being staged.
        expected: Option<u32>,
        /// The chunk that arrived.
        got: u32,
    },
}

/// The apply's view of the stream.
#[derive(Debug)]
pub struct Assembler {
    reached: Lsn,
    staged: Option<Staged>,
    /// Set while the stream has a hole before `reached` can move on.
    waiting: bool,
}

impl Assembler {
    /// Starts from the recorded offset and whatever the staging table holds.
    pub fn new(offset: Lsn, staged: Option<Staged>) -> Self {
        Assembler {
            reached: offset,
            staged: staged.filter(|s| s.commit_lsn > offset),
            waiting: false,
        }
    }

    /// The position the target holds once the pending group commits.
    pub fn reached(&self) -> Lsn {
        self.reached
    }

    /// Whether the stream has a hole that a re-send from the capture must fill.
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// Records that the stream has a hole that only a re-send from the capture fills.
    pub fn await_resend(&mut self) {
        self.waiting = true;
    }

    /// The large transaction being staged, if any.
    pub fn staged(&self) -> Option<Staged> {
        self.staged
    }

    /// Whether `message` would be refused as coming after a gap or a missing chunk.
    ///
    /// Before refusing, the caller commits what it holds and re-reads the offset and the
    /// staging table: a standby apply that RabbitMQ has just made active holds the
    /// position of when it started, and the target has moved on since.
    pub fn needs_resync(&self, message: &Message) -> bool {
        if message.replay || message.last_lsn <= self.reached {
            return false;
        }
        if message.prev_lsn.is_some_and(|p| p > self.reached) {
            return true;
        }
        match message.chunk {
            Some(c) if c.index > 0 => !self
                .staged
                .is_some_and(|s| s.commit_lsn == message.last_lsn && s.session == c.session && c.index <= s.next),
            _ => false,
        }
    }

    /// Of the messages held back for their turn, the one to take next, if any is due.
    ///
    /// Due means it would no longer be refused ([`Self::needs_resync`]). The earliest in
    /// the stream goes first; of two copies of a large transaction, the one cut by the
    /// later capture session, which supersedes the other. A first chunk cut by an
    /// earlier session than the chunks being staged is not due: it would restart the
    /// staging with a copy that may never be completed. It stays held until the stream
    /// passes it, when it is skipped.
    pub fn next_held<'a>(&self, held: impl IntoIterator<Item = &'a Message>) -> Option<usize> {
        held.into_iter()
            .enumerate()
            .filter(|(_, m)| !self.needs_resync(m) && !self.superseded(m))
            .min_by_key(|(_, m)| {
                (
                    m.prev_lsn,
                    std::cmp::Reverse(m.chunk.map(|c| c.session)),
                    m.chunk.map(|c| c.index),
                )
            })
            .map(|(i, _)| i)
    }

    /// A first chunk of the transaction being staged, cut by an earlier capture session.
    fn superseded(&self, m: &Message) -> bool {
        match (m.chunk, self.staged) {
            (Some(c), Some(s)) => {
                m.last_lsn > self.reached && c.index == 0 && s.commit_lsn == m.last_lsn && c.session < s.session
            }
            _ => false,
        }
    }

    /// Takes the target's recorded position and staging, when they are ahead of what this apply knew.
    pub fn resync(&mut self, offset: Lsn, staged: Option<Staged>) {
        self.reached = self.reached.max(offset);
        self.staged = staged.filter(|s| s.commit_lsn > self.reached);
    }

    /// Decides what to do with `message`.
    pub fn on_message(&mut self, message: Message) -> Step {
        if message.replay {
            return Step::Replay {
                transactions: message.transactions,
            };
        }
        let last = message.last_lsn;
        if last <= self.reached {
            return Step::Skip;
        }
        // Messages of format 1 do not name their predecessor; they are taken as contiguous.
        let prev = message.prev_lsn.unwrap_or(self.reached);
        if prev > self.reached {
            self.waiting = true;
            return Step::Gap {
                reached: self.reached,
                prev_lsn: prev,
            };
        }
        let Some(chunk) = message.chunk else {
            let reached = self.reached;
            self.reached = last;
            self.waiting = false;
            // A transaction staged in chunks that now comes whole (the capture was restarted
            // with other limits) is superseded by this message.
            let discard_staged = self.staged.take().is_some();
            let transactions = message
                .transactions
                .into_iter()
                .filter(|t| t.context.commit_lsn > reached)
                .collect();
            return Step::Apply {
                transactions,
                to: last,
                discard_staged,
            };
        };
        if chunk.index == 0 {
            // The first chunk (again): whatever was staged before is superseded.
            let restart = self.staged.is_some();
            self.staged = Some(Staged {
                commit_lsn: last,
                prev_lsn: prev,
                next: 1,
                session: chunk.session,
            });
            self.waiting = false;
            if chunk.last {
                return self.finish(0);
            }
            return Step::Stage {
                commit_lsn: last,
                index: 0,
                restart,
            };
        }
        // Only chunks cut by the session that cut the staged ones continue them: another
        // session's copy of the transaction may differ (another transform version).
        match self.staged.as_mut().filter(|s| s.session == chunk.session) {
            Some(s) if s.commit_lsn == last && chunk.index == s.next => {
                s.next += 1;
                if chunk.last {
                    return self.finish(chunk.index);
                }
                Step::Stage {
                    commit_lsn: last,
                    index: chunk.index,
                    restart: false,
                }
            }
            // Staged before the apply stopped, and delivered again.
            Some(s) if s.commit_lsn == last && chunk.index < s.next => Step::Skip,
            s => {
                let expected = s.filter(|s| s.commit_lsn == last).map(|s| s.next);
                self.waiting = true;
                Step::MissingChunk {
                    commit_lsn: last,
                    expected,
                    got: chunk.index,
                }
            }
        }
    }

    fn finish(&mut self, index: u32) -> Step {
        let Some(staged) = self.staged.take() else {
            unreachable!("finish is only called with a staged transaction")
        };
        self.reached = staged.commit_lsn;
        Step::Finish {
            commit_lsn: staged.commit_lsn,
            index,
            prev_lsn: staged.prev_lsn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Change, Chunk, Op, TxContext};

    fn tx(lsn: u64) -> Transaction {
        Transaction {
            context: TxContext {
                xid: lsn,
                commit_lsn: Lsn(lsn),
                commit_time: String::new(),
            },
            changes: vec![Change {
                op: Op::Truncate,
                schema: "public".into(),
                table: "t".into(),
                columns: Vec::new(),
                key: Vec::new(),
            }],
        }
    }

    /// A message of whole transactions `lsns`, following `prev`, accounting up to `last`.
    fn msg(prev: u64, lsns: &[u64], last: u64) -> Message {
        let mut m = Message::new("p", &[], lsns.iter().map(|&l| tx(l)).collect(), Lsn(last));
        m.prev_lsn = Some(Lsn(prev));
        m
    }

    fn chunk(prev: u64, commit: u64, index: u32, last: bool) -> Message {
        let mut m = msg(prev, &[commit], commit);
        m.chunk = Some(Chunk {
            index,
            last,
            session: 1,
        });
        m
    }

    fn applied(step: Step) -> Vec<u64> {
        match step {
            Step::Apply { transactions, .. } => transactions.iter().map(|t| t.context.commit_lsn.0).collect(),
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    #[test]
    fn contiguous_messages_apply_in_order() {
        let mut a = Assembler::new(Lsn(10), None);
        assert_eq!(applied(a.on_message(msg(10, &[20, 30], 30))), [20, 30]);
        assert_eq!(applied(a.on_message(msg(30, &[40], 45))), [40]);
        assert_eq!(a.reached(), Lsn(45));
        assert!(!a.waiting());
    }

    #[test]
    fn a_heartbeat_moves_the_position() {
        let mut a = Assembler::new(Lsn(10), None);
        assert_eq!(applied(a.on_message(msg(10, &[], 90))), Vec::<u64>::new());
        assert_eq!(a.reached(), Lsn(90));
    }

    #[test]
    fn applied_transactions_are_skipped_one_by_one_inside_a_new_message() {
        // After a capture restart, batches are cut differently: transaction 20 was
        // applied in an earlier message, 30 was not.
        let mut a = Assembler::new(Lsn(20), None);
        assert_eq!(applied(a.on_message(msg(10, &[20, 30], 30))), [30]);
    }

    #[test]
    fn a_redelivered_message_is_skipped() {
        let mut a = Assembler::new(Lsn(30), None);
        assert_eq!(a.on_message(msg(10, &[20, 30], 30)), Step::Skip);
        assert_eq!(a.on_message(msg(20, &[30], 30)), Step::Skip);
    }

    #[test]
    fn a_message_past_a_gap_is_never_applied_and_the_resend_fills_it() {
        // Message (10, 20] was refused by the broker; (20, 30] was accepted after it.
        let mut a = Assembler::new(Lsn(10), None);
        assert_eq!(
            a.on_message(msg(20, &[30], 30)),
            Step::Gap {
                reached: Lsn(10),
                prev_lsn: Lsn(20)
            }
        );
        assert!(a.waiting());
        assert_eq!(a.reached(), Lsn(10), "the offset must not pass the refused transaction");
        // The capture resumes from the slot and sends both again.
        assert_eq!(applied(a.on_message(msg(10, &[20], 20))), [20]);
        assert!(!a.waiting());
        assert_eq!(applied(a.on_message(msg(20, &[30], 30))), [30]);
    }

    #[test]
    fn format_one_messages_are_taken_as_contiguous() {
        let mut a = Assembler::new(Lsn(10), None);
        let mut m = msg(0, &[50], 50);
        m.prev_lsn = None;
        assert_eq!(applied(a.on_message(m)), [50]);
    }

    #[test]
    fn replays_apply_whatever_the_offset() {
        let mut a = Assembler::new(Lsn(100), None);
        let mut m = msg(10, &[20], 20);
        m.replay = true;
        assert!(matches!(a.on_message(m), Step::Replay { transactions } if transactions.len() == 1));
        assert_eq!(a.reached(), Lsn(100));
    }

    #[test]
    fn chunks_are_staged_in_order_and_the_last_finishes() {
        let mut a = Assembler::new(Lsn(10), None);
        assert_eq!(
            a.on_message(chunk(10, 50, 0, false)),
            Step::Stage {
                commit_lsn: Lsn(50),
                index: 0,
                restart: false
            }
        );
        assert_eq!(
            a.on_message(chunk(10, 50, 1, false)),
            Step::Stage {
                commit_lsn: Lsn(50),
                index: 1,
                restart: false
            }
        );
        assert_eq!(a.reached(), Lsn(10), "nothing moves before the final chunk");
        assert_eq!(
            a.on_message(chunk(10, 50, 2, true)),
            Step::Finish {
                commit_lsn: Lsn(50),
                index: 2,
                prev_lsn: Lsn(10)
            }
        );
        assert_eq!(a.reached(), Lsn(50));
        assert_eq!(a.staged(), None);
        assert_eq!(
            a.on_message(chunk(10, 50, 2, true)),
            Step::Skip,
            "a redelivered final chunk"
        );
    }

    #[test]
    fn a_missing_middle_chunk_is_never_applied_or_waited_on() {
        let mut a = Assembler::new(Lsn(10), None);
        a.on_message(chunk(10, 50, 0, false));
        assert_eq!(
            a.on_message(chunk(10, 50, 2, true)),
            Step::MissingChunk {
                commit_lsn: Lsn(50),
                expected: Some(1),
                got: 2
            }
        );
        assert!(a.waiting());
        assert_eq!(a.reached(), Lsn(10));
        // The capture re-sends the whole transaction from its first chunk.
        assert_eq!(
            a.on_message(chunk(10, 50, 0, false)),
            Step::Stage {
                commit_lsn: Lsn(50),
                index: 0,
                restart: true
            }
        );
        assert!(!a.waiting());
    }

    #[test]
    fn chunks_of_another_session_never_continue_staged_ones() {
        // Chunks 0-1 of copy 1 are staged; the capture restarts, its chunk 0 is refused,
        // and chunks 1-3 of copy 2 are accepted.
        let mut a = Assembler::new(Lsn(10), None);
        a.on_message(chunk(10, 50, 0, false));
        a.on_message(chunk(10, 50, 1, false));
        let other = |index, last| {
            let mut m = chunk(10, 50, index, last);
            m.chunk = Some(Chunk {
                index,
                last,
                session: 2,
            });
            m
        };
        assert!(a.needs_resync(&other(1, false)));
        assert!(matches!(a.on_message(other(1, false)), Step::MissingChunk { .. }));
        assert!(matches!(a.on_message(other(2, false)), Step::MissingChunk { .. }));
        assert!(matches!(a.on_message(other(3, true)), Step::MissingChunk { .. }));
        assert_eq!(a.reached(), Lsn(10), "no mixed copy is ever applied");
        // The next session re-sends from its first chunk.
        let mut first = chunk(10, 50, 0, false);
        first.chunk = Some(Chunk {
            index: 0,
            last: false,
            session: 3,
        });
        assert!(matches!(a.on_message(first), Step::Stage { restart: true, .. }));
    }

    #[test]
    fn a_tail_without_its_head_is_missing_chunks() {
        // Chunk 0 never arrived (refused, or dead-lettered).
        let mut a = Assembler::new(Lsn(10), None);
        assert_eq!(
            a.on_message(chunk(10, 50, 1, false)),
            Step::MissingChunk {
                commit_lsn: Lsn(50),
                expected: None,
                got: 1
            }
        );
        assert_eq!(
            a.on_message(chunk(10, 50, 2, true)),
            Step::MissingChunk {
                commit_lsn: Lsn(50),
                expected: None,
                got: 2
            }
        );
        assert_eq!(a.reached(), Lsn(10));
    }

    #[test]
    fn staging_survives_a_restart_and_redelivered_chunks_are_skipped() {
        let staged = Staged {
            commit_lsn: Lsn(50),
            prev_lsn: Lsn(10),
            next: 3,
            session: 1,
        };
        let mut a = Assembler::new(Lsn(10), Some(staged));
        assert_eq!(a.on_message(chunk(10, 50, 2, false)), Step::Skip);
        assert_eq!(
            a.on_message(chunk(10, 50, 3, true)),
            Step::Finish {
                commit_lsn: Lsn(50),
                index: 3,
                prev_lsn: Lsn(10)
            }
        );
    }

    #[test]
    fn staging_of_an_applied_transaction_is_ignored() {
        let staged = Staged {
            commit_lsn: Lsn(50),
            prev_lsn: Lsn(10),
            next: 3,
            session: 1,
        };
        assert_eq!(Assembler::new(Lsn(50), Some(staged)).staged(), None);
    }

    #[test]
    fn a_whole_copy_supersedes_staged_chunks() {
        let mut a = Assembler::new(Lsn(10), None);
        a.on_message(chunk(10, 50, 0, false));
        match a.on_message(msg(10, &[50], 50)) {
            Step::Apply {
                transactions,
                discard_staged,
                ..
            } => {
                assert!(discard_staged);
                assert_eq!(transactions.len(), 1);
            }
            other => panic!("expected Apply, got {other:?}"),
        }
        assert_eq!(a.staged(), None);
    }

    #[test]
    fn a_standby_made_active_catches_up_with_the_target_before_judging_a_gap() {
        // Started at offset 10; the active apply has since committed up to 40 and staged two chunks of 90.
        let mut a = Assembler::new(Lsn(10), None);
        let next = msg(40, &[50], 50);
        assert!(a.needs_resync(&next));
        a.resync(Lsn(40), None);
        assert!(!a.needs_resync(&next));
        assert_eq!(applied(a.on_message(next)), [50]);

        let mut a = Assembler::new(Lsn(10), None);
        let tail = chunk(40, 90, 2, true);
        assert!(a.needs_resync(&tail));
        let staged = Staged {
            commit_lsn: Lsn(90),
            prev_lsn: Lsn(40),
            next: 2,
            session: 1,
        };
        a.resync(Lsn(40), Some(staged));
        assert!(!a.needs_resync(&tail));
        assert!(matches!(a.on_message(tail), Step::Finish { index: 2, .. }));
        // An older offset from the target never moves the position back.
        a.resync(Lsn(5), None);
        assert_eq!(a.reached(), Lsn(90));
    }

    #[test]
    fn contiguous_messages_need_no_resync() {
        let a = Assembler::new(Lsn(10), None);
        assert!(!a.needs_resync(&msg(10, &[20], 20)));
        assert!(!a.needs_resync(&chunk(10, 50, 0, false)));
        assert!(!a.needs_resync(&msg(0, &[5], 5)), "already applied");
    }

    /// Takes the held message `next_held` picks, and what the assembler decides for it.
    fn take_held(a: &mut Assembler, held: &mut Vec<Message>) -> Option<Step> {
        let i = a.next_held(held.iter())?;
        Some(a.on_message(held.remove(i)))
    }

    #[test]
    fn messages_delivered_in_reverse_are_taken_in_stream_order() {
        let mut a = Assembler::new(Lsn(10), None);
        let mut held = vec![msg(30, &[40], 40), msg(20, &[30], 30)];
        assert_eq!(a.next_held(held.iter()), None, "nothing is due before 10..20 arrives");
        assert_eq!(applied(a.on_message(msg(10, &[20], 20))), [20]);
        assert_eq!(take_held(&mut a, &mut held).map(applied), Some(vec![30]));
        assert_eq!(take_held(&mut a, &mut held).map(applied), Some(vec![40]));
        assert!(held.is_empty());
    }

    #[test]
    fn a_held_duplicate_is_skipped_once_its_copy_is_applied() {
        let mut a = Assembler::new(Lsn(10), None);
        let mut held = vec![msg(20, &[30], 30), msg(20, &[30], 30)];
        assert_eq!(applied(a.on_message(msg(10, &[20], 20))), [20]);
        assert_eq!(take_held(&mut a, &mut held).map(applied), Some(vec![30]));
        assert_eq!(take_held(&mut a, &mut held), Some(Step::Skip));
        assert_eq!(take_held(&mut a, &mut held), None);
    }

    #[test]
    fn held_chunks_are_staged_in_order() {
        let mut a = Assembler::new(Lsn(10), None);
        let mut held = vec![chunk(10, 50, 2, true), chunk(10, 50, 1, false)];
        assert_eq!(a.next_held(held.iter()), None, "chunks 1 and 2 wait for chunk 0");
        assert!(matches!(
            a.on_message(chunk(10, 50, 0, false)),
            Step::Stage { index: 0, .. }
        ));
        assert!(matches!(
            take_held(&mut a, &mut held),
            Some(Step::Stage { index: 1, .. })
        ));
        assert!(matches!(
            take_held(&mut a, &mut held),
            Some(Step::Finish { index: 2, .. })
        ));
        assert_eq!(a.reached(), Lsn(50));
    }

    #[test]
    fn the_later_sessions_copy_of_a_large_transaction_wins() {
        let with_session = |mut m: Message, session: u64| {
            if let Some(c) = m.chunk.as_mut() {
                c.session = session;
            }
            m
        };
        let mut a = Assembler::new(Lsn(10), None);
        // Session 1 was cut short; session 2 sent the whole transaction again, and a
        // departed consumer's messages came back in a muddle.
        let mut held = vec![
            with_session(chunk(10, 50, 1, true), 2),
            with_session(chunk(10, 50, 0, false), 1),
            with_session(chunk(10, 50, 0, false), 2),
        ];
        assert!(matches!(
            take_held(&mut a, &mut held),
            Some(Step::Stage {
                index: 0,
                restart: false,
                ..
            })
        ));
        assert_eq!(a.staged().map(|s| s.session), Some(2));
        // Session 1's first chunk would restart the staging: it waits, and is skipped at the end.
        assert!(matches!(
            take_held(&mut a, &mut held),
            Some(Step::Finish { index: 1, .. })
        ));
        assert_eq!(take_held(&mut a, &mut held), Some(Step::Skip));
        assert!(held.is_empty());
    }

    #[test]
    fn chunks_past_a_gap_are_a_gap() {
        let mut a = Assembler::new(Lsn(10), None);
        assert!(matches!(a.on_message(chunk(20, 50, 0, false)), Step::Gap { .. }));
        assert_eq!(a.staged(), None);
    }
}
