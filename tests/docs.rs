//! The README is part of the product: its configuration table must name
//! every flag `runstore serve --help` accepts, with the same environment
//! variable and default, and its stated limits must be the code's.

use std::{collections::BTreeMap, path::Path, process::Command};

/// One flag as documented or as accepted: its environment variable and
/// default (None when it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flag {
    env: String,
    default: Option<String>,
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

fn words_with_prefix<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|word| word.starts_with(prefix) && word.len() > prefix.len())
        .collect()
}

/// Flags from `serve --help`: `--name <VALUE>` lines followed by their
/// description, which carries `[env: NAME=]` and `[default: X]`.
fn flags_from_help() -> BTreeMap<String, Flag> {
    let output = Command::new(env!("CARGO_BIN_EXE_runstore"))
        .args(["serve", "--help"])
        .output()
        .expect("run runstore serve --help");
    assert!(output.status.success(), "serve --help failed");
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");
    // Descriptions may wrap, so gather each flag's lines before parsing.
    let mut descriptions: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--") {
            let name = rest.split([' ', '<']).next().unwrap_or_default();
            descriptions.push((format!("--{name}"), String::new()));
        } else if let Some((_, text)) = descriptions.last_mut() {
            text.push(' ');
            text.push_str(trimmed);
        }
    }
    let mut flags = BTreeMap::new();
    for (name, text) in descriptions {
        // `[env: NAME=value]`, or `[env: NAME]` where values are hidden.
        let env = text
            .split_once("[env: ")
            .and_then(|(_, rest)| rest.split(['=', ']']).next());
        if let Some(env) = env {
            let default = between(&text, "[default: ", "]").map(str::to_owned);
            flags.insert(
                name,
                Flag {
                    env: env.to_owned(),
                    default,
                },
            );
        }
    }
    flags
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// Flags from the README's configuration table: rows of
/// `| --flag[, --flag] | ENV[, ENV] | default | meaning |`.
fn flags_from_readme() -> BTreeMap<String, Flag> {
    let readme = readme();
    let section = readme
        .split("\n## Configuration")
        .nth(1)
        .expect("a Configuration section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let mut flags = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (names, envs, default) = (cells[1], cells[2], cells[3]);
        let names = words_with_prefix(names, "--");
        let envs = words_with_prefix(envs, "RUNSTORE_");
        assert_eq!(names.len(), envs.len(), "one variable per flag in: {row}");
        let default = default
            .strip_prefix('`')
            .and_then(|d| d.split('`').next())
            .map(str::to_owned);
        for (name, env) in names.into_iter().zip(envs) {
            flags.insert(
                name.to_owned(),
                Flag {
                    env: env.to_owned(),
                    default: default.clone(),
                },
            );
        }
    }
    flags
}

#[test]
fn the_configuration_table_matches_serve_help() {
    let accepted = flags_from_help();
    let documented = flags_from_readme();
    assert!(
        accepted.len() >= 10,
        "parsed too few flags from --help: {accepted:?}"
    );
    let names = |m: &BTreeMap<String, Flag>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&documented),
        names(&accepted),
        "README flags vs serve --help"
    );
    for (name, flag) in &accepted {
        assert_eq!(&documented[name], flag, "README row of {name}");
    }
}

#[test]
fn the_table_parser_notices_a_missing_row() {
    // Negative control: the comparison above would fail on a README that
    // lacks a row, so it cannot pass vacuously.
    let mut documented = flags_from_readme();
    let first = documented
        .keys()
        .next()
        .cloned()
        .expect("a documented flag");
    documented.remove(&first);
    assert_ne!(
        documented.keys().collect::<Vec<_>>(),
        flags_from_help().keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_readme_states_the_codes_nesting_limit() {
    let stated = format!(
        "nesting at most {} deep",
        runstore::api::validate::MAX_SUMMARY_DEPTH
    );
    assert!(
        readme().replace('\n', " ").contains(&stated),
        "README must say {stated:?}"
    );
}

#[test]
fn every_path_in_the_layout_list_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = readme();
    let layout = readme
        .split("\n## Layout of the code\n")
        .nth(1)
        .expect("a Layout of the code section");
    let block: Vec<&str> = layout
        .lines()
        .skip_while(|line| line.trim().is_empty())
        .take_while(|line| line.starts_with("    "))
        .collect();
    assert!(block.len() >= 5, "layout list too short: {block:?}");
    let mut src_files = Vec::new();
    let mut in_src = false;
    for line in &block {
        let entry = &line[4..];
        if !entry.starts_with(' ') {
            let path = entry.split_whitespace().next().unwrap_or_default();
            assert!(
                root.join(path).exists(),
                "layout names {path}, which does not exist"
            );
            in_src = path == "src/";
        }
        if in_src {
            src_files.extend(
                entry
                    .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
                    .filter(|word| word.ends_with(".rs")),
            );
        }
    }
    for file in src_files {
        let found = walk(&root.join("src")).iter().any(|p| p.ends_with(file));
        assert!(found, "layout names src file {file}, which does not exist");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
