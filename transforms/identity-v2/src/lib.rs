//! Identity on the `wasmcdc:transform@0.2.0` world (`wit/v0.2`), on its raw
//! bindings: every row's values cross into the call, and every row is kept.
//! The host's tests use it to keep that world working, and the transform
//! benchmark sets it beside `identity` on `@0.3.0`, whose rows cross unread.

// The generated bindings flatten a row list and its return area into many core-wasm parameters.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ path: "../../wit/v0.2", world: "transformer" });

struct Identity;

impl Guest for Identity {
    fn init(_config: Vec<(String, String)>) -> Result<Vec<Target>, String> {
        Ok(Vec::new())
    }

    fn transform(_tables: Vec<Table>, rows: Vec<Row>, _ctx: TxContext) -> Vec<Outcome> {
        rows.iter().map(|_| Outcome::Keep).collect()
    }
}

export!(Identity);
