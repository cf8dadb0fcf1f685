//! The build tools `kiln plugin build` runs, found on the machine or installed by Kiln.
//!
//! Rust projects use the machine's `cargo` with the `wasm32-wasip2` target. Python
//! projects use componentize-py, which Kiln installs with pip into a private virtual
//! environment under the toolchains folder the first time it is needed, pinned to the
//! version this Kiln is tested with. JavaScript projects pin their tools in their own
//! `package.json`, and npm installs them into the project's `node_modules`.
//!
//! When a tool cannot be had (no `python3`, no `node`), the error names what is missing and
//! how to get it, instead of a bare "No such file or directory".

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The componentize-py release Python job types are built with. Kiln's tests build the
/// template and the bundled `settings` job type with exactly this version.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The oldest Python the toolchain and the SDK's native unit tests run on (the generated
/// bindings use `typing.Self`, the SDK `tomllib`: both 3.11).
const MIN_PYTHON: (u32, u32) = (3, 11);

/// The oldest Node.js the JavaScript build tools run on.
const MIN_NODE_MAJOR: u32 = 20;

/// Where Kiln keeps what it downloads or compiles for the command line: `KILN_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`. `None` when none of them is set.
pub fn user_cache_dir() -> Option<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    from_env("KILN_CACHE_DIR")
        .or_else(|| from_env("XDG_CACHE_HOME").map(|dir| dir.join("kiln")))
        .or_else(|| from_env("HOME").map(|dir| dir.join(".cache/kiln")))
}

/// The folder build toolchains are installed into: `KILN_TOOLCHAINS_DIR`, else
/// `toolchains/` under [`user_cache_dir`].
fn toolchains_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KILN_TOOLCHAINS_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    user_cache_dir()
        .map(|dir| dir.join("toolchains"))
        .context("no folder for build tools: set KILN_TOOLCHAINS_DIR (or KILN_CACHE_DIR, or HOME)")
}

/// Runs `command`, its output going to the terminal; fails naming `what` when it cannot
/// start or exits non-zero.
pub fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {what} ({})", program_name(command)))?;
    if !status.success() {
        bail!("{what} failed ({status}); its output is above");
    }
    Ok(())
}

fn program_name(command: &Command) -> String {
    command.get_program().to_string_lossy().into_owned()
}

/// What `program --version` prints, or `None` when it cannot be run.
fn version_of(program: &OsStr) -> Option<String> {
    let output = Command::new(program).arg("--version").output().ok()?;
    output.status.success().then(|| {
        let text = String::from_utf8_lossy(&output.stdout);
        let text = if text.trim().is_empty() {
            String::from_utf8_lossy(&output.stderr).into_owned()
        } else {
            text.into_owned()
        };
        text.trim().to_string()
    })
}

/// The leading `major.minor` of a version line such as `Python 3.11.7` or `v20.20.2`.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let digits = version.split_whitespace().last()?.trim_start_matches('v');
    let mut parts = digits.split('.').map(|part| part.parse::<u32>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// The componentize-py program of the pinned version, installing it first if needed.
pub fn componentize_py() -> anyhow::Result<PathBuf> {
    let version = COMPONENTIZE_PY.trim_start_matches("componentize-py==");
    let venv = toolchains_dir()?.join(format!("componentize-py-{version}"));
    let program = venv.join("bin/componentize-py");
    // Written last: a venv without it is a half install (interrupted), made again. A venv
    // cannot be built elsewhere and moved in: its scripts name their interpreter's path.
    let ready = venv.join("kiln-installed");
    if ready.exists() && program.exists() {
        return Ok(program);
    }
    let python = python3()?;
    eprintln!(
        "kiln plugin build: installing {COMPONENTIZE_PY} into {} (once)",
        venv.display()
    );
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(venv.parent().context("toolchain folder has no parent")?)?;
    let made = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv")?;
    if !made.success() {
        let _ = std::fs::remove_dir_all(&venv);
        bail!(
            "python3 could not create a virtual environment; install the venv module \
             (Debian/Ubuntu: `apt install python3-venv`) and run `kiln plugin build` again"
        );
    }
    let installed = run(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            COMPONENTIZE_PY,
        ]),
        "pip install componentize-py",
    );
    if let Err(error) = installed {
        let _ = std::fs::remove_dir_all(&venv);
        return Err(error.context(format!(
            "installing {COMPONENTIZE_PY} from PyPI (is the network or your PyPI mirror \
             reachable? pip reads PIP_INDEX_URL)"
        )));
    }
    std::fs::write(&ready, COMPONENTIZE_PY)
        .with_context(|| format!("writing {}", ready.display()))?;
    Ok(program)
}

/// A Python 3 interpreter new enough for componentize-py: `KILN_PYTHON`, else `python3`.
fn python3() -> anyhow::Result<PathBuf> {
    let program = std::env::var_os("KILN_PYTHON")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "python3".into());
    let Some(version) = version_of(&program) else {
        bail!(
            "Python job types are built with componentize-py, which needs Python {}.{} or \
             newer, and `{}` was not found; install Python 3 (Debian/Ubuntu: `apt install \
             python3 python3-venv`; macOS: `brew install python`) or point KILN_PYTHON at one",
            MIN_PYTHON.0,
            MIN_PYTHON.1,
            program.to_string_lossy()
        );
    };
    match major_minor(&version) {
        Some(found) if found >= MIN_PYTHON => Ok(PathBuf::from(program)),
        _ => bail!(
            "`{}` is {version}; componentize-py needs Python {}.{} or newer (set KILN_PYTHON \
             to a newer interpreter)",
            program.to_string_lossy(),
            MIN_PYTHON.0,
            MIN_PYTHON.1
        ),
    }
}

/// Checks that `node` and `npm` are there and new enough for the JavaScript build tools.
pub fn require_node() -> anyhow::Result<()> {
    let hint = "install Node.js 20 or newer with npm (https://nodejs.org, or Debian/Ubuntu: \
                `apt install nodejs npm`)";
    let Some(version) = version_of(OsStr::new("node")) else {
        bail!("JavaScript job types are built with Node.js, and `node` was not found; {hint}");
    };
    match major_minor(&version) {
        Some((major, _)) if major >= MIN_NODE_MAJOR => {}
        _ => bail!("`node` is {version}, too old for the build tools; {hint}"),
    }
    if version_of(OsStr::new("npm")).is_none() {
        bail!("`npm` was not found (Node.js is there); {hint}");
    }
    Ok(())
}

/// Checks that `cargo` is there and has the `wasm32-wasip2` target, adding the target
/// with rustup when rustup is there.
pub fn require_cargo_wasm_target() -> anyhow::Result<()> {
    if version_of(OsStr::new("cargo")).is_none() {
        bail!(
            "Rust job types are built with cargo, and `cargo` was not found; install Rust \
             with rustup (https://rustup.rs)"
        );
    }
    let Ok(listed) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        // No rustup: cargo itself reports a missing target clearly enough.
        return Ok(());
    };
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|line| line.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    eprintln!("kiln plugin build: adding the wasm32-wasip2 target (rustup target add, once)");
    run(
        Command::new("rustup").args(["target", "add", "wasm32-wasip2"]),
        "rustup target add wasm32-wasip2",
    )
}

/// Whether `project`'s npm packages need installing: no `node_modules`, or `package.json`
/// changed since npm last installed them.
pub fn npm_install_needed(project: &Path) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (
        modified(&project.join("package.json")),
        modified(&project.join("node_modules/.package-lock.json")),
    ) {
        (Some(manifest), Some(installed)) => manifest > installed,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_what_the_tools_print() {
        assert_eq!(major_minor("Python 3.11.7"), Some((3, 11)));
        assert_eq!(major_minor("v20.20.2"), Some((20, 20)));
        assert_eq!(major_minor("10"), Some((10, 0)));
        assert_eq!(major_minor("Python"), None);
    }

    #[test]
    fn the_pin_is_one_exact_version() {
        let version = COMPONENTIZE_PY.strip_prefix("componentize-py==").unwrap();
        semver::Version::parse(version).unwrap();
    }
}
