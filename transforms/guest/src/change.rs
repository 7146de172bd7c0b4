//! Building and editing changes, columns and values.

use crate::{Change, Column, Op, TxContext, Value};

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
        Self {
            op,
            schema: schema.into(),
            table: table.into(),
            columns,
            key,
        }
    }

    /// The column called `name` among the row's new values.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The new value of the column called `name`; `None` when the row's new
    /// values lack it (always so for a delete or truncate).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.column(name).map(|c| &c.value)
    }

    /// The new value of the column called `name`, to edit in place.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.columns.iter_mut().find(|c| c.name == name).map(|c| &mut c.value)
    }

    /// The value of the key column called `name`, as the row was before an
    /// update or delete.
    pub fn get_key(&self, name: &str) -> Option<&Value> {
        self.key.iter().find(|c| c.name == name).map(|c| &c.value)
    }

    /// Sets the new value of the column called `name`, keeping its type; a
    /// column the row lacks is added with the type [`Value::pg_type`] names.
    pub fn set(&mut self, name: &str, value: Value) {
        match self.columns.iter_mut().find(|c| c.name == name) {
            Some(column) => column.value = value,
            None => self.columns.push(Column::new(name, value.pg_type(), value)),
        }
    }

    /// Removes the column called `name` from the row's new values and returns
    /// it; the key keeps it, since the key is how the target finds the row.
    pub fn remove(&mut self, name: &str) -> Option<Column> {
        let at = self.columns.iter().position(|c| c.name == name)?;
        Some(self.columns.remove(at))
    }

    /// Renames the column `old` to `new` in the new values and the key alike;
    /// returns whether the change had it.
    pub fn rename(&mut self, old: &str, new: &str) -> bool {
        let mut found = false;
        for column in self.columns.iter_mut().chain(self.key.iter_mut()) {
            if column.name == old {
                column.name = new.to_owned();
                found = true;
            }
        }
        found
    }

    /// Whether an update left a TOASTed column out, so that its new values are
    /// not the whole row.
    pub fn has_unchanged_toast(&self) -> bool {
        self.columns.iter().any(|c| c.value == Value::UnchangedToast)
    }
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

    #[test]
    fn builders_fill_what_each_operation_carries() {
        let insert = Change::insert("public", "t", vec![int("id", 1)]);
        assert_eq!((insert.op, insert.columns.len(), insert.key.len()), (Op::Insert, 1, 0));
        let delete = Change::delete("public", "t", vec![int("id", 1)]);
        assert_eq!((delete.op, delete.columns.len(), delete.key.len()), (Op::Delete, 0, 1));
        let truncate = Change::truncate("s", "t");
        assert_eq!(
            (truncate.op, truncate.schema.as_str(), truncate.table.as_str()),
            (Op::Truncate, "s", "t")
        );
        assert!(truncate.columns.is_empty() && truncate.key.is_empty());
        assert_eq!(update().op, Op::Update);
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
        assert_eq!(change.column("id").map(|c| c.pg_type.as_str()), Some("integer"));
        let delete = Change::delete("public", "users", vec![int("id", 7)]);
        assert_eq!(delete.get("id"), None);
        assert_eq!(delete.get_key("id"), Some(&Value::Int(7)));
    }

    #[test]
    fn set_replaces_a_value_keeping_its_type_or_adds_a_typed_column() {
        let mut change = update();
        change.set("id", Value::Int(2));
        change.set("seen", Value::Timestamptz("2024-01-01 00:00:00+00".into()));
        assert_eq!(change.columns.len(), 3);
        assert_eq!(change.columns[0], int("id", 2));
        let seen = change.column("seen").expect("added");
        assert_eq!(seen.pg_type, "timestamp with time zone");
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
        assert_eq!(change.columns.len(), 1);
        assert_eq!(change.key, [int("id", 1)]);
    }

    #[test]
    fn rename_renames_in_new_values_and_key() {
        let mut change = update();
        assert!(change.rename("id", "user_id"));
        assert!(!change.rename("nope", "x"));
        assert_eq!(change.columns[0].name, "user_id");
        assert_eq!(change.key[0].name, "user_id");
        assert_eq!(change.columns[1].name, "email");
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
