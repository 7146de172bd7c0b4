//! A transform on the batched world that misbehaves on request, to test how
//! the host isolates one change of a batch. The change's table name picks the
//! behaviour; any other table passes through, and `upper` upper-cases every
//! text value in place.
//!
//! `route` sends its change to table `routed`. `hold` keeps its change unread and drops it; `stale` then reads the kept
//! change, after the call that delivered it has ended, as a transform that
//! buffers changes without reading them would.

use std::cell::RefCell;

use wasmcdc_guest::{Change, Config, Transform, TxContext, Value};

struct Probe {
    held: RefCell<Option<Change>>,
}

impl Transform for Probe {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Probe {
            held: RefCell::new(None),
        })
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
            // Routed elsewhere: it crosses back whole, with its values and key read.
            "route" => change.set_table("routed"),
            "hold" => {
                self.held.replace(Some(change));
                return Ok(Vec::new());
            }
            "stale" => {
                if let Some(held) = self.held.borrow().as_ref() {
                    let _ = std::hint::black_box(held.to_columns());
                }
            }
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
