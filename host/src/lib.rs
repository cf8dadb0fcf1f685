//! Kiln: a self-hosted job server for long-running AI generation.
//!
//! # Layout
//!
//! Each folder owns one concern; dependencies point one way, downwards in this list:
//!
//! - `cli/`: the `kiln` command line (`serve`, `plugin check`, `plugin run`, …). Thin.
//! - `api/`: the HTTP API (axum routes, SSE framing, the error shape). Talks to `jobs/`
//!   only (it uses the store's record types through `jobs/`'s re-exports).
//! - `jobs/`: the scheduler: queues (shared fairly between concurrency keys,
//!   `jobs/queues.rs`), limits, retries, timeouts, cancellation, recovery,
//!   expiry; the job lifecycle's transitions (`jobs/lifecycle.rs`), batches
//!   (`jobs/batches.rs`), schedules (`jobs/schedules.rs`, ticking on the leader), sending webhooks (`jobs/webhooks.rs`; the API hands it the job's
//!   JSON shape at start) and following an event log (`jobs/events.rs`). Uses `store/` for
//!   state and `runtime/` to run attempts.
//! - `store/`: the storage contract over two backends (`redb/`, the embedded default, and
//!   `postgres/`), the only module that opens transactions (group commit, `batch.rs`),
//!   where upload and artifact bytes are kept (`bytes.rs`), and the live event bus. Its
//!   writer keeps each batch's counts and log, the webhook delivery of each job that ends
//!   (the outbox), and the release of the jobs waiting on it (by the rule `jobs/` gives
//!   it, `lifecycle::release`), in the same commit as its jobs' changes.
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
