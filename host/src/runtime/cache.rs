//! The on-disk cache of compiled components.
//!
//! Compiling a component takes from tens of milliseconds (a small Rust plugin) to over ten
//! seconds (a Python- or JS-built one), and a restart must not pay that again. Artifacts
//! are keyed by the SHA-256 of the component's bytes and of the engine's compatibility
//! hash (wasmtime version and the settings that affect code), so a changed plugin or an
//! upgraded host never loads a stale artifact.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled artifacts live, and how they are named.
#[derive(Clone, Debug)]
pub struct ComponentCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

/// How a component was obtained, for logs and the load-time report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a cached artifact.
    Hit,
    /// Compiled now (and stored, when a cache dir is set).
    Compiled,
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash becomes a stable
/// file-name component.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl ComponentCache {
    /// A cache under `dir`, or no caching at all when `dir` is `None`.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        Self { dir, engine_key }
    }

    /// The content digest of a component, as shown in `kiln plugin check`.
    pub fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Loads the compiled form of `bytes`: from the cache when a valid artifact is there,
    /// else by compiling it (and then storing the artifact).
    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        let Some(path) = self.artifact_path(bytes) else {
            return Ok((compile(engine, bytes)?, CacheOutcome::Compiled));
        };
        if path.exists() {
            // SAFETY: the file is one this cache wrote with `Component::serialize` for an
            // engine with the same compatibility hash (it is in the name); wasmtime checks
            // the header again and refuses a mismatched artifact. The cache directory is
            // the operator's data dir, which only Kiln writes.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    error = %error,
                    "discarding an unreadable compiled artifact"
                ),
            }
        }
        let component = compile(engine, bytes)?;
        if let Err(error) = store_artifact(&path, &component) {
            tracing::warn!(path = %path.display(), error = %error, "could not cache a compiled component");
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn artifact_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let digest = Self::digest(bytes);
        Some(dir.join(format!("{}-{}.cwasm", &digest[..32], self.engine_key)))
    }
}

fn compile(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    Ok(Component::new(engine, bytes)?)
}

/// Writes atomically (temp file, then rename) so a crash never leaves half an artifact.
fn store_artifact(path: &Path, component: &Component) -> anyhow::Result<()> {
    let dir = path.parent().context("artifact path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component.serialize()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}
