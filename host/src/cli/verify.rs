//! `wasmcdc verify`: compare source and target row by row.

use std::process::ExitCode;

use super::{Error, source_tables, step};
use crate::apply;
use crate::config::Settings;

pub(super) async fn run(settings: &Settings) -> Result<ExitCode, Error> {
    let (_, pg, defs) = source_tables(settings).await?;
    let pool = step("connecting to MariaDB", apply::connect(&settings.mariadb_url)).await?;
    // The comparisons have no step limit: a large table takes as long as it takes, and SIGTERM stops it.
    let mut equal = true;
    for def in &defs {
        let report = crate::verify::compare(&pg, &pool, def).await.map_err(Error::Other)?;
        println!("{report}");
        equal &= report.equal();
    }
    if equal {
        println!("equal: source and target hold the same rows");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("different: source and target do not hold the same rows");
        Ok(ExitCode::FAILURE)
    }
}
