//! The bindings of the three worlds a transform may export, and the
//! conversions between their types and [`crate::change`].
//!
//! - `wasmcdc:transform@0.3.0` (`wit/world.wit`) takes batches of rows whose
//!   tables cross once and whose values cross only when the guest reads them.
//! - `@0.2.0` (`wit/v0.2/world.wit`) takes the same batches with every value.
//! - `@0.1.0` (`wit/v0.1/world.wit`) takes one self-describing change per call.
//!
//! All three describe values, columns and changes the same way, so one set of
//! conversions serves them.

use crate::change::{Change, Column, Op, TxContext, Value};

/// The batched world whose rows are read on demand. Its exports are async, so
/// that a guest waiting in a host call (a sleep, a poll, a read) can be
/// abandoned at its deadline; its own imports (`rows`) answer at once, and
/// trap on a row that is not in the call under way.
pub mod v3 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transformer",
        exports: { default: async },
        imports: { default: trappable },
    });
    pub use self::wasmcdc::transform::types::*;
    pub use self::wasmcdc::transform::{rows, types};
}

/// The batched world that sends every value.
pub mod v2 {
    wasmtime::component::bindgen!({ path: "../wit/v0.2", world: "transformer", exports: { default: async } });
    pub use self::wasmcdc::transform::types::*;
}

/// The first world: one change per call.
pub mod v1 {
    wasmtime::component::bindgen!({ path: "../wit/v0.1", world: "transformer", exports: { default: async } });
    pub use self::wasmcdc::transform::types::*;
}

/// The version of a world, as `transform check` prints it.
pub const V1: &str = "wasmcdc:transform@0.1.0";
/// The version of the batched world that sends every value.
pub const V2: &str = "wasmcdc:transform@0.2.0";
/// The version of the batched world whose values are read on demand.
pub const V3: &str = "wasmcdc:transform@0.3.0";

/// What a batched world's outcome makes of a row, in the host's types.
pub enum Reply {
    /// Passed on as it is.
    Keep,
    /// Passed on with these values, one per column.
    Values(Vec<Value>),
    /// Replaced by these changes, whose names and values come to `bytes`.
    Replace { changes: Vec<Change>, bytes: usize },
    /// Rejected with this reason.
    Reject(String),
}

/// The conversions of one world's value, column, change, operation and
/// transaction context: the same for both worlds.
macro_rules! conversions {
    ($wit:ident) => {
        impl From<Change> for $wit::Change {
            fn from(c: Change) -> Self {
                Self {
                    op: c.op.into(),
                    schema: c.schema,
                    table: c.table,
                    columns: c.columns.into_iter().map(Into::into).collect(),
                    key: c.key.into_iter().map(Into::into).collect(),
                }
            }
        }

        impl From<$wit::Change> for Change {
            fn from(c: $wit::Change) -> Self {
                Self {
                    op: c.op.into(),
                    schema: c.schema,
                    table: c.table,
                    columns: c.columns.into_iter().map(Into::into).collect(),
                    key: c.key.into_iter().map(Into::into).collect(),
                }
            }
        }

        impl From<Column> for $wit::Column {
            fn from(c: Column) -> Self {
                Self {
                    name: c.name,
                    pg_type: c.pg_type,
                    value: c.value.into(),
                }
            }
        }

        impl From<$wit::Column> for Column {
            fn from(c: $wit::Column) -> Self {
                Self {
                    name: c.name,
                    pg_type: c.pg_type,
                    value: c.value.into(),
                }
            }
        }

        impl From<Op> for $wit::Op {
            fn from(op: Op) -> Self {
                match op {
                    Op::Insert => Self::Insert,
                    Op::Update => Self::Update,
                    Op::Delete => Self::Delete,
                    Op::Truncate => Self::Truncate,
                }
            }
        }

        impl From<$wit::Op> for Op {
            fn from(op: $wit::Op) -> Self {
                match op {
                    $wit::Op::Insert => Self::Insert,
                    $wit::Op::Update => Self::Update,
                    $wit::Op::Delete => Self::Delete,
                    $wit::Op::Truncate => Self::Truncate,
                }
            }
        }

        impl From<Value> for $wit::Value {
            fn from(v: Value) -> Self {
                match v {
                    Value::Null => Self::Null,
                    Value::Bool(b) => Self::Bool(b),
                    Value::Int(i) => Self::Int(i),
                    Value::Float(f) => Self::Float(f),
                    Value::Numeric(s) => Self::Numeric(s),
                    Value::Text(s) => Self::Text(s),
                    Value::Bytes(b) => Self::Bytes(b),
                    Value::Json(s) => Self::Json(s),
                    Value::Date(s) => Self::Date(s),
                    Value::Time(s) => Self::Time(s),
                    Value::Timestamp(s) => Self::Timestamp(s),
                    Value::Timestamptz(s) => Self::Timestamptz(s),
                    Value::UnchangedToast => Self::UnchangedToast,
                }
            }
        }

        impl From<$wit::Value> for Value {
            fn from(v: $wit::Value) -> Self {
                match v {
                    $wit::Value::Null => Self::Null,
                    $wit::Value::Bool(b) => Self::Bool(b),
                    $wit::Value::Int(i) => Self::Int(i),
                    $wit::Value::Float(f) => Self::Float(f),
                    $wit::Value::Numeric(s) => Self::Numeric(s),
                    $wit::Value::Text(s) => Self::Text(s),
                    $wit::Value::Bytes(b) => Self::Bytes(b),
                    $wit::Value::Json(s) => Self::Json(s),
                    $wit::Value::Date(s) => Self::Date(s),
                    $wit::Value::Time(s) => Self::Time(s),
                    $wit::Value::Timestamp(s) => Self::Timestamp(s),
                    $wit::Value::Timestamptz(s) => Self::Timestamptz(s),
                    $wit::Value::UnchangedToast => Self::UnchangedToast,
                }
            }
        }

        impl From<&TxContext> for $wit::TxContext {
            fn from(ctx: &TxContext) -> Self {
                Self {
                    xid: ctx.xid,
                    commit_lsn: ctx.commit_lsn.to_string(),
                    commit_time: ctx.commit_time.clone(),
                }
            }
        }

        impl $wit::Change {
            /// The size of its names and values, for the cap on what one call may return.
            pub fn result_bytes(&self) -> usize {
                let value = |v: &$wit::Value| match v {
                    $wit::Value::Bytes(b) => b.len(),
                    $wit::Value::Numeric(s)
                    | $wit::Value::Text(s)
                    | $wit::Value::Json(s)
                    | $wit::Value::Date(s)
                    | $wit::Value::Time(s)
                    | $wit::Value::Timestamp(s)
                    | $wit::Value::Timestamptz(s) => s.len(),
                    _ => 8,
                };
                self.schema.len()
                    + self.table.len()
                    + self
                        .columns
                        .iter()
                        .chain(&self.key)
                        .map(|c| c.name.len() + c.pg_type.len() + value(&c.value))
                        .sum::<usize>()
            }
        }
    };
}

/// A batched world's `table`, built from what the host keeps of it.
pub trait SentTable {
    /// The table sent under `id`, with its columns and key as `(name, type)` pairs.
    fn sent(id: u32, schema: &str, name: &str, columns: &[(String, String)], key: &[(String, String)]) -> Self;
}

/// The tables and outcomes of the batched worlds.
macro_rules! batched {
    ($wit:ident) => {
        impl SentTable for $wit::Table {
            fn sent(id: u32, schema: &str, name: &str, columns: &[(String, String)], key: &[(String, String)]) -> Self {
                let defs = |defs: &[(String, String)]| {
                    defs.iter()
                        .map(|(name, pg_type)| $wit::ColumnDef {
                            name: name.clone(),
                            pg_type: pg_type.clone(),
                        })
                        .collect()
                };
                Self {
                    id,
                    schema: schema.to_owned(),
                    name: name.to_owned(),
                    columns: defs(columns),
                    key: defs(key),
                }
            }
        }

        impl From<$wit::Outcome> for Reply {
            fn from(outcome: $wit::Outcome) -> Self {
                match outcome {
                    $wit::Outcome::Keep => Self::Keep,
                    $wit::Outcome::Values(values) => Self::Values(values.into_iter().map(Into::into).collect()),
                    $wit::Outcome::Replace(changes) => Self::Replace {
                        bytes: changes.iter().map($wit::Change::result_bytes).sum(),
                        changes: changes.into_iter().map(Into::into).collect(),
                    },
                    $wit::Outcome::Reject(message) => Self::Reject(message),
                }
            }
        }

        impl From<$wit::Target> for crate::change::Target {
            fn from(t: $wit::Target) -> Self {
                Self {
                    schema: t.schema,
                    table: t.name,
                    columns: t
                        .columns
                        .into_iter()
                        .map(|c| crate::change::TargetColumn {
                            name: c.name,
                            pg_type: c.pg_type,
                        })
                        .collect(),
                    key: t.key,
                }
            }
        }
    };
}

conversions!(v1);
conversions!(v2);
conversions!(v3);
batched!(v2);
batched!(v3);
