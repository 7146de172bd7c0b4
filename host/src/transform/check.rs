//! `wasmcdc transform check`: what a module is, and whether it fits a world.

use std::path::{Path, PathBuf};

use super::module::Module;
use super::sandbox::engine;
use super::{ModuleSpec, TransformError, module_name};
use crate::change::Target;

/// What `wasmcdc transform check` learned about a module that fits a world.
#[derive(Debug)]
pub struct CheckReport {
    /// The module file.
    pub path: PathBuf,
    /// SHA-256 (hex) of the file, as messages record it.
    pub hash: String,
    /// The world it exports, as `wasmcdc:transform@VERSION`.
    pub world: &'static str,
    /// Each export as `name (kind)`.
    pub exports: Vec<String>,
    /// Each import as `name (kind)`.
    pub imports: Vec<String>,
    /// What `init` answered to an empty configuration: the tables it declares, or its refusal.
    pub init: Result<Vec<Target>, String>,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "module: {}", self.path.display())?;
        writeln!(f, "sha256: {}", self.hash)?;
        writeln!(f, "world: {} transformer", self.world)?;
        writeln!(f, "exports:")?;
        for export in &self.exports {
            writeln!(f, "  {export}")?;
        }
        writeln!(f, "imports:")?;
        for import in &self.imports {
            writeln!(f, "  {import}")?;
        }
        match &self.init {
            Ok(targets) => {
                writeln!(f, "init: accepts an empty configuration")?;
                for t in targets {
                    let columns: Vec<String> = t.columns.iter().map(|c| format!("{} {}", c.name, c.pg_type)).collect();
                    writeln!(
                        f,
                        "declares: {}.{} ({}) key ({})",
                        t.schema,
                        t.table,
                        columns.join(", "),
                        t.key.join(", ")
                    )?;
                }
            }
            Err(message) => writeln!(
                f,
                "init: needs configuration (with none it answered: {message}); give it with --transform-config {}.KEY=VALUE",
                module_name(&self.path)
            )?,
        }
        write!(f, "valid: it fits the {} `transformer` world", self.world)
    }
}

/// Validates a module against the WIT worlds: compiles it, tells which world
/// it exports, starts it, and calls `init` with no configuration. A module
/// that refuses an empty configuration is still valid; the report says so.
pub fn check(path: &Path) -> Result<CheckReport, TransformError> {
    let spec = ModuleSpec {
        path: path.to_owned(),
        table: None,
    };
    let (module, component, hash) = Module::new(spec, Vec::new())?;
    let init = match module.start() {
        Ok((_, targets)) => Ok(targets),
        Err(TransformError::Init { message, .. }) => Err(message),
        Err(e) => return Err(e),
    };
    let engine = engine()?;
    let ty = component.component_type();
    let describe =
        |name: &str, item: &wasmtime::component::types::ComponentItem| format!("{name} ({})", item_kind(item));
    Ok(CheckReport {
        path: path.to_owned(),
        hash,
        world: module.world(),
        exports: ty
            .exports(engine)
            .map(|(name, item)| describe(name, &item.ty))
            .collect(),
        imports: ty
            .imports(engine)
            .map(|(name, item)| describe(name, &item.ty))
            .collect(),
        init,
    })
}

/// A component item's kind, in words.
fn item_kind(item: &wasmtime::component::types::ComponentItem) -> &'static str {
    use wasmtime::component::types::ComponentItem;
    match item {
        ComponentItem::ComponentFunc(_) => "function",
        ComponentItem::CoreFunc(_) => "core function",
        ComponentItem::Module(_) => "core module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}
