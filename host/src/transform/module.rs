//! One transform module: its compiled component, the world it exports, and
//! its live instance.
//!
//! A component exports one of three worlds. The batched ones get a batch of
//! rows per call, and a table's names and types cross once per instance:
//! - `@0.3.0` leaves a row's values with the host until the guest reads them
//!   (`rows.rs`), so a row passed on unread is never copied;
//! - `@0.2.0` sends every value: a row's values move into the call and back
//!   out of it, so a row the guest keeps costs no host copy.
//!
//! A `@0.1.0` component gets one self-describing change per call, as it was
//! built for.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

use super::sandbox::{
    Guest, GuestOutput, GuestRuntime, arm, describe_failure, engine, error_text, log_output, new_store, waited_too_long,
};
use super::wit::{self, Reply, SentTable, v1, v2, v3};
use super::{Limits, ModuleSpec, TransformError};
use crate::change::{Change, Column, Target, TxContext, Value};

/// What became of one change given to a module or a chain: the changes it
/// became (none when dropped), or why it could not be transformed, with the
/// change as it was given.
pub type Outcome = Result<Vec<Change>, Box<Refused>>;

/// A change that could not be transformed, handed back as it was given, so
/// that whoever dead-letters it needs no copy of every change made in case.
#[derive(Debug)]
pub struct Refused {
    pub error: TransformError,
    pub change: Change,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Refuses `change` for `error`.
fn refuse(change: Change, error: TransformError) -> Outcome {
    Err(Box::new(Refused { error, change }))
}

/// A component linked against the host, ready to instantiate, in the world it exports.
enum Pre {
    V1(v1::TransformerPre<Guest>),
    V2(v2::TransformerPre<Guest>),
    V3(v3::TransformerPre<Guest>),
}

/// A live instance's exports.
enum Bindings {
    V1(v1::Transformer),
    V2(v2::Transformer),
    V3(v3::Transformer),
}

/// One compiled component and its live instance.
pub(super) struct Module {
    pub(super) name: String,
    pub(super) spec: ModuleSpec,
    /// What `init` receives, on the first start and on every restart.
    config: Vec<(String, String)>,
    pre: Pre,
    /// `None` after a failure: the next call starts a fresh instance, because
    /// a trapped instance cannot be entered again.
    instance: Option<Instance>,
    /// Drives guest calls, with the timers that WASI clocks and the call deadline use.
    runtime: GuestRuntime,
    /// The tables `init` declared on the first start.
    pub(super) targets: Vec<Target>,
    limits: Limits,
}

/// A running instance with its own store, so a failure poisons nothing else.
pub(super) struct Instance {
    store: Store<Guest>,
    bindings: Bindings,
    stdout: GuestOutput,
    stderr: GuestOutput,
    /// The tables this instance has been sent (batched worlds only).
    tables: Tables,
    /// Value lists of earlier calls, reused for the next rows.
    spare: Spare,
}

impl Module {
    /// Compiles a module without starting it; returns it with its component
    /// and the SHA-256 (hex) of its file.
    pub(super) fn new(
        spec: ModuleSpec,
        config: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<(Self, Component, String), TransformError> {
        let (component, pre, hash) = Self::compile(&spec.path)?;
        let module = Self {
            name: spec.path.display().to_string(),
            spec,
            config,
            pre,
            instance: None,
            runtime: GuestRuntime::new(limits.call)?,
            targets: Vec::new(),
            limits,
        };
        Ok((module, component, hash))
    }

    /// Compiles and starts a module; returns it with the SHA-256 (hex) of its file.
    pub(super) fn load(
        spec: ModuleSpec,
        config: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<(Self, String), TransformError> {
        let (mut module, _, hash) = Self::new(spec, config, limits)?;
        // Starting it now reports a module that cannot run at load time, not on the first change.
        let (instance, targets) = module.start()?;
        module.instance = Some(instance);
        module.targets = targets;
        Ok((module, hash))
    }

    /// The world the module exports, as `wasmcdc:transform@VERSION`.
    pub(super) fn world(&self) -> &'static str {
        match self.pre {
            Pre::V1(_) => wit::V1,
            Pre::V2(_) => wit::V2,
            Pre::V3(_) => wit::V3,
        }
    }

    /// Reads, hashes and compiles a component, links it against the host, and
    /// tells which world it exports.
    fn compile(path: &Path) -> Result<(Component, Pre, String), TransformError> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TransformError::Missing(path.to_owned()),
            _ => TransformError::Unreadable {
                path: path.to_owned(),
                reason: e.to_string(),
            },
        })?;
        let hash = hex::encode(Sha256::digest(&bytes));
        let engine = engine()?;
        let not_component = |reason: String| TransformError::NotComponent {
            path: path.to_owned(),
            reason,
        };
        if !bytes.starts_with(b"\0asm") {
            return Err(not_component("the file is not WebAssembly".to_owned()));
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(not_component(
                "it is a core module, as built for wasm32-unknown-unknown or wasm32-wasip1".to_owned(),
            ));
        }
        // Compiled from the bytes just hashed, so the hash names exactly what runs.
        let component = Component::from_binary(engine, &bytes).map_err(|e| not_component(error_text(&e)))?;
        let incompatible = |e: wasmtime::Error| TransformError::Incompatible {
            module: path.display().to_string(),
            reason: error_text(&e),
        };
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(incompatible)?;
        v3::Transformer::add_to_linker::<Guest, HasSelf<Guest>>(&mut linker, |guest| guest).map_err(incompatible)?;
        let pre = linker.instantiate_pre(&component).map_err(incompatible)?;
        // The exports' types tell the worlds apart; the newest is tried first,
        // and its reason is the one reported when none fits.
        let pre = match v3::TransformerPre::new(pre.clone()) {
            Ok(pre) => Pre::V3(pre),
            Err(newest) => match (v2::TransformerPre::new(pre.clone()), v1::TransformerPre::new(pre)) {
                (Ok(pre), _) => Pre::V2(pre),
                (_, Ok(pre)) => Pre::V1(pre),
                _ => return Err(incompatible(newest)),
            },
        };
        Ok((component, pre, hash))
    }

    /// Instantiates the component and calls `init`; returns the instance and the tables it declares.
    pub(super) fn start(&self) -> Result<(Instance, Vec<Target>), TransformError> {
        let (mut store, stdout, stderr) = new_store(&self.limits)?;
        let failed_start = |reason: String| TransformError::Start {
            module: self.name.clone(),
            reason,
        };
        // Instantiation runs the guest's start code, which has a deadline too.
        let started = match &self.pre {
            Pre::V1(pre) => self
                .runtime
                .run(1, pre.instantiate_async(&mut store))
                .map(|r| r.map(Bindings::V1)),
            Pre::V2(pre) => self
                .runtime
                .run(1, pre.instantiate_async(&mut store))
                .map(|r| r.map(Bindings::V2)),
            Pre::V3(pre) => self
                .runtime
                .run(1, pre.instantiate_async(&mut store))
                .map(|r| r.map(Bindings::V3)),
        };
        let bindings = match started {
            Some(Ok(bindings)) => bindings,
            failed => {
                let reason = match failed {
                    Some(Err(e)) => describe_failure(&self.name, &e, &store),
                    _ => waited_too_long(self.limits.call),
                };
                log_output(&self.name, &stdout, &stderr);
                return Err(failed_start(reason));
            }
        };
        arm(&mut store, 1);
        let init = match &bindings {
            Bindings::V1(b) => self
                .runtime
                .run(1, b.call_init(&mut store, &self.config))
                .map(|r| r.map(|r| r.map(|()| Vec::new()))),
            Bindings::V2(b) => self
                .runtime
                .run(1, b.call_init(&mut store, &self.config))
                .map(|r| r.map(|r| r.map(|targets| targets.into_iter().map(Target::from).collect()))),
            Bindings::V3(b) => self
                .runtime
                .run(1, b.call_init(&mut store, &self.config))
                .map(|r| r.map(|r| r.map(|targets| targets.into_iter().map(Target::from).collect()))),
        };
        log_output(&self.name, &stdout, &stderr);
        let targets = match init {
            Some(Ok(Ok(targets))) => targets,
            Some(Ok(Err(message))) => {
                return Err(TransformError::Init {
                    module: self.name.clone(),
                    message,
                });
            }
            Some(Err(e)) => return Err(failed_start(describe_failure(&self.name, &e, &store))),
            None => return Err(failed_start(waited_too_long(self.limits.call))),
        };
        if let Some(message) = targets.iter().find_map(Target::fault) {
            return Err(TransformError::Init {
                module: self.name.clone(),
                message,
            });
        }
        let instance = Instance {
            store,
            bindings,
            stdout,
            stderr,
            tables: Tables::default(),
            spare: Spare::default(),
        };
        Ok((instance, targets))
    }

    /// Transforms a batch of changes from one transaction; one outcome per change, in order.
    ///
    /// A batch whose call fails as a whole (a trap, a deadline, an answer
    /// that does not fit) is tried again one change at a time, on a fresh
    /// instance, so that only the change that fails is dead-lettered.
    pub(super) fn call(&mut self, changes: Vec<Change>, ctx: &TxContext, stop: &CancellationToken) -> Vec<Outcome> {
        if changes.is_empty() {
            return Vec::new();
        }
        if stop.is_cancelled() {
            return changes
                .into_iter()
                .map(|c| refuse(c, TransformError::Stopped))
                .collect();
        }
        if let Err(e) = self.ensure_started() {
            return changes.into_iter().map(|c| refuse(c, e.again())).collect();
        }
        if matches!(self.pre, Pre::V1(_)) {
            let ctx = v1::TxContext::from(ctx);
            return changes
                .into_iter()
                .map(|change| match stop.is_cancelled() {
                    true => refuse(change, TransformError::Stopped),
                    false => self.call_v1(change, &ctx),
                })
                .collect();
        }
        let count = changes.len();
        let called = match self.pre {
            Pre::V3(_) => self.call_v3(changes, ctx),
            _ => self.call_v2(changes, ctx),
        };
        match called {
            Ok(outcomes) => outcomes,
            Err((changes, reason)) if count == 1 => changes
                .into_iter()
                .map(|change| refuse(change, self.failed(reason.clone())))
                .collect(),
            Err((changes, reason)) => {
                tracing::debug!(module = %self.name, count, reason, "a batch failed; transforming its changes one at a time");
                changes
                    .into_iter()
                    .flat_map(|change| self.call(vec![change], ctx, stop))
                    .collect()
            }
        }
    }

    /// Starts a fresh instance where a failure dropped the last one.
    fn ensure_started(&mut self) -> Result<(), TransformError> {
        if self.instance.is_none() {
            self.instance = Some(self.start()?.0);
        }
        Ok(())
    }

    fn failed(&self, reason: String) -> TransformError {
        TransformError::Failed {
            module: self.name.clone(),
            reason,
        }
    }

    /// One change through a `@0.1.0` component, which takes it whole: a copy
    /// is kept to hand back if it is refused.
    fn call_v1(&mut self, change: Change, ctx: &v1::TxContext) -> Outcome {
        if let Err(e) = self.ensure_started() {
            return refuse(change, e);
        }
        let Some(instance) = &mut self.instance else {
            return refuse(change, self.failed("its instance could not be started".to_owned()));
        };
        let Bindings::V1(bindings) = &instance.bindings else {
            return refuse(change, self.failed("it changed world".to_owned()));
        };
        arm(&mut instance.store, 1);
        let sent = v1::Change::from(change.clone());
        let result = self
            .runtime
            .run(1, bindings.call_transform(&mut instance.store, &sent, ctx));
        log_output(&self.name, &instance.stdout, &instance.stderr);
        let reason = match result {
            None => waited_too_long(self.limits.call),
            Some(Err(e)) => describe_failure(&self.name, &e, &instance.store),
            Some(Ok(Err(message))) => {
                let error = TransformError::Rejected {
                    module: self.name.clone(),
                    message,
                };
                return refuse(change, error);
            }
            Some(Ok(Ok(changes))) => {
                let bytes = changes.iter().map(v1::Change::result_bytes).sum();
                return match too_much(changes.len(), bytes, &self.limits) {
                    Some(reason) => refuse(change, self.failed(reason)),
                    None => Ok(changes.into_iter().map(Change::from).collect()),
                };
            }
        };
        // A trapped or abandoned instance cannot be entered again.
        self.instance = None;
        refuse(change, self.failed(reason))
    }

    /// A batch through a `@0.2.0` component. When the call fails as a whole,
    /// the instance is dropped and the changes come back, as they were, with
    /// the reason.
    fn call_v2(&mut self, mut changes: Vec<Change>, ctx: &TxContext) -> Result<Vec<Outcome>, (Vec<Change>, String)> {
        let Some(instance) = &mut self.instance else {
            return Err((changes, "its instance could not be started".to_owned()));
        };
        let Bindings::V2(bindings) = &instance.bindings else {
            return Err((changes, "it changed world".to_owned()));
        };
        let mut tables: Vec<v2::Table> = Vec::new();
        let rows: Vec<v2::Row> = changes
            .iter_mut()
            .map(|change| v2::Row {
                op: change.op.into(),
                table: instance.tables.id(change, |id, shape| tables.push(shape.table(id))),
                values: lend(&mut change.columns, &mut instance.spare),
                key: lend(&mut change.key, &mut instance.spare),
            })
            .collect();
        arm(&mut instance.store, rows.len());
        let ctx = v2::TxContext::from(ctx);
        let result = self.runtime.run(
            rows.len(),
            bindings.call_transform(&mut instance.store, &tables, &rows, &ctx),
        );
        log_output(&self.name, &instance.stdout, &instance.stderr);
        // The values lent to the call go back to their changes.
        for (change, mut row) in changes.iter_mut().zip(rows) {
            restore(&mut change.columns, row.values.drain(..).map(Value::from));
            restore(&mut change.key, row.key.drain(..).map(Value::from));
            instance.spare.give(row.values);
            instance.spare.give(row.key);
        }
        self.settle(changes, result)
    }

    /// A batch through a `@0.3.0` component: the changes stay with the host
    /// during the call, and the guest reads the values of those it needs.
    /// When the call fails as a whole, the instance is dropped and the
    /// changes come back, as they were, with the reason.
    fn call_v3(&mut self, changes: Vec<Change>, ctx: &TxContext) -> Result<Vec<Outcome>, (Vec<Change>, String)> {
        let Some(instance) = &mut self.instance else {
            return Err((changes, "its instance could not be started".to_owned()));
        };
        let Bindings::V3(bindings) = &instance.bindings else {
            return Err((changes, "it changed world".to_owned()));
        };
        let mut tables: Vec<v3::Table> = Vec::new();
        let ops: Vec<_> = changes
            .iter()
            .map(|change| {
                let table = instance.tables.id(change, |id, shape| tables.push(shape.table(id)));
                (change.op.into(), table)
            })
            .collect();
        let first = instance.store.data_mut().rows.lend(changes);
        let rows: Vec<v3::Row> = (first..)
            .zip(ops)
            .map(|(id, (op, table))| v3::Row { op, table, id })
            .collect();
        arm(&mut instance.store, rows.len());
        let ctx = v3::TxContext::from(ctx);
        let result = self.runtime.run(
            rows.len(),
            bindings.call_transform(&mut instance.store, &tables, &rows, &ctx),
        );
        log_output(&self.name, &instance.stdout, &instance.stderr);
        let changes = instance.store.data_mut().rows.take_back();
        self.settle(changes, result)
    }

    /// What a batched call's result makes of its changes, which are back
    /// from the call: one outcome per change. When the call failed as a whole
    /// (a trap, a deadline, a wrong number of outcomes), the instance is
    /// dropped and the changes come back with the reason.
    fn settle<R: Into<Reply>>(
        &mut self,
        changes: Vec<Change>,
        result: Option<wasmtime::Result<Vec<R>>>,
    ) -> Result<Vec<Outcome>, (Vec<Change>, String)> {
        let failure = match result {
            None => waited_too_long(self.limits.call),
            Some(Err(e)) => match &self.instance {
                Some(instance) => describe_failure(&self.name, &e, &instance.store),
                None => error_text(&e),
            },
            Some(Ok(outcomes)) if outcomes.len() != changes.len() => format!(
                "it answered a batch of {} changes with {} outcomes; the batched world needs one outcome per change",
                changes.len(),
                outcomes.len()
            ),
            Some(Ok(outcomes)) => {
                return Ok(changes
                    .into_iter()
                    .zip(outcomes)
                    .map(|(change, outcome)| self.outcome(change, outcome.into()))
                    .collect());
            }
        };
        // A trapped or abandoned instance cannot be entered again.
        self.instance = None;
        Err((changes, failure))
    }

    /// What one batched outcome makes of its change.
    fn outcome(&self, mut change: Change, reply: Reply) -> Outcome {
        match reply {
            Reply::Keep => Ok(vec![change]),
            Reply::Values(values) if values.len() == change.columns.len() => {
                restore(&mut change.columns, values);
                Ok(vec![change])
            }
            Reply::Values(values) => {
                let reason = format!(
                    "it returned {} values for a change of {} columns; `values` keeps the row's columns, so return `replace` to reshape it",
                    values.len(),
                    change.columns.len()
                );
                refuse(change, self.failed(reason))
            }
            Reply::Replace { changes, bytes } => match too_much(changes.len(), bytes, &self.limits) {
                Some(reason) => refuse(change, self.failed(reason)),
                None => Ok(changes),
            },
            Reply::Reject(message) => {
                let error = TransformError::Rejected {
                    module: self.name.clone(),
                    message,
                };
                refuse(change, error)
            }
        }
    }
}

/// Why what one change became is too much, if it is.
fn too_much(changes: usize, bytes: usize, limits: &Limits) -> Option<String> {
    (changes > limits.result_changes || bytes > limits.result_bytes).then(|| {
        format!(
            "it returned {changes} changes ({bytes} bytes of values) for one change; at most {} changes and {} MiB are allowed",
            limits.result_changes,
            limits.result_bytes >> 20
        )
    })
}

/// Emptied value lists of earlier calls, kept so that lending a row's values
/// does not allocate two lists per change.
#[derive(Default)]
struct Spare(Vec<Vec<v2::Value>>);

impl Spare {
    /// The widest list kept, and how many are kept: enough for a default
    /// batch (256 changes, two lists each) of ordinary tables, and at most
    /// about 1 MiB per instance whatever the batch size and table width
    /// (PostgreSQL allows 1 600 columns). Other lists are allocated per call.
    const WIDTH: usize = 64;
    const LISTS: usize = 512;

    /// An empty list: a kept one when there is one.
    fn take(&mut self) -> Vec<v2::Value> {
        self.0.pop().unwrap_or_default()
    }

    /// Keeps a list for a later row when it is narrow enough and there is
    /// room; emptied here, so that no row is lent another's values.
    fn give(&mut self, mut list: Vec<v2::Value>) {
        if list.capacity() <= Self::WIDTH && self.0.len() < Self::LISTS {
            list.clear();
            self.0.push(list);
        }
    }
}

/// Puts values back into their columns, in order.
fn restore(columns: &mut [Column], values: impl IntoIterator<Item = Value>) {
    for (column, value) in columns.iter_mut().zip(values) {
        column.value = value;
    }
}

/// Lends a column's values to a row, in a list from `spare`: moved, not copied.
fn lend(columns: &mut [Column], spare: &mut Spare) -> Vec<v2::Value> {
    let mut values = spare.take();
    values.extend(
        columns
            .iter_mut()
            .map(|c| std::mem::replace(&mut c.value, Value::Null).into()),
    );
    values
}

/// The tables an instance has been sent: each change is matched to one by
/// its schema, table, column names and types, and key.
#[derive(Default)]
struct Tables {
    /// Indexes into `shapes`, by table name.
    by_name: HashMap<String, Vec<usize>>,
    /// Index is the table's id.
    shapes: Vec<Shape>,
    /// The table of the last row: rows of one table come in runs.
    last: Option<usize>,
}

/// What the rows of one table share.
struct Shape {
    schema: String,
    table: String,
    columns: Vec<(String, String)>,
    key: Vec<(String, String)>,
}

impl Shape {
    /// The table as a batched world sends it, under `id`.
    fn table<T: SentTable>(&self, id: u32) -> T {
        T::sent(id, &self.schema, &self.table, &self.columns, &self.key)
    }

    /// Whether a change's values and key follow this table's columns; empty ones follow any.
    fn fits(&self, change: &Change) -> bool {
        let same = |defs: &[(String, String)], columns: &[Column]| {
            columns.is_empty()
                || (defs.len() == columns.len()
                    && defs
                        .iter()
                        .zip(columns)
                        .all(|((name, pg_type), c)| *name == c.name && *pg_type == c.pg_type))
        };
        self.schema == change.schema && same(&self.columns, &change.columns) && same(&self.key, &change.key)
    }
}

impl Tables {
    /// The id of a change's table; a table the instance has not been sent
    /// yet is added and passed to `send`.
    fn id(&mut self, change: &Change, send: impl FnOnce(u32, &Shape)) -> u32 {
        let fits = |id: usize| self.shapes[id].table == change.table && self.shapes[id].fits(change);
        let found = self.last.filter(|&id| fits(id)).or_else(|| {
            self.by_name
                .get(change.table.as_str())
                .and_then(|ids| ids.iter().copied().find(|&id| fits(id)))
        });
        let id = found.unwrap_or_else(|| {
            let id = self.shapes.len();
            let defs = |columns: &[Column]| -> Vec<(String, String)> {
                columns.iter().map(|c| (c.name.clone(), c.pg_type.clone())).collect()
            };
            let shape = Shape {
                schema: change.schema.clone(),
                table: change.table.clone(),
                columns: defs(&change.columns),
                key: defs(&change.key),
            };
            send(id as u32, &shape);
            self.by_name.entry(change.table.clone()).or_default().push(id);
            self.shapes.push(shape);
            id
        });
        self.last = Some(id);
        id as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_lends_only_empty_lists_and_keeps_few_narrow_ones() {
        let mut spare = Spare::default();
        let mut used = spare.take();
        used.extend([v2::Value::Int(1), v2::Value::Text("a".into())]);
        spare.give(used);
        let again = spare.take();
        assert!(again.is_empty(), "a kept list still held {again:?}");
        assert!(again.capacity() >= 2, "the kept list was not the one reused");
        spare.give(Vec::with_capacity(Spare::WIDTH + 1));
        assert!(spare.0.is_empty(), "a list wider than {} was kept", Spare::WIDTH);
        for _ in 0..Spare::LISTS + 10 {
            spare.give(Vec::with_capacity(4));
        }
        assert_eq!(spare.0.len(), Spare::LISTS);
    }
}
