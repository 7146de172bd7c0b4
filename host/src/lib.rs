//! wasmcdc: change-data-capture from PostgreSQL to MariaDB through sandboxed
//! WebAssembly transforms. The modules follow the data's path.

pub mod change;
pub mod transform;
