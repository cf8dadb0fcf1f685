//! `kiln plugin new`: a project written into a folder outside the repository builds with
//! plain `cargo build --release --target wasm32-wasip2`, and the component it makes, at
//! the path its README names, passes `kiln plugin check` and runs with `kiln plugin run`.
//!
//! The wasm build shares one target dir under the repository's `target/plugin-new/`, so
//! the dependencies compile once and later runs take seconds.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::repo_root;

/// What one command did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `command` in `dir` to its end, within `guard`.
fn run(mut command: Command, dir: &Path, guard: Duration) -> Ran {
    let child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the command");
    let started = Instant::now();
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(guard) {
        Ok(output) => output.expect("waiting for the command"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
            panic!("{command:?} did not finish within {guard:?}");
        }
    };
    eprintln!("{command:?}: {:.1} s", started.elapsed().as_secs_f64());
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn kiln(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln-test-server"));
    command.args(args).env("KILN_LOG", "warn");
    command
}

#[test]
fn a_new_project_outside_the_repo_builds_as_is_and_passes_the_check() {
    let outside = tempfile::tempdir().unwrap();
    let repo = repo_root().canonicalize().unwrap();
    assert!(
        !outside.path().canonicalize().unwrap().starts_with(&repo),
        "the temp dir must be outside the repository"
    );
    let dir = outside.path().to_str().unwrap();
    let out = run(
        kiln(&["plugin", "new", "tide-tables", "--dir", dir]),
        outside.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let project = outside.path().join("tide-tables");
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let component = "target/wasm32-wasip2/release/tide_tables.wasm";
    assert!(readme.contains(component), "{readme}");
    assert!(
        readme.contains("cargo build --release --target wasm32-wasip2\n"),
        "{readme}"
    );

    // Exactly the README's build command; only the target dir is shared, for speed.
    let target_dir = repo.join("target/plugin-new");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir);
    let built = run(cargo, &project, Duration::from_secs(900));
    assert_eq!(built.code, Some(0), "{built}");
    let wasm = target_dir.join(component.strip_prefix("target/").unwrap());
    assert!(wasm.is_file(), "no {}:\n{built}", wasm.display());

    let wasm = wasm.to_str().unwrap();
    let checked = run(
        kiln(&["plugin", "check", wasm]),
        &project,
        Duration::from_secs(120),
    );
    assert_eq!(checked.code, Some(0), "{checked}");
    assert!(
        checked.stdout.contains("type:        tide-tables"),
        "{checked}"
    );
    let ran = run(
        kiln(&[
            "plugin",
            "run",
            wasm,
            "--payload",
            r#"{"names": ["Ada", "Linus"]}"#,
        ]),
        &project,
        Duration::from_secs(120),
    );
    assert_eq!(ran.code, Some(0), "{ran}");
    let result: Value = serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {ran}"));
    assert_eq!(
        result["greetings"].as_array().map(Vec::len),
        Some(2),
        "{ran}"
    );
}

#[test]
fn plugin_new_refuses_bad_names_and_existing_projects() {
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().to_str().unwrap();
    let out = run(
        kiln(&["plugin", "new", "Tide Tables", "--dir", dir]),
        outside.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("lowercase letters"), "{out}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

    let first = run(
        kiln(&["plugin", "new", "tides", "--dir", dir]),
        outside.path(),
        Duration::from_secs(60),
    );
    assert_eq!(first.code, Some(0), "{first}");
    let lib = outside.path().join("tides/src/lib.rs");
    std::fs::write(&lib, "// my own work").unwrap();
    let again = run(
        kiln(&["plugin", "new", "tides", "--dir", dir]),
        outside.path(),
        Duration::from_secs(60),
    );
    assert_eq!(again.code, Some(1), "{again}");
    assert!(again.stderr.contains("already exists"), "{again}");
    assert_eq!(std::fs::read_to_string(&lib).unwrap(), "// my own work");
}
