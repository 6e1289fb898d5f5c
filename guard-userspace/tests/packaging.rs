//! What ships beside the binary: the systemd unit, the man page and shell completions, all
//! generated from or checked against the real command line.

use std::{path::PathBuf, process::Command};

const BIN: &str = env!("CARGO_BIN_EXE_mailguard");

fn output(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run mailguard");
    assert!(
        out.status.success(),
        "mailguard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn man_page_is_generated_from_the_cli() {
    let man = output(&["man"]);
    assert!(
        man.contains(".TH mailguard 8"),
        "{}",
        &man[..200.min(man.len())]
    );
    for cmd in [
        "run",
        "status",
        "top",
        "reload",
        "confirm",
        "unload",
        "check\\-config",
        "allow",
        "trust",
        "block",
        "lists",
    ] {
        assert!(man.contains(cmd), "the man page lacks {cmd}");
    }
    assert!(
        man.contains("Exit codes"),
        "the man page lists the exit codes"
    );
}

#[test]
fn completions_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let script = output(&["completions", shell]);
        for cmd in [
            "run",
            "status",
            "top",
            "reload",
            "confirm",
            "unload",
            "check-config",
            "allow",
            "trust",
            "block",
            "lists",
        ] {
            assert!(script.contains(cmd), "{shell} completions lack {cmd}");
        }
    }
}

/// The unit, with its ExecStart pointed at the built binary and the generated man page
/// installed where `man` finds it, passes `systemd-analyze verify`.
#[test]
fn systemd_unit_verifies() {
    let dir = Scratch(std::env::temp_dir().join(format!("mailguard-unit-{}", std::process::id())));
    std::fs::create_dir_all(dir.0.join("man/man8")).unwrap();
    std::fs::write(dir.0.join("man/man8/mailguard.8"), output(&["man"])).unwrap();
    let unit = include_str!("../../packaging/mailguard.service");
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(
        unit.contains("KillMode=process"),
        "stopping the service must not take the protection with it"
    );
    let path = dir.0.join("mailguard.service");
    std::fs::write(&path, unit.replace("/usr/sbin/mailguard", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.0.join("man"))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("mailguard.service:"),
        "warnings about the unit: {said}"
    );
}
