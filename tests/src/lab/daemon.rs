//! mailguard in the lab: the daemon on the mail host, its command line, its log and status.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use super::MAIL_IFACE;
use crate::{leftovers, netns::Netns};

/// A directory removed when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create lab directory");
        // Postfix's own users must be able to traverse it.
        set_mode(&path, 0o755);
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

pub(super) fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The `mailguard` binary under test: `$MAILGUARD_BIN`, else the workspace's debug build.
pub fn mailguard_bin() -> PathBuf {
    let path = match std::env::var_os("MAILGUARD_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/mailguard"),
    };
    assert!(
        path.is_file(),
        "mailguard binary not found at {} (build it with `cargo build -p guard-userspace`; \
         `cargo xtask test` does)",
        path.display()
    );
    path
}

/// A running `mailguard run` in a namespace, with its own pin and run directories.
pub struct Mailguard {
    child: Child,
    unload_on_drop: bool,
    pub pin_dir: PathBuf,
    pub run_dir: PathBuf,
    ns_path: String,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Mailguard {
    pub fn start(ns: &Netns, lab_dir: &Path, config: &Path, extra_args: &[&str]) -> Mailguard {
        let pin_dir = leftovers::pin_dir_of(std::process::id());
        Mailguard::start_with(ns, lab_dir, config, extra_args, pin_dir)
    }

    /// A mailguard on interface `iface` of `ns`, with its run directory under `dir` and its
    /// pins in `pin_dir` (a second mail host's).
    pub fn start_on(
        ns: &Netns,
        dir: &Path,
        config: &Path,
        iface: &str,
        pin_dir: PathBuf,
    ) -> Mailguard {
        Mailguard::start_with(ns, dir, config, &["--iface", iface], pin_dir)
    }

    fn start_with(
        ns: &Netns,
        lab_dir: &Path,
        config: &Path,
        extra_args: &[&str],
        pin_dir: PathBuf,
    ) -> Mailguard {
        let run_dir = lab_dir.join("run");
        let mut cmd = ns.command(mailguard_bin().to_str().expect("UTF-8 path"));
        cmd.arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--run-dir")
            .arg(&run_dir);
        cmd.arg("run");
        // The lab's mail interface unless the caller names another.
        if !extra_args.contains(&"--iface") {
            cmd.args(["--iface", MAIL_IFACE]);
        }
        cmd.arg("--config").arg(config).args(extra_args);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start mailguard");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        let mg = Mailguard {
            child,
            unload_on_drop: true,
            pin_dir,
            run_dir,
            ns_path: ns.path(),
            log,
        };
        mg.wait_ready();
        mg
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines mailguard wrote to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Ready when status reports this very daemon running (pins of an earlier one may
            // already answer status).
            if self
                .try_status()
                .is_some_and(|s| s["running"] == true && s["pid"] == self.pid())
            {
                return;
            }
            let mut probe = Command::new("kill");
            let alive = probe
                .args(["-0", &self.pid().to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                alive,
                "mailguard exited during start-up:\n{}",
                self.log().join("\n")
            );
            assert!(
                Instant::now() < deadline,
                "mailguard not ready after 20 s:\n{}",
                self.log().join("\n")
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a mailguard CLI command against this instance.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_with_env(args, &[])
    }

    /// Runs a mailguard CLI command with extra environment variables.
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = Command::new("nsenter");
        cmd.envs(env.iter().copied());
        cmd.arg(format!("--net={}", self.ns_path))
            .arg("--")
            .arg(mailguard_bin());
        cmd.arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args);
        cmd.output().expect("run mailguard CLI")
    }

    fn try_status(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `mailguard status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "mailguard status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// `mailguard status --json` whatever its exit code: (exit code, JSON).
    pub fn status_any(&self) -> (Option<i32>, serde_json::Value) {
        let out = self.cli(&["status", "--json"]);
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), json)
    }

    /// The block list's entries (`block list --json`): (CIDR, origins).
    pub fn block_entries(&self) -> Vec<(String, Vec<String>)> {
        let out = self.cli(&["block", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                (
                    e["cidr"].as_str().expect("cidr").to_string(),
                    e["origins"]
                        .as_array()
                        .expect("origins")
                        .iter()
                        .map(|o| o.as_str().expect("origin").to_string())
                        .collect(),
                )
            })
            .collect()
    }

    /// Packet count of one reason, from `status --json`.
    pub fn count(&self, reason: &str) -> u64 {
        let status = self.status();
        status["counters"]
            .as_array()
            .expect("counters array")
            .iter()
            .find(|c| c["reason"] == reason)
            .unwrap_or_else(|| panic!("no reason {reason} in status"))["packets"]
            .as_u64()
            .expect("packet count")
    }

    /// Sends `signal` to the daemon (SIGHUP: reload).
    pub fn signal(&self, signal: i32) {
        // SAFETY: signals our own child process, by pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Ends the daemon with `signal` and waits for it; its protection stays pinned (as in
    /// production). Returns the exit status.
    pub fn end(mut self, signal: i32) -> std::process::ExitStatus {
        self.unload_on_drop = false;
        self.terminate(signal)
    }

    /// `mailguard unload`: stops the daemon if it runs, detaches, removes the pins.
    pub fn unload(mut self) -> std::process::Output {
        self.unload_on_drop = false;
        self.cli(&["unload"])
    }

    fn terminate(&mut self, signal: i32) -> std::process::ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        // SAFETY: signals our own child process, by pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().expect("wait for mailguard")
    }
}

impl Drop for Mailguard {
    /// Stops the daemon and, unless `end` or `unload` took over, unloads it: a test leaves no
    /// attachment or pin behind, also when it fails.
    fn drop(&mut self) {
        self.terminate(libc::SIGTERM);
        if self.unload_on_drop {
            let _ = self.cli(&["unload"]);
        }
    }
}
