//! mailguard's task runner: `cargo xtask <setup|build|test|demo|bench|lint|dist>`.

mod cmd;
mod dist;
mod kernels;
mod setup;
mod systemd_check;
mod tiers;

use std::{fmt, process::ExitCode};

/// A task that could not be completed, naming the step that failed.
#[derive(Debug)]
pub struct TaskError {
    step: String,
    message: String,
}

impl TaskError {
    pub fn step(step: &str, message: impl Into<String>) -> Self {
        Self {
            step: step.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}` failed: {}", self.step, self.message)
    }
}

pub type Result<T> = std::result::Result<T, TaskError>;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup   install what the build and tests need (idempotent; every command below runs it)
  build   set up, then build mailguard and the test binaries
  test    set up, build, lint, and run every test tier (unit, BPF_PROG_TEST_RUN fixtures,
          network-namespace end to end, Debian's kernels under QEMU and the package under a
          real systemd); prints what each tier executed. MAILGUARD_KERNELS=6.1,6.12 boots
          only those kernels (none: skips them)
  kernels set up, build, and run only the kernels tier of `test`
  demo    set up, build, and run the lab: a real Postfix, a client and an attacker in
          network namespaces, with mailguard attached to the mail host
  bench   set up, build, and measure mailguard against the floor, xdp-filter and the
          nftables recipe (per-packet cost, scaling, a SYN flood on the wire); writes
          docs/BENCHMARKS.md and its plots in docs/bench/ (about 25 minutes)
  bench-before REV
          the per-packet section of `bench` with git revision REV's eBPF object measured
          beside this checkout's in the same trials (REV is built in a worktree under
          target/baseline); prints both side by side and writes nothing
  lint    cargo fmt --check, and clippy (warnings are errors) on every crate, the eBPF ones
          with nightly for their target
  fuzz    the property tests of everything mailguard reads from outside (control requests,
          configuration, list files, CIDRs, durations) on MAILGUARD_FUZZ_CASES inputs each
          (default 200000; `test` runs 256); a failing input is kept as a regression case
  dist    set up, then build the Debian package (target/dist/mailguard_VERSION_amd64.deb: the
          binary with its eBPF object, the systemd unit, the man page, completions, the
          configuration as a conffile) and run lintian on it
";

/// Builds the `mailguard` binary and the test-support binaries (demo, bench).
pub fn build_binaries() -> Result<()> {
    println!("== building mailguard (the eBPF object is built by guard-userspace's build.rs)");
    cmd::run(
        "build",
        "cargo",
        &[
            "build",
            "-p",
            "guard-userspace",
            "-p",
            "guard-tests",
            "--bins",
        ],
        &[],
    )
}

/// The workspace's debug build of a binary.
fn binary(name: &str) -> String {
    built(name, "debug")
}

/// The workspace's build of a binary in `profile`'s directory (`debug`, `release`).
fn built(name: &str, profile: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target")
        .join(profile)
        .join(name)
        .display()
        .to_string()
}

fn demo() -> Result<()> {
    setup::setup()?;
    build_binaries()?;
    println!("== mailguard demo");
    let mailguard = binary("mailguard");
    cmd::run(
        "demo",
        &binary("mailguard-demo"),
        &[],
        &[("MAILGUARD_BIN", &mailguard), ("MAILGUARD_LOG", "warn")],
    )
}

fn lint() -> Result<()> {
    setup::setup()?;
    lint_checks()
}

/// `cargo fmt --check` and clippy with warnings denied on every crate (also the first step of
/// `cargo xtask test`, so that CI runs it).
pub fn lint_checks() -> Result<()> {
    cmd::run("lint", "cargo", &["fmt", "--all", "--check"], &[])?;
    cmd::run(
        "lint",
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "guard-ebpf",
            "--exclude",
            "guard-reference-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // The eBPF crates, for their target (nightly builds its core library).
    for crate_dir in ["guard-ebpf", "tests/reference-ebpf"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(crate_dir);
        println!("== clippy on {crate_dir} (bpfel-unknown-none)");
        let status = std::process::Command::new("cargo")
            .current_dir(&dir)
            .args([
                "+nightly",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .status()
            .map_err(|e| TaskError::step("lint", e.to_string()))?;
        if !status.success() {
            return Err(TaskError::step(
                "lint",
                format!("clippy found problems in {crate_dir}"),
            ));
        }
    }
    Ok(())
}

fn fuzz() -> Result<()> {
    let cases = std::env::var("MAILGUARD_FUZZ_CASES").unwrap_or_else(|_| "200000".to_string());
    println!("== fuzz: {cases} generated inputs for each property (guard-userspace/tests/fuzz.rs)");
    cmd::run(
        "fuzz",
        "cargo",
        &[
            "test",
            "--release",
            "-p",
            "guard-userspace",
            "--test",
            "fuzz",
        ],
        &[("PROPTEST_CASES", &cases)],
    )
}

fn bench() -> Result<()> {
    setup::setup()?;
    // Optimised builds: the driver's own work between single runs (and the daemon's, during
    // the flood) should cost what it costs in a release, not a debug build's multiple.
    println!("== building the benchmark and mailguard (release)");
    cmd::run(
        "build",
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "guard-userspace",
            "-p",
            "guard-tests",
            "--bin",
            "mailguard",
            "--bin",
            "mailguard-bench",
        ],
        &[],
    )?;
    println!(
        "== mailguard bench (BPF_PROG_TEST_RUN beside the floor and xdp-filter, sock_ops statistics, \
         a SYN flood on the wire against no protection, nftables and mailguard with and without SYN cookies; about 30 minutes)"
    );
    let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/BENCHMARKS.md");
    cmd::run(
        "bench",
        &built("mailguard-bench", "release"),
        &[&report.display().to_string()],
        &[("MAILGUARD_BIN", &built("mailguard", "release"))],
    )
}

/// The per-packet bench with revision `rev`'s eBPF object beside this checkout's.
fn bench_before(rev: &str) -> Result<()> {
    setup::setup()?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = root.join("target/baseline");
    let tree = base.join("src");
    let tree_s = tree.display().to_string();
    // A worktree left by an earlier run goes first.
    let _ = std::process::Command::new("git")
        .args(["worktree", "remove", "--force", &tree_s])
        .status();
    let _ = std::fs::remove_dir_all(&tree);
    println!("== building {rev}'s eBPF object in {tree_s}");
    cmd::run(
        "baseline",
        "git",
        &["worktree", "add", "--detach", &tree_s, rev],
        &[],
    )?;
    let target = base.join("target").display().to_string();
    let manifest = tree.join("Cargo.toml").display().to_string();
    let built_before = cmd::run(
        "baseline",
        "cargo",
        &[
            "build",
            "--release",
            "--manifest-path",
            &manifest,
            "-p",
            "guard-userspace",
        ],
        &[("CARGO_TARGET_DIR", &target)],
    );
    let _ = std::process::Command::new("git")
        .args(["worktree", "remove", "--force", &tree_s])
        .status();
    built_before?;
    let object = newest_build_output(&base.join("target/release/build"), "guard-ebpf")
        .ok_or_else(|| TaskError::step("baseline", format!("no eBPF object built for {rev}")))?;
    println!("== {rev}'s object: {}", object.display());
    cmd::run(
        "build",
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "guard-tests",
            "--bin",
            "mailguard-bench",
        ],
        &[],
    )?;
    cmd::run(
        "bench",
        &built("mailguard-bench", "release"),
        &[],
        &[
            ("MAILGUARD_BENCH_ONLY", "packets"),
            ("MAILGUARD_BENCH_BASELINE", &object.display().to_string()),
        ],
    )
}

/// The newest `out/<name>` of the build scripts' directories under `build`.
fn newest_build_output(build: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir(build)
        .ok()?
        .flatten()
        .map(|e| e.path().join("out").join(name))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::setup(),
        Some("build") => setup::setup().and_then(|()| build_binaries()),
        Some("test") => tiers::test(),
        Some("demo") => demo(),
        Some("bench") => bench(),
        Some("bench-before") => match args.get(1) {
            Some(rev) => bench_before(rev),
            None => Err(TaskError::step(
                "arguments",
                "bench-before needs a git revision (for example HEAD~3)",
            )),
        },
        Some("lint") => lint(),
        Some("fuzz") => fuzz(),
        Some("kernels") => tiers::kernels_only(),
        Some("dist") => setup::setup().and_then(|()| dist::dist().map(|_| ())),
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(TaskError::step(
            "arguments",
            format!("unknown command `{other}`\n{USAGE}"),
        )),
        None => Err(TaskError::step(
            "arguments",
            format!("no command given\n{USAGE}"),
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
