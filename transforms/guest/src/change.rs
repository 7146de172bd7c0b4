//! Reading, editing and building changes.
//!
//! A [`Change`] shares its table's names and types with every other change
//! of that table, and owns only its values. Editing values keeps the sharing,
//! so the host is told just the new values, or that nothing changed;
//! renaming, adding or removing a column, or routing the change to another
//! table, gives the change a shape of its own, and the host then receives it
//! whole, with every name and type.
//!
//! A delivered change's values stay with the host until the transform first
//! reads them, so a change passed on unread costs no copy. They can be read
//! only during the call that delivered the change: a transform that keeps a
//! change past its call calls [`Change::load`] first; one that does not fails
//! the later call that reads it, with the reason.

use std::cell::OnceCell;
use std::rc::Rc;

use crate::{Column, ColumnDef, Op, Target, TxContext, Value};

/// What the changes of one table share: where they land, and the names and
/// types their values and key follow.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Shape {
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) columns: Vec<ColumnDef>,
    pub(crate) key: Vec<ColumnDef>,
}

/// One row-level change: what happened, to which table, its new values and
/// its key.
///
/// For an update and a delete the key names the row as it was; for an insert
/// it is the new row's primary key when its table has one. A delete and a
/// truncate carry no new values, a truncate no key.
#[derive(Clone, Debug)]
pub struct Change {
    op: Op,
    pub(crate) shape: Rc<Shape>,
    pub(crate) values: Values,
    pub(crate) key: Values,
    /// Whether a value was edited in place, so the host needs the new values.
    pub(crate) edited: bool,
    /// The id of the row it was delivered as, which clones share; `None` when built.
    pub(crate) row: Option<u64>,
}

impl PartialEq for Change {
    /// Two changes are equal when they do the same thing to the same table
    /// with the same values, however they were made.
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op
            && self.shape == other.shape
            && self.values.get() == other.values.get()
            && self.key.get() == other.key.get()
    }
}

/// Reads a delivered row's values or key from the host, by the row's id.
pub(crate) type Read = fn(u64) -> Vec<Value>;

/// A change's values, or its key: read from the host on first use when the
/// change was delivered, held from the start when it was built.
#[derive(Clone, Debug)]
pub(crate) struct Values {
    list: OnceCell<Vec<Value>>,
    /// Where an unread list comes from.
    unread: Option<(Read, u64)>,
}

impl Values {
    /// A list the transform built.
    fn held(list: Vec<Value>) -> Self {
        Self {
            list: OnceCell::from(list),
            unread: None,
        }
    }

    /// The list of delivered row `id`, left with the host until read.
    fn unread(read: Read, id: u64) -> Self {
        Self {
            list: OnceCell::new(),
            unread: Some((read, id)),
        }
    }

    fn get(&self) -> &Vec<Value> {
        self.list
            .get_or_init(|| self.unread.map(|(read, id)| read(id)).unwrap_or_default())
    }

    fn get_mut(&mut self) -> &mut Vec<Value> {
        self.get();
        self.list.get_mut().expect("the list was read just above")
    }

    pub(crate) fn into_vec(mut self) -> Vec<Value> {
        std::mem::take(self.get_mut())
    }
}

impl Change {
    /// A new row.
    pub fn insert(schema: impl Into<String>, table: impl Into<String>, columns: Vec<Column>) -> Self {
        Self::new(Op::Insert, schema, table, columns, Vec::new())
    }

    /// A changed row: its new values, and the key that named it before.
    pub fn update(schema: impl Into<String>, table: impl Into<String>, columns: Vec<Column>, key: Vec<Column>) -> Self {
        Self::new(Op::Update, schema, table, columns, key)
    }

    /// A removed row, named by its key.
    pub fn delete(schema: impl Into<String>, table: impl Into<String>, key: Vec<Column>) -> Self {
        Self::new(Op::Delete, schema, table, Vec::new(), key)
    }

    /// Every row of the table removed.
    pub fn truncate(schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self::new(Op::Truncate, schema, table, Vec::new(), Vec::new())
    }

    fn new(
        op: Op,
        schema: impl Into<String>,
        table: impl Into<String>,
        columns: Vec<Column>,
        key: Vec<Column>,
    ) -> Self {
        let (columns, values) = split(columns);
        let (key_columns, key) = split(key);
        Self {
            op,
            shape: Rc::new(Shape {
                schema: schema.into(),
                table: table.into(),
                columns,
                key: key_columns,
            }),
            values: Values::held(values),
            key: Values::held(key),
            edited: false,
            row: None,
        }
    }

    /// Row `id` as the host delivered it, sharing its table's shape.
    pub(crate) fn delivered(op: Op, shape: Rc<Shape>, id: u64, read: [Read; 2]) -> Self {
        Self {
            op,
            shape,
            values: Values::unread(read[0], id),
            key: Values::unread(read[1], id),
            edited: false,
            row: Some(id),
        }
    }

    /// Reads the values and the key from the host now, if they are not read
    /// yet, so that the change can be kept past the call that delivered it
    /// (to merge it with later ones, say) and read or returned later.
    pub fn load(&self) {
        self.values.get();
        self.key.get();
    }

    /// What happened to the row.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The schema of the table the change lands in.
    pub fn schema(&self) -> &str {
        &self.shape.schema
    }

    /// The table the change lands in.
    pub fn table(&self) -> &str {
        &self.shape.table
    }

    /// Routes the change to another schema.
    pub fn set_schema(&mut self, schema: impl Into<String>) {
        Rc::make_mut(&mut self.shape).schema = schema.into();
    }

    /// Routes the change to another table. A table that does not exist in
    /// MariaDB is created from the change's typed columns, keyed by its key.
    pub fn set_table(&mut self, table: impl Into<String>) {
        Rc::make_mut(&mut self.shape).table = table.into();
    }

    /// The same change as another operation, for example the delete of an
    /// update's old row. A delete and a truncate drop the new values; an
    /// insert and a truncate drop the key.
    pub fn with_op(&self, op: Op) -> Self {
        let mut change = self.clone();
        change.op = op;
        if matches!(op, Op::Delete | Op::Truncate) && !change.values.get().is_empty() {
            change.values = Values::held(Vec::new());
            Rc::make_mut(&mut change.shape).columns.clear();
        }
        if matches!(op, Op::Insert | Op::Truncate) && !change.key.get().is_empty() {
            change.key = Values::held(Vec::new());
            Rc::make_mut(&mut change.shape).key.clear();
        }
        change
    }

    /// The new values, each with its column's name and type.
    pub fn columns(&self) -> impl Iterator<Item = (&ColumnDef, &Value)> {
        self.shape.columns.iter().zip(self.values.get())
    }

    /// The key values, each with its column's name and type.
    pub fn key(&self) -> impl Iterator<Item = (&ColumnDef, &Value)> {
        self.shape.key.iter().zip(self.key.get())
    }

    fn position(&self, name: &str) -> Option<usize> {
        let at = self.shape.columns.iter().position(|c| c.name == name)?;
        (at < self.values.get().len()).then_some(at)
    }

    /// The PostgreSQL type of the column called `name`, as `format_type` prints it.
    pub fn pg_type(&self, name: &str) -> Option<&str> {
        self.position(name).map(|at| self.shape.columns[at].pg_type.as_str())
    }

    /// The new value of the column called `name`; `None` when the row's new
    /// values lack it (always so for a delete or truncate).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).map(|at| &self.values.get()[at])
    }

    /// The new value of the column called `name`, to edit in place.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        let at = self.position(name)?;
        self.edited = true;
        Some(&mut self.values.get_mut()[at])
    }

    /// The value of the key column called `name`, as the row was before an
    /// update or delete.
    pub fn get_key(&self, name: &str) -> Option<&Value> {
        let at = self.shape.key.iter().position(|c| c.name == name)?;
        self.key.get().get(at)
    }

    /// Sets the new value of the column called `name`, keeping its type; a
    /// column the row lacks is added with the type [`Value::pg_type`] names.
    pub fn set(&mut self, name: &str, value: Value) {
        match self.get_mut(name) {
            Some(slot) => *slot = value,
            None => self.push(Column::new(name, value.pg_type(), value)),
        }
    }

    /// Adds a column to the new values, with its own type.
    pub fn push(&mut self, column: Column) {
        let shape = Rc::make_mut(&mut self.shape);
        // A delete's shape may still name columns it carries no values for.
        shape.columns.truncate(self.values.get().len());
        shape.columns.push(ColumnDef {
            name: column.name,
            pg_type: column.pg_type,
        });
        self.values.get_mut().push(column.value);
    }

    /// Removes the column called `name` from the row's new values and returns
    /// it; the key keeps it, since the key is how the target finds the row.
    pub fn remove(&mut self, name: &str) -> Option<Column> {
        let at = self.position(name)?;
        let def = Rc::make_mut(&mut self.shape).columns.remove(at);
        Some(Column {
            name: def.name,
            pg_type: def.pg_type,
            value: self.values.get_mut().remove(at),
        })
    }

    /// Renames the column `old` to `new` in the new values and the key alike;
    /// returns whether the change had it.
    pub fn rename(&mut self, old: &str, new: &str) -> bool {
        let has = |defs: &[ColumnDef]| defs.iter().any(|c| c.name == old);
        if !has(&self.shape.columns) && !has(&self.shape.key) {
            return false;
        }
        let shape = Rc::make_mut(&mut self.shape);
        for def in shape.columns.iter_mut().chain(shape.key.iter_mut()) {
            if def.name == old {
                new.clone_into(&mut def.name);
            }
        }
        true
    }

    /// Renames several columns at once, in the new values and the key: each
    /// column is looked up by its name before any rename, so `a→b` with `b→a`
    /// swaps the two.
    pub fn rename_with(&mut self, new_name: impl Fn(&str) -> Option<String>) {
        let shape = &self.shape;
        let any = shape
            .columns
            .iter()
            .chain(&shape.key)
            .any(|c| new_name(&c.name).is_some());
        if !any {
            return;
        }
        let shape = Rc::make_mut(&mut self.shape);
        for def in shape.columns.iter_mut().chain(shape.key.iter_mut()) {
            if let Some(new) = new_name(&def.name) {
                def.name = new;
            }
        }
    }

    /// Whether an update left a TOASTed column out, so that its new values are
    /// not the whole row.
    pub fn has_unchanged_toast(&self) -> bool {
        self.values.get().contains(&Value::UnchangedToast)
    }

    /// The new values as named columns.
    pub fn to_columns(&self) -> Vec<Column> {
        join(&self.shape.columns, self.values.get())
    }

    /// The key as named columns.
    pub fn to_key(&self) -> Vec<Column> {
        join(&self.shape.key, self.key.get())
    }
}

/// Names and types apart from values.
fn split(columns: Vec<Column>) -> (Vec<ColumnDef>, Vec<Value>) {
    columns
        .into_iter()
        .map(|c| {
            (
                ColumnDef {
                    name: c.name,
                    pg_type: c.pg_type,
                },
                c.value,
            )
        })
        .unzip()
}

/// Names and types back with their values.
fn join(defs: &[ColumnDef], values: &[Value]) -> Vec<Column> {
    defs.iter()
        .zip(values)
        .map(|(d, v)| Column::new(d.name.clone(), d.pg_type.clone(), v.clone()))
        .collect()
}

impl Column {
    /// A column called `name` of PostgreSQL type `pg_type`, as `format_type`
    /// prints it (`integer`, `character varying(60)`).
    pub fn new(name: impl Into<String>, pg_type: impl Into<String>, value: Value) -> Self {
        Self {
            name: name.into(),
            pg_type: pg_type.into(),
            value,
        }
    }
}

impl ColumnDef {
    /// A column called `name` of PostgreSQL type `pg_type`.
    pub fn new(name: impl Into<String>, pg_type: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            pg_type: pg_type.into(),
        }
    }
}

impl Target {
    /// A table to declare ahead: its columns with their PostgreSQL types, and
    /// the names of its primary-key columns.
    pub fn new(schema: impl Into<String>, name: impl Into<String>, columns: Vec<ColumnDef>, key: Vec<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
            columns,
            key,
        }
    }
}

/// A context for tests: xid 0, empty LSN and time.
impl Default for TxContext {
    fn default() -> Self {
        Self {
            xid: 0,
            commit_lsn: String::new(),
            commit_time: String::new(),
        }
    }
}

impl Value {
    /// The PostgreSQL type a new column holding this value gets: the widest of
    /// the types that map to it (`bigint` for an int), `text` for NULL.
    pub fn pg_type(&self) -> &'static str {
        match self {
            Value::Bool(_) => "boolean",
            Value::Int(_) => "bigint",
            Value::Float(_) => "double precision",
            Value::Numeric(_) => "numeric",
            Value::Bytes(_) => "bytea",
            Value::Json(_) => "jsonb",
            Value::Date(_) => "date",
            Value::Time(_) => "time without time zone",
            Value::Timestamp(_) => "timestamp without time zone",
            Value::Timestamptz(_) => "timestamp with time zone",
            Value::Null | Value::Text(_) | Value::UnchangedToast => "text",
        }
    }

    /// Whether the value is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The text of a `text` value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The number of an `int` value.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(name: &str, i: i64) -> Column {
        Column::new(name, "integer", Value::Int(i))
    }

    fn update() -> Change {
        Change::update(
            "public",
            "users",
            vec![
                int("id", 1),
                Column::new("email", "text", Value::Text("a@example.com".into())),
            ],
            vec![int("id", 1)],
        )
    }

    fn names(change: &Change) -> Vec<&str> {
        change.columns().map(|(c, _)| c.name.as_str()).collect()
    }

    #[test]
    fn builders_fill_what_each_operation_carries() {
        let insert = Change::insert("public", "t", vec![int("id", 1)]);
        assert_eq!(
            (insert.op(), insert.columns().count(), insert.key().count()),
            (Op::Insert, 1, 0)
        );
        let delete = Change::delete("public", "t", vec![int("id", 1)]);
        assert_eq!(
            (delete.op(), delete.columns().count(), delete.key().count()),
            (Op::Delete, 0, 1)
        );
        let truncate = Change::truncate("s", "t");
        assert_eq!(
            (truncate.op(), truncate.schema(), truncate.table()),
            (Op::Truncate, "s", "t")
        );
        assert!(truncate.to_columns().is_empty() && truncate.to_key().is_empty());
        assert_eq!(update().op(), Op::Update);
    }

    #[test]
    fn get_reads_new_values_and_get_key_the_key() {
        let change = update();
        assert_eq!(change.get("email").and_then(Value::as_text), Some("a@example.com"));
        assert_eq!(change.get_key("id").and_then(Value::as_int), Some(1));
        assert_eq!(change.get_key("email"), None);
        assert_eq!(change.get("missing"), None);
        let mut change = change;
        if let Some(Value::Text(email)) = change.get_mut("email") {
            email.make_ascii_uppercase();
        }
        assert_eq!(change.get("email").and_then(Value::as_text), Some("A@EXAMPLE.COM"));
        assert_eq!(change.pg_type("id"), Some("integer"));
        let delete = Change::delete("public", "users", vec![int("id", 7)]);
        assert_eq!(delete.get("id"), None);
        assert_eq!(delete.get_key("id"), Some(&Value::Int(7)));
    }

    #[test]
    fn editing_values_keeps_the_shape_and_reshaping_copies_it() {
        let original = update();
        let mut edited = original.clone();
        edited.set("email", Value::Null);
        assert!(Rc::ptr_eq(&original.shape, &edited.shape) && edited.edited);
        let mut routed = original.clone();
        routed.set_table("accounts");
        assert!(!Rc::ptr_eq(&original.shape, &routed.shape));
        assert_eq!((original.table(), routed.table()), ("users", "accounts"));
    }

    #[test]
    fn set_replaces_a_value_keeping_its_type_or_adds_a_typed_column() {
        let mut change = update();
        change.set("id", Value::Int(2));
        change.set("seen", Value::Timestamptz("2024-01-01 00:00:00+00".into()));
        assert_eq!(change.to_columns().len(), 3);
        assert_eq!(change.to_columns()[0], int("id", 2));
        assert_eq!(change.pg_type("seen"), Some("timestamp with time zone"));
        assert_eq!(
            change.get_key("id"),
            Some(&Value::Int(1)),
            "the key names the row as it was"
        );
    }

    #[test]
    fn remove_takes_a_column_out_of_the_new_values_only() {
        let mut change = update();
        assert_eq!(change.remove("id"), Some(int("id", 1)));
        assert_eq!(change.remove("id"), None);
        assert_eq!(names(&change), ["email"]);
        assert_eq!(change.to_key(), [int("id", 1)]);
    }

    #[test]
    fn rename_renames_in_new_values_and_key() {
        let mut change = update();
        assert!(change.rename("id", "user_id"));
        assert!(!change.rename("nope", "x"));
        assert_eq!(names(&change), ["user_id", "email"]);
        assert_eq!(change.to_key()[0].name, "user_id");
        let mut swapped = update();
        swapped.rename_with(|name| match name {
            "id" => Some("email".into()),
            "email" => Some("id".into()),
            _ => None,
        });
        assert_eq!(names(&swapped), ["email", "id"]);
    }

    #[test]
    fn with_op_keeps_what_the_operation_carries() {
        let delete = update().with_op(Op::Delete);
        assert_eq!(
            (delete.op(), delete.columns().count(), delete.key().count()),
            (Op::Delete, 0, 1)
        );
        let insert = update().with_op(Op::Insert);
        assert_eq!(
            (insert.op(), insert.columns().count(), insert.key().count()),
            (Op::Insert, 2, 0)
        );
        let mut delete = delete;
        delete.push(int("x", 1));
        assert_eq!(names(&delete), ["x"]);
    }

    #[test]
    fn values_name_their_type_and_unchanged_toast_is_detected() {
        assert_eq!(Value::Int(1).pg_type(), "bigint");
        assert_eq!(Value::Null.pg_type(), "text");
        assert_eq!(Value::Bytes(vec![]).pg_type(), "bytea");
        assert!(Value::Null.is_null() && !Value::Int(0).is_null());
        assert_eq!(Value::Int(3).as_text(), None);
        let mut change = update();
        assert!(!change.has_unchanged_toast());
        change.set("notes", Value::UnchangedToast);
        assert!(change.has_unchanged_toast());
    }
}
