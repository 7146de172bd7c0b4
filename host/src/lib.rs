//! wasmcdc: change-data-capture from PostgreSQL to MariaDB through sandboxed
//! WebAssembly transforms. The modules follow the data's path.

pub mod apply;
pub mod catalog;
pub mod change;
pub mod cli;
pub mod config;
pub mod logs;
pub mod observe;
pub mod pipeline;
pub mod progress;
pub mod queue;
pub mod source;
pub mod transform;
pub mod verify;
