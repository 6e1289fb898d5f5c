//! BPF_PROG_TEST_RUN harness: the real XDP program, loaded but not attached, with a
//! configuration written into its maps. Each packet run must return the expected action and
//! move exactly the expected counter by exactly one.

use aya::programs::{TestRun, TestRunOptions};
use guard_common::{Reason, Verdict};
use mailguard::{
    config::Config,
    guard::{Counters, Guard},
};

pub struct Harness {
    guard: Guard,
    config: Config,
}

/// One crafted packet and the reason it must be counted under.
pub struct Fixture {
    pub name: String,
    pub packet: Vec<u8>,
    pub expect: Reason,
}

impl Fixture {
    pub fn new(name: impl Into<String>, packet: Vec<u8>, expect: Reason) -> Fixture {
        Fixture {
            name: name.into(),
            packet,
            expect,
        }
    }
}

/// What one run did.
#[derive(Debug)]
pub struct Outcome {
    pub action: u32,
    pub counted: Vec<(Reason, u64)>,
}

impl Harness {
    pub fn new(config_toml: &str) -> Harness {
        let (config, _) =
            Config::parse(config_toml, "fixture config").expect("fixture config is valid");
        let mut guard = Guard::load().unwrap_or_else(|e| panic!("load: {e}"));
        guard
            .policy_maps()
            .expect("policy maps")
            .apply(None, &config)
            .expect("apply config");
        Harness { guard, config }
    }

    pub fn reconfigure(&mut self, config_toml: &str) {
        let (config, _) =
            Config::parse(config_toml, "fixture config").expect("fixture config is valid");
        self.guard
            .policy_maps()
            .expect("policy maps")
            .apply(Some(&self.config), &config)
            .expect("apply config");
        self.config = config;
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    pub fn counters(&self) -> Counters {
        self.guard.counters().expect("read counters")
    }

    pub fn run(&self, packet: &[u8]) -> Outcome {
        let before = self.counters();
        let result = self
            .guard
            .xdp()
            .expect("xdp program")
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat: 1,
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        Outcome {
            action: result.return_value,
            counted: self.counters().delta(&before),
        }
    }

    /// Runs `f` and checks it against `expect` and the verdict `action` (the reason's own
    /// verdict unless monitor mode says pass). Returns a description of any mismatch.
    pub fn check_with_action(&self, f: &Fixture, action: Verdict) -> Result<(), String> {
        let got = self.run(&f.packet);
        let mut problems = Vec::new();
        if got.action != action as u32 {
            problems.push(format!(
                "action {} (want {} = {})",
                got.action,
                action as u32,
                action.name()
            ));
        }
        if got.counted != [(f.expect, 1)] {
            let counted: Vec<String> = got
                .counted
                .iter()
                .map(|(r, n)| format!("{}+{n}", r.name()))
                .collect();
            problems.push(format!(
                "counted [{}] (want {}+1)",
                counted.join(", "),
                f.expect.name()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: {}", f.name, problems.join("; ")))
        }
    }

    pub fn check(&self, f: &Fixture) -> Result<(), String> {
        self.check_with_action(f, f.expect.verdict())
    }

    /// Checks every fixture and panics listing all mismatches; returns how many ran.
    pub fn check_all(&self, fixtures: &[Fixture]) -> usize {
        let failures: Vec<String> = fixtures
            .iter()
            .filter_map(|f| self.check(f).err())
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} fixtures failed:\n  {}",
            failures.len(),
            fixtures.len(),
            failures.join("\n  ")
        );
        fixtures.len()
    }
}
