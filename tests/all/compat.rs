//! Compatibility: released contract files never change, and components built for an
//! older contract by the older SDK keep loading and running on this host.
//!
//! The components are built copies kept in `tests/fixtures/contract-v0.1.0/` (see its
//! README for the commit they were built from), never rebuilt from today's sources.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use kiln::runtime::ComponentCache;

use crate::support::*;

/// Every released WIT file, by path, with the SHA-256 it was released with.
const RELEASED_CONTRACTS: &[(&str, &str)] = &[
    (
        "wit/v0.1.0/plugin.wit",
        "9912c1497d591d79c180070321222b2a7e37018c70ecc2f9a808196f6ca6bcd0",
    ),
    (
        "wit/v0.2.0/plugin.wit",
        "feabee7a28b47ea87225760d828211015e1f9d59d40ef8d6b35e4268e9d41ce3",
    ),
];

/// The components built for 0.1.0, with the SHA-256 the fixtures README lists.
const V0_1_0_COMPONENTS: &[(&str, &str)] = &[
    (
        "characters",
        "7b145966887a829ccc0b21570490b99784a892432b9059e8cca51f3cbe552de9",
    ),
    (
        "factions",
        "b3bcc1390f87efc2cbd77eadfbdace4ce975588ba31c51eeca9db650e34c137a",
    ),
    (
        "documents",
        "b06aaa92d1203f165dfdd767e2683b38fada2c87cb3f63697aeef0f7b9aeb48b",
    ),
    (
        "noop",
        "5183adf7f387e55205953bf2d873f958cd1af302643330e48715f0dfd4499d07",
    ),
];

fn v0_1_0_component(name: &str) -> PathBuf {
    repo_root().join(format!("tests/fixtures/contract-v0.1.0/{name}.wasm"))
}

#[test]
fn released_contract_files_are_never_edited() {
    for (path, released) in RELEASED_CONTRACTS {
        let bytes = std::fs::read(repo_root().join(path)).unwrap();
        assert_eq!(
            &ComponentCache::digest(&bytes),
            released,
            "{path} changed after its release: a new contract gets a new folder and version"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn components_built_for_v0_1_0_run_end_to_end_on_this_host() {
    let plugins = tempfile::tempdir().unwrap();
    for (name, sha256) in V0_1_0_COMPONENTS {
        let bytes = std::fs::read(v0_1_0_component(name)).unwrap();
        assert_eq!(
            &ComponentCache::digest(&bytes),
            sha256,
            "the kept {name}.wasm changed: it must stay the old build"
        );
        std::fs::write(plugins.path().join(format!("{name}.wasm")), bytes).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    seed_cache(data.path());
    let kiln = InProcess::start_in(data, plugins, "").await;
    let theme = json!({"theme": "tide-bound monasteries", "count": 2});
    let text = "The keeper lit the lamp. Ships passed in the night.\n\n".repeat(20);
    for (job_type, payload) in [
        ("characters", theme.clone()),
        ("factions", theme),
        ("documents", json!({ "text": text })),
        ("noop", json!({})),
    ] {
        let id = submit_ok(
            &kiln.client,
            &kiln.base,
            json!({"type": job_type, "payload": payload}),
        )
        .await;
        let events = all_events(&kiln.client, &kiln.base, &id, Duration::from_secs(60)).await;
        assert_eq!(
            events.last().map(|e| e.event.as_str()),
            Some("completed"),
            "{job_type}: {events:#?}"
        );
        let job = wait_terminal(&kiln.client, &kiln.base, &id, Duration::from_secs(10)).await;
        assert!(!job["result"].is_null(), "{job_type}: {job:#}");
        if job_type == "characters" {
            let characters = job["result"].as_array().unwrap();
            assert_eq!(characters.len(), 2, "{job:#}");
            assert!(characters[0]["stats"]["strength"].is_i64(), "{job:#}");
        }
    }
    save_cache(kiln.data.path());
}
