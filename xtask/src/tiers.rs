//! `cargo xtask test`: every test tier, each reported with what it executed.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use crate::{Result, TaskError, kernels};

/// One `cargo test` invocation of a tier.
struct Run {
    tier: &'static str,
    what: &'static str,
    args: &'static [&'static str],
}

const RUNS: &[Run] = &[
    Run {
        tier: "1 unit",
        what: "shared types, config parsing and errors, policy maps, packet builder, CLI",
        args: &[
            "test",
            "--workspace",
            "--exclude",
            "guard-ebpf",
            "--exclude",
            "guard-reference-ebpf",
            "--exclude",
            "guard-tests",
        ],
    },
    Run {
        tier: "1 unit",
        what: "test-support library",
        args: &["test", "-p", "guard-tests", "--lib"],
    },
    Run {
        tier: "2 fixtures",
        what: "BPF_PROG_TEST_RUN over crafted packets, budgets; sock_ops on real connections",
        args: &[
            "test",
            "-p",
            "guard-tests",
            "--test",
            "fixtures",
            "--",
            "--show-output",
        ],
    },
    Run {
        tier: "3 end-to-end",
        what: "network namespaces: Postfix, swaks, nmap, the mailguard binary",
        args: &[
            "test",
            "-p",
            "guard-tests",
            "--test",
            "policy_e2e",
            "--",
            "--test-threads=1",
        ],
    },
    Run {
        tier: "3 end-to-end",
        what: "budgets in the lab: hping3 rates, caps, reject, /64, a spoofed flood",
        args: &[
            "test",
            "-p",
            "guard-tests",
            "--test",
            "budgets_e2e",
            "--",
            "--test-threads=1",
            "--show-output",
        ],
    },
    Run {
        tier: "3 end-to-end",
        what: "lists: MX-only with Postfix, SPF from dnsmasq, refresh failures, 100 swaps, block expiry",
        args: &[
            "test",
            "-p",
            "guard-tests",
            "--test",
            "lists_e2e",
            "--",
            "--test-threads=1",
            "--show-output",
        ],
    },
    Run {
        tier: "3 end-to-end",
        what: "bans: IMAP and SMTP AUTH guessing through Dovecot's policy service, harvesting from Postfix's log, rotation and restarts mid-attack, log injection, escalation and expiry",
        args: &[
            "test",
            "-p",
            "guard-tests",
            "--test",
            "bans_e2e",
            "--",
            "--test-threads=1",
            "--show-output",
        ],
    },
    Run {
        tier: "3 end-to-end",
        what: "CrowdSec: two mail hosts bouncing one real LAPI: cscli decisions (ip, range, IPv4, IPv6), a ban shared, what is never blocked, the LAPI stopped, garbage or silent, a refused key, 100,000 decisions",
        args: &[
            "test",
            "-p",
            "guard-tests",
            "--test",
            "crowdsec_e2e",
            "--",
            "--test-threads=1",
            "--show-output",
        ],
    },
    Run {
        tier: "3 end-to-end",
        what: "SYN cookies from XDP: new clients through a cookie the kernel takes back, IPv4 and IPv6, with and without timestamps, the listeners marked while cookies are needed, a new one soon after it opens (or, before Linux 6.0, the kernel's setting at 2 and put back); a spoofed flood from trafgen, and one from the XDP generator at its top rate that reaches no listener while a new and a known client deliver",
        args: &[
            "test",
            "-p",
            "guard-tests",
            "--test",
            "cookies_e2e",
            "--",
            "--test-threads=1",
            "--show-output",
        ],
    },
    Run {
        tier: "3 end-to-end",
        what: "the daemon's life: SIGKILL, restart adopting pins, 100 replacements under traffic; the demo interrupted and killed",
        args: &[
            "test",
            "-p",
            "guard-tests",
            "--test",
            "lifecycle_e2e",
            "--",
            "--test-threads=1",
            "--show-output",
        ],
    },
    Run {
        tier: "3 end-to-end",
        what: "faults: a missing interface, a move, a re-created interface, two daemons on one pin directory, an empty reload, requests the daemon cannot hold",
        args: &[
            "test",
            "-p",
            "guard-tests",
            "--test",
            "faults_e2e",
            "--",
            "--test-threads=1",
            "--show-output",
        ],
    },
];

#[derive(Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub suites: u64,
}

impl Tally {
    /// Adds a libtest summary line: "test result: ok. 8 passed; 0 failed; 0 ignored; ...".
    pub fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.suites += 1;
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            if let [.., n, kind] = words.as_slice() {
                let n: u64 = n.parse().unwrap_or(0);
                match *kind {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }
}

/// Only the kernels tier (`cargo xtask kernels`).
pub fn kernels_only() -> Result<()> {
    crate::setup::setup()?;
    crate::build_binaries()?;
    let (mut report, mut failed) = (Vec::new(), Vec::new());
    kernels_tier(None, &mut report, &mut failed)?;
    println!("\n== test summary");
    for line in &report {
        println!("{line}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(TaskError::step("test", failed.join("\n")))
    }
}

pub fn test() -> Result<()> {
    crate::setup::setup()?;
    crate::build_binaries()?;
    let mut report = Vec::new();
    let mut failed = Vec::new();
    println!("\n== lint: cargo fmt --check, clippy with warnings denied on every crate");
    let started = Instant::now();
    let lint = crate::lint_checks();
    report.push(format!(
        "  lint  {:<43} {:>6.1}s  fmt, clippy (host crates, and both eBPF crates for their target)",
        if lint.is_ok() { "clean" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    ));
    if let Err(e) = lint {
        failed.push(format!("lint: {e}"));
    }
    // The optimised binaries (the packaged mailguard, and the kernels tier's tests), built once
    // before the end-to-end tiers, which run the daemon they ship: a debug daemon spent most of
    // the tests' time building large lists.
    let mut bins = None;
    for run in RUNS {
        let end_to_end = run.tier.starts_with('3');
        if end_to_end && bins.is_none() {
            bins = Some(kernels::GuestBinaries::build()?);
        }
        let daemon = match (&bins, end_to_end) {
            (Some(b), true) => Some(b.mailguard.clone()),
            _ => None,
        };
        println!(
            "\n== tier {}: {}\n   ${} cargo {}",
            run.tier,
            run.what,
            daemon
                .as_ref()
                .map_or(String::new(), |d| format!(" MAILGUARD_BIN={}", d.display())),
            run.args.join(" ")
        );
        let started = Instant::now();
        let mut command = Command::new("cargo");
        if let Some(d) = &daemon {
            command.env("MAILGUARD_BIN", d);
        }
        let mut child = command
            .args(run.args)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| TaskError::step("test", format!("cannot start cargo: {e}")))?;
        let mut tally = Tally::default();
        for line in BufReader::new(child.stdout.take().expect("piped stdout"))
            .lines()
            .map_while(|l| l.ok())
        {
            println!("{line}");
            tally.add(&line);
        }
        let status = child
            .wait()
            .map_err(|e| TaskError::step("test", e.to_string()))?;
        let secs = started.elapsed().as_secs_f64();
        let mut problems = Vec::new();
        if !status.success() {
            problems.push(format!("cargo exited with {status}"));
        }
        if tally.passed == 0 {
            problems.push("executed no test".to_string());
        }
        if tally.ignored > 0 {
            problems.push(format!(
                "{} test(s) ignored: every test must run",
                tally.ignored
            ));
        }
        report.push(format!(
            "  tier {:<13} {:>4} passed {:>3} failed {:>3} ignored  {:>6.1}s  {}",
            run.tier, tally.passed, tally.failed, tally.ignored, secs, run.what
        ));
        if !problems.is_empty() {
            failed.push(format!(
                "tier {} ({}): {}",
                run.tier,
                run.what,
                problems.join("; ")
            ));
        }
    }
    kernels_tier(bins, &mut report, &mut failed)?;
    println!("\n== test summary");
    for line in &report {
        println!("{line}");
    }
    if failed.is_empty() {
        println!("all tiers passed");
        Ok(())
    } else {
        Err(TaskError::step("test", failed.join("\n")))
    }
}

/// Tier 4: the fixtures and the smoke test on this machine's kernel and on each of Debian's
/// kernels under QEMU, with a table of what each kernel's verifier did.
pub fn kernels_tier(
    bins: Option<kernels::GuestBinaries>,
    report: &mut Vec<String>,
    failed: &mut Vec<String>,
) -> Result<()> {
    let what = "Debian's kernels under QEMU: fixtures, smoke test, verifier table";
    let Some(series) = kernels::selected()? else {
        println!("\n== tier 4 kernels: SKIPPED because MAILGUARD_KERNELS=none");
        report.push(format!(
            "  tier {:<13} SKIPPED (MAILGUARD_KERNELS=none)  {what}",
            "4 kernels"
        ));
        return Ok(());
    };
    let started = Instant::now();
    let list = kernels::kernels(&series)?;
    let bins = match bins {
        Some(b) => b,
        None => kernels::GuestBinaries::build()?,
    };
    let mut outcomes = vec![kernels::run_one(None, &bins)?];
    for k in &list {
        outcomes.push(kernels::run_one(Some(k), &bins)?);
    }
    let table = kernels::table(&outcomes);
    println!(
        "\n== kernels tier: what each kernel's verifier did, and the tests inside it\n\n{table}"
    );
    let path = kernels::cache().join("kernels.md");
    std::fs::write(&path, &table)
        .map_err(|e| TaskError::step("kernels", format!("{}: {e}", path.display())))?;
    println!("(written to {})", path.display());
    let mut bad: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.problems.iter().map(move |p| format!("{}: {p}", o.kernel)))
        .collect();
    let good = outcomes.len() - outcomes.iter().filter(|o| !o.problems.is_empty()).count();
    report.push(format!(
        "  tier {:<13} {:>4} kernels green or cleanly refused of {}  {:>6.1}s  {what}",
        "4 kernels",
        good,
        outcomes.len(),
        started.elapsed().as_secs_f64()
    ));

    // The package under a real systemd, on the first kernel chosen (Debian 12's by default).
    if let Some(kernel) = list.first() {
        let started = Instant::now();
        let steps = crate::dist::dist().and_then(|deb| crate::systemd_check::check(kernel, &deb));
        let what = "the package in a clean Debian 12 root under systemd: start, reload, stop, adopt, failures";
        match steps {
            Ok(steps) => {
                let passed = steps.iter().filter(|s| s.ok).count();
                report.push(format!(
                    "  tier {:<13} {:>4} passed {:>3} failed {:>3} ignored  {:>6.1}s  {what}",
                    "4 systemd",
                    passed,
                    steps.len() - passed,
                    0,
                    started.elapsed().as_secs_f64()
                ));
                bad.extend(
                    steps
                        .iter()
                        .filter(|s| !s.ok)
                        .map(|s| format!("systemd: {}", s.line)),
                );
                if steps.is_empty() {
                    bad.push("systemd: no step reported".to_string());
                }
            }
            Err(e) => {
                report.push(format!("  tier {:<13} FAILED  {what}", "4 systemd"));
                bad.push(format!("systemd: {e}"));
            }
        }
    }
    if !bad.is_empty() {
        failed.push(format!("tier 4 kernels: {}", bad.join("\n  ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn reads_libtest_summaries() {
        let mut t = Tally::default();
        t.add("test result: ok. 8 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.66s");
        t.add("test result: FAILED. 6 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.76s");
        t.add("running 8 tests");
        assert_eq!((t.passed, t.failed, t.ignored, t.suites), (14, 2, 1, 2));
    }
}
