//! Keeps the two kinds of test file apart, in every package of the workspace.
//!
//! A `harness = false` file runs only what its `main` lists: a `#[test]` in it compiles and never
//! runs. A libtest file has no use for a `main`: a list in it never runs. And a libtest file
//! that starts a server or a program from outside the Rust toolchain can only pass or fail, so
//! where that is missing it would pass without running (or fail on a machine that simply lacks
//! it): such a file belongs on this harness, with its needs declared.

use std::path::{Path, PathBuf};

/// What in a libtest file says it needs something outside the Rust toolchain: the server
/// starters, a declared need, or a program started by name.
const OUTSIDE: &[&str] = &[
    "servers::",
    "Need::",
    "Command::new(\"curl\")",
    "Command::new(\"python3\")",
    "Command::new(\"node\")",
    "Command::new(\"npm\")",
    "Command::new(\"ip\")",
    "Command::new(\"chromium\")",
];

/// One test target of a package.
#[derive(Debug)]
struct Target {
    file: PathBuf,
    harness: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace's directory")
}

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    text.parse()
        .unwrap_or_else(|error| panic!("parsing {}: {error}", path.display()))
}

/// Every package directory: the workspace's members, with `dir/*` expanded.
fn packages(root: &Path) -> Vec<PathBuf> {
    let manifest = read_toml(&root.join("Cargo.toml"));
    let members = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members");
    let mut packages = Vec::new();
    for member in members.iter().filter_map(|m| m.as_str()) {
        match member.strip_suffix("/*") {
            Some(parent) => {
                let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(parent))
                    .expect("a members directory")
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|dir| dir.join("Cargo.toml").is_file())
                    .collect();
                found.sort();
                packages.extend(found);
            }
            None => packages.push(root.join(member)),
        }
    }
    packages
}

/// A package's test targets as Cargo sees them: the `[[test]]` entries, and (unless
/// `autotests = false`) every tests/*.rs and tests/*/main.rs no entry already names.
fn targets(package: &Path) -> Vec<Target> {
    let manifest = read_toml(&package.join("Cargo.toml"));
    let mut targets: Vec<Target> = Vec::new();
    for entry in manifest
        .get("test")
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
    {
        let name = entry["name"].as_str().expect("a [[test]] name");
        let file = match entry.get("path").and_then(|p| p.as_str()) {
            Some(path) => package.join(path),
            None if package.join(format!("tests/{name}.rs")).is_file() => {
                package.join(format!("tests/{name}.rs"))
            }
            None => package.join(format!("tests/{name}/main.rs")),
        };
        let harness = entry
            .get("harness")
            .and_then(|h| h.as_bool())
            .unwrap_or(true);
        targets.push(Target { file, harness });
    }
    let autotests = manifest
        .get("package")
        .and_then(|p| p.get("autotests"))
        .and_then(|a| a.as_bool())
        .unwrap_or(true);
    if autotests {
        for entry in std::fs::read_dir(package.join("tests"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let file = if path.extension().is_some_and(|e| e == "rs") {
                path
            } else if path.join("main.rs").is_file() {
                path.join("main.rs")
            } else {
                continue;
            };
            if !targets.iter().any(|t| same_file(&t.file, &file)) {
                targets.push(Target {
                    file,
                    harness: true,
                });
            }
        }
    }
    targets
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// What is wrong with one target, if anything.
fn problems(target: &Target, text: &str) -> Vec<String> {
    let file = target.file.display();
    let mut found = Vec::new();
    if target.harness {
        if text.contains("fn main(") {
            found.push(format!(
                "{file}: a libtest target with a main, which never runs: give it a [[test]] \
                 entry with harness = false"
            ));
        }
        for marker in OUTSIDE.iter().filter(|m| text.contains(**m)) {
            found.push(format!(
                "{file}: uses `{marker}`, something outside the Rust toolchain, on libtest, where \
                 a test can only pass when it is missing: make it harness = false and list its \
                 tests with what they need"
            ));
        }
    } else {
        for attribute in ["#[test]", "#[tokio::test"] {
            if text.contains(attribute) {
                found.push(format!(
                    "{file}: a harness = false target with {attribute}, which never runs: list \
                     the test in its main"
                ));
            }
        }
        if !text.contains("stratus_testing::run(") {
            found.push(format!(
                "{file}: a harness = false target whose main does not call stratus_testing::run"
            ));
        }
    }
    found
}

#[test]
fn harness_false_files_list_their_tests_and_libtest_files_need_nothing_outside() {
    let root = workspace_root();
    let mut checked = 0;
    let mut found = Vec::new();
    for package in packages(&root) {
        for target in targets(&package) {
            let text = std::fs::read_to_string(&target.file)
                .unwrap_or_else(|error| panic!("reading {}: {error}", target.file.display()));
            let relative = target.file.strip_prefix(&root).unwrap_or(&target.file);
            let target = Target {
                file: relative.to_path_buf(),
                ..target
            };
            found.extend(problems(&target, &text));
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} test targets found");
    assert!(found.is_empty(), "\n{}", found.join("\n"));
}

#[test]
fn the_rules_catch_each_mix_up() {
    let libtest = Target {
        file: "tests/a.rs".into(),
        harness: true,
    };
    let listed = Target {
        file: "tests/b.rs".into(),
        harness: false,
    };
    let server_on_libtest = "#[tokio::test]\nasync fn t() { let etcd = servers::Etcd::start(); }";
    assert_eq!(problems(&libtest, server_on_libtest).len(), 1);
    let curl_on_libtest = "#[test]\nfn t() { Command::new(\"curl\").status(); }";
    assert_eq!(problems(&libtest, curl_on_libtest).len(), 1);
    assert_eq!(problems(&libtest, "fn main() {}").len(), 1);
    assert!(problems(&libtest, "#[test]\nfn t() {}").is_empty());

    let good = "fn main() -> ExitCode { stratus_testing::run(vec![]) }";
    assert!(problems(&listed, good).is_empty());
    let forgotten = format!("#[tokio::test]\nasync fn t() {{}}\n{good}");
    assert_eq!(problems(&listed, &forgotten).len(), 1);
    assert_eq!(problems(&listed, "fn main() {}").len(), 1);
}
