//! The identity transform: every change passes through unchanged, exactly as
//! with no transform at all.

// The generated bindings flatten a change into many core-wasm parameters.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ path: "../../wit", world: "transformer" });

struct Identity;

impl Guest for Identity {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        configure(&config)
    }

    fn transform(change: Change, _ctx: TxContext) -> Result<Vec<Change>, String> {
        Ok(pass(change))
    }
}

export!(Identity);

/// Accepts any configuration: identity has nothing to configure.
fn configure(_config: &[(String, String)]) -> Result<(), String> {
    Ok(())
}

/// Returns the change as the only result.
fn pass(change: Change) -> Vec<Change> {
    vec![change]
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcdc::transform::types::{Column, Op, Value};

    #[test]
    fn passes_the_change_through() {
        let change = Change {
            op: Op::Update,
            schema: "public".into(),
            table: "itrequests".into(),
            columns: vec![Column {
                name: "fulfilled".into(),
                pg_type: "boolean".into(),
                value: Value::Bool(true),
            }],
            key: vec![Column {
                name: "requestid".into(),
                pg_type: "integer".into(),
                value: Value::Int(2),
            }],
        };
        let out = pass(change.clone());
        assert_eq!(out.len(), 1);
        assert_eq!(format!("{:?}", out[0]), format!("{change:?}"));
    }

    #[test]
    fn accepts_any_configuration() {
        assert!(configure(&[]).is_ok());
        assert!(configure(&[("anything".into(), "at all".into())]).is_ok());
    }
}
