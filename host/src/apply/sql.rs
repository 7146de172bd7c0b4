//! The statements that write changes into target tables: bound parameters and
//! quoted identifiers always, multi-row INSERTs bounded by rows, parameters and bytes.

use std::collections::{HashMap, HashSet};

use sqlx::mysql::{MySqlArguments, MySqlPool};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, MySql, Row};

use crate::catalog::{DATE_INFINITY, DATETIME_INFINITY, mariadb_datetime, my_ident, target_table};
use crate::change::{Change, Column, Op, Target, Value};

/// The columns each target table is known to have, read once per table.
pub type KnownColumns = HashMap<String, HashSet<String>>;

/// Adds columns that changes carry but their target table lacks (a column added
/// in PostgreSQL), before the group's transaction: in MariaDB, DDL would commit
/// that transaction half-way. Rows that existed before hold NULL in the new column.
///
/// A missing target that the chain declared ([`Target`]) is created from its
/// declaration; any other from the first change that reaches it.
pub(super) async fn add_new_columns<'a>(
    pool: &MySqlPool,
    known: &mut KnownColumns,
    declared: &[Target],
    changes: impl Iterator<Item = &'a Change>,
) -> Result<(), sqlx::Error> {
    for change in changes.filter(|c| matches!(c.op, Op::Insert | Op::Update)) {
        let table = target_table(&change.schema, &change.table);
        if !known.contains_key(&table) {
            let columns: HashSet<String> = sqlx::query(
                "SELECT CAST(column_name AS CHAR) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?",
            )
            .bind(&table)
            .fetch_all(pool)
            .await
            ?
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
            known.insert(table.clone(), columns);
        }
        let Some(columns) = known.get_mut(&table) else { continue };
        // A table that does not exist has no columns: a transform routed the change
        // to a new table, which is made from its declaration or the change's typed columns.
        if columns.is_empty() {
            match declared
                .iter()
                .find(|t| t.schema == change.schema && t.table == change.table)
            {
                Some(target) => {
                    create_declared(pool, target).await?;
                    columns.extend(target.columns.iter().map(|c| c.name.clone()));
                }
                None => {
                    create_target(pool, change).await?;
                    columns.extend(change.columns.iter().map(|c| c.name.clone()));
                    continue;
                }
            }
        }
        for column in &change.columns {
            if columns.contains(&column.name) {
                continue;
            }
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {} NULL",
                my_ident(&table),
                my_ident(&column.name),
                crate::catalog::mariadb_type(&column.pg_type)
            );
            sqlx::query(AssertSqlSafe(sql)).execute(pool).await?;
            tracing::warn!(%table, column = %column.name, pg_type = %column.pg_type, "added a column that appeared in the source; rows that existed before hold NULL in it");
            columns.insert(column.name.clone());
        }
    }
    Ok(())
}

/// A target table that a transform's output needs and that cannot be made;
/// retrying or dead-lettering each change would not help.
#[derive(Debug, thiserror::Error)]
#[error(
    "a transform sent changes to the MariaDB table {table}, which does not exist and cannot be created ({reason}); create it by hand, or change the transform's output"
)]
pub struct NoTarget {
    /// The MariaDB table.
    pub table: String,
    /// Why it cannot be created.
    pub reason: String,
}

/// Creates the target of a change routed to a table that does not exist: every
/// column carries its PostgreSQL type, and the change's key (an insert's key is
/// its new row's primary key, when the source table has one) becomes the
/// primary key.
async fn create_target(pool: &MySqlPool, change: &Change) -> Result<(), sqlx::Error> {
    let table = target_table(&change.schema, &change.table);
    let keyed = change
        .key
        .iter()
        .all(|k| change.columns.iter().any(|c| c.name == k.name));
    if !keyed {
        return Err(sqlx::Error::Configuration(Box::new(NoTarget {
            table,
            reason: "its key names columns that its new values do not carry, so rows could not be found by it".into(),
        })));
    }
    let def = crate::catalog::TableDef::plain(
        crate::catalog::TableName {
            schema: change.schema.clone(),
            name: change.table.clone(),
        },
        change
            .columns
            .iter()
            .map(|c| crate::catalog::ColumnDef::named(&c.name, &c.pg_type))
            .collect(),
        change.key.iter().map(|k| k.name.clone()).collect(),
    );
    create_table(pool, &def, "from its typed columns").await
}

/// Creates a missing target that the transform chain declared, with the
/// declared columns, types and key.
async fn create_declared(pool: &MySqlPool, target: &Target) -> Result<(), sqlx::Error> {
    let def = crate::catalog::TableDef::plain(
        crate::catalog::TableName {
            schema: target.schema.clone(),
            name: target.table.clone(),
        },
        target
            .columns
            .iter()
            .map(|c| crate::catalog::ColumnDef::named(&c.name, &c.pg_type))
            .collect(),
        target.key.clone(),
    );
    create_table(pool, &def, "as the transform declared it").await
}

/// Creates a routed change's target; a table MariaDB will not create is a [`NoTarget`].
async fn create_table(pool: &MySqlPool, def: &crate::catalog::TableDef, how: &str) -> Result<(), sqlx::Error> {
    let table = def.name.target();
    let refuse = |reason: String| {
        sqlx::Error::Configuration(Box::new(NoTarget {
            table: table.clone(),
            reason,
        }))
    };
    let sql = crate::catalog::create_table_sql(def).map_err(|e| refuse(e.to_string()))?;
    match sqlx::query(AssertSqlSafe(sql)).execute(pool).await {
        Ok(_) => {
            tracing::info!(%table, key = ?def.primary_key, "created the target of routed changes {how}");
            Ok(())
        }
        Err(e) if super::is_transient(&e) => Err(e),
        Err(e) => Err(refuse(e.to_string())),
    }
}

/// Most rows one multi-row INSERT carries; MariaDB also caps a statement at 65 535 parameters.
const INSERT_ROWS: usize = 500;

/// The largest statement sent by default, well under MariaDB's default `max_allowed_packet` (16 MiB).
const DEFAULT_STATEMENT_BYTES: usize = 4 * 1024 * 1024;

/// How many bytes of values one multi-row statement may carry: half the server's
/// `max_allowed_packet`, read once, so the packet limit is never reached by batching.
pub async fn statement_bytes(pool: &MySqlPool) -> usize {
    static BYTES: tokio::sync::OnceCell<usize> = tokio::sync::OnceCell::const_new();
    *BYTES
        .get_or_init(|| async {
            match sqlx::query_scalar::<_, u64>("SELECT @@max_allowed_packet")
                .fetch_one(pool)
                .await
            {
                Ok(packet) => usize::try_from(packet / 2)
                    .unwrap_or(DEFAULT_STATEMENT_BYTES)
                    .max(64 * 1024),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read max_allowed_packet; using the default statement size");
                    DEFAULT_STATEMENT_BYTES
                }
            }
        })
        .await
}

/// Applies changes in order; runs of inserts into the same table and columns
/// become multi-row INSERTs, which MariaDB executes far faster than single rows.
/// A statement carries at most `max_bytes` of values (a larger single row goes alone).
pub(super) async fn apply_changes(
    tx: &mut sqlx::MySqlConnection,
    changes: &[Change],
    max_bytes: usize,
) -> Result<(), sqlx::Error> {
    let same_shape = |a: &Change, b: &Change| {
        b.op == Op::Insert
            && !keeps_values(b)
            && a.table == b.table
            && a.schema == b.schema
            && a.columns.len() == b.columns.len()
            && a.columns.iter().zip(&b.columns).all(|(x, y)| x.name == y.name)
    };
    let mut i = 0;
    while i < changes.len() {
        let first = &changes[i];
        if first.op != Op::Insert || keeps_values(first) {
            apply_change(tx, first).await?;
            i += 1;
            continue;
        }
        let most = INSERT_ROWS.min(65_535 / first.columns.len().max(1));
        let mut bytes = first.approx_bytes();
        let mut end = i + 1;
        while end < changes.len() && end - i < most && same_shape(first, &changes[end]) {
            bytes += changes[end].approx_bytes();
            if bytes > max_bytes {
                break;
            }
            end += 1;
        }
        insert_rows(tx, &changes[i..end]).await?;
        i = end;
    }
    Ok(())
}

/// One INSERT for rows of the same table and columns.
async fn insert_rows(tx: &mut sqlx::MySqlConnection, rows: &[Change]) -> Result<(), sqlx::Error> {
    let Some(first) = rows.first() else { return Ok(()) };
    let row = format!("({})", vec!["?"; first.columns.len()].join(", "));
    let sql = format!(
        "INSERT INTO {} ({}) VALUES {}",
        my_ident(&target_table(&first.schema, &first.table)),
        first
            .columns
            .iter()
            .map(|c| my_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", "),
        vec![row; rows.len()].join(", ")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for column in rows.iter().flat_map(|r| &r.columns) {
        query = bind(query, column)?;
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

async fn apply_change(tx: &mut sqlx::MySqlConnection, change: &Change) -> Result<(), sqlx::Error> {
    let table = my_ident(&target_table(&change.schema, &change.table));
    let present: Vec<_> = change
        .columns
        .iter()
        .filter(|c| c.value != Value::UnchangedToast)
        .collect();
    // Null-safe equality: a FULL identity may hold NULLs. LIMIT 1: without a primary key,
    // identical rows are interchangeable, and the source changed exactly one of them.
    let key_clause = || {
        change
            .key
            .iter()
            .map(|k| format!("{} <=> ?", my_ident(&k.name)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let (sql, values): (String, Vec<&Column>) = match change.op {
        Op::Insert if keeps_values(change) => return insert_keeping_values(tx, change).await,
        Op::Insert => return insert_rows(tx, std::slice::from_ref(change)).await,
        Op::Update => (
            format!(
                "UPDATE {table} SET {} WHERE {} LIMIT 1",
                present
                    .iter()
                    .map(|c| format!("{} = ?", my_ident(&c.name)))
                    .collect::<Vec<_>>()
                    .join(", "),
                key_clause()
            ),
            present.iter().copied().chain(change.key.iter()).collect(),
        ),
        Op::Delete => (
            format!("DELETE FROM {table} WHERE {} LIMIT 1", key_clause()),
            change.key.iter().collect(),
        ),
        // TRUNCATE would commit the surrounding transaction in MariaDB.
        Op::Truncate => (format!("DELETE FROM {table}"), Vec::new()),
    };
    if matches!(change.op, Op::Update | Op::Delete) && change.key.is_empty() {
        return Err(sqlx::Error::Protocol(format!(
            "{:?} on {} carries no key to find the row by",
            change.op,
            change.qualified_table()
        )));
    }
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for v in values {
        query = bind(query, v)?;
    }
    let done = query.execute(&mut *tx).await?;
    if change.op == Op::Update && done.rows_affected() == 0 {
        let also = if keeps_values(change) {
            format!(
                ", and it does not carry the value of {} (an unchanged TOAST value), so the row cannot be written whole either; {FULL_IDENTITY}",
                unchanged_columns(change)
            )
        } else {
            String::new()
        };
        return Err(sqlx::Error::Protocol(format!(
            "update on {} found no row with key {}{also}",
            change.qualified_table(),
            describe_key(&change.key)
        )));
    }
    Ok(())
}

/// How to have the source send whole rows, so that no value is left out.
const FULL_IDENTITY: &str =
    "run ALTER TABLE ... REPLICA IDENTITY FULL on the source table so that updates carry the whole old row";

/// Whether a change carries values the target must keep (unchanged TOAST values).
fn keeps_values(change: &Change) -> bool {
    change.columns.iter().any(|c| c.value == Value::UnchangedToast)
}

/// The names of the columns whose target value a change keeps.
fn unchanged_columns(change: &Change) -> String {
    change
        .columns
        .iter()
        .filter(|c| c.value == Value::UnchangedToast)
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An insert that carries unchanged TOAST values, which a transform made from an
/// update: it rewrites the row the target holds with the same primary key, and
/// that row keeps its values in those columns. Without such a row, the values
/// are not known anywhere, so the insert is refused (and dead-lettered) with the
/// reason instead of writing a row that lacks them.
///
/// An UPDATE by the primary key, not `INSERT ... ON DUPLICATE KEY UPDATE`: that
/// would insert the incomplete row when none exists, and it fires on any unique key.
async fn insert_keeping_values(tx: &mut sqlx::MySqlConnection, change: &Change) -> Result<(), sqlx::Error> {
    let target = target_table(&change.schema, &change.table);
    let primary_key: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(column_name AS CHAR) FROM information_schema.statistics \
         WHERE table_schema = DATABASE() AND table_name = ? AND index_name = 'PRIMARY' ORDER BY seq_in_index",
    )
    .bind(&target)
    .fetch_all(&mut *tx)
    .await?;
    let refuse = |why: String| {
        sqlx::Error::Protocol(format!(
            "insert into {} does not carry the value of {} (an unchanged TOAST value the source left out of an update), and {why}; {FULL_IDENTITY}",
            change.qualified_table(),
            unchanged_columns(change)
        ))
    };
    if primary_key.is_empty() {
        return Err(refuse(format!(
            "its target table {target} has no primary key to find the row that holds it"
        )));
    }
    let key: Vec<Column> = primary_key
        .iter()
        .map(|name| {
            change
                .columns
                .iter()
                .find(|c| &c.name == name && c.value != Value::UnchangedToast)
                .cloned()
                .ok_or_else(|| refuse(format!("it has no value for {name}, the target's primary key")))
        })
        .collect::<Result<_, _>>()?;
    let present: Vec<&Column> = change
        .columns
        .iter()
        .filter(|c| c.value != Value::UnchangedToast)
        .collect();
    let sql = format!(
        "UPDATE {} SET {} WHERE {}",
        my_ident(&target),
        present
            .iter()
            .map(|c| format!("{} = ?", my_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", "),
        key.iter()
            .map(|k| format!("{} = ?", my_ident(&k.name)))
            .collect::<Vec<_>>()
            .join(" AND ")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for v in present.into_iter().chain(&key) {
        query = bind(query, v)?;
    }
    if query.execute(&mut *tx).await?.rows_affected() == 0 {
        return Err(refuse(format!(
            "the target holds no row with key {}",
            describe_key(&key)
        )));
    }
    Ok(())
}

fn describe_key(key: &[Column]) -> String {
    key.iter()
        .map(|k| format!("{}={}", k.name, serde_json::to_string(&k.value).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

type MyQuery<'q> = Query<'q, MySql, MySqlArguments>;

/// Binds one value as a parameter; values are never pasted into SQL.
fn bind<'q>(query: MyQuery<'q>, column: &'q Column) -> Result<MyQuery<'q>, sqlx::Error> {
    Ok(match &column.value {
        Value::Null => query.bind(None::<String>),
        Value::Bool(b) => query.bind(*b),
        Value::Int(i) => query.bind(*i),
        // A real is a single-precision float: as a double, its largest values overflow MariaDB's FLOAT.
        Value::Float(f) if column.pg_type == "real" => query.bind(*f as f32),
        Value::Float(f) => query.bind(*f),
        Value::Numeric(s) | Value::Text(s) | Value::Json(s) | Value::Time(s) => query.bind(s.as_str()),
        Value::Date(s) => query.bind(datetime(column, s, DATE_INFINITY)?),
        Value::Timestamp(s) => query.bind(datetime(column, s, DATETIME_INFINITY)?),
        // Captured in UTC; DATETIME has no zone, so the offset is dropped.
        Value::Timestamptz(s) => query.bind(datetime(column, s.strip_suffix("+00").unwrap_or(s), DATETIME_INFINITY)?),
        Value::Bytes(b) => query.bind(b.as_slice()),
        Value::UnchangedToast => {
            return Err(sqlx::Error::Protocol(format!(
                "column {} holds an unchanged TOAST value, which has no value to write",
                column.name
            )));
        }
    })
}

/// A date or timestamp as MariaDB takes it: ±infinity as its largest and smallest
/// value; a date before year 1 is refused, since MariaDB cannot hold one.
fn datetime<'a>(column: &Column, text: &'a str, infinity: (&'a str, &'a str)) -> Result<&'a str, sqlx::Error> {
    mariadb_datetime(text, infinity).ok_or_else(|| {
        sqlx::Error::Protocol(format!(
            "column {} holds '{text}', a date before year 1, which MariaDB cannot store; change the value in PostgreSQL or drop the column from the transform's output",
            column.name
        ))
    })
}
