//! The source: PostgreSQL's logical replication slot, read over the streaming
//! replication protocol and decoded from wal2json format-version 2.

pub mod replication;
pub mod wal2json;

use std::str::FromStr;

use tokio_postgres::{Client, NoTls};

use crate::catalog::TableName;
use crate::change::Lsn;
use crate::config::mask_url;
pub use replication::{Frame, ReplicationClient, ReplicationError, ReplicationStream};

/// Why the source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `--pg-url` does not parse.
    #[error("--pg-url '{0}' is not a valid PostgreSQL URL; use postgres://USER:PASSWORD@HOST:PORT/DATABASE")]
    BadUrl(String),
    /// The server cannot be reached.
    #[error("cannot reach PostgreSQL at {url}: {reason}; check that the server is running and that --pg-url is right")]
    Unreachable {
        /// URL with the password masked.
        url: String,
        /// The underlying error.
        reason: String,
    },
    /// Authentication failed.
    #[error("PostgreSQL rejected the credentials in {url} ({reason}); fix the user or password in --pg-url")]
    BadCredentials {
        /// URL with the password masked.
        url: String,
        /// The server's message.
        reason: String,
    },
    /// `wal_level` is not `logical`.
    #[error("PostgreSQL's wal_level is '{0}', but logical replication needs 'logical'; run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL (scripts/services.sh does both)")]
    WalLevel(String),
    /// wal2json cannot be loaded.
    #[error("PostgreSQL cannot use the wal2json output plugin ({0}); install the postgresql-<major>-wal2json package and, where the server has the setting output_plugin_libraries, add wal2json to it (scripts/services.sh does both)")]
    NoPlugin(String),
    /// A table named in `--tables` does not exist.
    #[error("table {0} does not exist in the source database; create it or correct --tables")]
    NoSuchTable(TableName),
    /// A table without a primary key.
    #[error("table {0} has no primary key, so its updates and deletes cannot be matched in MariaDB; add one (ALTER TABLE {0} ADD PRIMARY KEY (...))")]
    NoKey(TableName),
    /// The slot is unusable or has run ahead of the target.
    #[error("{0}")]
    Slot(String),
    /// A catalog query failed.
    #[error("PostgreSQL query failed: {0}")]
    Query(String),
    /// The replication stream failed.
    #[error("{0}")]
    Replication(String),
}

impl From<tokio_postgres::Error> for SourceError {
    /// A failed query, with the server's own message rather than tokio-postgres' "db error".
    fn from(e: tokio_postgres::Error) -> Self {
        SourceError::Query(match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        })
    }
}

/// Connection parameters taken from `--pg-url`.
#[derive(Clone, Debug)]
pub struct PgTarget {
    /// The URL as given.
    pub url: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password, if the URL has one.
    pub password: Option<String>,
    /// Database name.
    pub dbname: String,
}

impl PgTarget {
    /// Parses a `postgres://` URL.
    pub fn parse(url: &str) -> Result<Self, SourceError> {
        let bad = || SourceError::BadUrl(mask_url(url));
        let cfg = tokio_postgres::Config::from_str(url).map_err(|_| bad())?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => return Err(bad()),
        };
        let user = cfg.get_user().ok_or_else(bad)?.to_owned();
        Ok(PgTarget {
            url: url.to_owned(),
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            password: cfg.get_password().map(|p| String::from_utf8_lossy(p).into_owned()),
            dbname: cfg.get_dbname().unwrap_or(&user).to_owned(),
            user,
        })
    }

    /// Opens an ordinary SQL connection, with the session in UTC.
    pub async fn sql(&self) -> Result<Client, SourceError> {
        let mut cfg = tokio_postgres::Config::from_str(&self.url).map_err(|_| SourceError::BadUrl(mask_url(&self.url)))?;
        cfg.options("-c TimeZone=UTC -c DateStyle=ISO,YMD")
            .connect_timeout(std::time::Duration::from_secs(10));
        let (client, connection) = cfg.connect(NoTls).await.map_err(|e| self.connect_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    fn connect_error(&self, e: &tokio_postgres::Error) -> SourceError {
        let url = mask_url(&self.url);
        match e.as_db_error() {
            Some(db) if db.code().code() == "28P01" || db.code().code() == "28000" => SourceError::BadCredentials {
                url,
                reason: db.message().to_owned(),
            },
            Some(db) => SourceError::Unreachable {
                url,
                reason: db.message().to_owned(),
            },
            None => SourceError::Unreachable {
                url,
                reason: std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string()),
            },
        }
    }

    /// Opens a replication connection.
    pub async fn replication(&self) -> Result<ReplicationClient, SourceError> {
        ReplicationClient::connect(self).await.map_err(|e| self.replication_error(e))
    }

    /// Turns a replication-protocol error into the sentence that fixes it.
    pub fn replication_error(&self, e: ReplicationError) -> SourceError {
        let url = mask_url(&self.url);
        match e {
            ReplicationError::Io { source, .. } => SourceError::Unreachable {
                url,
                reason: source.to_string(),
            },
            ReplicationError::Server { code, message } => match code.as_str() {
                "28P01" | "28000" => SourceError::BadCredentials { url, reason: message },
                "58P01" => SourceError::NoPlugin(message),
                _ if message.contains("wal2json") => SourceError::NoPlugin(message),
                _ if message.contains("wal_level") => SourceError::WalLevel(message),
                _ => SourceError::Replication(format!("PostgreSQL replication error {code}: {message}")),
            },
            ReplicationError::Protocol(m) => SourceError::Replication(m),
        }
    }
}

/// The slot's state as the server reports it.
#[derive(Clone, Debug)]
pub struct SlotState {
    /// Output plugin the slot was created with.
    pub plugin: String,
    /// `confirmed_flush_lsn`: where a restart resumes.
    pub confirmed_flush: Lsn,
    /// `wal_status`: `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: String,
}

/// Checks that the server can do logical decoding and that every table is replicable.
pub async fn preflight(pg: &Client, tables: &[TableName]) -> Result<Vec<crate::catalog::TableDef>, SourceError> {
    let wal_level: String = pg
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(SourceError::from)?
        .get(0);
    if wal_level != "logical" {
        return Err(SourceError::WalLevel(wal_level));
    }
    let mut defs: Vec<crate::catalog::TableDef> = Vec::with_capacity(tables.len());
    for t in expand(pg, tables).await? {
        if !defs.iter().any(|d| d.name == t) {
            defs.push(crate::catalog::describe(pg, &t).await?);
        }
    }
    Ok(defs)
}

/// Replaces `*` patterns (`public.*`, `sales.order_*`) by the tables they match now.
/// A table created later that matches is picked up at the next start.
async fn expand(pg: &Client, tables: &[TableName]) -> Result<Vec<TableName>, SourceError> {
    let like = |s: &str| s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_").replace('*', "%");
    let mut out = Vec::new();
    for t in tables {
        if !t.is_pattern() {
            out.push(t.clone());
            continue;
        }
        let rows = pg
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname LIKE $1 AND c.relname LIKE $2 \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
                &[&like(&t.schema), &like(&t.name)],
            )
            .await?;
        if rows.is_empty() {
            return Err(SourceError::NoSuchTable(t.clone()));
        }
        out.extend(rows.iter().map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        }));
    }
    Ok(out)
}

/// Reads the slot, if it exists.
pub async fn slot_state(pg: &Client, slot: &str) -> Result<Option<SlotState>, SourceError> {
    let row = pg
        .query_opt(
            "SELECT plugin::text, confirmed_flush_lsn::text, coalesce(wal_status, 'reserved') \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(SourceError::from)?;
    Ok(row.map(|r| SlotState {
        plugin: r.get(0),
        confirmed_flush: r.get::<_, Option<String>>(1).and_then(|s| s.parse().ok()).unwrap_or_default(),
        wal_status: r.get(2),
    }))
}

/// Creates the slot with wal2json unless it exists, and checks that it is usable.
pub async fn ensure_slot(target: &PgTarget, pg: &Client, slot: &str) -> Result<SlotState, SourceError> {
    if slot_state(pg, slot).await?.is_none() {
        let mut repl = target.replication().await?;
        let sql = format!("CREATE_REPLICATION_SLOT {} LOGICAL wal2json", replication::quote_ident(slot));
        match repl.simple_query(&sql).await {
            Ok(_) => tracing::info!(slot, "created replication slot"),
            // Another process created it first.
            Err(ReplicationError::Server { code, .. }) if code == "42710" => {}
            Err(e) => return Err(target.replication_error(e)),
        }
    }
    let state = slot_state(pg, slot)
        .await?
        .ok_or_else(|| SourceError::Slot(format!("replication slot '{slot}' vanished while starting")))?;
    if state.plugin != "wal2json" {
        return Err(SourceError::Slot(format!(
            "replication slot '{slot}' uses the plugin '{}', not wal2json; choose another --slot or drop it with `wasmcdc slot drop --slot {slot}`",
            state.plugin
        )));
    }
    if state.wal_status == "lost" {
        return Err(SourceError::Slot(format!(
            "replication slot '{slot}' has lost WAL it still needed (wal_status = lost), so changes are missing; drop it with `wasmcdc slot drop`, then re-copy the tables"
        )));
    }
    Ok(state)
}

/// Drops the slot if it exists; returns whether it did.
pub async fn drop_slot(pg: &Client, slot: &str) -> Result<bool, SourceError> {
    let dropped = pg
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| SourceError::Slot(format!("cannot drop replication slot '{slot}': {}; stop the pipeline that is using it first", SourceError::from(e))))?;
    Ok(!dropped.is_empty())
}
