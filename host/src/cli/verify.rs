//! `wasmcdc verify`: compare source and target row by row.

use std::process::ExitCode;

use super::{Error, source_tables, step};
use crate::apply;
use crate::config::Settings;
use crate::progress::Progress;

pub(super) async fn run(settings: &Settings) -> Result<ExitCode, Error> {
    let (_, pg, defs) = source_tables(settings).await?;
    let pool = step("connecting to MariaDB", apply::connect(&settings.mariadb_url)).await?;
    // The comparisons have no step limit: a large table takes as long as it takes, and SIGTERM stops it.
    let mut equal = true;
    let mut progress = Progress::start("verify", "tables", Some(defs.len() as u64));
    for def in &defs {
        progress.working_on(&def.name.to_string());
        let report = crate::verify::compare(&pg, &pool, def).await.map_err(Error::Other)?;
        progress.println(&report.to_string());
        progress.advance(1);
        equal &= report.equal();
    }
    progress.finish();
    if equal {
        println!("equal: source and target hold the same rows");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("different: source and target do not hold the same rows");
        Ok(ExitCode::FAILURE)
    }
}
