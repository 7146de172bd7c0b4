//! Masks chosen columns of every change: replaces each value with the hex
//! SHA-256 of it (`mode=hash`, the default) or with `***` (`mode=redact`).
//!
//! Configuration:
//! - `columns=a,b`: the columns to mask (required).
//! - `mode=hash|redact`: how to mask them; `hash` by default.
//! - `length=N`: keep only the first N hex digits of a hash (1 to 64), so that
//!   it fits a narrow target column such as `VARCHAR(60)`.
//!
//! Only the row's new values are masked, never its key: the key is how the
//! target finds the row to update or delete. Masking a primary-key column
//! through `columns` makes later updates and deletes of that row unmatchable.

use sha2::{Digest, Sha256};

use wasmcdc_guest::{Change, Config, Transform, TxContext, Value};

impl Transform for Mask {
    fn init(config: Config) -> Result<Self, String> {
        Mask::parse(&config)
    }

    fn transform(&self, change: Change, _ctx: &TxContext) -> Result<Vec<Change>, String> {
        Ok(vec![self.apply(change)])
    }
}

wasmcdc_guest::export!(Mask);

/// How a masked value is replaced.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// The hex SHA-256 of the value, possibly shortened.
    Hash { length: usize },
    /// `***` for text values, NULL for any other type.
    Redact,
}

/// Which columns to mask and how.
#[derive(Debug, PartialEq)]
struct Mask {
    columns: Vec<String>,
    mode: Mode,
}

impl Mask {
    /// Reads `columns`, `mode` and `length`; anything else is refused.
    fn parse(config: &Config) -> Result<Self, String> {
        config.only(&["columns", "mode", "length"])?;
        let columns = config
            .list("columns")
            .filter(|c| !c.is_empty())
            .ok_or("set columns to the comma-separated columns to mask, for example columns=details")?;
        let mode = config.get("mode").unwrap_or("hash");
        let length = config.get("length");
        let mode = match (mode, length) {
            ("hash", None) => Mode::Hash { length: 64 },
            ("hash", Some(text)) => match text.parse::<usize>() {
                Ok(length @ 1..=64) => Mode::Hash { length },
                _ => return Err(format!("length '{text}' is not a number from 1 to 64")),
            },
            ("redact", None) => Mode::Redact,
            ("redact", Some(_)) => return Err("length applies only to mode=hash".to_owned()),
            (other, _) => return Err(format!("mode '{other}' is not hash or redact")),
        };
        Ok(Self { columns, mode })
    }

    /// Masks the chosen columns among the row's new values; the key is left alone.
    fn apply(&self, mut change: Change) -> Change {
        for column in &self.columns {
            if let Some(slot) = change.get_mut(column) {
                let value = std::mem::replace(slot, Value::Null);
                *slot = self.mode.mask(value);
            }
        }
        change
    }
}

impl Mode {
    /// The masked form of one value. NULL stays NULL, and an unchanged TOAST
    /// value stays unchanged: the target already holds its masked form.
    fn mask(self, value: Value) -> Value {
        if matches!(value, Value::Null | Value::UnchangedToast) {
            return value;
        }
        match self {
            Mode::Hash { length } => {
                let mut hex = hex::encode(Sha256::digest(bytes_of(&value)));
                hex.truncate(length);
                Value::Text(hex)
            }
            Mode::Redact if matches!(value, Value::Text(_)) => Value::Text("***".to_owned()),
            Mode::Redact => Value::Null,
        }
    }
}

/// What gets hashed: the raw bytes of `bytea`, the UTF-8 text form of anything else.
fn bytes_of(value: &Value) -> Vec<u8> {
    let text = match value {
        Value::Bytes(bytes) => return bytes.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Numeric(s)
        | Value::Text(s)
        | Value::Json(s)
        | Value::Date(s)
        | Value::Time(s)
        | Value::Timestamp(s)
        | Value::Timestamptz(s) => s.clone(),
        Value::Null | Value::UnchangedToast => String::new(),
    };
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcdc_guest::Column;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::named(
            "mask-columns",
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        )
    }

    fn column(name: &str, value: Value) -> Column {
        Column::new(name, "text", value)
    }

    fn update(columns: Vec<Column>) -> Change {
        Change::update(
            "public",
            "itrequests",
            columns,
            vec![column("details", Value::Text("key stays".into()))],
        )
    }

    fn text<'a>(change: &'a Change, column: &str) -> &'a str {
        match change.get(column) {
            Some(Value::Text(s)) => s,
            other => panic!("{column} is not text: {other:?}"),
        }
    }

    fn key_text<'a>(change: &'a Change, column: &str) -> &'a str {
        match change.get_key(column) {
            Some(Value::Text(s)) => s,
            other => panic!("key {column} is not text: {other:?}"),
        }
    }

    #[test]
    fn hashes_text_as_sha256_hex_and_leaves_the_key_alone() {
        let mask = Mask::parse(&config(&[("columns", "details")])).expect("config");
        let out = mask.apply(update(vec![
            column("details", Value::Text("abc".into())),
            column("other", Value::Text("abc".into())),
        ]));
        assert_eq!(
            text(&out, "details"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(text(&out, "other"), "abc");
        assert_eq!(key_text(&out, "details"), "key stays");
    }

    #[test]
    fn hashes_other_types_by_their_text_and_bytes_as_they_are() {
        let mask = Mask::parse(&config(&[("columns", "n, b"), ("length", "8")])).expect("config");
        let out = mask.apply(update(vec![
            column("n", Value::Int(42)),
            column("b", Value::Bytes(b"abc".to_vec())),
        ]));
        // sha256("42") and sha256(b"abc"), first 8 hex digits.
        assert_eq!(text(&out, "n"), "73475cb4");
        assert_eq!(text(&out, "b"), "ba7816bf");
    }

    #[test]
    fn redacts_text_to_stars_and_other_types_to_null() {
        let mask = Mask::parse(&config(&[("columns", "t,n"), ("mode", "redact")])).expect("config");
        let out = mask.apply(update(vec![
            column("t", Value::Text("secret".into())),
            column("n", Value::Int(7)),
        ]));
        assert_eq!(text(&out, "t"), "***");
        assert_eq!(out.get("n"), Some(&Value::Null));
    }

    #[test]
    fn null_and_unchanged_toast_stay_as_they_are() {
        let mask = Mask::parse(&config(&[("columns", "a,b")])).expect("config");
        let out = mask.apply(update(vec![
            column("a", Value::Null),
            column("b", Value::UnchangedToast),
        ]));
        assert_eq!(out.get("a"), Some(&Value::Null));
        assert_eq!(out.get("b"), Some(&Value::UnchangedToast));
    }

    #[test]
    fn refuses_a_configuration_it_cannot_follow() {
        for bad in [
            config(&[]),
            config(&[("columns", " , ")]),
            config(&[("columns", "a"), ("mode", "scramble")]),
            config(&[("columns", "a"), ("length", "65")]),
            config(&[("columns", "a"), ("mode", "redact"), ("length", "8")]),
            config(&[("columns", "a"), ("colums", "b")]),
        ] {
            assert!(Mask::parse(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Mask::parse(&config(&[("columns", "a"), ("mode", "redact")])),
            Ok(Mask {
                columns: vec!["a".into()],
                mode: Mode::Redact
            })
        );
    }
}
