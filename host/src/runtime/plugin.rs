//! A loaded job type: its compiled, pre-linked component, what it said about itself in
//! `describe`, and its payload validator. Loading refuses anything that is not a component
//! built for this contract, with a message that says what is wrong.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::bindings::{CONTRACT_PACKAGE, CONTRACT_VERSION, JobPluginPre};
use super::cache::CacheOutcome;
use super::host::HostState;

/// What a plugin says about itself, as `GET /v1/plugins` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PluginInfo {
    /// The job type name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// What a job of this type produces.
    pub description: String,
    /// JSON Schema of the payload.
    pub payload_schema: Value,
    /// The plugin's default timeout in seconds (0: the host default).
    pub default_timeout_secs: u32,
}

/// One way a payload fails the schema: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SchemaViolation {
    /// JSON Pointer into the payload, `""` for the payload itself.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl std::fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// A job type ready to run.
pub struct Plugin {
    /// What `describe` returned.
    pub info: PluginInfo,
    /// SHA-256 of the component's bytes.
    pub digest: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// Whether the compiled form came from the cache.
    pub cache: CacheOutcome,
    /// What the component imports (Kiln interfaces and WASI).
    pub imports: Vec<String>,
    pub(crate) pre: JobPluginPre<HostState>,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.info)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub(crate) fn new(
        info: PluginInfo,
        digest: String,
        size: usize,
        cache: CacheOutcome,
        imports: Vec<String>,
        pre: JobPluginPre<HostState>,
    ) -> anyhow::Result<Self> {
        validate_name(&info.name)?;
        if info.version.trim().is_empty() {
            anyhow::bail!(
                "plugin '{}' describes itself with an empty version",
                info.name
            );
        }
        let validator = jsonschema::validator_for(&info.payload_schema).map_err(|e| {
            anyhow::anyhow!(
                "plugin '{}' publishes an invalid payload schema: {e}",
                info.name
            )
        })?;
        Ok(Self {
            info,
            digest,
            size,
            cache,
            imports,
            pre,
            validator,
        })
    }

    /// Checks `payload` against the plugin's schema; every violation is listed.
    pub fn validate_payload(&self, payload: &Value) -> Result<(), Vec<SchemaViolation>> {
        let violations: Vec<SchemaViolation> = self
            .validator
            .iter_errors(payload)
            .map(|e| SchemaViolation {
                path: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

/// Job type names are URL- and metric-label-safe.
fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        anyhow::bail!(
            "job type name {name:?} is not allowed: use 1 to 64 lowercase letters, digits, '-' or '_'"
        )
    }
}

/// The loaded job types, by name.
#[derive(Clone, Debug, Default)]
pub struct PluginRegistry {
    plugins: BTreeMap<String, Arc<Plugin>>,
}

impl PluginRegistry {
    /// Adds a plugin; refuses a second plugin with the same job type name.
    pub fn insert(&mut self, plugin: Plugin) -> anyhow::Result<()> {
        let name = plugin.info.name.clone();
        if self.plugins.contains_key(&name) {
            anyhow::bail!("two plugins describe the job type '{name}'");
        }
        self.plugins.insert(name, Arc::new(plugin));
        Ok(())
    }

    /// The plugin for job type `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    /// All plugins, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// The job type names.
    pub fn names(&self) -> Vec<String> {
        self.plugins.keys().cloned().collect()
    }

    /// How many plugins are loaded.
    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}

/// Refuses bytes that are not a WebAssembly component, before compiling them.
pub(crate) fn check_is_component(bytes: &[u8]) -> anyhow::Result<()> {
    match bytes {
        [0x00, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00, ..] => anyhow::bail!(
            "this is a core WebAssembly module, not a component: build the plugin with \
             `cargo build --target wasm32-wasip2` (or wrap the module with `wasm-tools component new`)"
        ),
        [0x00, b'a', b's', b'm', _, _, 0x01, 0x00, ..] => Ok(()),
        _ => anyhow::bail!("this is not a WebAssembly file (no `\\0asm` header)"),
    }
}

/// Checks a component's imports and exports against the contract, so a component built
/// for another contract version or another purpose is refused with a message that says so,
/// rather than with a linker error.
pub(crate) fn check_contract(
    engine: &Engine,
    component: &Component,
) -> anyhow::Result<Vec<String>> {
    let ty = component.component_type();
    let wanted_export = format!("{CONTRACT_PACKAGE}/job-type@{CONTRACT_VERSION}");
    let mut exports = Vec::new();
    for (name, _) in ty.exports(engine) {
        if let Some(version) = name.strip_prefix(&format!("{CONTRACT_PACKAGE}/job-type@"))
            && version != CONTRACT_VERSION
        {
            anyhow::bail!(wrong_version(version));
        }
        exports.push(name.to_string());
    }
    if !exports.contains(&wanted_export) {
        anyhow::bail!(
            "the component does not export `{wanted_export}` (the `describe` and `run` \
             functions of a Kiln job type); it exports: [{}]",
            exports.join(", ")
        );
    }
    let mut imports = Vec::new();
    for (name, item) in ty.imports(engine) {
        imports.push(name.to_string());
        if name.starts_with("wasi:") {
            continue;
        }
        if let Some(rest) = name.strip_prefix(&format!("{CONTRACT_PACKAGE}/")) {
            let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
            if version != CONTRACT_VERSION {
                anyhow::bail!(wrong_version(version));
            }
            if !matches!(interface, "progress" | "llm" | "log" | "types") {
                anyhow::bail!(
                    "the component imports `{name}`, which kiln:plugin@{CONTRACT_VERSION} does not define"
                );
            }
            continue;
        }
        let what = match item.ty {
            ComponentItem::ComponentFunc(_) | ComponentItem::CoreFunc(_) => "function",
            _ => "interface",
        };
        anyhow::bail!(
            "the component imports the {what} `{name}`, which Kiln does not grant: a plugin may \
             import only kiln:plugin/progress, kiln:plugin/llm, kiln:plugin/log and WASI 0.2"
        );
    }
    Ok(imports)
}

fn wrong_version(version: &str) -> String {
    format!(
        "the component was built against {CONTRACT_PACKAGE}@{version}, but this host runs \
         {CONTRACT_PACKAGE}@{CONTRACT_VERSION}: rebuild it with the kiln-plugin SDK for \
         {CONTRACT_VERSION}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        assert!(validate_name("characters").is_ok());
        assert!(validate_name("my-type_2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("Has Space").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn core_modules_and_junk_are_refused_before_compiling() {
        let core = wat::parse_str("(module)").unwrap();
        let err = check_is_component(&core).unwrap_err().to_string();
        assert!(err.contains("core WebAssembly module"), "{err}");
        assert!(check_is_component(b"hello").is_err());
        let component = wat::parse_str("(component)").unwrap();
        assert!(check_is_component(&component).is_ok());
    }
}
