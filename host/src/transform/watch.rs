//! Hot swap: watches the chain's module files and compiles a new chain off the
//! hot path whenever one changes. The capture swaps it in at a transaction
//! boundary; a version that fails to load leaves the running chain in place.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Limits, ModuleSpec, THREAD_STACK, TransformChain, TransformError};

/// Editors and build tools write a file in several steps; wait for quiet before compiling.
const SETTLE: Duration = Duration::from_millis(300);

/// Yields a freshly compiled chain each time a module file changes.
pub struct ChainWatcher {
    // Dropping the watcher ends the compile thread.
    _watcher: notify::RecommendedWatcher,
    chains: mpsc::Receiver<TransformChain>,
}

impl ChainWatcher {
    /// Watches the files of `modules` (the `--transform` entries); `current` are the running
    /// chain's hashes, and each new chain runs its guests under `limits`, as the running one does.
    pub fn start(
        modules: &[PathBuf],
        config: &[String],
        current: &[String],
        limits: Limits,
    ) -> Result<Self, TransformError> {
        let mut files: HashSet<(PathBuf, OsString)> = HashSet::new();
        for entry in modules {
            let spec = ModuleSpec::parse(entry)?;
            let (dir, name) = split(&spec.path);
            files.insert((dir, name));
        }
        let (events_tx, events_rx) = std_mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(events_tx).map_err(|e| watch_error(&e))?;
        // Watch directories, not files: a rename over the file replaces the inode a file watch would follow.
        let dirs: HashSet<&PathBuf> = files.iter().map(|(d, _)| d).collect();
        for dir in dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| watch_error(&e))?;
        }
        let (chains_tx, chains) = mpsc::channel(1);
        let modules = modules.to_vec();
        let config = config.to_vec();
        let mut last = current.to_vec();
        std::thread::Builder::new()
            .name("transform-reload".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                while let Ok(event) = events_rx.recv() {
                    if !touches(&event, &files) {
                        continue;
                    }
                    // Let the writer finish, and fold the burst of events it makes into one reload.
                    std::thread::sleep(SETTLE);
                    while events_rx.try_recv().is_ok() {}
                    match TransformChain::load_with(&modules, &config, limits) {
                        Ok(chain) if chain.hashes() == last.as_slice() => {}
                        Ok(chain) => {
                            tracing::info!(hashes = ?chain.hashes(), "compiled a new version of the transform chain");
                            last = chain.hashes().to_vec();
                            if chains_tx.blocking_send(chain).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "a changed transform module failed to load; the running version stays in use"
                        ),
                    }
                }
            })
            .map_err(|e| TransformError::Engine(format!("cannot start the module watcher thread: {e}")))?;
        Ok(ChainWatcher {
            _watcher: watcher,
            chains,
        })
    }

    /// Waits for the next compiled chain.
    pub async fn next(&mut self) -> Option<TransformChain> {
        self.chains.recv().await
    }
}

fn split(path: &Path) -> (PathBuf, OsString) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = dir.canonicalize().unwrap_or(dir);
    (dir, path.file_name().map(OsString::from).unwrap_or_default())
}

fn touches(event: &notify::Result<notify::Event>, files: &HashSet<(PathBuf, OsString)>) -> bool {
    let Ok(event) = event else { return false };
    if event.kind.is_access() {
        return false;
    }
    event.paths.iter().any(|p| files.contains(&split(p)))
}

fn watch_error(e: &notify::Error) -> TransformError {
    TransformError::Engine(format!("cannot watch the transform modules for changes: {e}"))
}
