//! README.md and the example configuration must describe what the code does: every reason with
//! its verdict, every configuration key.

use guard_common::Reason;
use mailguard::config::Config;

const README: &str = include_str!("../../README.md");
const EXAMPLE: &str = include_str!("../../mailguard.example.toml");

#[test]
fn readme_lists_every_reason_with_its_verdict() {
    for r in Reason::ALL {
        let row = format!("| `{}` | {} |", r.name(), r.verdict().name());
        assert!(
            README.contains(&row),
            "README.md lacks the row starting {row}"
        );
    }
    let verdicts = ["| pass |", "| drop |", "| reject |"];
    let rows = README
        .lines()
        .filter(|l| l.starts_with("| `") && verdicts.iter().any(|v| l.contains(v)))
        .count();
    assert_eq!(
        rows,
        Reason::ALL.len(),
        "README.md lists reasons that do not exist"
    );
}

const KEYS: &[&str] = &[
    "interface",
    "attach_mode",
    "monitor",
    "icmp_echo",
    "mail_ports",
    "[[open_ports]]",
    "open_ports.port",
    "open_ports.protocol",
    "open_ports.from",
    "[budgets]",
    "budgets.source_prefix_v4",
    "budgets.source_prefix_v6",
    "budgets.tracked_sources",
    "budgets.tracked_connections",
    "budgets.syn_ceiling",
    "budgets.syn_ceiling_burst",
    "budgets.reject_limit",
    "budgets.<class>.rate",
    "budgets.<class>.burst",
    "budgets.<class>.max_connections",
    "budgets.<class>.action",
    "mx_only",
    "[lists]",
    "lists.refresh_interval",
    "lists.max_shrink",
    "lists.dns_server",
    "lists.spf_lookup_limit",
    "lists.state_dir",
    "lists.<list>.cidrs",
    "lists.<list>.files",
    "lists.<list>.spf",
    "[metrics]",
    "metrics.listen",
];

#[test]
fn readme_documents_every_config_key() {
    for key in KEYS {
        assert!(
            README.contains(&format!("| `{key}` |")),
            "README.md's configuration reference lacks {key}"
        );
    }
    assert!(README.contains("cargo xtask demo") && README.contains("cargo xtask test"));
}

#[test]
fn example_config_shows_every_key_with_its_default() {
    for key in KEYS {
        let leaf = key.rsplit('.').next().unwrap();
        let shown = if leaf.starts_with('[') {
            EXAMPLE.contains(leaf)
        } else {
            EXAMPLE.contains(&format!("\n{leaf} ="))
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
