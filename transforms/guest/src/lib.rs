//! Write a wasmcdc transform in Rust: implement [`Transform`] for a type and
//! name the type in [`export!`]. This crate owns the bindings of the batched
//! `transformer` world in `wit/world.wit` (`wasmcdc:transform@0.3.0`), keeps
//! the state that `init` built for the instance's lifetime, and adds helpers
//! for reading configuration and editing changes.
//!
//! The host sends changes in batches and each table's names and types once;
//! a [`Change`] shares them with the other changes of its table. Its values
//! stay with the host until the transform first reads them. A change
//! returned as it came, or with values edited in place, crosses back as "kept"
//! or as its new values alone; a change routed, reshaped or built anew crosses
//! back whole.
//!
//! A change can read its values only during the call that delivered it. A
//! transform that keeps changes for later (to merge them, say) calls
//! [`Change::load`] on each before it keeps it.
//!
//! ```no_run
//! use wasmcdc_guest::{Change, Config, Transform, TxContext};
//!
//! struct Identity;
//!
//! impl Transform for Identity {
//!     fn init(_: Config) -> Result<Self, String> { Ok(Identity) }
//!     fn transform(&self, change: Change, _: &TxContext) -> Result<Vec<Change>, String> { Ok(vec![change]) }
//! }
//!
//! wasmcdc_guest::export!(Identity);
//! ```
//!
//! The crate that names the type is a `cdylib`; both
//! `cargo build --target wasm32-wasip2` and `cargo component build` turn it
//! into a component of the `transformer` world.

mod change;
mod config;

pub use change::Change;
pub use config::Config;

/// The generated bindings. Their export macro is public so that the crate of
/// the transform, not this one, carries the world's exports.
#[doc(hidden)]
// The generated glue passes a flattened row list and its return area as many core-wasm parameters.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "transformer",
        pub_export_macro: true,
        default_bindings_module: "$crate::bindings",
        additional_derives: [PartialEq],
    });
}

pub use bindings::wasmcdc::transform::types::{Column, ColumnDef, Op, Target, TxContext, Value};

/// A transform: the state built from its configuration, and what it does to
/// each change.
pub trait Transform: Sized + 'static {
    /// Builds the instance from its configuration; an `Err` stops the module
    /// from loading, with the message as the reason.
    ///
    /// Runs once per instance, also when the host recreates an instance after
    /// a failure, so keep here what the configuration decides, not what
    /// changes build up.
    fn init(config: Config) -> Result<Self, String>;

    /// The tables this transform writes to and declares ahead, so that the
    /// apply creates each with these columns, types and key instead of
    /// inferring them from the first change that reaches it. None by default.
    fn targets(&self) -> Vec<Target> {
        Vec::new()
    }

    /// Maps one change to none (drop), one (pass) or several (fan out); an
    /// `Err` dead-letters the change with the message as the reason.
    fn transform(&self, change: Change, ctx: &TxContext) -> Result<Vec<Change>, String>;
}

/// Exports a [`Transform`] as the component's `init` and `transform`.
///
/// Use it once, in the `cdylib` crate of the transform:
/// `wasmcdc_guest::export!(MyTransform);`.
#[macro_export]
macro_rules! export {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static STATE: $crate::__rt::State<$ty> = $crate::__rt::State::new();
            }

            struct Transformer;

            impl $crate::bindings::Guest for Transformer {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::Target>, ::std::string::String> {
                    STATE.with(|state| state.init(::std::env!("CARGO_PKG_NAME"), config))
                }

                fn transform(
                    tables: ::std::vec::Vec<$crate::__rt::Table>,
                    rows: ::std::vec::Vec<$crate::__rt::Row>,
                    ctx: $crate::TxContext,
                ) -> ::std::vec::Vec<$crate::__rt::Outcome> {
                    STATE.with(|state| {
                        state.transform(
                            ::std::env!("CARGO_PKG_NAME"),
                            tables,
                            rows,
                            ctx,
                            $crate::__rt::HOST,
                        )
                    })
                }
            }

    $crate::bindings::export!(Transformer with_types_in $crate::bindings);
        };
    };
}

/// What [`export!`] expands to call.
#[doc(hidden)]
pub mod __rt {
    use std::cell::{OnceCell, RefCell};
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use crate::bindings::wasmcdc::transform::rows;
    use crate::bindings::wasmcdc::transform::types::Change as Built;
    pub use crate::bindings::wasmcdc::transform::types::{Outcome, Row, Table};
    use crate::change::{Read, Shape};
    use crate::{Change, Config, Target, Transform, TxContext};

    /// Where delivered rows' values and keys are read from.
    #[derive(Clone, Copy)]
    pub struct Reader {
        values: Read,
        key: Read,
    }

    /// The host's `rows` interface.
    pub const HOST: Reader = Reader {
        values: rows::values,
        key: rows::key,
    };

    /// An instance's state: the transform `init` built, and the tables the host has sent.
    pub struct State<T> {
        transform: OnceCell<T>,
        tables: RefCell<BTreeMap<u32, Rc<Shape>>>,
    }

    impl<T: Transform> State<T> {
        pub const fn new() -> Self {
            Self {
                transform: OnceCell::new(),
                tables: RefCell::new(BTreeMap::new()),
            }
        }

        /// Builds the transform and keeps it; returns the tables it declares.
        pub fn init(&self, name: &str, config: Vec<(String, String)>) -> Result<Vec<Target>, String> {
            let built = T::init(Config::named(name, config))?;
            let targets = built.targets();
            // An instance is initialised once; a second call keeps the first configuration.
            let _ = self.transform.set(built);
            Ok(targets)
        }

        /// Transforms a batch of rows with the state `init` kept: one outcome per row.
        pub fn transform(
            &self,
            name: &str,
            tables: Vec<Table>,
            rows: Vec<Row>,
            ctx: TxContext,
            read: Reader,
        ) -> Vec<Outcome> {
            let Some(transform) = self.transform.get() else {
                return rows
                    .iter()
                    .map(|_| Outcome::Reject(format!("{name} was not initialised")))
                    .collect();
            };
            let mut known = self.tables.borrow_mut();
            for table in tables {
                let shape = Shape {
                    schema: table.schema,
                    table: table.name,
                    columns: table.columns,
                    key: table.key,
                };
                known.insert(table.id, Rc::new(shape));
            }
            rows.into_iter()
                .map(|row| {
                    let Some(shape) = known.get(&row.table) else {
                        return Outcome::Reject(format!(
                            "{name} was sent a row of table {}, which it was never sent",
                            row.table
                        ));
                    };
                    let change = Change::delivered(row.op, Rc::clone(shape), row.id, [read.values, read.key]);
                    outcome(&row, shape, transform.transform(change, &ctx))
                })
                .collect()
        }
    }

    impl<T: Transform> Default for State<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    /// The cheapest outcome that says what became of a row: `keep` or
    /// `values` while the one change returned is that row, with its
    /// operation and its table's shape; the whole changes otherwise (another
    /// row of the table returned in its place is one of those).
    fn outcome(row: &Row, shape: &Rc<Shape>, result: Result<Vec<Change>, String>) -> Outcome {
        match result {
            Err(message) => Outcome::Reject(message),
            Ok(mut changes)
                if changes.len() == 1
                    && changes[0].row == Some(row.id)
                    && changes[0].op() == row.op
                    && Rc::ptr_eq(&changes[0].shape, shape) =>
            {
                match changes.pop() {
                    Some(change) if change.edited => Outcome::Values(change.values.into_vec()),
                    _ => Outcome::Keep,
                }
            }
            Ok(changes) => Outcome::Replace(changes.into_iter().map(built).collect()),
        }
    }

    /// A change in the form that names its table and columns.
    fn built(change: Change) -> Built {
        Built {
            op: change.op(),
            schema: change.schema().to_owned(),
            table: change.table().to_owned(),
            columns: change.to_columns(),
            key: change.to_key(),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::{Column, ColumnDef, Op, Value};

        /// Appends its configured suffix to the table name of changes to `t`,
        /// upper-cases the `name` of changes to `u`, and passes the rest.
        struct Suffix(String);

        impl Transform for Suffix {
            fn init(config: Config) -> Result<Self, String> {
                Ok(Self(config.require("suffix")?.to_owned()))
            }

            fn transform(&self, mut change: Change, _: &TxContext) -> Result<Vec<Change>, String> {
                match change.table() {
                    "t" => change.set_table(format!("t{}", self.0)),
                    "u" => {
                        if let Some(Value::Text(name)) = change.get_mut("name") {
                            name.make_ascii_uppercase();
                        }
                    }
                    "bad" => return Err("bad table".into()),
                    _ => {}
                }
                Ok(vec![change])
            }
        }

        fn pairs(suffix: &str) -> Vec<(String, String)> {
            vec![("suffix".into(), suffix.into())]
        }

        fn table(id: u32, name: &str) -> Table {
            Table {
                id,
                schema: "public".into(),
                name: name.into(),
                columns: vec![ColumnDef::new("name", "text")],
                key: Vec::new(),
            }
        }

        thread_local! {
            /// The values of every row `row` made, by id: the host's side of `rows`.
            static SENT: RefCell<Vec<Vec<Value>>> = const { RefCell::new(Vec::new()) };
            /// How many times a row's values were read.
            static READS: RefCell<usize> = const { RefCell::new(0) };
        }

        thread_local! {
            /// The ids of the call under way: the host refuses any other.
            static LIVE: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
        }

        fn live(id: u64) {
            assert!(
                LIVE.with(|live| live.borrow().contains(&id)),
                "row {id} was read outside its call"
            );
        }

        fn values(id: u64) -> Vec<Value> {
            live(id);
            READS.with(|reads| *reads.borrow_mut() += 1);
            SENT.with(|sent| sent.borrow()[id as usize].clone())
        }

        fn no_key(id: u64) -> Vec<Value> {
            live(id);
            Vec::new()
        }

        const TEST: Reader = Reader { values, key: no_key };

        /// One call, as the host makes it: its rows readable only while it runs.
        fn call<T: Transform>(
            state: &State<T>,
            name: &str,
            tables: Vec<Table>,
            rows: Vec<Row>,
            ctx: TxContext,
        ) -> Vec<Outcome> {
            LIVE.with(|live| *live.borrow_mut() = rows.iter().map(|r| r.id).collect());
            let out = state.transform(name, tables, rows, ctx, TEST);
            LIVE.with(|live| live.borrow_mut().clear());
            out
        }

        /// An insert into table `table` with one text value, its values left with the "host".
        fn row(table: u32, name: &str) -> Row {
            let id = SENT.with(|sent| {
                let mut sent = sent.borrow_mut();
                sent.push(vec![Value::Text(name.into())]);
                sent.len() as u64 - 1
            });
            Row {
                op: Op::Insert,
                table,
                id,
            }
        }

        /// Answers each change with the one before it, read before it is kept,
        /// as an insert.
        struct Previous(RefCell<Option<Change>>);

        impl Transform for Previous {
            fn init(_: Config) -> Result<Self, String> {
                Ok(Self(RefCell::new(None)))
            }

            fn transform(&self, change: Change, _: &TxContext) -> Result<Vec<Change>, String> {
                change.load();
                let previous = self.0.replace(Some(change.clone()));
                Ok(vec![previous.unwrap_or(change).with_op(Op::Insert)])
            }
        }

        #[test]
        fn another_row_or_operation_in_a_rows_place_crosses_whole() {
            let state = State::<Previous>::new();
            state.init("previous", Vec::new()).expect("init");
            let rows = vec![row(0, "first"), row(0, "second")];
            let out = call(&state, "previous", vec![table(0, "t")], rows, TxContext::default());
            // The first row answers as itself, still an insert: kept.
            assert_eq!(out[0], Outcome::Keep);
            // The second answers with the first, of the same table: whole, not "kept".
            let Outcome::Replace(changes) = &out[1] else {
                panic!("{out:?}")
            };
            assert_eq!(changes[0].columns[0].value, Value::Text("first".into()));
            // A change loaded and kept answers a later call without reading
            // from the host, where its id is no longer live.
            let out = call(
                &state,
                "previous",
                Vec::new(),
                vec![row(0, "later")],
                TxContext::default(),
            );
            let Outcome::Replace(changes) = &out[0] else {
                panic!("{out:?}")
            };
            assert_eq!(changes[0].columns[0].value, Value::Text("second".into()));
            // A row answered as itself under another operation, its shape
            // untouched (an update without a key), is not "kept" either.
            let fresh = State::<Previous>::new();
            fresh.init("previous", Vec::new()).expect("init");
            let mut update = row(0, "third");
            update.op = Op::Update;
            let out = call(
                &fresh,
                "previous",
                vec![table(0, "t")],
                vec![update],
                TxContext::default(),
            );
            let Outcome::Replace(changes) = &out[0] else {
                panic!("{out:?}")
            };
            assert_eq!(
                (changes[0].op, &changes[0].columns[0].value),
                (Op::Insert, &Value::Text("third".into()))
            );
        }

        #[test]
        fn keeps_the_first_state_that_init_builds() {
            let state = State::<Suffix>::new();
            let early = call(
                &state,
                "suffix",
                vec![table(0, "t")],
                vec![row(0, "a")],
                TxContext::default(),
            );
            assert_eq!(early, [Outcome::Reject("suffix was not initialised".into())]);
            assert!(state.init("suffix", vec![]).is_err());
            assert_eq!(state.init("suffix", pairs("_a")), Ok(Vec::new()));
            state.init("suffix", pairs("_b")).expect("second");
            let out = call(
                &state,
                "suffix",
                vec![table(0, "t")],
                vec![row(0, "a")],
                TxContext::default(),
            );
            let Outcome::Replace(changes) = &out[0] else {
                panic!("{out:?}")
            };
            assert_eq!(changes[0].table, "t_a");
        }

        #[test]
        fn answers_each_row_with_the_cheapest_outcome() {
            let state = State::<Suffix>::new();
            state.init("suffix", pairs("_x")).expect("init");
            let tables = vec![table(0, "t"), table(1, "u"), table(2, "other"), table(3, "bad")];
            let rows = vec![row(2, "kept"), row(1, "edited"), row(0, "routed"), row(3, "refused")];
            let out = call(&state, "suffix", tables, rows, TxContext::default());
            assert_eq!(out[0], Outcome::Keep);
            // The kept and the refused rows were never read; the edited and the routed ones were.
            assert_eq!(
                READS.with(|reads| *reads.borrow()),
                2,
                "a row passed on unread was read"
            );
            assert_eq!(out[1], Outcome::Values(vec![Value::Text("EDITED".into())]));
            assert_eq!(
                out[2],
                Outcome::Replace(vec![Built {
                    op: Op::Insert,
                    schema: "public".into(),
                    table: "t_x".into(),
                    columns: vec![Column::new("name", "text", Value::Text("routed".into()))],
                    key: Vec::new(),
                }])
            );
            assert_eq!(out[3], Outcome::Reject("bad table".into()));
            // Tables sent once serve later batches; an unknown id is refused, not guessed.
            let later = call(
                &state,
                "suffix",
                Vec::new(),
                vec![row(1, "again"), row(9, "?")],
                TxContext::default(),
            );
            assert_eq!(later[0], Outcome::Values(vec![Value::Text("AGAIN".into())]));
            assert!(
                matches!(&later[1], Outcome::Reject(m) if m.contains("table 9")),
                "{later:?}"
            );
        }
    }
}
