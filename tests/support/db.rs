//! Reading rows from both databases as text, so that they can be compared.

use futures::TryStreamExt as _;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Rows as text cells, `None` for NULL.
pub type Rows = Vec<Vec<Option<String>>>;

/// Connects to PostgreSQL; the session is in UTC.
pub async fn pg_connect(url: &str) -> Client {
    let url = format!(
        "{url}{}options=-c%20TimeZone%3DUTC",
        if url.contains('?') { "&" } else { "?" }
    );
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Connects to MariaDB.
pub async fn my_connect(url: &str) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to MariaDB at {url}: {e}"))
}

/// Runs `sql` in PostgreSQL, which may hold several statements.
pub async fn pg_exec(pg: &Client, sql: &str) {
    pg.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL refused {sql:?}: {}", pg_error(&e)));
}

/// A PostgreSQL error with the server's own message and code, which the
/// client's `Display` leaves out ("db error").
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Runs one statement in MariaDB.
pub async fn my_exec(my: &MySqlPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(my)
        .await
        .unwrap_or_else(|e| panic!("MariaDB refused {sql:?}: {e}"));
}

/// The rows of a PostgreSQL query, sorted.
pub async fn pg_rows(pg: &Client, sql: &str) -> Rows {
    let messages = pg
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL refused {sql:?}: {}", pg_error(&e)));
    let mut rows: Rows = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect();
    rows.sort();
    rows
}

/// The rows of a MariaDB query whose columns are all text (use `CAST(... AS CHAR)`), sorted.
pub async fn my_rows(my: &MySqlPool, sql: &str) -> Rows {
    try_my_rows(my, sql)
        .await
        .unwrap_or_else(|e| panic!("MariaDB refused {sql:?}: {e}"))
}

/// The same, returning MariaDB's error (for example a table not created yet) instead of failing.
pub async fn try_my_rows(my: &MySqlPool, sql: &str) -> Result<Rows, sqlx::Error> {
    let mut rows = Vec::new();
    let mut stream = sqlx::query(AssertSqlSafe(sql.to_owned())).fetch(my);
    while let Some(r) = stream.try_next().await? {
        let cells = (0..r.len())
            .map(|i| {
                r.try_get::<Option<String>, _>(i)
                    .unwrap_or_else(|e| panic!("column {i} of {sql:?} is not text (CAST it AS CHAR): {e}"))
            })
            .collect();
        rows.push(cells);
    }
    rows.sort();
    Ok(rows)
}

/// A single unsigned number from MariaDB, if the query returns a row.
pub async fn my_u64(my: &MySqlPool, sql: &str) -> Option<u64> {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .fetch_optional(my)
        .await
        .unwrap_or_else(|e| panic!("MariaDB refused {sql:?}: {e}"))
        .map(|r| r.get::<u64, _>(0))
}
