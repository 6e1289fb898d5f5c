//! README.md must describe what the code does: every reason with its verdict, every key.

use guard_common::Reason;

const README: &str = include_str!("../../README.md");

#[test]
fn readme_lists_every_reason_with_its_verdict() {
    for r in Reason::ALL {
        let row = format!("| `{}` | {} |", r.name(), r.verdict().name());
        assert!(
            README.contains(&row),
            "README.md lacks the row starting {row}"
        );
    }
    let rows = README
        .lines()
        .filter(|l| l.starts_with("| `") && (l.contains("| pass |") || l.contains("| drop |")))
        .count();
    assert_eq!(
        rows,
        Reason::ALL.len(),
        "README.md lists reasons that do not exist"
    );
}

#[test]
fn readme_documents_every_config_key() {
    for key in [
        "interface",
        "attach_mode",
        "monitor",
        "icmp_echo",
        "mail_ports",
        "[[open_ports]]",
        "open_ports.port",
        "open_ports.protocol",
        "open_ports.from",
    ] {
        assert!(
            README.contains(&format!("| `{key}` |")),
            "README.md's configuration reference lacks {key}"
        );
    }
    assert!(README.contains("cargo xtask demo") && README.contains("cargo xtask test"));
}
