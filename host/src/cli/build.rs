//! `kiln plugin build [DIR]`: builds the job type project in DIR into `DIR/NAME.wasm`,
//! whatever its language, then loads the result as `kiln serve` would and checks the
//! project's `example.json` against the payload schema the component declares.
//!
//! The language is read off the project's manifest: `Cargo.toml` (Rust, built with cargo
//! for `wasm32-wasip2`), `pyproject.toml` (Python, built with componentize-py) or
//! `package.json` (JavaScript or TypeScript, built by the SDK's `build.mjs` with the
//! tools the project pins). NAME is the project's name in that manifest, which
//! `kiln plugin new` sets to the job type's name.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

use super::plugin;
use super::toolchain;

/// `kiln plugin build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The project folder (with Cargo.toml, pyproject.toml or package.json).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// The languages a project can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    Rust,
    Python,
    JavaScript,
}

/// A project found in a folder.
#[derive(Debug)]
struct Project {
    dir: PathBuf,
    language: Language,
    name: String,
}

impl Project {
    /// Reads the project in `dir` from its manifest.
    fn open(dir: &Path) -> anyhow::Result<Self> {
        let manifest = |file: &str| dir.join(file);
        let (language, name) = if manifest("Cargo.toml").is_file() {
            let text = read(&manifest("Cargo.toml"))?;
            let table: toml::Table = toml::from_str(&text).context("reading Cargo.toml")?;
            (Language::Rust, table_name(&table, "package", "Cargo.toml")?)
        } else if manifest("pyproject.toml").is_file() {
            let text = read(&manifest("pyproject.toml"))?;
            let table: toml::Table = toml::from_str(&text).context("reading pyproject.toml")?;
            (
                Language::Python,
                table_name(&table, "project", "pyproject.toml")?,
            )
        } else if manifest("package.json").is_file() {
            let text = read(&manifest("package.json"))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).context("reading package.json")?;
            let name = json["name"]
                .as_str()
                .context("package.json has no \"name\"")?
                .to_string();
            (Language::JavaScript, name)
        } else {
            bail!(
                "{} holds no job type project: expected Cargo.toml (Rust), pyproject.toml \
                 (Python) or package.json (JavaScript); `kiln plugin new NAME --lang LANG` \
                 writes one",
                dir.display()
            );
        };
        // The name becomes a file name: keep it to what `kiln plugin new` allows.
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        anyhow::ensure!(
            plain,
            "the project name {name:?} cannot name the .wasm file; use letters, digits, '-' or '_'"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            language,
            name,
        })
    }

    fn output(&self) -> PathBuf {
        self.dir.join(format!("{}.wasm", self.name))
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `[section] name = "..."` of a TOML manifest.
fn table_name(table: &toml::Table, section: &str, file: &str) -> anyhow::Result<String> {
    table
        .get(section)
        .and_then(|s| s.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .with_context(|| format!("{file} has no [{section}] name"))
}

pub(super) async fn run(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let project = Project::open(&dir)?;
    let started = Instant::now();
    let output = project.output();
    // A failed build must not leave the previous component looking like its result.
    let _ = std::fs::remove_file(&output);
    match project.language {
        Language::Rust => build_rust(&project)?,
        Language::Python => build_python(&project)?,
        Language::JavaScript => build_javascript(&project)?,
    }
    anyhow::ensure!(
        output.is_file(),
        "the build ended without writing {}",
        output.display()
    );
    eprintln!(
        "built {} ({:.1} MB) in {:.1} s",
        output.display(),
        std::fs::metadata(&output)?.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let example = project.dir.join("example.json");
    plugin::check_built(&output, example.is_file().then_some(example.as_path())).await
}

/// `cargo build --release --target wasm32-wasip2`, then the crate's component copied to
/// `NAME.wasm`. Cargo's JSON messages say where the component is, so a workspace or a
/// `CARGO_TARGET_DIR` elsewhere is no matter.
fn build_rust(project: &Project) -> anyhow::Result<()> {
    toolchain::require_cargo_wasm_target()?;
    let output = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&project.dir)
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo")?;
    anyhow::ensure!(
        output.status.success(),
        "cargo build failed ({}); its output is above",
        output.status
    );
    let component = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["package_id"]
                    .as_str()
                    .is_some_and(|id| package_id_names(id, &project.name))
        })
        .flat_map(|message| message["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|file| file.as_str().map(PathBuf::from))
        .find(|file| file.extension().is_some_and(|e| e == "wasm"))
        .with_context(|| {
            format!(
                "cargo built no .wasm for package {}: is it a `crate-type = [\"cdylib\"]` \
                 library?",
                project.name
            )
        })?;
    std::fs::copy(&component, project.output())
        .with_context(|| format!("copying {}", component.display()))?;
    Ok(())
}

/// Whether a cargo package id (`path+file:///x/greet#0.1.0`, `path+file:///x#greet@0.1.0`
/// or the older `greet 0.1.0 (path+file:///x)`) belongs to package `name`.
fn package_id_names(id: &str, name: &str) -> bool {
    if let Some((_, fragment)) = id.rsplit_once('#') {
        return match fragment.split_once('@') {
            Some((package, _)) => package == name,
            // `#0.1.0`: the package is the last path segment.
            None => id
                .split('#')
                .next()
                .and_then(|url| url.rsplit('/').next())
                .is_some_and(|last| last == name),
        };
    }
    id.split_whitespace().next() == Some(name)
}

/// componentize-py, twice: the bindings first (the SDK imports their types, and the unit
/// tests run against them natively), then the component, whose entry module imports the
/// project's `app.py` and the SDK's exported `JobType`.
fn build_python(project: &Project) -> anyhow::Result<()> {
    let dir = &project.dir;
    anyhow::ensure!(
        dir.join("app.py").is_file(),
        "{} has no app.py: a Python job type's code is in app.py (see `kiln plugin new NAME \
         --lang python`)",
        dir.display()
    );
    anyhow::ensure!(
        dir.join("kiln_plugin").is_dir(),
        "{} has no kiln_plugin/ (the SDK): `kiln plugin new NAME --lang python` writes it",
        dir.display()
    );
    anyhow::ensure!(
        dir.join("wit").is_dir(),
        "{} has no wit/ (the contract): `kiln plugin new NAME --lang python` writes it",
        dir.display()
    );
    let componentize_py = toolchain::componentize_py()?;
    // componentize-py reads Python files inside a WASI sandbox that sees only the `-p`
    // folders and follows no symlink out of them: an SDK linked in from elsewhere (as in
    // Kiln's own repository) needs its real folder mounted too.
    let sdk = std::fs::canonicalize(dir.join("kiln_plugin"))
        .with_context(|| format!("resolving {}", dir.join("kiln_plugin").display()))?;
    let sdk_parent = sdk.parent().context("the SDK folder has no parent")?;
    let linked_sdk = (sdk_parent != std::fs::canonicalize(dir)?).then_some(sdk_parent);
    let build = dir.join("build");
    let bindings = build.join("bindings");
    let _ = std::fs::remove_dir_all(&bindings);
    std::fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    let world = ["-d", "wit", "-w", "job-plugin"];
    toolchain::run(
        Command::new(&componentize_py)
            .args(world)
            .arg("bindings")
            .arg(&bindings)
            .current_dir(dir),
        "componentize-py bindings",
    )?;
    std::fs::write(
        build.join("kiln_entry.py"),
        "# Written by `kiln plugin build`: the component's entry module.\n\
         import app  # noqa: F401  (the job type registers itself with kiln_plugin)\n\
         from kiln_plugin.component import JobType  # noqa: F401  (the export)\n",
    )?;
    let mut componentize = Command::new(&componentize_py);
    componentize
        .args(world)
        .args(["componentize", "kiln_entry", "-p", "build", "-p", "."]);
    if let Some(folder) = linked_sdk {
        componentize.arg("-p").arg(folder);
    }
    toolchain::run(
        componentize
            .arg("-o")
            .arg(project.output())
            .current_dir(dir)
            // A Python error at build time is the author's to read; componentize-py's own
            // Rust backtrace after it is noise.
            .env("RUST_BACKTRACE", "0"),
        "componentize-py componentize",
    )
}

/// npm installs the tools the project pins (when `node_modules` is missing or older than
/// `package.json`), then the SDK's `build.mjs` bundles and componentizes the project.
fn build_javascript(project: &Project) -> anyhow::Result<()> {
    let dir = &project.dir;
    let script = dir.join("kiln-plugin/build.mjs");
    anyhow::ensure!(
        script.is_file(),
        "{} has no kiln-plugin/build.mjs (the SDK): `kiln plugin new NAME --lang js` writes it",
        dir.display()
    );
    toolchain::require_node()?;
    if toolchain::npm_install_needed(dir) {
        eprintln!("kiln plugin build: npm install (the build tools package.json pins)");
        toolchain::run(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(dir),
            "npm install",
        )?;
    }
    toolchain::run(
        Command::new("node")
            .arg(&script)
            .arg(project.output())
            .current_dir(dir),
        "kiln-plugin/build.mjs",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_ids_of_every_cargo_format_are_matched() {
        assert!(package_id_names("path+file:///x/greet#0.1.0", "greet"));
        assert!(package_id_names("path+file:///x/y#greet@0.1.0", "greet"));
        assert!(package_id_names("greet 0.1.0 (path+file:///x)", "greet"));
        assert!(!package_id_names(
            "path+file:///x/kiln-plugin#0.1.0",
            "greet"
        ));
        assert!(!package_id_names(
            "registry+https://github.com/rust-lang/crates.io-index#serde@1.0.0",
            "greet"
        ));
    }

    #[test]
    fn a_folder_without_a_manifest_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let error = Project::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("pyproject.toml"), "{error}");
        std::fs::write(
            dir.path().join("pyproject.toml"),
            "[project]\nname = \"quests\"\n",
        )
        .unwrap();
        let project = Project::open(dir.path()).unwrap();
        assert_eq!(project.language, Language::Python);
        assert_eq!(project.output(), dir.path().join("quests.wasm"));
        std::fs::write(
            dir.path().join("pyproject.toml"),
            "[project]\nname = \"../x\"\n",
        )
        .unwrap();
        assert!(Project::open(dir.path()).is_err());
    }
}
