//! The source: PostgreSQL's logical replication slot, read over the streaming
//! replication protocol and decoded from wal2json format-version 2.

pub mod array;
pub mod relations;
pub mod replication;
pub mod snapshot;
pub mod wal2json;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

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
    #[error(
        "PostgreSQL's wal_level is '{0}', but logical replication needs 'logical'; run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL (scripts/services.sh does both)"
    )]
    WalLevel(String),
    /// wal2json cannot be loaded.
    #[error(
        "PostgreSQL cannot use the wal2json output plugin ({0}); install the postgresql-<major>-wal2json package and, where the server has the setting output_plugin_libraries, add wal2json to it (scripts/services.sh does both)"
    )]
    NoPlugin(String),
    /// A table named in `--tables` does not exist.
    #[error("table {0} does not exist in the source database; create it or correct --tables")]
    NoSuchTable(TableName),
    /// A table without a primary key.
    #[error(
        "table {0} has no primary key and its replica identity is not FULL, so wal2json cannot describe its updates and deletes; add a primary key, or run ALTER TABLE {0} REPLICA IDENTITY FULL"
    )]
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
    /// TLS was asked for and could not be set up.
    #[error("{0}")]
    Tls(String),
    /// Something about the source that a retry cannot change, such as a plugin
    /// option the server refuses or a partition the stream cannot cover.
    #[error("{0}")]
    Refused(String),
}

impl SourceError {
    /// Whether retrying cannot help until someone changes the source or the settings.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SourceError::Refused(_))
    }
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
    /// TLS for both the ordinary and the replication connection.
    pub tls: TlsPolicy,
    /// The URL without the TLS parameters that tokio-postgres does not know.
    config: tokio_postgres::Config,
}

impl PgTarget {
    /// Parses a `postgres://` URL, with `sslmode` and `sslrootcert` in its query string.
    pub fn parse(url: &str) -> Result<Self, SourceError> {
        let bad = || SourceError::BadUrl(mask_url(url));
        let (rest, params) = take_tls_params(url);
        let cfg = tokio_postgres::Config::from_str(&rest).map_err(|_| bad())?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => return Err(bad()),
        };
        let user = cfg.get_user().ok_or_else(bad)?.to_owned();
        let mode = match params.sslmode {
            Some(m) => SslMode::parse(&m).ok_or_else(|| {
                SourceError::Tls(format!(
                    "--pg-url has sslmode={m}, which wasmcdc does not know; use disable, prefer, require, verify-ca or verify-full"
                ))
            })?,
            // A key=value connection string, which tokio-postgres has already read.
            None => match cfg.get_ssl_mode() {
                tokio_postgres::config::SslMode::Disable => SslMode::Disable,
                tokio_postgres::config::SslMode::Require => SslMode::Require,
                _ => SslMode::Prefer,
            },
        };
        Ok(PgTarget {
            url: url.to_owned(),
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            password: cfg.get_password().map(|p| String::from_utf8_lossy(p).into_owned()),
            dbname: cfg.get_dbname().unwrap_or(&user).to_owned(),
            user,
            tls: TlsPolicy {
                mode,
                root_cert: params.sslrootcert.filter(|p| p != "system").map(PathBuf::from),
            },
            config: cfg,
        })
    }

    /// `host:port`, as messages name the server.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Opens an ordinary SQL connection, with the session in UTC.
    pub async fn sql(&self) -> Result<Client, SourceError> {
        let mut cfg = self.config.clone();
        cfg.options("-c TimeZone=UTC -c DateStyle=ISO,YMD -c bytea_output=hex -c IntervalStyle=postgres")
            .connect_timeout(std::time::Duration::from_secs(10))
            .ssl_mode(match self.tls.mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
            });
        let tls = MakeRustlsConnect::new(self.tls.client_config().map_err(SourceError::Tls)?);
        let (client, connection) = cfg.connect(tls).await.map_err(|e| self.connect_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    fn connect_error(&self, e: &tokio_postgres::Error) -> SourceError {
        if let Some(message) = self.tls_error(e) {
            return SourceError::Tls(message);
        }
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

    /// The sentence for a TLS failure somewhere in the causes of `e`, if that is what it is.
    fn tls_error(&self, e: &tokio_postgres::Error) -> Option<String> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if let Some(tls) = rustls_error(c) {
                return Some(self.tls.handshake_error(&self.addr(), tls));
            }
            // tokio-postgres' own words when the server answers the SSLRequest with 'N'.
            if c.to_string() == "server does not support TLS" {
                return Some(self.tls.refused(&self.addr()));
            }
            cause = c.source();
        }
        None
    }

    /// Opens a replication connection.
    pub async fn replication(&self) -> Result<ReplicationClient, SourceError> {
        ReplicationClient::connect(self)
            .await
            .map_err(|e| self.replication_error(e))
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
                // invalid_parameter_value: wal2json cannot read an option, such as an add-tables entry.
                "22023" => SourceError::Refused(format!(
                    "PostgreSQL refused the replication options ({message}); check the names in --tables"
                )),
                _ => SourceError::Replication(format!("PostgreSQL replication error {code}: {message}")),
            },
            ReplicationError::Protocol(m) => SourceError::Replication(m),
            ReplicationError::Tls(m) => SourceError::Tls(m),
        }
    }
}

/// What `sslmode` in `--pg-url` asks for, with libpq's meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS if the server offers it, plain text if not; the certificate is not checked.
    Prefer,
    /// TLS or nothing; the certificate is checked only against an `sslrootcert` that is given.
    Require,
    /// TLS with a certificate signed by a trusted CA.
    VerifyCa,
    /// TLS with a trusted certificate that also names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The name as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// TLS for the PostgreSQL connections, from `sslmode` and `sslrootcert` in `--pg-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPolicy {
    /// What `sslmode` asks for; `prefer` when the URL does not say.
    pub mode: SslMode,
    /// PEM file of trusted CA certificates; `None` trusts the system's roots.
    pub root_cert: Option<PathBuf>,
}

impl TlsPolicy {
    /// Whether to ask the server for TLS at all.
    pub fn wants_tls(&self) -> bool {
        self.mode != SslMode::Disable
    }

    /// Whether a server that refuses TLS may be used in plain text.
    pub fn allows_plain(&self) -> bool {
        matches!(self.mode, SslMode::Disable | SslMode::Prefer)
    }

    /// Whether the certificate chain must lead to a trusted root. As in libpq,
    /// `require` checks the chain when a root certificate is named.
    fn verifies_chain(&self) -> bool {
        match self.mode {
            SslMode::Disable | SslMode::Prefer => false,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        }
    }

    /// The rustls configuration both connections use.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS for PostgreSQL: {e}; use sslmode=disable on a trusted network"))?;
        let builder = if self.verifies_chain() {
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(self.roots()?), provider)
                .build()
                .map_err(|e| format!("cannot use the CA certificates for PostgreSQL ({e}); name a PEM file of CA certificates with sslrootcert= in --pg-url"))?;
            if self.mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(verifier)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyHostName(verifier)))
            }
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        };
        Ok(builder.with_no_client_auth())
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let unreadable = |e: &dyn std::fmt::Display| {
                    format!(
                        "cannot read the CA certificates in sslrootcert={} ({e}); name a readable PEM file in --pg-url",
                        path.display()
                    )
                };
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
                    roots
                        .add(cert.map_err(|e| unreadable(&e))?)
                        .map_err(|e| unreadable(&e))?;
                }
                if roots.is_empty() {
                    return Err(unreadable(&"the file holds no certificate"));
                }
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if roots.is_empty() {
                    return Err(format!(
                        "sslmode={} needs trusted CA certificates and this system has none; name a PEM file with sslrootcert= in --pg-url",
                        self.mode.as_str()
                    ));
                }
            }
        }
        Ok(roots)
    }

    /// The sentence for a server that answers the SSLRequest with 'N' when TLS is required.
    pub fn refused(&self, addr: &str) -> String {
        format!(
            "PostgreSQL at {addr} does not accept TLS, but --pg-url asks for sslmode={}; turn on ssl in the server's postgresql.conf, or use sslmode=prefer to allow a plain connection",
            self.mode.as_str()
        )
    }

    /// The sentence for a failed TLS handshake.
    pub fn handshake_error(&self, addr: &str, e: &rustls::Error) -> String {
        match e {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the certificate of PostgreSQL at {addr} does not name that host ({e}); connect by a name the certificate lists, or use sslmode=verify-ca to check only who signed it"
            ),
            rustls::Error::InvalidCertificate(_) => format!(
                "the certificate of PostgreSQL at {addr} fails verification ({e}); name the CA that signed it with sslrootcert=FILE in --pg-url, or use sslmode=require to encrypt without verifying"
            ),
            _ => format!(
                "the TLS handshake with PostgreSQL at {addr} failed ({e}); check the server's ssl settings, or use sslmode=disable on a trusted network"
            ),
        }
    }

    /// The name the server's certificate is checked against, and sent as SNI.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        ServerName::try_from(host).map(|n| n.to_owned()).map_err(|_| {
            format!("the host '{host}' in --pg-url is neither a DNS name nor an IP address, so TLS cannot check it; use the server's DNS name, or sslmode=disable")
        })
    }
}

/// The rustls error inside `e`, whether it is one or an I/O error wrapping one.
pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })
}

/// Accepts any certificate, as libpq does for `sslmode=require` without a root
/// certificate, but still checks that the server holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the host name, for `verify-ca`.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The webpki verifier checks the name only after the chain has verified,
        // so a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `sslmode` and `sslrootcert` as found in a URL's query string.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off a `postgres://` URL, because
/// tokio-postgres rejects `verify-ca`, `verify-full` and `sslrootcert`.
fn take_tls_params(url: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), params);
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return (url.to_owned(), params);
    }
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        };
        match key {
            "sslmode" => params.sslmode = Some(value()),
            "sslrootcert" => params.sslrootcert = Some(value()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, params)
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
    let like = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
            .replace('*', "%")
    };
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
        confirmed_flush: r
            .get::<_, Option<String>>(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default(),
        wal_status: r.get(2),
    }))
}

/// Creates the slot with wal2json unless it exists, and checks that it is usable.
pub async fn ensure_slot(target: &PgTarget, pg: &Client, slot: &str) -> Result<SlotState, SourceError> {
    if slot_state(pg, slot).await?.is_none() {
        let mut repl = target.replication().await?;
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL wal2json",
            replication::quote_ident(slot)
        );
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
        .map_err(|e| {
            SourceError::Slot(format!(
                "cannot drop replication slot '{slot}': {}; stop the pipeline that is using it first",
                SourceError::from(e)
            ))
        })?;
    Ok(!dropped.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_PG_URL;

    #[test]
    fn an_option_the_plugin_refuses_is_never_retried() {
        let target = PgTarget::parse(DEFAULT_PG_URL).expect("default url");
        let refused = target.replication_error(ReplicationError::Server {
            code: "22023".into(),
            message: r#"could not parse value "public.Order Items" for parameter "add-tables""#.into(),
        });
        assert!(refused.is_permanent(), "{refused}");
        assert!(refused.to_string().contains("--tables"), "{refused}");
        let lost = target.replication_error(ReplicationError::Server {
            code: "57P01".into(),
            message: "terminating connection due to administrator command".into(),
        });
        assert!(!lost.is_permanent(), "{lost}");
    }

    fn policy(url: &str) -> TlsPolicy {
        PgTarget::parse(url).expect("parses").tls
    }

    #[test]
    fn sslmode_defaults_to_prefer() {
        assert_eq!(
            policy("postgres://u:p@db:5432/d"),
            TlsPolicy {
                mode: SslMode::Prefer,
                root_cert: None
            }
        );
    }

    #[test]
    fn every_libpq_mode_parses() {
        for (name, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let p = policy(&format!("postgres://u:p@db/d?sslmode={name}"));
            assert_eq!(p.mode, mode);
            assert_eq!(p.mode.as_str(), name);
        }
    }

    #[test]
    fn root_cert_is_read_and_both_parameters_are_stripped() {
        let t = PgTarget::parse(
            "postgresql://u:p@db:6543/d?connect_timeout=5&sslrootcert=%2Fetc%2Fca%20x.pem&sslmode=verify-full",
        )
        .expect("parses");
        assert_eq!(t.tls.mode, SslMode::VerifyFull);
        assert_eq!(t.tls.root_cert, Some(PathBuf::from("/etc/ca x.pem")));
        assert_eq!((t.host.as_str(), t.port, t.dbname.as_str()), ("db", 6543, "d"));
        assert_eq!(t.config.get_connect_timeout(), Some(&std::time::Duration::from_secs(5)));
        assert!(
            t.url.contains("sslmode=verify-full"),
            "the URL as given is kept for messages"
        );
    }

    #[test]
    fn sslrootcert_system_means_the_system_roots() {
        assert_eq!(
            policy("postgres://u@db/d?sslmode=verify-full&sslrootcert=system").root_cert,
            None
        );
    }

    #[test]
    fn key_value_strings_keep_their_sslmode() {
        assert_eq!(policy("host=db user=u sslmode=require").mode, SslMode::Require);
        assert_eq!(policy("host=db user=u sslmode=disable").mode, SslMode::Disable);
    }

    #[test]
    fn an_unknown_sslmode_is_refused_with_the_choices() {
        let e = PgTarget::parse("postgres://u@db/d?sslmode=allow")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("sslmode=allow") && e.contains("verify-full"), "{e}");
    }

    #[test]
    fn what_each_mode_checks() {
        let p = |mode, root: Option<&str>| TlsPolicy {
            mode,
            root_cert: root.map(PathBuf::from),
        };
        assert!(!p(SslMode::Disable, None).wants_tls());
        assert!(p(SslMode::Prefer, None).allows_plain());
        assert!(!p(SslMode::Require, None).allows_plain());
        assert!(!p(SslMode::Require, None).verifies_chain());
        assert!(p(SslMode::Require, Some("/ca.pem")).verifies_chain());
        assert!(p(SslMode::VerifyCa, None).verifies_chain());
    }

    #[test]
    fn a_missing_root_cert_file_is_named() {
        let e = policy("postgres://u@db/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
            .client_config()
            .expect_err("no file");
        assert!(e.contains("sslrootcert=/nonexistent/ca.pem"), "{e}");
    }

    fn with_sslmode(mode: &str) -> PgTarget {
        PgTarget::parse(&format!("{DEFAULT_PG_URL}?sslmode={mode}")).expect("parses")
    }

    const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    async fn ordinary_uses_tls(target: &PgTarget) -> bool {
        let pg = target.sql().await.expect("ordinary connection");
        pg.query_one(SSL_IN_USE, &[]).await.expect("pg_stat_ssl").get(0)
    }

    async fn replication_uses_tls(target: &PgTarget) -> bool {
        let mut repl = target.replication().await.expect("replication connection");
        // A replication=database connection also runs plain SQL.
        let rows = repl.simple_query(SSL_IN_USE).await.expect("pg_stat_ssl");
        rows[0][0].as_deref() == Some("t")
    }

    #[tokio::test]
    async fn require_encrypts_both_connections() {
        let target = with_sslmode("require");
        assert!(ordinary_uses_tls(&target).await);
        assert!(replication_uses_tls(&target).await);
    }

    #[tokio::test]
    async fn prefer_encrypts_where_the_server_can_and_disable_does_not() {
        let target = PgTarget::parse(DEFAULT_PG_URL).expect("parses");
        assert!(ordinary_uses_tls(&target).await);
        assert!(replication_uses_tls(&target).await);
        let target = with_sslmode("disable");
        assert!(!ordinary_uses_tls(&target).await);
        assert!(!replication_uses_tls(&target).await);
    }

    /// The certificate file the local server presents (Debian's self-signed snakeoil).
    async fn server_cert_file() -> String {
        let pg = with_sslmode("require").sql().await.expect("ordinary connection");
        pg.query_one("SHOW ssl_cert_file", &[])
            .await
            .expect("ssl_cert_file")
            .get(0)
    }

    fn with_params(host: &str, params: &str) -> PgTarget {
        let url = DEFAULT_PG_URL.replace("127.0.0.1", host);
        PgTarget::parse(&format!("{url}?{params}")).expect("parses")
    }

    #[tokio::test]
    async fn verify_full_refuses_a_certificate_from_an_untrusted_issuer() {
        // The public CA bundle does not hold the self-signed certificate.
        let target = with_params(
            "127.0.0.1",
            "sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt",
        );
        let ordinary = target.sql().await.expect_err("unverifiable").to_string();
        let replication = target.replication().await.err().expect("unverifiable").to_string();
        for e in [ordinary, replication] {
            assert!(
                e.starts_with("the certificate of PostgreSQL at 127.0.0.1:5432 fails verification"),
                "{e}"
            );
            assert!(e.contains("sslrootcert=") && e.contains("sslmode=require"), "{e}");
        }
    }

    #[tokio::test]
    async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
        let root = server_cert_file().await;
        let by_address = with_params("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={root}"));
        let ordinary = by_address.sql().await.expect_err("wrong name").to_string();
        let replication = by_address.replication().await.err().expect("wrong name").to_string();
        for e in [ordinary, replication] {
            assert!(
                e.starts_with("the certificate of PostgreSQL at 127.0.0.1:5432 does not name that host"),
                "{e}"
            );
            assert!(e.contains("sslmode=verify-ca"), "{e}");
        }
        // The snakeoil certificate names localhost.
        let by_name = with_params("localhost", &format!("sslmode=verify-full&sslrootcert={root}"));
        assert!(ordinary_uses_tls(&by_name).await);
        assert!(replication_uses_tls(&by_name).await);
        let chain_only = with_params("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={root}"));
        assert!(ordinary_uses_tls(&chain_only).await);
        assert!(replication_uses_tls(&chain_only).await);
    }

    #[tokio::test]
    async fn require_refuses_a_server_without_tls() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A server that answers every SSLRequest with 'N'.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 8];
                if socket.read_exact(&mut request).await.is_ok() {
                    let _ = socket.write_all(b"N").await;
                }
            }
        });
        let target = PgTarget::parse(&format!("postgres://u:p@127.0.0.1:{port}/d?sslmode=require")).expect("parses");
        let ordinary = target.sql().await.expect_err("refused").to_string();
        let replication = target.replication().await.err().expect("refused").to_string();
        for e in [ordinary, replication] {
            assert!(
                e.starts_with(&format!(
                    "PostgreSQL at 127.0.0.1:{port} does not accept TLS, but --pg-url asks for sslmode=require;"
                )),
                "{e}"
            );
        }
    }
}
