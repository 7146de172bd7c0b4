//! Pipeline settings: every setting once, in [`Settings`], resolved from flags,
//! then the environment, then a TOML file, then the defaults that replicate
//! the seed table.
//!
//! A setting is a field of [`Settings`]. Its key in the file is the field's
//! name in kebab-case (`batch_changes` is `batch-changes`), its environment
//! variable is `WASMCDC_` and the field's name in upper case
//! (`WASMCDC_BATCH_CHANGES`), and its default is in `Settings::default`. A
//! setting that also has a flag is read from its flag, and from the flag's
//! environment variable, by clap; the others are read from the environment here.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::apply::ApplyOptions;
use crate::catalog::TableName;
use crate::pipeline::supervise::{Backoff, FIRST_DELAY, LONGEST_DELAY};
use crate::queue::batcher::Limits;
use crate::queue::capture::CaptureOptions;
use crate::transform;

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
/// The prefix of every setting's environment variable.
pub const ENV_PREFIX: &str = "WASMCDC_";

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
    /// The config file sets a key that is not a setting.
    #[error(
        "cannot use config file {path}: unknown key '{key}'; the keys are those of wasmcdc.example.toml and of `wasmcdc config print`"
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// An environment variable holds a value its setting cannot take.
    #[error("cannot use environment variable {var}: {reason}")]
    Env {
        /// The variable, as in `WASMCDC_PREFETCH`.
        var: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--tables` entry is not `schema.table`.
    #[error(
        "'{0}' in --tables is not a table name; use schema.table, separated by commas, with a name that holds dots, commas or quotes in double quotes as in psql: public.\"Order Items\""
    )]
    BadTable(String),
    /// A `--metrics-addr` that is neither `IP:PORT` nor `off`.
    #[error("--metrics-addr '{0}' is not an address to listen on; use IP:PORT such as 127.0.0.1:9464, or off")]
    BadMetricsAddr(String),
    /// A slot name PostgreSQL would refuse.
    #[error("--slot '{0}' is not a valid slot name; use 1 to 63 lower-case letters, digits and underscores")]
    BadSlot(String),
    /// A number outside the range its setting allows.
    #[error("{key} = {value} is out of range; set it to a value from {min} to {max}")]
    OutOfRange {
        /// The key, as in `prefetch`.
        key: &'static str,
        /// The value given.
        value: u64,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// Anything else a setting's value or the printing of the settings ran into.
    #[error("the settings cannot be used: {0}")]
    Other(String),
}

/// Every setting of a pipeline, fully resolved. See the module documentation
/// for how a field becomes a key, an environment variable and a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Settings {
    /// PostgreSQL URL (the source database).
    pub pg_url: String,
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// MariaDB URL (the target database).
    pub mariadb_url: String,
    /// The pipeline's name: its replication slot, broker objects and offsets row.
    pub slot: String,
    /// Source tables, as a list or a comma-separated string.
    #[serde(with = "table_list")]
    pub tables: Vec<TableName>,
    /// Transform modules in chain order (`PATH` or `SCHEMA.TABLE=PATH`), as a list or a comma-separated string.
    #[serde(rename = "transform", with = "path_list")]
    pub transforms: Vec<PathBuf>,
    /// Transform settings, `MODULE.KEY=VALUE`, as a list (a string is one entry).
    #[serde(with = "string_list")]
    pub transform_config: Vec<String>,
    /// Capture: publish a batch of small transactions once it holds this many changes.
    pub batch_changes: usize,
    /// Capture: split a large transaction into chunks of at most this many changes.
    pub chunk_changes: usize,
    /// Capture: keep a message under about this many bytes (a single larger change travels alone).
    pub message_bytes: usize,
    /// Capture: publish a batch at the latest this many milliseconds after its first transaction.
    pub linger_ms: u64,
    /// Capture: messages awaiting RabbitMQ's publisher confirm at once.
    pub max_in_flight: usize,
    /// Apply: unacknowledged messages RabbitMQ may hand over at once.
    pub prefetch: u32,
    /// Apply: commit a MariaDB transaction once its group holds this many changes.
    pub group_changes: usize,
    /// Apply: commit once the group's messages hold this many bytes.
    pub group_bytes: usize,
    /// Apply: commit once no message has arrived for this many milliseconds.
    pub group_linger_ms: u64,
    /// Retry: the first delay after a stage fails, in milliseconds; it doubles on each failure.
    pub backoff_initial_ms: u64,
    /// Retry: the longest delay between retries, in milliseconds.
    pub backoff_max_ms: u64,
    /// Transforms: linear memory per guest instance, in MiB.
    pub transform_memory_mib: usize,
    /// Transforms: the deadline of a guest call carrying one change, in milliseconds (a batch gets 1 ms more per further change).
    pub transform_call_ms: u64,
    /// Transforms: guest stdout and stderr kept per stream and call, in KiB; the rest is dropped.
    pub transform_output_kib: usize,
    /// Transforms: changes given to a module in one call.
    pub transform_batch: usize,
    /// Transforms: changes one change may become; more is a runaway module, and the change is dead-lettered.
    pub transform_result_changes: usize,
    /// Transforms: MiB of text and binary values one change may become.
    pub transform_result_mib: usize,
    /// Where `run`, `capture` and `apply` serve metrics, probes and the status page (`IP:PORT`), or `off`.
    pub metrics_addr: String,
}

impl Default for Settings {
    fn default() -> Self {
        let capture = CaptureOptions::default();
        let apply = ApplyOptions::default();
        let guest = transform::Limits::default();
        Settings {
            pg_url: DEFAULT_PG_URL.to_owned(),
            amqp_url: DEFAULT_AMQP_URL.to_owned(),
            mariadb_url: DEFAULT_MARIADB_URL.to_owned(),
            slot: DEFAULT_SLOT.to_owned(),
            tables: TableName::parse_list(DEFAULT_TABLES).unwrap_or_default(),
            transforms: Vec::new(),
            transform_config: Vec::new(),
            metrics_addr: DEFAULT_METRICS_ADDR.to_owned(),
            batch_changes: capture.limits.batch_changes,
            chunk_changes: capture.limits.chunk_changes,
            message_bytes: capture.limits.message_bytes,
            linger_ms: millis(capture.limits.linger),
            max_in_flight: capture.max_in_flight,
            prefetch: apply.prefetch.into(),
            group_changes: apply.group_changes,
            group_bytes: apply.group_bytes,
            group_linger_ms: millis(apply.linger),
            backoff_initial_ms: millis(FIRST_DELAY),
            backoff_max_ms: millis(LONGEST_DELAY),
            transform_memory_mib: guest.memory_bytes >> 20,
            transform_call_ms: millis(guest.call),
            transform_output_kib: guest.output_bytes >> 10,
            transform_batch: guest.batch,
            transform_result_changes: guest.result_changes,
            transform_result_mib: guest.result_bytes >> 20,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

const MIB: u64 = 1 << 20;
const HOUR_MS: u64 = 3_600_000;

impl Settings {
    /// Resolves the layers: `flags` (what was given on the command line, or in
    /// the environment variable of a flag, serialized with the keys' names),
    /// over the `WASMCDC_*` environment of the settings that have no flag
    /// (`flag_keys` are those that do), over the TOML `file`, over the defaults.
    pub fn resolve(flags: &impl Serialize, flag_keys: &[String], file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            figment = figment.merge(Toml::string(&text));
        }
        let from_env: Vec<String> = Self::keys()
            .into_iter()
            .filter(|key| !flag_keys.contains(key))
            .collect();
        let env = Env::prefixed(ENV_PREFIX)
            .map(|name| name.as_str().replace('_', "-").into())
            .filter(move |key| from_env.iter().any(|k| k.eq_ignore_ascii_case(key.as_str())));
        let settings: Settings = figment
            .merge(env)
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|e| layer_error(e, file))?;
        settings.check()?;
        Ok(settings)
    }

    /// Every key, in the order of the fields.
    pub fn keys() -> Vec<String> {
        match toml::Table::try_from(Settings::default()) {
            Ok(table) => table.keys().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The environment variable of `key`, as in `WASMCDC_BATCH_CHANGES` for `batch-changes`.
    pub fn env_var(key: &str) -> String {
        format!("{ENV_PREFIX}{}", key.to_uppercase().replace('-', "_"))
    }

    /// The address to serve metrics on; `None` when `metrics-addr` is `off`
    /// (a host name is resolved here).
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        let text = self.metrics_addr.trim();
        if text.eq_ignore_ascii_case("off") {
            return None;
        }
        text.to_socket_addrs().ok()?.next()
    }

    /// Refuses a slot name PostgreSQL would not take and numbers out of their range.
    fn check(&self) -> Result<(), ConfigError> {
        let slot = &self.slot;
        let valid_slot = !slot.is_empty()
            && slot.len() <= 63
            && slot
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_slot {
            return Err(ConfigError::BadSlot(slot.clone()));
        }
        if !self.metrics_addr.trim().eq_ignore_ascii_case("off") && self.metrics_listen().is_none() {
            return Err(ConfigError::BadMetricsAddr(self.metrics_addr.clone()));
        }
        let n = |v: usize| v as u64;
        let ranges: [(&'static str, u64, u64, u64); 17] = [
            ("batch-changes", n(self.batch_changes), 1, 1_000_000),
            ("chunk-changes", n(self.chunk_changes), 1, 1_000_000),
            ("message-bytes", n(self.message_bytes), 1024, 128 * MIB),
            ("linger-ms", self.linger_ms, 0, 60_000),
            ("max-in-flight", n(self.max_in_flight), 1, 65_535),
            ("prefetch", self.prefetch.into(), 1, 65_535),
            ("group-changes", n(self.group_changes), 1, 10_000_000),
            ("group-bytes", n(self.group_bytes), 1024, 1024 * MIB),
            ("group-linger-ms", self.group_linger_ms, 0, 60_000),
            ("backoff-initial-ms", self.backoff_initial_ms, 1, HOUR_MS),
            ("backoff-max-ms", self.backoff_max_ms, self.backoff_initial_ms, HOUR_MS),
            ("transform-memory-mib", n(self.transform_memory_mib), 1, 4096),
            ("transform-call-ms", self.transform_call_ms, 10, 60_000),
            ("transform-output-kib", n(self.transform_output_kib), 1, 16_384),
            ("transform-batch", n(self.transform_batch), 1, 65_536),
            (
                "transform-result-changes",
                n(self.transform_result_changes),
                1,
                10_000_000,
            ),
            ("transform-result-mib", n(self.transform_result_mib), 1, 4096),
        ];
        match ranges.into_iter().find(|(_, v, min, max)| v < min || v > max) {
            Some((key, value, min, max)) => Err(ConfigError::OutOfRange { key, value, min, max }),
            None => Ok(()),
        }
    }

    /// The capture's message limits and publisher confirms in flight.
    pub fn capture_options(&self) -> CaptureOptions {
        CaptureOptions {
            limits: Limits {
                batch_changes: self.batch_changes,
                chunk_changes: self.chunk_changes,
                message_bytes: self.message_bytes,
                linger: Duration::from_millis(self.linger_ms),
                ..Limits::default()
            },
            max_in_flight: self.max_in_flight,
        }
    }

    /// The apply's prefetch and group bounds.
    pub fn apply_options(&self) -> ApplyOptions {
        ApplyOptions {
            prefetch: u16::try_from(self.prefetch).unwrap_or(u16::MAX),
            group_changes: self.group_changes,
            group_bytes: self.group_bytes,
            linger: Duration::from_millis(self.group_linger_ms),
            ..ApplyOptions::default()
        }
    }

    /// The retry delays of a long-running stage.
    pub fn backoff(&self) -> Backoff {
        Backoff::with_delays(
            Duration::from_millis(self.backoff_initial_ms),
            Duration::from_millis(self.backoff_max_ms),
        )
    }

    /// What each transform guest may use.
    pub fn transform_limits(&self) -> transform::Limits {
        transform::Limits {
            memory_bytes: self.transform_memory_mib << 20,
            call: Duration::from_millis(self.transform_call_ms),
            output_bytes: self.transform_output_kib << 10,
            batch: self.transform_batch,
            result_changes: self.transform_result_changes,
            result_bytes: self.transform_result_mib << 20,
        }
    }

    /// The settings as TOML that `--config` reads back, with the URLs' passwords masked.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let masked = Settings {
            pg_url: mask_url(&self.pg_url),
            amqp_url: mask_url(&self.amqp_url),
            mariadb_url: mask_url(&self.mariadb_url),
            ..self.clone()
        };
        toml::to_string(&masked).map_err(|e| ConfigError::Other(e.to_string()))
    }
}

/// Says which layer a value that cannot be used came from.
fn layer_error(e: figment::Error, file: Option<&Path>) -> ConfigError {
    let key = e.path.join(".");
    let from_file = e.metadata.as_ref().is_some_and(|m| m.name.starts_with(Toml::NAME));
    let from_env = e.metadata.as_ref().is_some_and(|m| m.name.contains("environment"));
    match (e.kind, file) {
        (Kind::UnknownField(key, _), Some(path)) => ConfigError::UnknownKey {
            path: path.to_owned(),
            key,
        },
        // Only a table list that does not parse says just the entry it stopped at.
        (Kind::Message(entry), _) if key == "tables" => ConfigError::BadTable(entry),
        (kind, Some(path)) if from_file => ConfigError::File {
            path: path.to_owned(),
            reason: if key.is_empty() {
                one_line(&kind.to_string())
            } else {
                format!("{kind} for key '{key}'")
            },
        },
        (kind, _) if from_env => ConfigError::Env {
            var: Settings::env_var(&key),
            reason: kind.to_string(),
        },
        (kind, _) => ConfigError::Other(format!("{key}: {kind}")),
    }
}

/// A TOML parse error, which quotes the line it points at, as one line:
/// where it is and what is wrong.
fn one_line(message: &str) -> String {
    let mut parts = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('|'));
    let place = parts.next().unwrap_or_default().to_owned();
    let what: Vec<&str> = parts.collect();
    if what.is_empty() {
        place
    } else {
        format!("{place}: {}", what.join("; "))
    }
}

/// A value given either as `"a,b"` or as `["a", "b"]`.
#[derive(Debug)]
pub enum StringOrList {
    /// One string.
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = StringOrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringOrList, E> {
                Ok(StringOrList::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringOrList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(StringOrList::Many(items))
            }
        }
        deserializer.deserialize_any(Either)
    }
}

fn serialize_strings<S: Serializer, T: fmt::Display>(items: &[T], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(items.iter().map(ToString::to_string))
}

/// `tables`: entries parsed as `--tables` parses them.
mod table_list {
    use super::*;

    pub fn serialize<S: Serializer>(tables: &[TableName], serializer: S) -> Result<S::Ok, S::Error> {
        serialize_strings(tables, serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<TableName>, D::Error> {
        let text = match StringOrList::deserialize(deserializer)? {
            StringOrList::One(text) => text,
            StringOrList::Many(list) => list.join(","),
        };
        // The error is the entry alone: it becomes ConfigError::BadTable.
        let tables = TableName::parse_list(&text).map_err(de::Error::custom)?;
        if tables.is_empty() {
            return Err(de::Error::custom(text));
        }
        Ok(tables)
    }
}

/// `transform`: module paths, as `--transform` splits them.
mod path_list {
    use super::*;

    pub fn serialize<S: Serializer>(paths: &[PathBuf], serializer: S) -> Result<S::Ok, S::Error> {
        serialize_strings(&paths.iter().map(|p| p.display()).collect::<Vec<_>>(), serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<PathBuf>, D::Error> {
        Ok(match StringOrList::deserialize(deserializer)? {
            StringOrList::One(text) => text.split(',').filter(|p| !p.is_empty()).map(PathBuf::from).collect(),
            StringOrList::Many(list) => list.into_iter().map(PathBuf::from).collect(),
        })
    }
}

/// `transform-config`: entries whose values may hold commas, so a string is one entry.
mod string_list {
    use super::*;

    pub fn serialize<S: Serializer>(items: &[String], serializer: S) -> Result<S::Ok, S::Error> {
        serialize_strings(items, serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        Ok(match StringOrList::deserialize(deserializer)? {
            StringOrList::One(entry) => vec![entry],
            StringOrList::Many(list) => list,
        })
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
    use figment::Jail;

    /// Flags as the command line gives them: only what was given.
    #[derive(Default, Serialize)]
    #[serde(rename_all = "kebab-case")]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        slot: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tables: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        prefetch: Option<u32>,
    }

    /// The keys whose environment variables the real command line reads itself.
    fn flag_keys() -> Vec<String> {
        [
            "pg-url",
            "amqp-url",
            "mariadb-url",
            "slot",
            "tables",
            "transform",
            "transform-config",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Resolves with no variable set but the real environment's.
    fn resolve(flags: &Flags, file: Option<&Path>) -> Result<Settings, ConfigError> {
        resolve_with_env(&[], flags, file)
    }

    /// Resolves with `vars` set in the environment, inside a jail: every test
    /// that resolves holds it, so none sees another's variables.
    #[allow(
        clippy::result_large_err,
        reason = "the jail's closure returns figment's own error type"
    )]
    fn resolve_with_env(vars: &[(&str, &str)], flags: &Flags, file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut resolved = None;
        Jail::expect_with(|jail| {
            for (name, value) in vars {
                jail.set_env(name, value);
            }
            resolved = Some(Settings::resolve(flags, &flag_keys(), file));
            Ok(())
        });
        resolved.unwrap_or_else(|| Err(ConfigError::Other("the jail did not run".into())))
    }

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wasmcdc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasmcdc.example.toml")
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgres://postgres:secret@127.0.0.1:5432/requests"),
            "postgres://postgres:***@127.0.0.1:5432/requests"
        );
        assert_eq!(mask_url("amqp://127.0.0.1:5672/%2f"), "amqp://127.0.0.1:5672/%2f");
        assert_eq!(mask_url("mysql://u@h/db"), "mysql://u@h/db");
        let printed = Settings {
            pg_url: "postgres://me:secret@db/shop".into(),
            ..Settings::default()
        }
        .to_toml()
        .expect("print");
        assert!(printed.contains("pg-url = \"postgres://me:***@db/shop\""), "{printed}");
        assert!(
            printed.contains("mysql://mariadb:***@127.0.0.1:3306/requests"),
            "{printed}"
        );
        assert!(!printed.contains("secret"), "{printed}");
    }

    #[test]
    fn defaults_replicate_the_seed() {
        let s = resolve(&Flags::default(), None).expect("defaults");
        assert_eq!(s.slot, "wasmcdc");
        assert_eq!(s.tables, vec![TableName::parse("public.itrequests").expect("valid")]);
        assert!(s.transforms.is_empty());
        assert_eq!(s.transform_limits(), transform::Limits::default());
        assert_eq!(s.apply_options().prefetch, ApplyOptions::default().prefetch);
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let dir = scratch();
        let file = dir.join("layers.toml");
        std::fs::write(
            &file,
            "slot = \"from_file\"\ntables = [\"a\", \"s.b\"]\nprefetch = 11\nbatch-changes = 12\ngroup-changes = 13\ntransform-config = [\"rename.table=t\", \"rename.column.a=b\"]\n",
        )
        .expect("write");
        let env = [
            ("WASMCDC_PREFETCH", "21"),
            ("WASMCDC_BATCH_CHANGES", "22"),
            // Read by the flag, not here: a flag's own environment variable is clap's.
            ("WASMCDC_SLOT", "from_env"),
        ];
        let flags = Flags {
            prefetch: Some(31),
            ..Flags::default()
        };
        let s = resolve_with_env(&env, &flags, Some(&file)).expect("layers");
        assert_eq!(s.prefetch, 31, "the flag wins");
        assert_eq!(s.batch_changes, 22, "then the environment");
        assert_eq!((s.group_changes, s.slot.as_str()), (13, "from_file"), "then the file");
        assert_eq!(s.chunk_changes, Settings::default().chunk_changes, "then the default");
        assert_eq!(s.tables.len(), 2);
        assert_eq!(s.transform_config, ["rename.table=t", "rename.column.a=b"]);
        assert_eq!(s.apply_options().prefetch, 31);
        assert_eq!(s.capture_options().limits.batch_changes, 22);
        let flags = Flags {
            slot: Some("from_flag".into()),
            ..Flags::default()
        };
        assert_eq!(resolve(&flags, Some(&file)).expect("flag").slot, "from_flag");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let dir = scratch();
        let path = dir.join("unknown.toml");
        std::fs::write(&path, "slot = \"s\"\nprefetch-count = 5\n").expect("write");
        let err = resolve(&Flags::default(), Some(&path)).expect_err("unknown key");
        assert!(
            matches!(&err, ConfigError::UnknownKey { key, .. } if key == "prefetch-count"),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.starts_with("cannot use config file "), "{text}");
        assert!(text.contains("unknown key 'prefetch-count'"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn bad_values_get_one_sentence() {
        let bad = |flags: Flags| resolve(&flags, None).expect_err("refused").to_string();
        assert!(
            bad(Flags {
                slot: Some("Bad-Name".into()),
                ..Flags::default()
            })
            .starts_with("--slot 'Bad-Name' is not a valid slot name")
        );
        assert!(
            bad(Flags {
                tables: Some("a.b.c".into()),
                ..Flags::default()
            })
            .starts_with("'a.b.c' in --tables is not a table name")
        );
        assert_eq!(
            bad(Flags {
                prefetch: Some(0),
                ..Flags::default()
            }),
            "prefetch = 0 is out of range; set it to a value from 1 to 65535"
        );
        let err = resolve_with_env(&[("WASMCDC_TRANSFORM_CALL_MS", "soon")], &Flags::default(), None)
            .expect_err("not a number")
            .to_string();
        assert!(
            err.starts_with("cannot use environment variable WASMCDC_TRANSFORM_CALL_MS: "),
            "{err}"
        );
    }

    #[test]
    fn the_printed_settings_read_back_the_same() {
        let s = Settings {
            tables: TableName::parse_list("public.\"Order Items\",sales.*").expect("tables"),
            transforms: vec![PathBuf::from("public.orders=/m/a.wasm"), PathBuf::from("/m/b.wasm")],
            transform_config: vec!["a.columns=x,y".into()],
            prefetch: 7,
            ..Settings::default()
        };
        let dir = scratch();
        let path = dir.join("printed.toml");
        std::fs::write(&path, s.to_toml().expect("print")).expect("write");
        let read = resolve(&Flags::default(), Some(&path)).expect("read back");
        assert_eq!(read.to_toml().expect("print"), s.to_toml().expect("print"));
        assert_eq!(
            (read.tables, read.transforms, read.prefetch),
            (s.tables, s.transforms, s.prefetch)
        );
    }

    #[test]
    fn the_example_file_is_read_by_the_loader_and_holds_every_key() {
        let path = example();
        let read = resolve(&Flags::default(), Some(&path)).expect("the example file loads");
        assert_eq!(read, Settings::default(), "the example gives every default");
        let text = std::fs::read_to_string(&path).expect("read");
        let table: toml::Table = toml::from_str(&text).expect("toml");
        let mut keys: Vec<&String> = table.keys().collect();
        keys.sort();
        let mut all = Settings::keys();
        all.sort();
        assert_eq!(
            keys,
            all.iter().collect::<Vec<_>>(),
            "every key, and only keys, are in the example"
        );
        let lines: Vec<&str> = text.lines().collect();
        for key in &all {
            let at = lines
                .iter()
                .position(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("{key} is not set on a line of its own"));
            let comment: Vec<&str> = lines[..at]
                .iter()
                .rev()
                .take_while(|l| l.starts_with('#'))
                .copied()
                .collect();
            assert!(
                comment.iter().any(|l| l.contains("Default")),
                "{key} has no comment saying its default"
            );
        }
    }
}
