//! The identity transform: every change passes through unchanged, exactly as
//! with no transform at all.

use wasmcdc_guest::{Change, Config, Transform, TxContext};

struct Identity;

impl Transform for Identity {
    /// Accepts any configuration: identity has nothing to configure.
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Identity)
    }

    fn transform(&self, change: Change, _ctx: &TxContext) -> Result<Vec<Change>, String> {
        Ok(vec![change])
    }
}

wasmcdc_guest::export!(Identity);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcdc_guest::{Column, Value};

    #[test]
    fn passes_the_change_through() {
        let change = Change::update(
            "public",
            "itrequests",
            vec![Column::new("fulfilled", "boolean", Value::Bool(true))],
            vec![Column::new("requestid", "integer", Value::Int(2))],
        );
        let out = Identity.transform(change.clone(), &TxContext::default());
        assert_eq!(out, Ok(vec![change]));
        assert_eq!(out.map(|c| c.len()), Ok(1));
    }

    #[test]
    fn accepts_any_configuration() {
        assert!(Identity::init(Config::default()).is_ok());
        assert!(Identity::init([("anything", "at all")].into_iter().collect()).is_ok());
    }
}
