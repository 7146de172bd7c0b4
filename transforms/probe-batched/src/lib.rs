//! A transform on the batched world that misbehaves on request, to test how
//! the host isolates one change of a batch. The change's table name picks the
//! behaviour; any other table passes through, and `upper` upper-cases every
//! text value in place.

use wasmcdc_guest::{Change, Config, Transform, TxContext, Value};

struct Probe;

impl Transform for Probe {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Probe)
    }

    fn transform(&self, mut change: Change, _ctx: &TxContext) -> Result<Vec<Change>, String> {
        match change.table() {
            "panic" => panic!("panicking on request"),
            "spin" => loop {
                std::hint::black_box(&change);
            },
            // A clock subscription and a blocking poll, which no epoch deadline interrupts.
            "sleep" => std::thread::sleep(std::time::Duration::from_secs(3600)),
            "reject" => return Err("rejected on request".to_owned()),
            "drop" => return Ok(Vec::new()),
            "upper" => {
                let names: Vec<String> = change.columns().map(|(c, _)| c.name.clone()).collect();
                for name in names {
                    if let Some(Value::Text(text)) = change.get_mut(&name) {
                        *text = text.to_uppercase();
                    }
                }
            }
            _ => {}
        }
        Ok(vec![change])
    }
}

wasmcdc_guest::export!(Probe);
