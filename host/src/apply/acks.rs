//! Which deliveries to acknowledge, decided without servers.
//!
//! RabbitMQ acknowledgements are cumulative when they can be (`multiple`), but a
//! delivery the apply holds back (one that arrived before the message it
//! follows, see [`super::Held`]) must stay unacknowledged while later ones are
//! settled: RabbitMQ keeps it until then, and hands it over again if the apply
//! stops. The ledger knows every delivery not yet acknowledged, and turns "these
//! are done" into the fewest acknowledgements that touch nothing else.

use std::collections::BTreeSet;

/// One acknowledgement to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Every outstanding delivery up to and including this tag (`multiple`).
    Through(u64),
    /// This delivery alone.
    One(u64),
}

/// The deliveries received and not yet acknowledged.
#[derive(Debug, Default)]
pub struct Ledger {
    outstanding: BTreeSet<u64>,
    /// Outstanding deliveries whose effect is durable, not yet acknowledged
    /// because an earlier delivery is still open.
    done: BTreeSet<u64>,
}

impl Ledger {
    /// Records a delivery as received.
    pub fn received(&mut self, tag: u64) {
        self.outstanding.insert(tag);
    }

    /// Marks `tags` done and returns the acknowledgements that are now due:
    /// one cumulative acknowledgement up to the first delivery still open, and
    /// single ones for the done deliveries after it.
    pub fn done(&mut self, tags: impl IntoIterator<Item = u64>) -> Vec<Ack> {
        self.done
            .extend(tags.into_iter().filter(|t| self.outstanding.contains(t)));
        let mut acks = Vec::new();
        let mut through = None;
        while let Some(&first) = self.outstanding.first() {
            if !self.done.remove(&first) {
                break;
            }
            self.outstanding.remove(&first);
            through = Some(first);
        }
        acks.extend(through.map(Ack::Through));
        for tag in std::mem::take(&mut self.done) {
            self.outstanding.remove(&tag);
            acks.push(Ack::One(tag));
        }
        acks
    }

    /// Deliveries received and not yet acknowledged.
    pub fn open(&self) -> usize {
        self.outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(tags: impl IntoIterator<Item = u64>) -> Ledger {
        let mut l = Ledger::default();
        for t in tags {
            l.received(t);
        }
        l
    }

    #[test]
    fn in_order_deliveries_are_acknowledged_cumulatively() {
        let mut l = ledger(1..=5);
        assert_eq!(l.done([1, 2, 3]), [Ack::Through(3)]);
        assert_eq!(l.done([4, 5]), [Ack::Through(5)]);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn a_held_delivery_is_never_covered_by_a_later_acknowledgement() {
        // 2 is held back; 1 and 3..5 are applied.
        let mut l = ledger(1..=5);
        assert_eq!(
            l.done([1, 3, 4, 5]),
            [Ack::Through(1), Ack::One(3), Ack::One(4), Ack::One(5)]
        );
        assert_eq!(l.open(), 1);
        l.received(6);
        // Once 2 is applied, acknowledgements are cumulative again.
        assert_eq!(l.done([2, 6]), [Ack::Through(6)]);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn a_delivery_still_in_progress_blocks_the_cumulative_acknowledgement() {
        let mut l = ledger(1..=3);
        assert_eq!(l.done([2, 3]), [Ack::One(2), Ack::One(3)]);
        assert_eq!(l.done([1]), [Ack::Through(1)]);
    }

    #[test]
    fn nothing_is_acknowledged_twice() {
        let mut l = ledger(1..=2);
        assert_eq!(l.done([1]), [Ack::Through(1)]);
        assert_eq!(l.done([1]), []);
        assert_eq!(l.done([2, 2]), [Ack::Through(2)]);
    }
}
