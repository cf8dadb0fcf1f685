//! The Python and JavaScript projects `kiln plugin new --lang python|js` writes: the
//! templates in `plugins/templates/<lang>/` and the SDKs in `plugins/sdk-python/` and
//! `plugins/sdk-js/`, compiled into the `kiln` binary so that `new` needs no network and
//! writes exactly what this Kiln was tested with. Tests keep these lists equal to the
//! folders on disk.
//!
//! In template files `{{name}}` is the job type's name and `{{kiln_version}}` this Kiln's
//! version; a file named `gitignore` is written as `.gitignore` (a file of that name in
//! the repository would hide the template's own files from git).

/// One embedded file: its path inside the project, and its text.
pub type File = (&'static str, &'static str);

/// Embeds files of one repository folder, by path relative to it.
macro_rules! embed {
    ($base:literal, [$($path:literal),* $(,)?]) => {
        &[$(($path, include_str!(concat!("../../../", $base, "/", $path)))),*]
    };
}

/// The Python template: `app.py` (the job type), its unit test, the manifest, the example
/// payload and the README.
pub const PYTHON_TEMPLATE: &[File] = embed!(
    "plugins/templates/python",
    [
        "README.md",
        "app.py",
        "example.json",
        "gitignore",
        "pyproject.toml",
        "test_app.py",
    ]
);

/// The Python SDK, written as the project's `kiln_plugin/` package.
pub const PYTHON_SDK: &[File] = embed!(
    "plugins/sdk-python/kiln_plugin",
    [
        "__init__.py",
        "_bindings.py",
        "_events.py",
        "_host.py",
        "_job.py",
        "_schema.py",
        "artifacts.py",
        "component.py",
        "errors.py",
        "files.py",
        "llm.py",
        "log.py",
        "testing.py",
    ]
);

/// The JavaScript template: `src/job.js` (the job type), its `node --test` test, the
/// manifest pinning the build tools, the example payload and the README.
pub const JS_TEMPLATE: &[File] = embed!(
    "plugins/templates/js",
    [
        "README.md",
        "example.json",
        "gitignore",
        "package.json",
        "src/job.js",
        "test/job.test.js",
    ]
);

/// The JavaScript SDK, written as the project's `kiln-plugin/` package.
pub const JS_SDK: &[File] = embed!(
    "plugins/sdk-js",
    [
        "README.md",
        "build.mjs",
        "component.js",
        "index.d.ts",
        "index.js",
        "package.json",
        "sourcemap.js",
        "testing.d.ts",
        "testing.js",
    ]
);

/// Fills a template file's placeholders.
pub fn fill(text: &str, name: &str) -> String {
    text.replace("{{name}}", name)
        .replace("{{kiln_version}}", env!("CARGO_PKG_VERSION"))
}

/// A template file's path in the project (`gitignore` becomes `.gitignore`).
pub fn project_path(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((folder, "gitignore")) => format!("{folder}/.gitignore"),
        None if path == "gitignore" => ".gitignore".to_string(),
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every file under `dir` (relative paths), leaving out what builds and installs make
    /// and the SDKs' own tests (run from the repository, not shipped).
    fn files_on_disk(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(folder) = stack.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if matches!(
                    name.as_str(),
                    "node_modules" | "build" | "__pycache__" | "package-lock.json" | "tests"
                ) || name.ends_with(".wasm")
                {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let relative = path.strip_prefix(dir).unwrap();
                    found.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn every_template_and_sdk_file_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (folder, files) in [
            ("plugins/templates/python", PYTHON_TEMPLATE),
            ("plugins/sdk-python/kiln_plugin", PYTHON_SDK),
            ("plugins/templates/js", JS_TEMPLATE),
            ("plugins/sdk-js", JS_SDK),
        ] {
            let mut embedded: Vec<String> = files.iter().map(|(p, _)| p.to_string()).collect();
            embedded.sort();
            assert_eq!(files_on_disk(&root.join(folder)), embedded, "{folder}");
        }
    }

    /// New projects build with exactly the tools the bundled JavaScript job types (built
    /// and tested by CI) pin.
    #[test]
    fn the_js_template_pins_the_tools_the_bundled_js_projects_use() {
        let tools = |text: &str| {
            let manifest: serde_json::Value = serde_json::from_str(text).unwrap();
            let mut tools = manifest["devDependencies"].as_object().unwrap().clone();
            tools.remove("kiln-plugin");
            tools
        };
        let (_, template) = JS_TEMPLATE
            .iter()
            .find(|(path, _)| *path == "package.json")
            .unwrap();
        let template = tools(template);
        for version in template.values() {
            let version = version.as_str().unwrap();
            assert!(
                semver::Version::parse(version).is_ok(),
                "not exact: {version}"
            );
        }
        for bundled in [
            include_str!("../../../plugins/relics/package.json"),
            include_str!("../../../plugins/fixtures/hostile-js/package.json"),
        ] {
            assert_eq!(tools(bundled), template);
        }
    }

    #[test]
    fn placeholders_are_filled_and_gitignore_is_renamed() {
        assert_eq!(fill("x {{name}} y", "quests"), "x quests y");
        assert_eq!(project_path("gitignore"), ".gitignore");
        assert_eq!(project_path("a/gitignore"), "a/.gitignore");
        assert_eq!(project_path("src/job.js"), "src/job.js");
        for (_, text) in PYTHON_TEMPLATE.iter().chain(JS_TEMPLATE) {
            assert!(!fill(text, "quests").contains("{{"), "{text}");
        }
    }
}
