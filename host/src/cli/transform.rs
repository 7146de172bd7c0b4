//! `wasmcdc transform test` and `wasmcdc transform check`: transform components offline.

use super::{Error, TransformCommand};
use crate::config::Settings;
use crate::transform::guest_code;

pub(super) fn execute(command: &TransformCommand, settings: &Settings) -> Result<(), Error> {
    match command {
        TransformCommand::Test { modules } => {
            let stdin = std::io::stdin().lock();
            let stdout = std::io::stdout().lock();
            guest_code(|| crate::transform::run_test(modules, &settings.transform_config, stdin, stdout))?;
        }
        TransformCommand::Check { module } => println!("{}", guest_code(|| crate::transform::check(module))?),
    }
    Ok(())
}
