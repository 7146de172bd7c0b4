//! Pipeline settings, resolved from flags, then environment, then a TOML file,
//! then the defaults that replicate the seed table.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::catalog::TableName;

/// Default `--pg-url`.
pub const DEFAULT_PG_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/requests";
/// Default `--amqp-url`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default `--mariadb-url`.
pub const DEFAULT_MARIADB_URL: &str = "mysql://mariadb:mariadb@127.0.0.1:3306/requests";
/// Default `--slot`: the pipeline's name.
pub const DEFAULT_SLOT: &str = "wasmcdc";
/// Default `--tables`.
pub const DEFAULT_TABLES: &str = "public.itrequests";
/// Default `--metrics-addr`.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read or parsed.
    #[error("cannot use config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `--tables` entry is not `schema.table`.
    #[error(
        "'{0}' in --tables is not a table name; use schema.table, separated by commas, with a name that holds dots, commas or quotes in double quotes as in psql: public.\"Order Items\""
    )]
    BadTable(String),
    /// A slot name PostgreSQL would refuse.
    #[error("--slot '{0}' is not a valid slot name; use 1 to 63 lower-case letters, digits and underscores")]
    BadSlot(String),
    /// A `--metrics-addr` that is neither `HOST:PORT` nor `off`.
    #[error("--metrics-addr '{0}' is not an address to listen on; use IP:PORT such as 127.0.0.1:9464, or off")]
    BadMetricsAddr(String),
}

/// The keys a `--config` TOML file may set; the same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// PostgreSQL URL.
    pub pg_url: Option<String>,
    /// RabbitMQ URL.
    pub amqp_url: Option<String>,
    /// MariaDB URL.
    pub mariadb_url: Option<String>,
    /// Pipeline name.
    pub slot: Option<String>,
    /// Tables, as a list or a comma-separated string.
    pub tables: Option<StringOrList>,
    /// Transform modules in chain order.
    pub transform: Option<StringOrList>,
    /// Transform settings, `MODULE.KEY=VALUE`, as a list.
    pub transform_config: Option<StringOrList>,
    /// Where to serve metrics, probes and the status page, or `off`.
    pub metrics_addr: Option<String>,
}

/// A TOML value given either as `"a,b"` or as `["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// One string.
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

impl FileConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |reason: String| ConfigError::File {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        toml::from_str(&text).map_err(|e| fail(e.to_string()))
    }
}

/// Everything a pipeline needs to know, fully resolved.
#[derive(Clone, Debug)]
pub struct Settings {
    /// PostgreSQL URL.
    pub pg_url: String,
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// MariaDB URL.
    pub mariadb_url: String,
    /// Pipeline (and slot) name.
    pub slot: String,
    /// Source tables.
    pub tables: Vec<TableName>,
    /// Transform modules in chain order.
    pub transforms: Vec<PathBuf>,
    /// Transform settings, `MODULE.KEY=VALUE`.
    pub transform_config: Vec<String>,
    /// Where to serve metrics, probes and the status page; `None` when `off`.
    pub metrics_addr: Option<SocketAddr>,
}

/// Values given on the command line or in the environment (clap merges those two).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--pg-url`.
    pub pg_url: Option<String>,
    /// `--amqp-url`.
    pub amqp_url: Option<String>,
    /// `--mariadb-url`.
    pub mariadb_url: Option<String>,
    /// `--slot`.
    pub slot: Option<String>,
    /// `--tables`.
    pub tables: Option<String>,
    /// `--transform`, repeated.
    pub transforms: Vec<PathBuf>,
    /// `--transform-config`, repeated.
    pub transform_config: Vec<String>,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<String>,
}

impl Settings {
    /// Resolves flags and environment over the file over the defaults.
    pub fn resolve(o: Overrides) -> Result<Self, ConfigError> {
        let file = match &o.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let tables_text = match (o.tables, file.tables) {
            (Some(t), _) => t,
            (None, Some(t)) => t.into_vec().join(","),
            (None, None) => DEFAULT_TABLES.to_owned(),
        };
        let tables = TableName::parse_list(&tables_text).map_err(ConfigError::BadTable)?;
        if tables.is_empty() {
            return Err(ConfigError::BadTable(tables_text));
        }
        let transforms = if o.transforms.is_empty() {
            file.transform
                .map(|t| t.into_vec().into_iter().map(PathBuf::from).collect())
                .unwrap_or_default()
        } else {
            o.transforms
        };
        let transform_config = if o.transform_config.is_empty() {
            file.transform_config.map(StringOrList::into_vec).unwrap_or_default()
        } else {
            o.transform_config
        };
        let slot = o.slot.or(file.slot).unwrap_or_else(|| DEFAULT_SLOT.to_owned());
        let valid_slot = !slot.is_empty()
            && slot.len() <= 63
            && slot
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_slot {
            return Err(ConfigError::BadSlot(slot));
        }
        Ok(Settings {
            pg_url: o.pg_url.or(file.pg_url).unwrap_or_else(|| DEFAULT_PG_URL.to_owned()),
            amqp_url: o
                .amqp_url
                .or(file.amqp_url)
                .unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned()),
            mariadb_url: o
                .mariadb_url
                .or(file.mariadb_url)
                .unwrap_or_else(|| DEFAULT_MARIADB_URL.to_owned()),
            slot,
            tables,
            transforms,
            transform_config,
            metrics_addr: metrics_addr(o.metrics_addr.or(file.metrics_addr))?,
        })
    }
}

/// `--metrics-addr`: `off`, or an address to listen on (a host name is resolved once, here).
fn metrics_addr(given: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
    let text = given.unwrap_or_else(|| DEFAULT_METRICS_ADDR.to_owned());
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match text.trim().to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Ok(Some(addr)),
        _ => Err(ConfigError::BadMetricsAddr(text)),
    }
}

/// The URL with its password replaced by `***`, for logs and messages.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &rest[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgres://postgres:secret@127.0.0.1:5432/requests"),
            "postgres://postgres:***@127.0.0.1:5432/requests"
        );
        assert_eq!(mask_url("amqp://127.0.0.1:5672/%2f"), "amqp://127.0.0.1:5672/%2f");
        assert_eq!(mask_url("mysql://u@h/db"), "mysql://u@h/db");
    }

    #[test]
    fn defaults_replicate_the_seed() {
        let s = Settings::resolve(Overrides::default()).expect("defaults");
        assert_eq!(s.slot, "wasmcdc");
        assert_eq!(s.tables, vec![TableName::parse("public.itrequests").expect("valid")]);
        assert!(s.transforms.is_empty());
        assert_eq!(s.metrics_addr, Some(SocketAddr::from(([127, 0, 0, 1], 9464))));
    }

    #[test]
    fn metrics_addr_is_an_address_or_off() {
        let with = |a: &str| {
            Settings::resolve(Overrides {
                metrics_addr: Some(a.into()),
                ..Default::default()
            })
        };
        assert_eq!(with("off").expect("off").metrics_addr, None);
        assert_eq!(
            with("0.0.0.0:9500").expect("address").metrics_addr,
            Some(SocketAddr::from(([0, 0, 0, 0], 9500)))
        );
        assert!(matches!(with("9464"), Err(ConfigError::BadMetricsAddr(_))));
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("wasmcdc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "slot = \"from_file\"\ntables = [\"a\", \"s.b\"]\ntransform-config = [\"rename.table=t\", \"rename.column.a=b\"]\n",
        )
        .expect("write");
        let s = Settings::resolve(Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect("file");
        assert_eq!(s.slot, "from_file");
        assert_eq!(s.tables.len(), 2);
        assert_eq!(s.transform_config, ["rename.table=t", "rename.column.a=b"]);
        let s = Settings::resolve(Overrides {
            config: Some(path),
            slot: Some("from_flag".into()),
            ..Default::default()
        })
        .expect("flag");
        assert_eq!(s.slot, "from_flag");
        assert!(
            Settings::resolve(Overrides {
                slot: Some("Bad-Name".into()),
                ..Default::default()
            })
            .is_err()
        );
    }
}
