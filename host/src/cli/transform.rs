//! `wasmcdc transform test` and `wasmcdc transform check`: transform components offline.

use std::collections::HashMap;

use super::{Error, TransformCommand};
use crate::config::Settings;
use crate::source::PgTarget;
use crate::transform::{TypeOids, guest_code};

pub(super) async fn execute(
    command: TransformCommand,
    settings: &Settings,
    catalog: Option<String>,
) -> Result<(), Error> {
    let config = settings.transform_config.clone();
    let limits = settings.transform_limits();
    let types = match (&command, catalog) {
        (TransformCommand::Test { .. }, Some(url)) => {
            let target = PgTarget::parse(&url)?;
            Some(CatalogTypes {
                client: target.sql().await?,
                runtime: tokio::runtime::Handle::current(),
                known: HashMap::new(),
            })
        }
        _ => None,
    };
    // Reading stdin and running guests block: off the async threads, so SIGTERM is still heard.
    let work = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        match command {
            TransformCommand::Test { modules } => {
                let stdin = std::io::stdin().lock();
                let stdout = std::io::stdout().lock();
                let mut types = types;
                guest_code(|| {
                    crate::transform::run_test(
                        &modules,
                        &config,
                        limits,
                        stdin,
                        stdout,
                        types.as_mut().map(|t| t as &mut dyn TypeOids),
                    )
                })?;
            }
            TransformCommand::Check { module } => println!("{}", guest_code(|| crate::transform::check(&module))?),
        }
        Ok(())
    });
    work.await
        .map_err(|e| Error::Other(format!("the transform stopped unexpectedly: {e}")))?
}

/// Type names looked up in the source's catalog, each once.
struct CatalogTypes {
    client: tokio_postgres::Client,
    runtime: tokio::runtime::Handle,
    known: HashMap<String, u32>,
}

impl TypeOids for CatalogTypes {
    fn oid(&mut self, name: &str) -> Result<u32, String> {
        if let Some(oid) = self.known.get(name) {
            return Ok(*oid);
        }
        // Called on a blocking thread: waiting for the query here holds up no async work.
        let row = self
            .runtime
            .block_on(self.client.query_one("SELECT $1::text::regtype::oid", &[&name]))
            .map_err(|e| match e.as_db_error() {
                Some(db) => format!("the catalog does not know the type '{name}' ({})", db.message()),
                None => format!("the type '{name}' could not be looked up in the catalog ({e})"),
            })?;
        let oid: u32 = row.get(0);
        self.known.insert(name.to_owned(), oid);
        Ok(oid)
    }
}
