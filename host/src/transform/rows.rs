//! The changes of a `@0.3.0` call under way, which the guest reads through
//! the world's `rows` interface.
//!
//! The host keeps a batch's changes while the guest runs and copies a row's
//! values into the guest only when it asks for them, so a row passed on
//! unread crosses the boundary as its table, operation and id alone.

use super::sandbox::Guest;
use super::wit::v3;
use crate::change::{Change, Column};

/// The batch a call was given, and the ids that name its changes.
#[derive(Default)]
pub(super) struct Rows {
    /// The id of `changes[0]`.
    first: u64,
    /// The id the next batch starts at. Ids only grow over an instance's
    /// life, so an id kept from an earlier call never names a change of a
    /// later one.
    next: u64,
    changes: Vec<Change>,
}

impl Rows {
    /// Holds a batch for the call about to start; returns the id of its first change.
    pub(super) fn lend(&mut self, changes: Vec<Change>) -> u64 {
        self.first = self.next;
        self.next += changes.len() as u64;
        self.changes = changes;
        self.first
    }

    /// The batch back from the call that ended.
    pub(super) fn take_back(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The change called `id`, while its call is under way.
    fn get(&self, id: u64) -> wasmtime::Result<&Change> {
        id.checked_sub(self.first)
            .and_then(|at| self.changes.get(usize::try_from(at).ok()?))
            .ok_or_else(|| {
                wasmtime::Error::msg(format!(
                    "it read row {id}, which is not in the call under way; a row can be read only during the `transform` call that delivered it"
                ))
            })
    }
}

/// Copies of the values of `columns`, for the guest.
fn read(columns: &[Column]) -> Vec<v3::Value> {
    columns.iter().map(|c| c.value.clone().into()).collect()
}

impl v3::rows::Host for Guest {
    fn values(&mut self, id: u64) -> wasmtime::Result<Vec<v3::Value>> {
        Ok(read(&self.rows.get(id)?.columns))
    }

    fn key(&mut self, id: u64) -> wasmtime::Result<Vec<v3::Value>> {
        Ok(read(&self.rows.get(id)?.key))
    }
}

impl v3::types::Host for Guest {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Op, Value};

    fn change(n: i64) -> Change {
        Change {
            op: Op::Insert,
            schema: "public".into(),
            table: "t".into(),
            columns: vec![Column {
                name: "n".into(),
                pg_type: "integer".into(),
                value: Value::Int(n),
            }],
            key: Vec::new(),
        }
    }

    #[test]
    fn a_row_is_readable_only_during_its_own_call() {
        let mut rows = Rows::default();
        assert_eq!(rows.lend(vec![change(1), change(2)]), 0);
        assert_eq!(rows.get(1).expect("second row").columns[0].value, Value::Int(2));
        assert!(rows.get(2).is_err(), "a row past the batch was read");
        assert_eq!(rows.take_back().len(), 2);
        assert!(rows.get(0).is_err(), "a row was read after its call ended");
        // The next call's rows get new ids: the old ones name nothing.
        assert_eq!(rows.lend(vec![change(3)]), 2);
        assert!(
            rows.get(0).is_err() && rows.get(1).is_err(),
            "an earlier call's id named a later row"
        );
        let error = rows.get(0).expect_err("stale").to_string();
        assert!(
            error.contains("only during the `transform` call that delivered it"),
            "{error}"
        );
        assert_eq!(rows.get(2).expect("its own row").columns[0].value, Value::Int(3));
    }
}
