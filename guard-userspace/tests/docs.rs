//! The documents must describe what the code does: every reason with its verdict
//! (docs/DESIGN.md), and every configuration key (docs/CONFIGURATION.md and the example
//! configuration). The keys are not listed here: they are read from the configuration's own
//! definitions, by asking the parser (which refuses unknown keys and names the ones it
//! expects) what each section holds. A key added to the code and not to the documents fails.

use guard_common::Reason;
use mailguard::config::Config;

const README: &str = include_str!("../../README.md");
const DESIGN: &str = include_str!("../../docs/DESIGN.md");
const CONFIGURATION: &str = include_str!("../../docs/CONFIGURATION.md");
const EXAMPLE: &str = include_str!("../../mailguard.example.toml");

/// Keys the parser still knows only to say where they went: documented, not in the example.
const RETIRED: &[&str] = &["budgets.trusted"];

const PROBE: &str = "zz_probe";

/// The fields the parser expects in the table that `header` opens, or `None` when that is not
/// a table (the parser's unknown-field error names them: "expected one of `a`, `b`").
fn fields_of(header: &str) -> Option<Vec<String>> {
    let text = format!("{header}\n{PROBE} = 1\n");
    let err = Config::parse(&text, "probe.toml").err()?.to_string();
    if !err.contains(&format!("unknown field `{PROBE}`")) {
        return None;
    }
    let expected = err.split("expected").nth(1)?;
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Every key of the configuration: `[table]` and `[[array]]` headers as they are written, and
/// dotted paths (`budgets.mx.rate`) for everything else.
fn config_keys() -> Vec<String> {
    fn walk(path: &str, header: &str, out: &mut Vec<String>) {
        let fields = fields_of(header).unwrap_or_else(|| {
            panic!("`{header}` should be a table the parser names the fields of")
        });
        for field in fields {
            let key = if path.is_empty() {
                field.clone()
            } else {
                format!("{path}.{field}")
            };
            if fields_of(&format!("[{key}]")).is_some() {
                out.push(if path.is_empty() {
                    format!("[{key}]")
                } else {
                    key.clone()
                });
                walk(&key, &format!("[{key}]"), out);
            } else if fields_of(&format!("[[{key}]]")).is_some() {
                out.push(format!("[[{key}]]"));
                walk(&key, &format!("[[{key}]]"), out);
            } else {
                out.push(key);
            }
        }
    }
    let mut keys = Vec::new();
    walk("", "", &mut keys);
    keys
}

/// The backticked names in the table rows of `doc`: `budgets.<class>.rate`, `[lists]`.
fn documented_names(doc: &str) -> Vec<String> {
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split(" | ").next())
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_string))
        .collect()
}

/// Whether `key` is one of `names`, a `<placeholder>` standing for any one segment.
fn is_documented(key: &str, names: &[String]) -> bool {
    names.iter().any(|name| {
        let (a, b): (Vec<&str>, Vec<&str>) = (name.split('.').collect(), key.split('.').collect());
        a.len() == b.len()
            && a.iter()
                .zip(&b)
                .all(|(n, k)| n == k || (n.starts_with('<') && n.ends_with('>')))
    })
}

/// The keys of `keys` that `doc`'s tables do not document.
fn undocumented(keys: &[String], doc: &str) -> Vec<String> {
    let names = documented_names(doc);
    keys.iter()
        .filter(|k| !is_documented(k, &names))
        .cloned()
        .collect()
}

#[test]
fn design_lists_every_reason_with_its_verdict() {
    for r in Reason::ALL {
        let row = format!("| `{}` | {} |", r.name(), r.verdict_label());
        assert!(
            DESIGN.contains(&row),
            "docs/DESIGN.md lacks the row starting {row}"
        );
    }
    let verdicts = ["| pass |", "| drop |", "| reject |", "| answer |"];
    let rows = DESIGN
        .lines()
        .filter(|l| l.starts_with("| `") && verdicts.iter().any(|v| l.contains(v)))
        .count();
    assert_eq!(
        rows,
        Reason::ALL.len(),
        "docs/DESIGN.md lists reasons that do not exist"
    );
}

#[test]
fn the_keys_come_from_the_configuration_s_definitions() {
    let keys = config_keys();
    // Spot checks that the walk reaches every level: a root key, a table, a nested table's
    // key, an array of tables' key, and the key the old hand-kept list had missed.
    for key in [
        "interface",
        "[budgets]",
        "budgets.mx.rate",
        "[[open_ports]]",
        "open_ports.from",
        "lists.ipv6_index_capacity",
        "metrics.listen",
    ] {
        assert!(
            keys.contains(&key.to_string()),
            "{key} not found in {keys:?}"
        );
    }
    assert!(keys.len() > 40, "only {} keys: {keys:?}", keys.len());
}

#[test]
fn configuration_documents_every_key() {
    let missing = undocumented(&config_keys(), CONFIGURATION);
    assert!(
        missing.is_empty(),
        "docs/CONFIGURATION.md's reference lacks {missing:?}"
    );
}

#[test]
fn a_planted_undocumented_key_is_caught() {
    let mut keys = config_keys();
    keys.push("budgets.mx.planted".to_string());
    keys.push("[planted]".to_string());
    assert_eq!(
        undocumented(&keys, CONFIGURATION),
        ["budgets.mx.planted", "[planted]"]
    );
    // A row taken out of the reference is missed too.
    let without = CONFIGURATION.replace("| `metrics.listen` |", "| metrics listen |");
    assert_eq!(undocumented(&config_keys(), &without), ["metrics.listen"]);
}

#[test]
fn example_config_shows_every_key_with_its_default() {
    for key in config_keys() {
        if RETIRED.contains(&key.as_str()) {
            continue;
        }
        let shown = if key.starts_with('[') {
            EXAMPLE.contains(&format!("\n{key}\n"))
        } else if fields_of(&format!("[{key}]")).is_some() {
            EXAMPLE.contains(&format!("\n[{key}]\n"))
        } else {
            let leaf = key.rsplit('.').next().unwrap();
            // A table of tables by name (`bans.rules`) is shown by its tables.
            EXAMPLE.contains(&format!("\n{leaf} =")) || EXAMPLE.contains(&format!("\n[{key}."))
        };
        assert!(shown, "mailguard.example.toml lacks {key}");
    }
    // Apart from the example interface name, the example holds the defaults.
    let (example, _) =
        Config::parse(EXAMPLE, "mailguard.example.toml").expect("the example is valid");
    let (defaults, _) = Config::parse("interface = \"eth0\"\n", "defaults").unwrap();
    assert_eq!(
        example, defaults,
        "the example configuration should show the defaults"
    );
}

#[test]
fn readme_is_the_front_door() {
    assert!(README.contains("cargo xtask demo") && README.contains("cargo xtask test"));
    assert!(
        README.contains("--monitor"),
        "a first safe run in monitor mode"
    );
    for doc in [
        "docs/CONFIGURATION.md",
        "docs/OPERATIONS.md",
        "docs/DESIGN.md",
        "docs/ARCHITECTURE.md",
        "docs/TESTING.md",
    ] {
        assert!(
            README.contains(&format!("({doc})")),
            "README.md does not link {doc}"
        );
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(doc);
        assert!(
            path.is_file(),
            "README.md links {doc}, which does not exist"
        );
    }
    let lines = README.lines().count();
    assert!(
        lines <= 160,
        "README.md has {lines} lines: the reference belongs in docs/"
    );
}
