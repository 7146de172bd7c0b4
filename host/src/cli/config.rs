//! `wasmcdc config print`: the settings in effect.

use super::Error;
use crate::config::Settings;

/// Prints the settings as TOML that `--config` reads back, with the URLs' passwords masked.
pub(super) fn print(settings: &Settings) -> Result<(), Error> {
    print!("{}", settings.to_toml()?);
    Ok(())
}
