//! wasmcdc: change-data-capture from PostgreSQL to MariaDB through sandboxed
//! WebAssembly transforms. The modules follow the data's path.

pub mod config;
pub mod change;
pub mod catalog;
pub mod source;
pub mod snapshot;
pub mod transform;
pub mod queue;
pub mod capture;
pub mod apply;
pub mod verify;
pub mod cli;
