//! Kiln's black-box tests: one binary, one module per area. Every test runs real parts:
//! components built from `plugins/` (run `scripts/build-plugins` first), a real redb file
//! in a temp dir, a real HTTP server on 127.0.0.1:0, real HTTP and SSE clients.

mod pg;
mod support;

mod api;
mod auth;
mod bad_input;
mod batches;
mod browser;
mod cli;
mod cluster;
mod compat;
mod concurrency_keys;
mod contract_v2;
mod crash;
mod dependencies;
mod durability;
mod fairness;
mod fake_provider;
mod feed;
mod fuzz;
mod journal;
mod languages;
mod lifecycle;
mod metrics;
mod openapi;
mod ops;
mod plugin_cli;
mod plugin_limits;
mod plugin_new;
mod postgres;
mod providers;
mod providers_e2e;
mod runtime;
mod sandbox;
mod schedules;
mod sse;
mod startup;
mod storage;
mod webhooks;
