//! `kiln plugin new NAME [--lang rust|python|js] [--dir DIR]`: writes a project for job
//! type NAME that `kiln plugin build` builds as is, anywhere.
//!
//! The project needs nothing from Kiln's repository: the language's SDK and the contract
//! (`wit/v0.2.0/plugin.wit`) are compiled into the `kiln` binary and written into the
//! project. Every template has a payload schema, two progress stages, a streamed LLM
//! call, a partial, a unit test in the language's own runner, `example.json` and a README.
//!
//! ```text
//! rust:    Cargo.toml, src/lib.rs (the job type, with its test), kiln-plugin/ (the SDK
//!          crate and wit/), example.json, README.md, .gitignore
//! python:  pyproject.toml, app.py (the job type), test_app.py, kiln_plugin/ (the SDK),
//!          wit/, example.json, README.md, .gitignore
//! js:      package.json (pins the build tools), src/job.js, test/job.test.js,
//!          kiln-plugin/ (the SDK, with build.mjs), wit/, example.json, README.md,
//!          .gitignore
//! ```
//!
//! The Rust code is `examples/plugin-template`'s, renamed; the others are in
//! `plugins/templates/` (see [`super::templates`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use super::templates::{
    File, JS_SDK, JS_TEMPLATE, PYTHON_SDK, PYTHON_TEMPLATE, fill, project_path,
};

/// `kiln plugin new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The job type's name: a lowercase letter, then lowercase letters, digits, '-' or '_'.
    /// Also the name of the crate and of the folder created.
    pub name: String,
    /// The language to write the job type in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// The folder to create the project folder NAME in.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

/// The languages `kiln plugin new` writes projects in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the `kiln-plugin` crate; built with cargo.
    Rust,
    /// Python, with the `kiln_plugin` package; built with componentize-py.
    #[value(alias = "py")]
    Python,
    /// JavaScript (with TypeScript types), with the `kiln-plugin` package; built with
    /// esbuild and ComponentizeJS.
    #[value(alias = "javascript", alias = "ts", alias = "typescript")]
    Js,
}

/// The SDK's sources as they are in this build of Kiln, by path inside `kiln-plugin/`.
const SDK_SOURCES: [(&str, &str); 9] = [
    (
        "src/artifacts.rs",
        include_str!("../../../plugins/sdk/src/artifacts.rs"),
    ),
    (
        "src/files.rs",
        include_str!("../../../plugins/sdk/src/files.rs"),
    ),
    (
        "src/host.rs",
        include_str!("../../../plugins/sdk/src/host.rs"),
    ),
    (
        "src/testing.rs",
        include_str!("../../../plugins/sdk/src/testing.rs"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "src/llm.rs",
        include_str!("../../../plugins/sdk/src/llm.rs"),
    ),
    (
        "src/log.rs",
        include_str!("../../../plugins/sdk/src/log.rs"),
    ),
    (
        "src/progress.rs",
        include_str!("../../../plugins/sdk/src/progress.rs"),
    ),
    (
        "src/text.rs",
        include_str!("../../../plugins/sdk/src/text.rs"),
    ),
];

/// The contract the SDK generates its bindings from.
const CONTRACT: &str = include_str!("../../../wit/v0.2.0/plugin.wit");

/// Where the SDK's `lib.rs` finds the contract in the repository, and in a new project.
const CONTRACT_PATH_IN_REPO: &str = r#"path: "../../wit/v0.2.0","#;
const CONTRACT_PATH_IN_PROJECT: &str = r#"path: "wit","#;

/// The template's job type, the code every new project starts from.
const TEMPLATE: &str = include_str!("../../../examples/plugin-template/src/lib.rs");

/// The SDK's `Cargo.toml` in a new project: the repository's inherits from the workspace,
/// so this one spells the same dependencies out (a test keeps them equal).
const SDK_MANIFEST: &str = r#"[package]
name = "kiln-plugin"
description = "SDK for writing Kiln job types as WebAssembly components (written by `kiln plugin new`)"
version = "{version}"
edition = "2024"
license = "Apache-2.0"

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"
wit-bindgen = "0.46"
"#;

const MANIFEST: &str = r#"[package]
name = "{name}"
description = "Kiln job type `{name}`"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The Kiln plugin SDK, copied into this project by `kiln plugin new`.
kiln-plugin = { path = "kiln-plugin" }
serde = { version = "1", features = ["derive"] }

# Job types wait on LLM calls, not on the CPU: small components load fastest.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = "debuginfo"

# A project of its own, even inside another Cargo workspace.
[workspace]
"#;

const README: &str = r#"# `{name}`: a Kiln job type

Written by `kiln plugin new {name}` (Kiln {version}). It builds as is, wherever this folder
is: `kiln-plugin/` is Kiln's plugin SDK, with the contract it implements
(`kiln-plugin/wit/plugin.wit`, `kiln:plugin@0.2.0`).

```sh
kiln plugin build                                   # builds {name}.wasm, checks example.json
cargo test                                          # the unit test, natively
kiln plugin run {name}.wasm --payload @example.json --tokens
```

`kiln plugin build` runs `cargo build --release --target wasm32-wasip2` (adding the target
with rustup the first time) and copies the component to `{name}.wasm`. `kiln plugin run`
runs one job on the offline LLM provider (or, with `--config kiln.toml`, on your
configured providers) and prints its progress, partials, tokens and result.

## Serve it

Copy the component into the server's plugins folder and restart `kiln serve`:

```sh
cp {name}.wasm /path/to/plugins/
kiln submit {name} --payload @example.json --watch
```

## Make it yours

Everything is in `src/lib.rs`: change `Payload` and the JSON Schema in `info()` (the host
checks payloads against it before a job exists), the prompt, and `run`. The SDK's
reference is its rustdoc: `cargo doc -p kiln-plugin --open`.
"#;

pub(super) fn run(args: &NewArgs) -> anyhow::Result<ExitCode> {
    let project = args.dir.join(&args.name);
    let written = write_project(&args.name, args.lang, &project)?;
    let shown = std::path::absolute(&project).unwrap_or(project);
    eprintln!(
        "created {} ({} files): job type `{}`",
        shown.display(),
        written,
        args.name
    );
    eprintln!(
        "next: cd {} && kiln plugin build   (then see its README.md)",
        shown.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the project for job type `name` into `project`, which must not exist or be
/// empty. Returns how many files it wrote.
fn write_project(name: &str, lang: Lang, project: &Path) -> anyhow::Result<usize> {
    check_name(name)?;
    if let Ok(mut entries) = std::fs::read_dir(project) {
        anyhow::ensure!(
            entries.next().is_none(),
            "{} already exists and is not empty; choose another --dir or name",
            project.display()
        );
    }
    let files = match lang {
        Lang::Rust => project_files(name),
        Lang::Python => embedded_project(name, PYTHON_TEMPLATE, "kiln_plugin", PYTHON_SDK),
        Lang::Js => embedded_project(name, JS_TEMPLATE, "kiln-plugin", JS_SDK),
    };
    for (path, text) in &files {
        let path = project.join(path);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("creating {}", folder.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files.len())
}

/// A Python or JavaScript project: the template's files filled in, the SDK under
/// `sdk_dir/`, the contract under `wit/`.
fn embedded_project(
    name: &str,
    template: &[File],
    sdk_dir: &str,
    sdk: &[File],
) -> Vec<(PathBuf, String)> {
    let mut files: Vec<(PathBuf, String)> = template
        .iter()
        .map(|(path, text)| (PathBuf::from(project_path(path)), fill(text, name)))
        .collect();
    files.extend(
        sdk.iter()
            .map(|(path, text)| (Path::new(sdk_dir).join(path), text.to_string())),
    );
    files.push((PathBuf::from("wit/plugin.wit"), CONTRACT.to_string()));
    files
}

/// A job type name that is also a valid crate and library name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    anyhow::ensure!(
        valid,
        "{name:?} cannot be a job type and crate name: use up to 64 lowercase letters, digits, \
         '-' or '_', starting with a letter (e.g. \"weather-report\")"
    );
    anyhow::ensure!(
        file_stem(name) != "kiln_plugin",
        "\"{name}\" is the SDK's own crate name; choose another"
    );
    Ok(())
}

/// The component's file name without `.wasm`: Cargo's library name for the crate.
fn file_stem(name: &str) -> String {
    name.replace('-', "_")
}

/// `weather-report` -> `WeatherReport`: the job type's struct.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// Every file of the project, by path relative to its folder.
fn project_files(name: &str) -> Vec<(PathBuf, String)> {
    let version = env!("CARGO_PKG_VERSION");
    let fill = |text: &str| {
        text.replace("{name}", name)
            .replace("{file}", &file_stem(name))
            .replace("{version}", version)
    };
    let mut files = vec![
        (PathBuf::from("Cargo.toml"), fill(MANIFEST)),
        (PathBuf::from("README.md"), fill(README)),
        (PathBuf::from(".gitignore"), "/target\n".to_string()),
        (PathBuf::from("src/lib.rs"), job_type_source(name)),
        (
            PathBuf::from("example.json"),
            "{\"names\": [\"Ada\", \"Linus\"]}\n".to_string(),
        ),
        (PathBuf::from("kiln-plugin/Cargo.toml"), fill(SDK_MANIFEST)),
        (
            PathBuf::from("kiln-plugin/wit/plugin.wit"),
            CONTRACT.to_string(),
        ),
    ];
    for (path, text) in SDK_SOURCES {
        let text = text.replace(CONTRACT_PATH_IN_REPO, CONTRACT_PATH_IN_PROJECT);
        files.push((Path::new("kiln-plugin").join(path), text));
    }
    files
}

/// The template's code for job type `name`: its type name and struct renamed.
fn job_type_source(name: &str) -> String {
    let ty = type_name(name);
    TEMPLATE
        .replace("//! `greet`:", &format!("//! `{name}`:"))
        .replace(r#"Info::new("greet","#, &format!(r#"Info::new("{name}","#))
        .replace("struct Greet;", &format!("struct {ty};"))
        .replace(
            "impl JobType for Greet {",
            &format!("impl JobType for {ty} {{"),
        )
        .replace("export!(Greet);", &format!("export!({ty});"))
        .replace("run::<Greet>(", &format!("run::<{ty}>("))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_and_the_sdk_have_what_is_replaced() {
        for pattern in [
            "//! `greet`:",
            r#"Info::new("greet","#,
            "struct Greet;",
            "impl JobType for Greet {",
            "export!(Greet);",
            "run::<Greet>(",
        ] {
            assert_eq!(TEMPLATE.matches(pattern).count(), 1, "{pattern}");
        }
        let code = job_type_source("weather-report");
        assert!(code.contains(r#"Info::new("weather-report","#), "{code}");
        assert!(code.contains("export!(WeatherReport);"), "{code}");
        assert!(!code.contains("struct Greet") && !code.contains("\"greet\""));
        let (_, repo_lib) = SDK_SOURCES
            .iter()
            .find(|(path, _)| *path == "src/lib.rs")
            .unwrap();
        assert_eq!(repo_lib.matches(CONTRACT_PATH_IN_REPO).count(), 1);
        let files = project_files("x");
        let sdk_lib = &files
            .iter()
            .find(|(p, _)| p == Path::new("kiln-plugin/src/lib.rs"))
            .unwrap()
            .1;
        assert!(sdk_lib.contains(CONTRACT_PATH_IN_PROJECT));
    }

    #[test]
    fn the_embedded_sdk_depends_on_what_the_repository_sdk_does() {
        let workspace: toml::Table = toml::from_str(include_str!("../../../Cargo.toml")).unwrap();
        let repo_sdk: toml::Table =
            toml::from_str(include_str!("../../../plugins/sdk/Cargo.toml")).unwrap();
        let embedded: toml::Table = toml::from_str(SDK_MANIFEST).unwrap();
        let shared = &workspace["workspace"]["dependencies"];
        let repo_deps = repo_sdk["dependencies"].as_table().unwrap();
        let embedded_deps = embedded["dependencies"].as_table().unwrap();
        let names = |t: &toml::Table| t.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(repo_deps), names(embedded_deps));
        for (name, spec) in embedded_deps {
            assert_eq!(Some(spec), shared.get(name), "{name}");
        }
        // Every source file of the SDK is embedded.
        let mut on_disk: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sdk/src"))
                .unwrap()
                .map(|e| format!("src/{}", e.unwrap().file_name().to_string_lossy()))
                .collect();
        on_disk.sort();
        let mut embedded: Vec<&str> = SDK_SOURCES.iter().map(|(p, _)| *p).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn names_must_be_job_type_and_crate_names() {
        for good in ["greet", "weather-report", "a1_b2"] {
            check_name(good).unwrap();
        }
        for bad in ["", "Greet", "1st", "-x", "has space", "kiln-plugin", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(type_name("weather-report_v2"), "WeatherReportV2");
    }

    #[test]
    fn an_existing_project_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("mine");
        assert_eq!(write_project("mine", Lang::Rust, &project).unwrap(), 16);
        std::fs::write(project.join("src/lib.rs"), "// my work").unwrap();
        let err = write_project("mine", Lang::Python, &project)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
        let kept = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
        assert_eq!(kept, "// my work");
        // An empty folder is fine.
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        write_project("empty", Lang::Js, &dir.path().join("empty")).unwrap();
        assert!(dir.path().join("empty/kiln-plugin/build.mjs").is_file());
        assert!(dir.path().join("empty/.gitignore").is_file());
    }
}
