//! The released plugin contracts, side by side. Each `wit/vX.Y.Z` folder has its own
//! module here: wasmtime's bindings of that version and one adapter that maps its types
//! onto the host's own ([`HostState`]'s methods, [`crate::llm`]'s types), the way Zed's
//! extension host keeps one module per API version. The host reads a component's version
//! from its `kiln:plugin/job-type@X.Y.Z` export at load and runs it through that
//! version's bindings, so a component built for any released version keeps running.
//!
//! Adding a version: freeze `wit/vX.Y.Z`, add its module with its adapter, add it to
//! [`ContractVersion`] and [`ContractPre`]; the older modules are not edited.

mod v0_1_0;
mod v0_2_0;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use super::failure::{FailureKind, JobFailure};
use super::host::HostState;

/// The contract package.
pub const CONTRACT_PACKAGE: &str = "kiln:plugin";

/// The newest contract: what the SDKs and `kiln plugin new` build for.
pub const CONTRACT_VERSION: &str = ContractVersion::NEWEST.as_str();

/// A released contract version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContractVersion {
    /// `wit/v0.1.0`: progress, partials, completions, logs.
    V0_1_0,
    /// `wit/v0.2.0`: adds structured output, tools, embeddings, files and artifacts.
    V0_2_0,
}

impl ContractVersion {
    /// Every version this host runs, oldest first.
    pub const ALL: [ContractVersion; 2] = [Self::V0_1_0, Self::V0_2_0];

    /// The newest version.
    pub const NEWEST: ContractVersion = Self::V0_2_0;

    /// `0.1.0`, …
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V0_1_0 => "0.1.0",
            Self::V0_2_0 => "0.2.0",
        }
    }

    /// The version named `text`, if this host runs it.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == text)
    }

    /// The Kiln interfaces a component of this version may import.
    pub fn interfaces(self) -> &'static [&'static str] {
        match self {
            Self::V0_1_0 => &["types", "progress", "llm", "log"],
            Self::V0_2_0 => &["types", "progress", "llm", "files", "artifacts", "log"],
        }
    }

    /// The versions this host runs, for messages: `0.1.0, 0.2.0`.
    pub fn supported() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl std::fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Links the imports of every version into `linker` (their interface names differ by
/// version, so they live side by side).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    v0_1_0::JobPlugin::add_to_linker::<_, HasSelf<HostState>>(linker, |state| state)
        .map_err(anyhow::Error::from)?;
    v0_2_0::JobPlugin::add_to_linker::<_, HasSelf<HostState>>(linker, |state| state)
        .map_err(anyhow::Error::from)?;
    Ok(())
}

/// What `describe` returned, in host types, whatever the version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Described {
    pub name: String,
    pub version: String,
    pub description: String,
    pub payload_schema: String,
    pub default_timeout_secs: u32,
}

/// One attempt as `run` receives it, in host types.
#[derive(Clone, Debug)]
pub(crate) struct RunJob {
    pub id: String,
    pub job_type: String,
    pub payload: String,
    pub attempt: u32,
}

/// A component pre-linked through its version's bindings, ready to instantiate per call.
#[derive(Clone)]
pub(crate) enum ContractPre {
    V0_1_0(v0_1_0::JobPluginPre<HostState>),
    V0_2_0(v0_2_0::JobPluginPre<HostState>),
}

impl ContractPre {
    /// `instance_pre` through `version`'s bindings.
    pub fn new(
        version: ContractVersion,
        instance_pre: InstancePre<HostState>,
    ) -> anyhow::Result<Self> {
        let pre = match version {
            ContractVersion::V0_1_0 => v0_1_0::JobPluginPre::new(instance_pre).map(Self::V0_1_0),
            ContractVersion::V0_2_0 => v0_2_0::JobPluginPre::new(instance_pre).map(Self::V0_2_0),
        };
        pre.map_err(|e| {
            anyhow::anyhow!(
                "the component's exports do not match {CONTRACT_PACKAGE}@{version}: {e:#}"
            )
        })
    }

    /// The contract version of the component.
    pub fn version(&self) -> ContractVersion {
        match self {
            Self::V0_1_0(_) => ContractVersion::V0_1_0,
            Self::V0_2_0(_) => ContractVersion::V0_2_0,
        }
    }

    /// Instantiates the component in `store` and calls `describe`.
    pub fn describe<'a>(
        &'a self,
        store: &'a mut Store<HostState>,
    ) -> BoxFuture<'a, wasmtime::Result<Described>> {
        match self {
            Self::V0_1_0(pre) => v0_1_0::describe(pre, store).boxed(),
            Self::V0_2_0(pre) => v0_2_0::describe(pre, store).boxed(),
        }
    }

    /// Instantiates the component in `store` and calls `run` with `job`: the result's
    /// JSON text, or the failure the plugin reported.
    pub fn run<'a>(
        &'a self,
        store: &'a mut Store<HostState>,
        job: RunJob,
    ) -> BoxFuture<'a, wasmtime::Result<Result<String, JobFailure>>> {
        match self {
            Self::V0_1_0(pre) => v0_1_0::run(pre, store, job).boxed(),
            Self::V0_2_0(pre) => v0_2_0::run(pre, store, job).boxed(),
        }
    }
}

/// The failure of a plugin's `job-error`, which is the same in every version.
pub(crate) fn plugin_failure(kind: PluginErrorKind, message: String) -> JobFailure {
    let kind = match kind {
        PluginErrorKind::InvalidInput => FailureKind::InvalidInput,
        PluginErrorKind::Retryable => FailureKind::Retryable,
        PluginErrorKind::Permanent => FailureKind::Permanent,
    };
    JobFailure::new(kind, message)
}

/// The variants of `job-error`.
pub(crate) enum PluginErrorKind {
    InvalidInput,
    Retryable,
    Permanent,
}
