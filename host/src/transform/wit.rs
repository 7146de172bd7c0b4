//! The bindings of the two worlds a transform may export, and the conversions
//! between their types and [`crate::change`].
//!
//! `wasmcdc:transform@0.2.0` (`wit/world.wit`) takes batches of rows whose
//! tables cross once; `@0.1.0` (`wit/v0.1/world.wit`) takes one self-describing
//! change per call. Both describe values, columns and changes the same way, so
//! one set of conversions serves both.

use crate::change::{Change, Column, Op, TxContext, Value};

/// The batched world. Async, so that a guest waiting in a host call (a sleep,
/// a poll, a read) can be abandoned at its deadline.
pub mod v2 {
    wasmtime::component::bindgen!({ path: "../wit", world: "transformer", exports: { default: async } });
    pub use self::wasmcdc::transform::types::*;
}

/// The first world: one change per call.
pub mod v1 {
    wasmtime::component::bindgen!({ path: "../wit/v0.1", world: "transformer", exports: { default: async } });
    pub use self::wasmcdc::transform::types::*;
}

/// The version of a world, as `transform check` prints it.
pub const V1: &str = "wasmcdc:transform@0.1.0";
/// The version of the batched world.
pub const V2: &str = "wasmcdc:transform@0.2.0";

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

conversions!(v1);
conversions!(v2);
