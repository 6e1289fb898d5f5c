//! Network namespaces for tests: an anonymous one for the calling thread (gone when the
//! thread ends), and named ones (`ip netns`) removed when their guard drops, even when a test
//! fails.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    thread,
};

/// Moves the calling thread into a new, empty network namespace with loopback up. Processes
/// it starts inherit the namespace; it disappears with the thread and its sockets.
pub fn enter_private_netns() {
    // SAFETY: unshare(CLONE_NEWNET) only changes the calling thread's network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {} (tests run as root)",
        std::io::Error::last_os_error()
    );
    sh(&["ip", "link", "set", "lo", "up"]);
}

/// What `ip -j -s link show dev IFACE` says of an interface (addresses, counters, attached
/// XDP program), in `ns` or in the caller's own namespace.
pub fn link_info(ns: Option<&Netns>, iface: &str) -> serde_json::Value {
    let args = ["ip", "-j", "-s", "link", "show", "dev", iface];
    let out = match ns {
        Some(ns) => ns.run(&args),
        None => sh(&args),
    };
    let mut json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("`{}` printed no JSON: {e}", args.join(" ")));
    json[0].take()
}

/// Runs a command to success, panicking with its output otherwise.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Netns {
        // A namespace of this name left by an earlier, killed run goes first.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["ip", "netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command that runs inside this namespace. `nsenter --net` changes only the network
    /// namespace, so bpffs and cgroupfs stay visible (unlike `ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a command in this namespace to success.
    pub fn run(&self, args: &[&str]) -> Output {
        let net = format!("--net={}", self.path());
        let mut full = vec!["nsenter", net.as_str(), "--"];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a new thread inside this namespace (sockets it opens live there).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path();
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a namespace file descriptor; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
