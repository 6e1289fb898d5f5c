//! The `mailguard` command line: exit codes and messages for good and bad input.

use std::{path::PathBuf, process::Command};

fn mailguard(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailguard"))
        .args(args)
        .output()
        .expect("run mailguard");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory for one test's files, removed when dropped (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mailguard-cli-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../mailguard.example.toml");
    let (code, out, _) = mailguard(&["check-config", "--config", example]);
    assert_eq!(code, Some(0));
    assert!(out.contains("valid"), "{out}");
    let (code, out, _) = mailguard(&["check-config", "--config", example, "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["valid"], true);
    assert_eq!(
        v["config"]["mail_ports"],
        serde_json::json!([25, 110, 143, 465, 587, 993, 995])
    );
}

#[test]
fn check_config_refuses_a_bad_file_with_line_and_key() {
    let scratch = Scratch::new("bad");
    let path = scratch.file(
        "bad.toml",
        "monitor = false\n\n[[open_ports]]\nport = 22\nfrom = [\"198.18.0.1/15\"]\n",
    );
    let (code, _, err) = mailguard(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(
        code,
        Some(2),
        "exit code 2 for an invalid configuration: {err}"
    );
    assert!(err.contains(":5:9: `open_ports[0].from[0]`: `198.18.0.1/15` has host bits set; did you mean `198.18.0.0/15`?"), "{err}");
}

#[test]
fn check_config_warns_when_ssh_would_be_dropped() {
    let scratch = Scratch::new("nossh");
    let path = scratch.file("nossh.toml", "open_ports = []\n");
    let (code, out, _) = mailguard(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("warning: SSH (22/tcp) is not in open_ports"),
        "{out}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let (code, _, err) = mailguard(&["check-config", "--config", "/nonexistent/mg.toml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read /nonexistent/mg.toml"), "{err}");
}

#[test]
fn run_refuses_a_bad_config_before_touching_the_kernel() {
    let scratch = Scratch::new("bad-run");
    let path = scratch.file("bad-run.toml", "mail_ports = [25, 99999]\n");
    let (code, _, err) = mailguard(&[
        "--pin-dir",
        "/nonexistent-pins",
        "run",
        "--iface",
        "lo",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(":1:19: `mail_ports[1]`: 99999 is not a port number"),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (code, _, err) = mailguard(&["run", "--mode", "turbo"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("turbo") && err.contains("native"), "{err}");
    let scratch = Scratch::new("args");
    let config = scratch.file("ok.toml", "icmp_echo = \"allow\"\n");
    let (code, _, err) = mailguard(&[
        "run",
        "--iface",
        "a/b",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("`a/b` is not a valid interface name"), "{err}");
}

/// A file without a setting (cut short, or read while an editor rewrites it) would mean "every
/// default": refused, naming the file.
#[test]
fn a_file_without_a_setting_is_refused() {
    let scratch = Scratch::new("empty");
    for (name, text) in [("zero.toml", ""), ("comments.toml", "# only a comment\n\n")] {
        let config = scratch.file(name, text);
        let (code, _, err) = mailguard(&["check-config", "--config", config.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(name) && err.contains("holds no setting"),
            "{err}"
        );
    }
}

#[test]
fn help_lists_the_commands() {
    let (code, out, _) = mailguard(&["--help"]);
    assert_eq!(code, Some(0));
    for cmd in ["run", "status", "check-config"] {
        assert!(out.contains(cmd), "--help lacks {cmd}: {out}");
    }
    assert!(out.contains("Exit codes"), "{out}");
}

/// Needs root (loads the program): an unknown interface fails the attach, names the
/// interface, and leaves no pins or state behind.
#[test]
fn attach_to_a_missing_interface_fails_cleanly() {
    let pins = format!("/sys/fs/bpf/mailguard-cli-{}", std::process::id());
    let scratch = Scratch::new("attach");
    let run = scratch.0.join("run");
    let config = scratch.file("ok2.toml", "icmp_echo = \"allow\"\n");
    let (code, _, err) = mailguard(&[
        "--pin-dir",
        &pins,
        "--run-dir",
        run.to_str().unwrap(),
        "run",
        "--iface",
        "mg-nosuchif",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("mg-nosuchif"), "{err}");
    assert!(
        !std::path::Path::new(&pins).exists(),
        "pins left behind in {pins}"
    );
    assert!(!run.join("state.json").exists(), "state file left behind");
}
