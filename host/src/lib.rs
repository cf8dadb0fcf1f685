//! Kiln: a self-hosted job server for long-running AI generation.
//!
//! # Layout
//!
//! Each folder owns one concern; dependencies point one way, downwards in this list:
//!
//! - `cli/`: the `kiln` command line (`serve`, `plugin check`, `plugin run`, …). Thin.
//! - `api/`: the HTTP API (axum routes, SSE, the error shape). Talks to `jobs/`.
//! - `jobs/`: the scheduler: queues, limits, retries, timeouts, cancellation, recovery,
//!   expiry. Uses `store/` for state and `runtime/` to run attempts.
//! - `store/`: redb tables and the only module that opens transactions (group commit).
//! - `runtime/`: the wasmtime sandbox that runs job types; reaches `llm/` only through the
//!   host imports it implements.
//! - `llm/`: LLM providers behind the [`llm::LlmClient`] trait, including `offline`.
//! - `monitor`: metrics (`/metrics`), recent queue figures and the queue health rule.
//! - `config`: the TOML file, `KILN_*` variables and flags, merged.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod jobs;
pub mod llm;
pub mod monitor;
pub mod runtime;
pub mod server;
pub mod store;
