//! Configuration: defaults, then the TOML file, then `KILN_*` environment variables, then
//! command-line flags (later wins).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::api::ApiSettings;
use crate::auth::AuthConfig;
use crate::jobs::ServiceSettings;
use crate::llm::{
    AdmissionConfig, ApiKey, DEFAULT_MAX_CONCURRENT, DEFAULT_TIMEOUT, EmbedRequest, HttpProvider,
    HttpProviderConfig, LlmClient, ModelRouter, Observer, OfflineClient, OfflineConfig, WireFormat,
};
use crate::runtime::{Limits, LimitsOverride, RuntimeConfig};

/// The TOML file. Every field is optional; see the README for the full reference.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address. Default `127.0.0.1:8080`.
    pub addr: Option<String>,
    /// Where the redb file and the compiled-plugin cache live. Default `kiln-data` (in the
    /// working directory; a relative path in the file is relative to the file's folder).
    pub data_dir: Option<PathBuf>,
    /// Folder of `*.wasm` job types. Default `plugins/dist` (relative as `data_dir`).
    pub plugins_dir: Option<PathBuf>,
    /// Largest request body in bytes. Default 16 MiB.
    pub max_body_bytes: Option<usize>,
    /// Concurrent SSE streams. Default 10,000.
    pub max_streams: Option<usize>,
    /// SSE keep-alive interval, seconds. Default 15.
    pub keep_alive_secs: Option<u64>,
    /// Longest `?wait=` on submit, seconds. Default 60.
    pub max_wait_secs: Option<u64>,
    /// Events an SSE subscriber may lag before it is disconnected. Default 1024.
    pub sse_buffer_events: Option<usize>,
    /// Newest events of all jobs kept for clients resuming `/v1/events`. Default 1,000,000.
    pub events_feed_retention: Option<u64>,
    /// How long finished jobs are kept, seconds. Default 86,400.
    pub job_ttl_secs: Option<u64>,
    /// Largest upload to `POST /v1/files`, bytes. Default 67,108,864 (64 MiB).
    pub max_file_bytes: Option<u64>,
    /// How long uploads are kept, seconds. Default 86,400.
    pub file_ttl_secs: Option<u64>,
    /// How often expired jobs are swept, seconds. Default 60.
    pub sweep_interval_secs: Option<u64>,
    /// Grace for running jobs at shutdown, seconds. Default 30.
    pub shutdown_grace_secs: Option<u64>,
    /// Queued jobs beyond which submits get 429. Default 100,000.
    pub max_queued: Option<usize>,
    /// Most items of one `POST /v1/batches`. Default 10,000.
    pub max_batch_items: Option<usize>,
    /// Most jobs one job may depend on (`depends_on`). Default 1,000.
    pub max_dependencies: Option<usize>,
    /// Most schedules, the config's and those made through the API. Default 1,000.
    pub max_schedules: Option<usize>,
    /// Attempts per job by default. Default 3.
    pub default_max_attempts: Option<u32>,
    /// Running jobs per queue by default. Default 16.
    pub default_max_concurrent: Option<usize>,
    /// First retry backoff, ms. Default 2000.
    pub retry_base_ms: Option<u64>,
    /// Longest retry backoff, ms. Default 300,000.
    pub retry_max_ms: Option<u64>,
    /// Jobs running at once across all types (the instance pool). Default 128.
    pub max_instances: Option<u32>,
    /// How long a plugin's `describe` may take at load, ms. Default 2000.
    pub describe_timeout_ms: Option<u64>,
    /// Sandbox limits for every job type.
    pub limits: Limits,
    /// Per job type: its queue and limit overrides.
    pub types: HashMap<String, TypeConfig>,
    /// Per queue: its concurrency.
    pub queues: HashMap<String, QueueConfig>,
    /// LLM providers by name.
    pub providers: HashMap<String, ProviderConfig>,
    /// Model aliases -> `"provider/model"`.
    pub models: HashMap<String, String>,
    /// Thresholds of the queue health rule (`GET /v1/queues`).
    pub health: crate::monitor::HealthThresholds,
    /// API keys, tokens and open mode (`[auth]`).
    pub auth: AuthConfig,
    /// Where jobs are stored (`[store]`): the redb file in the data dir unless `url`
    /// names a PostgreSQL database.
    pub store: StoreConfig,
    /// Browser origins allowed to call the API (CORS), e.g. `["https://app.example.com"]`.
    /// Default none: only same-origin pages and non-browser clients.
    pub cors_origins: Vec<String>,
    /// Signing secrets, default URLs and limits of job webhooks (`[webhooks]`).
    pub webhooks: WebhooksConfig,
    /// Jobs submitted on a cron schedule (`[schedules.NAME]`).
    pub schedules: HashMap<String, ScheduleConfig>,
    /// The folder of the file this was read from: relative `data_dir` and `plugins_dir`
    /// in the file are relative to it, so `kiln serve --config` works from any directory.
    #[serde(skip)]
    source_dir: Option<PathBuf>,
}

/// `[webhooks]`: how job ends are POSTed (see `jobs/webhooks.rs`).
///
/// ```toml
/// [webhooks]
/// secret_env = "KILN_WEBHOOK_SECRET"  # holds whsec_…: signs the jobs of no tenant
/// url = "https://hooks.example.com/kiln"  # default for those jobs (none by default)
/// allow_private = false       # loopback and private addresses refused
/// timeout_secs = 10
/// retry_for_secs = 86400      # retried with backoff this long after the job's end
/// retry_base_ms = 5000        # first backoff, doubling per send
/// retry_max_ms = 3600000      # longest backoff
/// max_body_bytes = 1048576    # a larger job JSON is sent without its result
///
/// [webhooks.tenants.acme]
/// secret_env = "ACME_WEBHOOK_SECRET"
/// url = "https://hooks.acme.example/kiln"
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    pub secret_env: Option<String>,
    pub url: Option<String>,
    pub allow_private: Option<bool>,
    pub timeout_secs: Option<u64>,
    pub retry_for_secs: Option<u64>,
    pub retry_base_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub tenants: HashMap<String, TenantWebhooks>,
}

/// `[webhooks.tenants.NAME]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantWebhooks {
    pub secret_env: Option<String>,
    pub url: Option<String>,
}

impl WebhooksConfig {
    /// The settings, with every secret read from its variable and checked.
    fn resolve(&self) -> anyhow::Result<crate::jobs::WebhookSettings> {
        let defaults = crate::jobs::WebhookSettings::default();
        let mut settings = crate::jobs::WebhookSettings {
            allow_private: self.allow_private.unwrap_or(defaults.allow_private),
            timeout: self
                .timeout_secs
                .map_or(defaults.timeout, |s| Duration::from_secs(s.max(1))),
            retry_for: self
                .retry_for_secs
                .map_or(defaults.retry_for, Duration::from_secs),
            first_retry: self
                .retry_base_ms
                .map_or(defaults.first_retry, Duration::from_millis),
            max_retry: self
                .retry_max_ms
                .map_or(defaults.max_retry, Duration::from_millis),
            max_body_bytes: self.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            ..defaults
        };
        let tenants = self
            .tenants
            .iter()
            .map(|(name, t)| (Some(name.clone()), t.secret_env.as_ref(), t.url.as_ref()));
        for (tenant, secret_env, url) in
            std::iter::once((None, self.secret_env.as_ref(), self.url.as_ref())).chain(tenants)
        {
            let place = tenant.as_ref().map_or("[webhooks]".to_string(), |t| {
                format!("[webhooks.tenants.{t}]")
            });
            if let Some(var) = secret_env {
                let text = std::env::var(var).map_err(|_| {
                    anyhow::anyhow!("{place} secret_env: the environment variable {var} is not set")
                })?;
                let secret = crate::jobs::decode_secret(&text)
                    .map_err(|e| anyhow::anyhow!("{place} secret_env {var}: {e}"))?;
                settings.secrets.insert(tenant.clone(), secret);
            }
            if let Some(url) = url {
                anyhow::ensure!(
                    secret_env.is_some(),
                    "{place} url needs a secret_env to sign with"
                );
                crate::jobs::check_url(url, settings.allow_private)
                    .map_err(|e| anyhow::anyhow!("{place} url: {e}"))?;
                settings.default_urls.insert(tenant, url.clone());
            }
        }
        Ok(settings)
    }
}

/// `[store]`.
///
/// ```toml
/// [store]
/// url = "postgres://kiln:secret@db.internal/kiln"   # none: redb in data_dir
/// pool_size = 16
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// A PostgreSQL URL (`postgres://…` or `host=… dbname=…`). `--database-url` and
    /// `KILN_DATABASE_URL` take precedence.
    pub url: Option<String>,
    /// Connections kept for reads. Default 16.
    pub pool_size: Option<usize>,
    /// How long connecting may take, seconds. Default 5.
    pub connect_timeout_secs: Option<u64>,
}

/// Where the jobs are stored, resolved.
#[derive(Clone, Debug)]
pub enum StoreChoice {
    /// The redb file at this path (the default: `data_dir/kiln.redb`).
    Redb(PathBuf),
    /// A PostgreSQL database.
    Postgres(crate::store::PostgresOptions),
}

impl StoreChoice {
    /// For logs and `kiln doctor`: the file, or the URL with its password masked.
    pub fn describe(&self) -> String {
        match self {
            Self::Redb(path) => format!("redb {}", path.display()),
            Self::Postgres(options) => {
                format!("postgres {}", crate::store::redact_url(&options.url))
            }
        }
    }
}

/// `[types.NAME]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TypeConfig {
    /// The queue this type waits in. Default: a queue named after the type.
    pub queue: Option<String>,
    /// Limit overrides for this type.
    pub limits: LimitsOverride,
}

/// `[schedules.NAME]`: a job submitted at each tick of `cron`.
///
/// ```toml
/// [schedules.nightly-digest]
/// cron = "0 3 * * *"            # minute hour day month weekday (a sixth field first: seconds)
/// type = "documents"
/// payload = { title = "Digest", paragraphs = 3 }
/// timezone = "Europe/Paris"     # IANA name; default UTC
/// catch_up = "once"             # ticks missed while Kiln was down: "once" (one job) or "skip"
/// # tenant = "acme"             # the tenant its jobs belong to
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub cron: String,
    #[serde(rename = "type")]
    pub job_type: String,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub catch_up: Option<crate::jobs::CatchUp>,
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `[queues.NAME]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Max running jobs of the queue.
    pub max_concurrent: Option<usize>,
    /// Max running jobs of the queue with one `concurrency_key` (e.g. one end user), so
    /// one key's backlog cannot hold every slot. Default: no limit but `max_concurrent`
    /// (the key with the fewest running jobs still goes first).
    pub max_per_key: Option<usize>,
}

/// `[providers.NAME]`: one LLM provider and its limits.
///
/// ```toml
/// [providers.openai]
/// kind = "openai"                  # "openai" | "anthropic" | "offline"
/// api_key_env = "OPENAI_API_KEY"   # the variable holding the key; none = no auth header
/// base_url = "https://api.openai.com/v1"
/// max_concurrent = 8
/// requests_per_minute = 500
/// tokens_per_minute = 200000
/// timeout_s = 120
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// `openai` (the Chat Completions wire format: OpenAI, Ollama, vLLM, llama.cpp server,
    /// LM Studio), `anthropic` (the Messages API) or `offline` (synthetic text, no key).
    pub kind: String,
    /// Offline: simulated latency per call, ms. Default 250.
    pub latency_ms: Option<u64>,
    /// Offline: words per answer. Default 40.
    pub words: Option<u32>,
    /// Offline: length of embedding vectors. Default 256.
    pub embedding_dimensions: Option<u32>,
    /// HTTP providers: base URL, without the endpoint. Default
    /// `https://api.openai.com/v1` (openai: up to and including `/v1`) or
    /// `https://api.anthropic.com/v1` (anthropic: with or without `/v1`).
    pub base_url: Option<String>,
    /// HTTP providers: the environment variable holding the key. Unset means requests
    /// carry no key (local servers). Set but missing from the environment is a startup
    /// error.
    pub api_key_env: Option<String>,
    /// HTTP providers: max requests in flight. Default 8.
    pub max_concurrent: Option<usize>,
    /// HTTP providers: requests started per minute. Default unlimited.
    pub requests_per_minute: Option<u32>,
    /// HTTP providers: input plus output tokens per minute. Default unlimited.
    pub tokens_per_minute: Option<u32>,
    /// HTTP providers: deadline of one call, including waiting for the limits, retries and
    /// streaming, seconds. Default 120.
    pub timeout_s: Option<u64>,
    /// `openai` kind: models sent `max_completion_tokens` instead of `max_tokens`, as exact
    /// names or prefixes ending in `*`. Default `["o1*", "o3*", "o4*", "gpt-5*"]`, the
    /// models that refuse `max_tokens`.
    pub max_completion_tokens_models: Option<Vec<String>>,
}

impl ProviderConfig {
    /// Builds the provider called `name`, reporting its calls to `observer`.
    fn build(
        &self,
        name: &str,
        observer: &Observer,
        shared: &crate::llm::SharedLimitsCell,
    ) -> anyhow::Result<Arc<dyn LlmClient>> {
        let format = match self.kind.as_str() {
            "offline" => {
                let http_only = [
                    ("base_url", self.base_url.is_some()),
                    ("api_key_env", self.api_key_env.is_some()),
                    ("max_concurrent", self.max_concurrent.is_some()),
                    ("requests_per_minute", self.requests_per_minute.is_some()),
                    ("tokens_per_minute", self.tokens_per_minute.is_some()),
                    ("timeout_s", self.timeout_s.is_some()),
                    (
                        "max_completion_tokens_models",
                        self.max_completion_tokens_models.is_some(),
                    ),
                ];
                if let Some((key, _)) = http_only.iter().find(|(_, set)| *set) {
                    anyhow::bail!("provider '{name}': {key} does not apply to kind = \"offline\"");
                }
                let defaults = OfflineConfig::default();
                let offline = OfflineClient::named(
                    name,
                    OfflineConfig {
                        latency_ms: self.latency_ms.unwrap_or(defaults.latency_ms),
                        words: self.words.unwrap_or(defaults.words),
                        embedding_dimensions: self
                            .embedding_dimensions
                            .unwrap_or(defaults.embedding_dimensions)
                            .clamp(1, 8192),
                    },
                );
                return Ok(Arc::new(offline.with_observer(observer.clone())));
            }
            "openai" => WireFormat::OpenAi,
            "anthropic" => WireFormat::Anthropic,
            other => anyhow::bail!(
                "provider '{name}' has kind {other:?}; use \"openai\", \"anthropic\" or \"offline\""
            ),
        };
        if self.latency_ms.is_some() || self.words.is_some() || self.embedding_dimensions.is_some()
        {
            anyhow::bail!(
                "provider '{name}': latency_ms, words and embedding_dimensions apply to kind = \"offline\" only"
            );
        }
        let api_key = match &self.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => Some(ApiKey::new(value.trim())),
                Ok(_) => anyhow::bail!(
                    "provider '{name}': the environment variable {var} (api_key_env) is empty"
                ),
                Err(_) => anyhow::bail!(
                    "provider '{name}': the environment variable {var} (api_key_env) is not set"
                ),
            },
            None => None,
        };
        let max_concurrent = self.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT);
        anyhow::ensure!(
            max_concurrent >= 1,
            "provider '{name}': max_concurrent must be at least 1"
        );
        anyhow::ensure!(
            self.requests_per_minute != Some(0) && self.tokens_per_minute != Some(0),
            "provider '{name}': a per-minute limit of 0 would admit nothing; leave it unset for no limit"
        );
        let config = HttpProviderConfig {
            name: name.to_string(),
            base_url: self.base_url.clone(),
            api_key,
            api_key_env: self.api_key_env.clone(),
            timeout: self.timeout_s.map_or(DEFAULT_TIMEOUT, Duration::from_secs),
            admission: AdmissionConfig {
                max_concurrent,
                requests_per_minute: self.requests_per_minute,
                tokens_per_minute: self.tokens_per_minute,
            },
            max_completion_tokens_models: self
                .max_completion_tokens_models
                .clone()
                .unwrap_or_else(|| HttpProviderConfig::new(name).max_completion_tokens_models),
        };
        let provider =
            HttpProvider::new(format, config).with_context(|| format!("provider '{name}'"))?;
        Ok(Arc::new(
            provider
                .with_observer(observer.clone())
                .with_shared_limits(shared.clone()),
        ))
    }
}

/// Values from flags and `KILN_*` variables (clap merges those two, flags first).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--addr` / `KILN_ADDR`.
    pub addr: Option<String>,
    /// `--data-dir` / `KILN_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--plugins-dir` / `KILN_PLUGINS_DIR`.
    pub plugins_dir: Option<PathBuf>,
    /// `--database-url` / `KILN_DATABASE_URL`.
    pub database_url: Option<String>,
}

/// Everything `kiln serve` needs, resolved.
pub struct Resolved {
    /// Listen address.
    pub addr: SocketAddr,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Plugins dir.
    pub plugins_dir: PathBuf,
    /// Where jobs are stored.
    pub store: StoreChoice,
    /// Runtime sizing.
    pub runtime: RuntimeConfig,
    /// Scheduler settings.
    pub service: ServiceSettings,
    /// HTTP settings.
    pub api: ApiSettings,
    /// The LLM client plugins get.
    pub llm: Arc<dyn LlmClient>,
    /// The server's metrics, which `llm`'s providers report their calls to.
    pub metrics: Arc<crate::monitor::Metrics>,
    /// Model aliases, for the startup log.
    pub model_aliases: Vec<String>,
    /// Where `llm`'s providers find the cluster's limits, set by the server once a shared
    /// store is open.
    pub shared_limits: crate::llm::SharedLimitsCell,
    /// Access control, built at start (it needs the data dir's token secret).
    pub auth: AuthConfig,
}

impl Config {
    /// Reads a TOML file. Relative paths in it will be taken relative to its folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let mut config = Self::from_toml(&text)
            .with_context(|| format!("in the config file {}", path.display()))?;
        let folder = path.parent().unwrap_or(Path::new(""));
        config.source_dir = Some(std::path::absolute(folder).unwrap_or(folder.to_path_buf()));
        Ok(config)
    }

    /// Parses TOML text. A misspelt key's error starts with the closest valid key.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|error| {
            let shown = error.to_string();
            match suggestion(&error) {
                Some(better) => anyhow::anyhow!("{}", shown.replacen(error.message(), &better, 1)),
                None => anyhow::anyhow!("{shown}"),
            }
        })
    }

    /// A path from the file: relative to the file's folder when it came from a file.
    fn file_path(&self, path: &Path) -> PathBuf {
        match &self.source_dir {
            Some(folder) if path.is_relative() => folder.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// Applies flag and environment values over the file's, then fills in defaults.
    pub fn resolve(self, overrides: Overrides) -> anyhow::Result<Resolved> {
        let addr_text = overrides
            .addr
            .or(self.addr.clone())
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let addr: SocketAddr = addr_text
            .parse()
            .with_context(|| format!("addr {addr_text:?} is not an IP:port address"))?;
        // Flags, variables and defaults are relative to the working directory, paths in
        // the file to the file's folder; absolute from here on, so every message names
        // the folder actually used.
        let data_dir = absolute(
            overrides
                .data_dir
                .or_else(|| self.data_dir.as_deref().map(|p| self.file_path(p)))
                .unwrap_or_else(|| "kiln-data".into()),
        );
        let plugins_dir = absolute(
            overrides
                .plugins_dir
                .or_else(|| self.plugins_dir.as_deref().map(|p| self.file_path(p)))
                .unwrap_or_else(|| "plugins/dist".into()),
        );
        for (name, queue) in &self.queues {
            anyhow::ensure!(
                queue.max_per_key.is_none_or(|max| max >= 1),
                "[queues.{name}] max_per_key must be at least 1"
            );
        }
        let store = match overrides
            .database_url
            .filter(|url| !url.trim().is_empty())
            .or_else(|| self.store.url.clone())
        {
            Some(url) => {
                let mut options = crate::store::PostgresOptions::new(url);
                if let Some(size) = self.store.pool_size {
                    anyhow::ensure!(size >= 1, "[store] pool_size must be at least 1");
                    options.pool_size = size;
                }
                if let Some(secs) = self.store.connect_timeout_secs {
                    options.connect_timeout = Duration::from_secs(secs.max(1));
                }
                StoreChoice::Postgres(options)
            }
            None => StoreChoice::Redb(data_dir.join(crate::server::DB_FILE)),
        };

        let defaults = ServiceSettings::default();
        let secs = Duration::from_secs;
        let ms = Duration::from_millis;
        let service = ServiceSettings {
            storage: store.describe(),
            limits: self.limits.clone(),
            type_limits: self
                .types
                .iter()
                .map(|(name, t)| (name.clone(), t.limits.clone()))
                .collect(),
            type_queues: self
                .types
                .iter()
                .filter_map(|(name, t)| t.queue.clone().map(|q| (name.clone(), q)))
                .collect(),
            queue_limits: self
                .queues
                .iter()
                .filter_map(|(name, q)| q.max_concurrent.map(|n| (name.clone(), n)))
                .collect(),
            queue_key_limits: self
                .queues
                .iter()
                .filter_map(|(name, q)| q.max_per_key.map(|n| (name.clone(), n)))
                .collect(),
            default_max_concurrent: self
                .default_max_concurrent
                .unwrap_or(defaults.default_max_concurrent),
            default_max_attempts: self
                .default_max_attempts
                .unwrap_or(defaults.default_max_attempts),
            max_attempts_cap: defaults.max_attempts_cap,
            max_queued: self.max_queued.unwrap_or(defaults.max_queued),
            webhooks: self.webhooks.resolve()?,
            max_batch_items: self.max_batch_items.unwrap_or(defaults.max_batch_items),
            max_dependencies: self.max_dependencies.unwrap_or(defaults.max_dependencies),
            schedules: self.schedule_specs()?,
            max_schedules: self.max_schedules.unwrap_or(defaults.max_schedules),
            retry_base: self.retry_base_ms.map_or(defaults.retry_base, ms),
            retry_max: self.retry_max_ms.map_or(defaults.retry_max, ms),
            job_ttl: self.job_ttl_secs.map_or(defaults.job_ttl, secs),
            max_file_bytes: self.max_file_bytes.unwrap_or(defaults.max_file_bytes),
            file_ttl: self.file_ttl_secs.map_or(defaults.file_ttl, secs),
            sweep_interval: self
                .sweep_interval_secs
                .map_or(defaults.sweep_interval, secs),
            shutdown_grace: self
                .shutdown_grace_secs
                .map_or(defaults.shutdown_grace, secs),
            // Known once the server has bound its port.
            node_address: String::new(),
        };
        let largest_memory = service
            .type_limits
            .values()
            .filter_map(|o| o.memory_mib)
            .chain([service.limits.memory_mib])
            .max()
            .unwrap_or(256);
        let runtime = RuntimeConfig {
            max_instances: self.max_instances.unwrap_or(128).max(1),
            max_memory_mib: largest_memory.max(1),
            cache_dir: Some(data_dir.join("cache")),
            describe_timeout: self
                .describe_timeout_ms
                .map_or(crate::runtime::DEFAULT_DESCRIBE_TIMEOUT, ms),
            ..RuntimeConfig::default()
        };
        let api_defaults = ApiSettings::default();
        let api = ApiSettings {
            max_body_bytes: self.max_body_bytes.unwrap_or(api_defaults.max_body_bytes),
            max_streams: self.max_streams.unwrap_or(api_defaults.max_streams),
            keep_alive: self.keep_alive_secs.map_or(api_defaults.keep_alive, secs),
            max_wait_secs: self.max_wait_secs.unwrap_or(api_defaults.max_wait_secs),
            sse_buffer_events: self
                .sse_buffer_events
                .unwrap_or(api_defaults.sse_buffer_events)
                .max(16),
            feed_retention: self
                .events_feed_retention
                .unwrap_or(api_defaults.feed_retention)
                .max(1),
            health: self.health.clone(),
            cors_origins: checked_origins(&self.cors_origins)?,
        };
        let metrics = Arc::new(crate::monitor::Metrics::new());
        let shared_limits = crate::llm::SharedLimitsCell::default();
        let (llm, model_aliases) = self.build_llm(&metrics, &shared_limits)?;
        Ok(Resolved {
            addr,
            data_dir,
            plugins_dir,
            store,
            runtime,
            service,
            api,
            llm,
            metrics,
            model_aliases,
            shared_limits,
            auth: self.auth.clone(),
        })
    }

    /// Builds the providers and the alias router. With no providers configured, an
    /// `offline` provider serves every request, so Kiln runs with no key at all.
    fn build_llm(
        &self,
        metrics: &Arc<crate::monitor::Metrics>,
        shared: &crate::llm::SharedLimitsCell,
    ) -> anyhow::Result<(Arc<dyn LlmClient>, Vec<String>)> {
        let observer: Observer = Some(metrics.clone() as Arc<dyn crate::llm::CallObserver>);
        let mut providers: HashMap<String, Arc<dyn LlmClient>> = HashMap::new();
        for (name, provider) in &self.providers {
            providers.insert(name.clone(), provider.build(name, &observer, shared)?);
        }
        let mut models = self.models.clone();
        if providers.is_empty() {
            let offline = OfflineClient::new(OfflineConfig::default()).with_observer(observer);
            providers.insert("offline".into(), Arc::new(offline));
        }
        // Only an offline provider can answer a model it was not told: a real provider
        // would reject a model named "default", so a missing `default` is an error at
        // start unless every provider is offline, which then serves `default` and
        // `embedding` (the alias `embed` uses unless the plugin names one).
        let mut offline: Vec<&String> = providers
            .keys()
            .filter(|name| {
                self.providers
                    .get(*name)
                    .is_none_or(|p| p.kind == "offline")
            })
            .collect();
        offline.sort();
        let only_offline = offline
            .first()
            .filter(|_| offline.len() == providers.len())
            .map(|name| name.to_string());
        for alias in ["default", EmbedRequest::DEFAULT_ALIAS] {
            if models.contains_key(alias) {
                continue;
            }
            match &only_offline {
                Some(name) => {
                    models.insert(alias.into(), format!("{name}/{alias}"));
                }
                None if alias == "default" => anyhow::bail!(
                    "[models] has no `default` alias, which plugins use unless they name a \
                     model: add one, e.g. default = \"openai/gpt-4o-mini\""
                ),
                None => {}
            }
        }
        let mut router = ModelRouter::default();
        for (name, client) in &providers {
            let kind = self
                .providers
                .get(name)
                .map_or("offline", |p| p.kind.as_str());
            router.add_provider(name, kind, client.clone());
        }
        for (alias, target) in &models {
            let (provider, model) = target.split_once('/').with_context(|| {
                format!("[models] {alias} = {target:?}: write it as \"provider/model\"")
            })?;
            let client = providers.get(provider).with_context(|| {
                format!("[models] {alias} names the provider '{provider}', which is not configured")
            })?;
            router.route(alias, client.clone(), model);
        }
        let aliases = router.aliases();
        Ok((Arc::new(router), aliases))
    }
}

/// `path` made absolute against the working directory (as is, if there is none).
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

impl Config {
    /// The `[schedules.*]` tables, their cron and time zone checked (their type and payload
    /// are checked once the plugins are loaded).
    fn schedule_specs(&self) -> anyhow::Result<Vec<crate::jobs::ScheduleSpec>> {
        let mut specs = Vec::with_capacity(self.schedules.len());
        for (name, schedule) in &self.schedules {
            crate::jobs::Ticks::parse(&schedule.cron, schedule.timezone.as_deref())
                .map_err(|error| anyhow::anyhow!("[schedules.{name}]: {error}"))?;
            specs.push(crate::jobs::ScheduleSpec {
                name: name.clone(),
                cron: schedule.cron.clone(),
                timezone: schedule.timezone.clone(),
                job_type: schedule.job_type.clone(),
                payload: schedule
                    .payload
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({})),
                catch_up: schedule.catch_up.unwrap_or_default(),
                tenant: schedule.tenant.clone(),
            });
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(specs)
    }
}

/// For an unknown-key error, the message with the closest allowed key first: "unknown key
/// `max_concurent`: did you mean `max_concurrent`? Allowed here: …". `None` for other errors
/// or when no allowed key is close.
///
/// serde words the error `unknown field `KEY`, expected one of `A`, `B`, …` (or "expected
/// `A`", "`A` or `B`"): the backquoted names after the first are the allowed keys.
fn suggestion(error: &toml::de::Error) -> Option<String> {
    let message = error.message();
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let allowed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    // The same rule as cargo's and rustc's suggestions: at most a third of the name differs.
    let limit = (unknown.chars().count() / 3).max(1);
    let (closest, _) = allowed
        .iter()
        .map(|key| (*key, strsim::damerau_levenshtein(unknown, key)))
        .filter(|(_, distance)| *distance <= limit)
        .min_by_key(|(_, distance)| *distance)?;
    let list = allowed
        .iter()
        .map(|key| format!("`{key}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "unknown key `{unknown}`: did you mean `{closest}`? (allowed here: {list})"
    ))
}

/// CORS origins as browsers send them: `scheme://host[:port]`, no path, no wildcard.
fn checked_origins(origins: &[String]) -> anyhow::Result<Vec<String>> {
    for origin in origins {
        let (scheme, rest) = origin.split_once("://").unwrap_or(("", ""));
        let well_formed = matches!(scheme, "http" | "https")
            && !rest.is_empty()
            && !rest.contains(['/', '*', ' '])
            && origin.is_ascii();
        anyhow::ensure!(
            well_formed,
            "cors_origins: {origin:?} is not an origin; write each as scheme://host[:port], \
             e.g. \"https://app.example.com\" (no path, no wildcard)"
        );
    }
    Ok(origins.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file() {
        let resolved = Config::default().resolve(Overrides::default()).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(resolved.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(resolved.data_dir, cwd.join("kiln-data"));
        assert_eq!(resolved.plugins_dir, cwd.join("plugins/dist"));
        assert_eq!(resolved.model_aliases, ["default", "embedding"]);
    }

    #[test]
    fn flags_beat_the_file() {
        let config: Config = toml::from_str(
            r#"
            addr = "127.0.0.1:9000"
            data_dir = "from-file"
            [types.documents]
            queue = "heavy"
            limits = { memory_mib = 512 }
            [queues.heavy]
            max_concurrent = 2
            "#,
        )
        .unwrap();
        let resolved = config
            .resolve(Overrides {
                addr: Some("127.0.0.1:9100".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(resolved.addr.port(), 9100);
        assert_eq!(
            resolved.data_dir,
            std::env::current_dir().unwrap().join("from-file")
        );
        assert_eq!(resolved.service.queue_of("documents"), "heavy");
        assert_eq!(resolved.service.limit_of("heavy"), 2);
        assert_eq!(resolved.service.limits_of("documents").memory_mib, 512);
        assert_eq!(resolved.runtime.max_memory_mib, 512);
    }

    #[test]
    fn max_per_key_is_a_positive_cap() {
        let config = |max: u32| -> Config {
            toml::from_str(&format!(
                "[queues.chat]\nmax_concurrent = 8\nmax_per_key = {max}"
            ))
            .unwrap()
        };
        let resolved = config(2).resolve(Overrides::default()).unwrap();
        assert_eq!(resolved.service.queue_limits("chat"), ("chat", 8, Some(2)));
        assert_eq!(resolved.service.key_limit_of("other"), None);
        let err = config(0).resolve(Overrides::default()).err().unwrap();
        assert!(
            err.to_string()
                .contains("[queues.chat] max_per_key must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn a_real_provider_needs_a_default_alias() {
        let config: Config = toml::from_str(
            "[providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"",
        )
        .unwrap();
        let err = config
            .resolve(Overrides::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no `default` alias"), "{err}");
    }

    #[test]
    fn cors_origins_must_be_origins() {
        for bad in [
            "*",
            "https://a.example/",
            "app.example.com",
            "https://*.example",
        ] {
            let config: Config = toml::from_str(&format!("cors_origins = [{bad:?}]")).unwrap();
            assert!(config.resolve(Overrides::default()).is_err(), "{bad}");
        }
        let config: Config = toml::from_str("cors_origins = [\"http://localhost:3000\"]").unwrap();
        let resolved = config.resolve(Overrides::default()).unwrap();
        assert_eq!(resolved.api.cors_origins, vec!["http://localhost:3000"]);
    }

    #[test]
    fn unknown_keys_and_bad_models_are_errors() {
        assert!(toml::from_str::<Config>("adr = \"x\"").is_err());
        let config: Config = toml::from_str("[models]\ndefault = \"nowhere/x\"").unwrap();
        let err = config
            .resolve(Overrides::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not configured"), "{err}");
    }

    #[test]
    fn paths_in_a_file_are_relative_to_its_folder() {
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("kiln.toml");
        std::fs::write(
            &file,
            "data_dir = \"state\"\nplugins_dir = \"../shared/wasm\"\n",
        )
        .unwrap();
        let resolved = Config::load(&file)
            .unwrap()
            .resolve(Overrides::default())
            .unwrap();
        assert_eq!(resolved.data_dir, folder.path().join("state"));
        assert_eq!(resolved.plugins_dir, folder.path().join("../shared/wasm"));
        assert_eq!(
            resolved.runtime.cache_dir,
            Some(folder.path().join("state/cache"))
        );

        // Flags stay relative to the working directory; absolute paths stay as they are.
        let cwd = std::env::current_dir().unwrap();
        let resolved = Config::load(&file)
            .unwrap()
            .resolve(Overrides {
                plugins_dir: Some("flag-plugins".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(resolved.plugins_dir, cwd.join("flag-plugins"));
        std::fs::write(&file, "plugins_dir = \"/opt/kiln/plugins\"\n").unwrap();
        let resolved = Config::load(&file)
            .unwrap()
            .resolve(Overrides::default())
            .unwrap();
        assert_eq!(resolved.plugins_dir, PathBuf::from("/opt/kiln/plugins"));
        // Keys the file leaves out get the working-directory defaults.
        assert_eq!(resolved.data_dir, cwd.join("kiln-data"));
    }

    #[test]
    fn a_misspelt_key_names_the_closest_one_first() {
        let text = "[providers.openai]\nkind = \"openai\"\nmax_concurent = 4\n";
        let message = Config::from_toml(text).err().unwrap().to_string();
        assert!(
            message.contains("unknown key `max_concurent`: did you mean `max_concurrent`?"),
            "{message}"
        );
        // Still says where, and still lists what is allowed, after the suggestion.
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("`requests_per_minute`"), "{message}");
        let top = Config::from_toml("plugin_dir = \"x\"")
            .err()
            .unwrap()
            .to_string();
        assert!(top.contains("did you mean `plugins_dir`?"), "{top}");
    }

    #[test]
    fn an_unknown_key_far_from_any_gets_no_suggestion() {
        let message = Config::from_toml("port = 8080").err().unwrap().to_string();
        assert!(!message.contains("did you mean"), "{message}");
        assert!(message.contains("unknown field `port`"), "{message}");
        assert!(message.contains("`addr`"), "{message}");
        // Other errors pass through untouched.
        let message = Config::from_toml("addr = 1").err().unwrap().to_string();
        assert!(!message.contains("did you mean"), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn the_store_is_redb_unless_a_database_url_is_given_and_the_flag_wins() {
        let cwd = std::env::current_dir().unwrap();
        let redb = Config::default().resolve(Overrides::default()).unwrap();
        assert!(
            matches!(&redb.store, StoreChoice::Redb(path) if *path == cwd.join("kiln-data/kiln.redb")),
            "{:?}",
            redb.store
        );
        let file =
            Config::from_toml("[store]\nurl = \"postgres://kiln:pw@file/kiln\"\npool_size = 4\n")
                .unwrap();
        let from_file = file.clone().resolve(Overrides::default()).unwrap();
        match &from_file.store {
            StoreChoice::Postgres(options) => {
                assert_eq!(options.url, "postgres://kiln:pw@file/kiln");
                assert_eq!(options.pool_size, 4);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            from_file.store.describe(),
            "postgres postgres://kiln:***@file/kiln"
        );
        assert_eq!(
            from_file.service.storage,
            "postgres postgres://kiln:***@file/kiln"
        );
        let flagged = file
            .resolve(Overrides {
                database_url: Some("postgres://kiln@flag/kiln".into()),
                ..Overrides::default()
            })
            .unwrap();
        assert!(
            matches!(&flagged.store, StoreChoice::Postgres(o) if o.url == "postgres://kiln@flag/kiln")
        );
        let zero = Config::from_toml("[store]\nurl = \"postgres://x/y\"\npool_size = 0\n")
            .unwrap()
            .resolve(Overrides::default());
        assert!(zero.is_err());
        assert!(Config::from_toml("[store]\nurll = \"x\"\n").is_err());
    }

    /// The providers a config builds report to the resolved metrics by an explicit handle:
    /// a call made outside any job's task is counted too, under the provider's name.
    #[test]
    fn providers_report_their_calls_to_the_servers_metrics() {
        let resolved = Config::from_toml(
            "[providers.local]\nkind = \"offline\"\nlatency_ms = 0\n[models]\ndefault = \"local/x\"\n",
        )
        .unwrap()
        .resolve(Overrides::default())
        .unwrap();
        let request = crate::llm::LlmRequest {
            messages: vec![crate::llm::Message::new(crate::llm::Role::User, "hello")],
            ..Default::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(resolved.llm.complete("test", &request, None))
            .unwrap();
        let text = resolved.metrics.render(&Default::default());
        assert!(
            text.contains("kiln_llm_calls_total{provider=\"local\"} 1"),
            "{text}"
        );
    }
}
