//! The key/value settings that `init` receives.

/// A transform's settings, in the order the host gave them.
///
/// The host passes `--transform-config MODULE.KEY=VALUE` as `KEY=VALUE`. Where
/// a key is given twice, [`Config::get`] reads the last value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    name: String,
    pairs: Vec<(String, String)>,
}

impl Config {
    /// Settings for the transform called `name` (its package name, in messages).
    pub fn named(name: &str, pairs: Vec<(String, String)>) -> Self {
        Self {
            name: name.to_owned(),
            pairs,
        }
    }

    /// The transform's package name, as messages should call it.
    pub fn name(&self) -> &str {
        if self.name.is_empty() {
            "the transform"
        } else {
            &self.name
        }
    }

    /// Every setting, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no settings.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The value of `key`, the last one if it is given more than once.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key`, which must be present and not empty.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        match self.get(key) {
            Some(value) if !value.is_empty() => Ok(value),
            Some(_) => Err(format!("{key} is empty; set {key}=VALUE")),
            None => Err(format!("{} needs {key}; set {key}=VALUE", self.name())),
        }
    }

    /// The value of `key` split at commas, each part trimmed, empty parts left
    /// out: `a, b,` gives `["a", "b"]`.
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        let value = self.get(key)?;
        Some(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// The settings whose key starts with `prefix` and goes on after it, as
    /// (rest of the key, value): `column.a=b` gives `("a", "b")` for `column.`.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.iter().filter_map(move |(k, v)| {
            k.strip_prefix(prefix)
                .filter(|rest| !rest.is_empty())
                .map(|rest| (rest, v))
        })
    }

    /// Refuses any key outside `known`, naming the first such key and the
    /// known ones, so that a misspelt setting stops the start instead of being
    /// ignored.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some((key, _)) => Err(format!(
                "unknown setting '{key}'; {} takes {}",
                self.name(),
                enumerate(known)
            )),
        }
    }
}

impl From<Vec<(String, String)>> for Config {
    fn from(pairs: Vec<(String, String)>) -> Self {
        Self::named("", pairs)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        Self::from(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect::<Vec<_>>())
    }
}

/// `a`, `a and b`, `a, b and c`; `nothing` for none.
fn enumerate(items: &[&str]) -> String {
    match items {
        [] => "nothing".to_owned(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        pairs.iter().copied().collect()
    }

    #[test]
    fn get_reads_the_last_value_of_a_key() {
        let c = config(&[("mode", "hash"), ("columns", "a"), ("mode", "redact")]);
        assert_eq!(c.get("mode"), Some("redact"));
        assert_eq!(c.get("columns"), Some("a"));
        assert_eq!(c.get("length"), None);
        assert_eq!(c.iter().count(), 3);
        assert!(!c.is_empty());
        assert!(Config::default().is_empty());
    }

    #[test]
    fn require_refuses_a_missing_or_empty_value() {
        let c = Config::named(
            "rename",
            vec![("table".into(), "t".into()), ("schema".into(), String::new())],
        );
        assert_eq!(c.require("table"), Ok("t"));
        assert_eq!(c.require("schema"), Err("schema is empty; set schema=VALUE".to_owned()));
        assert_eq!(
            c.require("column"),
            Err("rename needs column; set column=VALUE".to_owned())
        );
    }

    #[test]
    fn list_splits_at_commas_and_drops_empty_parts() {
        let c = config(&[("columns", " a, b ,,c, "), ("blank", " , ")]);
        assert_eq!(
            c.list("columns"),
            Some(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()])
        );
        assert_eq!(c.list("blank"), Some(vec![]));
        assert_eq!(c.list("missing"), None);
    }

    #[test]
    fn with_prefix_strips_the_prefix_and_skips_bare_prefixes() {
        let c = config(&[("column.a", "x"), ("table", "t"), ("column.", "y"), ("column.b", "z")]);
        let renames: Vec<_> = c.with_prefix("column.").collect();
        assert_eq!(renames, [("a", "x"), ("b", "z")]);
    }

    #[test]
    fn only_names_the_first_unknown_key_and_the_known_ones() {
        let c = Config::named(
            "mask-columns",
            vec![("columns".into(), "a".into()), ("colums".into(), "b".into())],
        );
        assert_eq!(
            c.only(&["columns", "mode", "length"]),
            Err("unknown setting 'colums'; mask-columns takes columns, mode and length".to_owned())
        );
        assert_eq!(c.only(&["columns", "colums"]), Ok(()));
        let unnamed = config(&[("x", "1")]);
        assert_eq!(
            unnamed.only(&["y"]),
            Err("unknown setting 'x'; the transform takes y".to_owned())
        );
        assert_eq!(
            unnamed.only(&[]),
            Err("unknown setting 'x'; the transform takes nothing".to_owned())
        );
    }
}
