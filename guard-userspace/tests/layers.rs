//! The library's layers stay in order: a module imports only its own layer and the layers
//! below it (the order of `LAYERS`, as lib.rs and docs/ARCHITECTURE.md describe it). This reads
//! every `crate::` path in `src/<layer>/` (in `use` lines, `use crate::{..}` groups and paths
//! in code) and fails on one that names a layer above.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Bottom to top.
const LAYERS: [&str; 5] = ["config", "kernel", "feeds", "daemon", "cli"];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// The top-level items of a `use crate::{...}` group: `a::b`, `c::{d, e}` -> `a`, `c`.
fn group_items(body: &str) -> Vec<String> {
    let mut items = Vec::new();
    let (mut depth, mut current) = (0usize, String::new());
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .iter()
        .filter_map(|i| {
            let head: String = i
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!head.is_empty()).then_some(head)
        })
        .collect()
}

/// Every top-level module a source text names through `crate::`, with its line.
fn crate_modules(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(at) = rest.find("crate::") {
        let start = offset + at;
        let after = &text[start + "crate::".len()..];
        let line = text[..start].matches('\n').count() + 1;
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find("};").unwrap_or(group.len());
            for item in group_items(&group[..end]) {
                found.push((line, item));
            }
        } else {
            let head: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push((line, head));
        }
        offset = start + "crate::".len();
        rest = &text[offset..];
    }
    found
}

/// The imports in `text` (a file of `layer`) that go up a layer, as "line: module".
fn upward_imports(layer: &str, text: &str) -> Vec<String> {
    let own = rank(layer).expect("a layer");
    crate_modules(text)
        .into_iter()
        .filter(|(_, module)| rank(module).is_some_and(|r| r > own))
        .map(|(line, module)| format!("line {line}: imports `{module}`"))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    let mut checked = 0;
    for layer in LAYERS {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "src/{layer}/ has no modules");
        for file in files {
            let text = fs::read_to_string(&file).expect("a source file");
            checked += 1;
            for p in upward_imports(layer, &text) {
                problems.push(format!("{}: {p}", file.display()));
            }
        }
    }
    assert!(checked > 20, "only {checked} files checked");
    assert!(
        problems.is_empty(),
        "imports that go up a layer ({}):\n{}",
        LAYERS.join(" < "),
        problems.join("\n")
    );
}

#[test]
fn every_module_of_the_library_is_in_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let mut modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    modules.sort_unstable();
    let mut layers = LAYERS;
    layers.sort_unstable();
    assert_eq!(modules, layers, "lib.rs's modules are the layers");
    for entry in fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            path.is_dir() && rank(&name).is_some()
                || ["lib.rs", "main.rs", "list_commands.rs"].contains(&name.as_str()),
            "src/{name} is in no layer"
        );
    }
}

#[test]
fn a_planted_upward_import_is_caught() {
    let planted = "use std::fs;\n\nuse crate::{\n    config::Config,\n    daemon::state::Dirs,\n};\n\
                   fn f() { crate::cli::status::render(); crate::kernel::guard::load(); }\n";
    assert_eq!(
        upward_imports("kernel", planted),
        vec!["line 3: imports `daemon`", "line 7: imports `cli`"]
    );
    assert!(upward_imports("cli", planted).is_empty());
    assert_eq!(
        upward_imports("config", "use crate::kernel::guard::Guard;\n"),
        vec!["line 1: imports `kernel`"]
    );
}
