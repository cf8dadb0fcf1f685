//! A loaded job type: its compiled, pre-linked component, what it said about itself in
//! `describe`, and its payload validator. Loading refuses anything that is not a component
//! built for this contract, with a message that says what is wrong.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};

use super::cache::CacheOutcome;
use super::contract::{CONTRACT_PACKAGE, ContractPre, ContractVersion, Described as DescribedInfo};
use super::failure::{FailureKind, HostStop};
use super::host::HostState;

/// The longest description `describe` may return, in bytes: it is "one or two sentences
/// for humans", shown by `GET /v1/plugins`, and a megabyte there would be sent to every
/// client that lists the job types.
pub const MAX_DESCRIPTION_BYTES: usize = 4 * 1024;

/// The longest payload schema `describe` may return, in bytes of JSON text. Every submit
/// is validated against it and `GET /v1/plugins` sends it; real schemas are a few KB.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

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
    /// The file it was loaded from (`None` when loaded from bytes).
    pub file: Option<PathBuf>,
    pub(crate) pre: ContractPre,
    validator: jsonschema::Validator,
    /// Whether the payload schema declares a `"format": "kiln-file"` property, computed
    /// once so submits and attempts of the other job types skip the file-id walk.
    reads_files: bool,
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
        pre: ContractPre,
    ) -> anyhow::Result<Self> {
        let reads_files = has_file_format(&info.payload_schema);
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
            file: None,
            pre,
            validator,
            reads_files,
        })
    }

    /// Whether its payload can name uploaded files (a `kiln-file` property).
    pub fn reads_files(&self) -> bool {
        self.reads_files
    }

    /// The contract version the component was built for.
    pub fn contract(&self) -> ContractVersion {
        self.pre.version()
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

/// Checks what `describe` returned before anything else uses it, listing every problem at
/// once: the name, a semver version, and the sizes of the description and the schema.
pub(crate) fn check_description(info: &DescribedInfo) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if let Err(error) = validate_name(&info.name) {
        problems.push(error.to_string());
    }
    if let Err(error) = semver::Version::parse(&info.version) {
        problems.push(format!(
            "version {:?} is not a semver version such as 1.2.0 ({error})",
            info.version
        ));
    }
    let sizes = [
        ("description", info.description.len(), MAX_DESCRIPTION_BYTES),
        (
            "payload schema",
            info.payload_schema.len(),
            MAX_SCHEMA_BYTES,
        ),
    ];
    for (what, len, max) in sizes {
        if len > max {
            problems.push(format!("the {what} is {len} bytes; the limit is {max}"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "`describe` of job type {:?} returned what Kiln cannot serve: {}",
        info.name,
        problems.join("; ")
    )
}

/// Links every function of the Kiln interfaces `component` imports to one that stops the
/// call with a message naming it, for `describe`, which the contract forbids to call any.
pub(crate) fn refuse_kiln_imports(
    engine: &Engine,
    component: &Component,
    version: ContractVersion,
    linker: &mut Linker<HostState>,
) -> anyhow::Result<()> {
    let package = format!("{CONTRACT_PACKAGE}/");
    for (interface, item) in component.component_type().imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        if !interface.starts_with(&package) {
            continue;
        }
        let mut linked = linker.instance(interface).map_err(anyhow::Error::from)?;
        for (function, item) in instance.exports(engine) {
            if !matches!(item.ty, ComponentItem::ComponentFunc(_)) {
                continue;
            }
            let message = format!(
                "it called `{interface}#{function}`, but the contract \
                 (wit/v{version}/plugin.wit) says `describe` must not call any \
                 import: return constants from `describe` and call imports from `run`"
            );
            linked
                .func_new(function, move |_, _, _, _| {
                    Err(HostStop::error(FailureKind::Permanent, message.clone()))
                })
                .map_err(anyhow::Error::from)?;
        }
    }
    Ok(())
}

/// Whether `schema` has a `"format": "kiln-file"` keyword anywhere.
fn has_file_format(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            map.get("format").and_then(Value::as_str) == Some("kiln-file")
                || map.values().any(has_file_format)
        }
        Value::Array(items) => items.iter().any(has_file_format),
        _ => false,
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

/// Checks a component's imports and exports against the contract versions this host
/// runs, and says which version it was built for, so a component built for an unknown
/// version or another purpose is refused with a message that says so, rather than with a
/// linker error.
pub(crate) fn check_contract(
    engine: &Engine,
    component: &Component,
) -> anyhow::Result<(ContractVersion, Vec<String>)> {
    let ty = component.component_type();
    let export_prefix = format!("{CONTRACT_PACKAGE}/job-type@");
    let mut exports = Vec::new();
    let mut version = None;
    for (name, _) in ty.exports(engine) {
        if let Some(text) = name.strip_prefix(&export_prefix) {
            version = Some(ContractVersion::parse(text).ok_or_else(|| wrong_version(text))?);
        }
        exports.push(name.to_string());
    }
    let Some(version) = version else {
        anyhow::bail!(
            "the component does not export `{export_prefix}X.Y.Z` (the `describe` and `run` \
             functions of a Kiln job type); it exports: [{}]",
            exports.join(", ")
        );
    };
    let mut imports = Vec::new();
    for (name, item) in ty.imports(engine) {
        imports.push(name.to_string());
        if name.starts_with("wasi:") {
            continue;
        }
        if let Some(rest) = name.strip_prefix(&format!("{CONTRACT_PACKAGE}/")) {
            let (interface, imported) = rest.split_once('@').unwrap_or((rest, ""));
            if imported != version.as_str() {
                anyhow::bail!(
                    "the component exports {CONTRACT_PACKAGE}/job-type@{version} but imports \
                     `{name}`: every Kiln interface it uses must come from the same contract \
                     version; rebuild it with one SDK version"
                );
            }
            if !version.interfaces().contains(&interface) {
                anyhow::bail!(
                    "the component imports `{name}`, which {CONTRACT_PACKAGE}@{version} does not define"
                );
            }
            continue;
        }
        let what = match item.ty {
            ComponentItem::ComponentFunc(_) | ComponentItem::CoreFunc(_) => "function",
            _ => "interface",
        };
        let granted: Vec<String> = version
            .interfaces()
            .iter()
            .filter(|i| **i != "types")
            .map(|i| format!("{CONTRACT_PACKAGE}/{i}"))
            .collect();
        anyhow::bail!(
            "the component imports the {what} `{name}`, which Kiln does not grant: a plugin may \
             import only {} and WASI 0.2",
            granted.join(", ")
        );
    }
    Ok((version, imports))
}

fn wrong_version(version: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the component was built against {CONTRACT_PACKAGE}@{version}, but this host runs \
         {CONTRACT_PACKAGE}@{}: rebuild it with a kiln-plugin SDK for one of them",
        ContractVersion::supported()
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

    fn described(version: &str, description_bytes: usize, schema_bytes: usize) -> DescribedInfo {
        // `{"description":"xxx…"}` padded to exactly `schema_bytes`.
        let filler = "x".repeat(schema_bytes - r#"{"description":""}"#.len());
        DescribedInfo {
            name: "sized".into(),
            version: version.into(),
            description: "d".repeat(description_bytes),
            payload_schema: format!(r#"{{"description":"{filler}"}}"#),
            default_timeout_secs: 0,
        }
    }

    #[test]
    fn description_and_schema_at_their_limits_are_accepted() {
        let info = described("1.2.3-beta.1", MAX_DESCRIPTION_BYTES, MAX_SCHEMA_BYTES);
        assert_eq!(info.payload_schema.len(), MAX_SCHEMA_BYTES);
        check_description(&info).unwrap();
    }

    #[test]
    fn description_and_schema_over_their_limits_are_refused_with_every_reason() {
        let info = described("latest", MAX_DESCRIPTION_BYTES + 1, MAX_SCHEMA_BYTES + 1);
        let error = check_description(&info).unwrap_err().to_string();
        for wanted in [
            "version \"latest\" is not a semver version",
            &format!("the description is {} bytes; the limit is 4096", 4097),
            &format!("the payload schema is {} bytes; the limit is 65536", 65537),
        ] {
            assert!(error.contains(wanted), "{wanted:?} not in {error}");
        }
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
