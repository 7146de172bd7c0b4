//! `wasmcdc transform test` and `wasmcdc transform check`: transform components offline.

use super::{Error, TransformCommand};
use crate::config::Settings;
use crate::transform::guest_code;

pub(super) async fn execute(command: TransformCommand, settings: &Settings) -> Result<(), Error> {
    let config = settings.transform_config.clone();
    // Reading stdin and running guests block: off the async threads, so SIGTERM is still heard.
    let work = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        match command {
            TransformCommand::Test { modules } => {
                let stdin = std::io::stdin().lock();
                let stdout = std::io::stdout().lock();
                guest_code(|| crate::transform::run_test(&modules, &config, stdin, stdout))?;
            }
            TransformCommand::Check { module } => println!("{}", guest_code(|| crate::transform::check(&module))?),
        }
        Ok(())
    });
    work.await
        .map_err(|e| Error::Other(format!("the transform stopped unexpectedly: {e}")))?
}
