//! The mail lab: network namespaces joined by a bridge, a real Postfix on the mail host, plain
//! listeners, and mailguard attached to the mail host's interface. Used by the end-to-end tests
//! and by `cargo xtask demo`.
//!
//! ```text
//!   mg-client (198.18.0.2, 2001:db8::2) ─┐
//!   mg-attacker (198.18.0.66, 2001:db8::66) ─┼─ br0 in mg-switch
//!   mg-mail (198.18.0.1, 2001:db8::1) ───┘   mailguard's XDP on mg-mail's interface
//! ```
//!
//! Everything is torn down when the `Lab` drops, also when a test panics: mailguard is stopped,
//! Postfix is stopped, listeners end, namespaces are deleted. Only processes the lab started
//! are signalled, by pid. A lab interrupted by a signal is removed at the signal, and one
//! killed outright by the next lab (leftovers.rs).

use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    leftovers,
    netns::{Netns, sh},
};

pub const MAIL4: &str = "198.18.0.1";
pub const MAIL6: &str = "2001:db8::1";
pub const CLIENT4: &str = "198.18.0.2";
pub const CLIENT6: &str = "2001:db8::2";
pub const ATTACKER4: &str = "198.18.0.66";
pub const ATTACKER6: &str = "2001:db8::66";

/// The interface of the mail host that mailguard guards.
pub const MAIL_IFACE: &str = "mg-mail0";
/// The switch's port facing the mail host: the peer of `MAIL_IFACE`, in the switch namespace.
pub const MAIL_SWITCH_PORT: &str = "sw-mail";

/// Non-mail ports the mail host listens on (a database and a web admin that must not be
/// reachable), and the SSH port it opens on purpose.
pub const PRIVATE_PORTS: [u16; 2] = [3306, 8080];
pub const SSH_PORT: u16 = 22;
/// The IMAPS port, served by a plain listener.
pub const IMAPS_PORT: u16 = 993;

/// Serialises labs across test binaries and threads: they share names and kernel state.
pub struct LabLock {
    _held: File,
}

impl LabLock {
    pub fn acquire() -> LabLock {
        let path = "/run/mailguard-lab.lock";
        let f = File::create(path).unwrap_or_else(|e| panic!("create {path}: {e}"));
        // SAFETY: flock on an open file descriptor; released when the file closes.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {path}: {}", std::io::Error::last_os_error());
        leftovers::set_holding(true);
        LabLock { _held: f }
    }
}

impl Drop for LabLock {
    fn drop(&mut self) {
        leftovers::set_holding(false);
    }
}

/// A host namespace attached to the lab bridge.
pub struct Host {
    pub ns: Netns,
    pub iface: String,
    pub v4: &'static str,
    pub v6: &'static str,
}

/// The lab. Fields drop in order: mailguard, services, the switch ports' XDP, then the
/// namespaces.
pub struct Lab {
    pub mailguard: Option<Mailguard>,
    pub postfix: Option<Postfix>,
    listeners: Vec<Listener>,
    _switch_xdp: aya::Ebpf,
    pub mail: Host,
    pub client: Host,
    pub attacker: Host,
    pub switch: Netns,
    pub dir: TempDir,
    _lock: LabLock,
}

impl Lab {
    /// Namespaces, bridge, addresses (IPv4 and IPv6, DAD off), and the neighbour tables warmed.
    pub fn create() -> Lab {
        leftovers::remove_lab_on_interrupt();
        let lock = LabLock::acquire();
        for line in leftovers::sweep(false) {
            println!("lab: leftovers of an earlier run that did not end cleanly: {line}");
        }
        let [switch_ns, mail_ns, client_ns, attacker_ns] = leftovers::NAMESPACES;
        let dir = TempDir::new(leftovers::LAB_DIR_PREFIX);
        let switch = Netns::create(switch_ns);
        switch.run(&["ip", "link", "add", "br0", "type", "bridge"]);
        switch.run(&["ip", "link", "set", "br0", "up"]);
        let host = |name: &str, short: &str, v4: &'static str, v6: &'static str| {
            let ns = Netns::create(name);
            let iface = link_host(&switch, &ns, short, v4, v6);
            Host { ns, iface, v4, v6 }
        };
        let mail = host(mail_ns, "mail", MAIL4, MAIL6);
        let client = host(client_ns, "cli", CLIENT4, CLIENT6);
        let attacker = host(attacker_ns, "atk", ATTACKER4, ATTACKER6);
        assert_eq!(mail.iface, MAIL_IFACE);
        let switch_xdp = pass_on_switch_ports(&switch, &[MAIL_SWITCH_PORT, "sw-cli", "sw-atk"]);
        Lab {
            mailguard: None,
            postfix: None,
            listeners: Vec::new(),
            _switch_xdp: switch_xdp,
            mail,
            client,
            attacker,
            switch,
            dir,
            _lock: lock,
        }
    }

    /// Deletes the mail host's interface and makes it again, with the same name and addresses:
    /// what a network restart (ifdown/ifup, a re-created VLAN or bond) does to an XDP
    /// attachment, which goes with the old device.
    /// The new device keeps the old one's MAC address, so that the peers' neighbour entries
    /// stay right.
    pub fn recreate_mail_link(&self) {
        let mac = self.delete_mail_link();
        self.create_mail_link(&mac);
    }

    /// Deletes the mail host's interface (its peer on the switch goes with it); returns its MAC
    /// address, for `create_mail_link`.
    pub fn delete_mail_link(&self) -> String {
        let mac = crate::netns::link_info(Some(&self.mail.ns), MAIL_IFACE)["address"]
            .as_str()
            .expect("MAC address")
            .to_string();
        self.mail.ns.run(&["ip", "link", "del", MAIL_IFACE]);
        mac
    }

    /// Makes the mail host's interface again, with `mac` and the lab's addresses.
    pub fn create_mail_link(&self, mac: &str) {
        let iface = link_host(&self.switch, &self.mail.ns, "mail", MAIL4, MAIL6);
        assert_eq!(iface, MAIL_IFACE);
        self.mail
            .ns
            .run(&["ip", "link", "set", MAIL_IFACE, "address", mac]);
    }

    /// Runs `mailguard run` with the lab mailguard's directories and `config`, for a start that
    /// must fail: returns its output once it exits (panics if it is still running after 30 s).
    pub fn run_mailguard_to_exit(&self, config: &str, args: &[&str]) -> std::process::Output {
        let path = self.dir.path.join("mailguard-failing.toml");
        fs::write(&path, self.with_lab_state_dir(config)).expect("write mailguard config");
        let mut cmd = self
            .mail
            .ns
            .command(mailguard_bin().to_str().expect("UTF-8 path"));
        cmd.arg("--pin-dir")
            .arg(leftovers::pin_dir_of(std::process::id()))
            .arg("--run-dir")
            .arg(self.dir.path.join("run"))
            .args(["run", "--config"])
            .arg(&path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start mailguard");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "mailguard run was meant to fail but still runs after 30 s:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("output")
    }

    /// Postfix on the mail host (25 and 587, IPv4 and IPv6), and plain listeners on 22, 993 and
    /// the private ports.
    pub fn start_services(&mut self) {
        self.postfix = Some(Postfix::start(
            &self.mail.ns,
            &self.dir.path.join("postfix"),
        ));
        for port in [SSH_PORT, IMAPS_PORT].into_iter().chain(PRIVATE_PORTS) {
            self.listeners.push(Listener::tcp(&self.mail.ns, port));
        }
    }

    /// Starts a plain TCP listener (banner, then close) in `ns`; it stops with the lab.
    pub fn listen(&mut self, ns_of: fn(&Lab) -> &Netns, port: u16) {
        let l = Listener::tcp(ns_of(self), port);
        self.listeners.push(l);
    }

    /// Starts a UDP echo server in `ns`; it stops with the lab.
    pub fn udp_echo(&mut self, ns_of: fn(&Lab) -> &Netns, port: u16) {
        let l = Listener::udp_echo(ns_of(self), port);
        self.listeners.push(l);
    }

    /// `config` with the lists' state kept in the lab's directory, unless it says where: a
    /// lab's run-time list edits must never reach the host's own `/var/lib/mailguard`.
    fn with_lab_state_dir(&self, config: &str) -> String {
        if config.contains("state_dir") {
            return config.to_string();
        }
        let line = format!(
            "state_dir = \"{}\"\n",
            self.dir.path.join("state").display()
        );
        match config.find("[lists]\n") {
            Some(at) => {
                let after = at + "[lists]\n".len();
                format!("{}{line}{}", &config[..after], &config[after..])
            }
            None => format!("{config}\n[lists]\n{line}"),
        }
    }

    /// Writes `config` to the lab directory and starts mailguard on the mail host with it.
    pub fn start_mailguard(&mut self, config: &str, extra_args: &[&str]) -> &Mailguard {
        let path = self.dir.path.join("mailguard.toml");
        fs::write(&path, self.with_lab_state_dir(config)).expect("write mailguard config");
        let mg = Mailguard::start(&self.mail.ns, &self.dir.path, &path, extra_args);
        self.mailguard = Some(mg);
        self.mailguard.as_ref().expect("just set")
    }

    /// Rewrites the configuration file mailguard was started with (for reloads). An empty
    /// `config` is written as it is.
    pub fn rewrite_mailguard_config(&self, config: &str) {
        let text = if config.is_empty() {
            String::new()
        } else {
            self.with_lab_state_dir(config)
        };
        fs::write(self.dir.path.join("mailguard.toml"), text).expect("rewrite mailguard config");
    }

    pub fn stop_mailguard(&mut self) {
        self.mailguard = None;
    }

    pub fn mailguard(&self) -> &Mailguard {
        self.mailguard.as_ref().expect("mailguard is running")
    }
}

/// A veth pair from a host's namespace `ns` (`<ns name>0`, with `v4`/24 and `v6`/64, DAD off)
/// to the switch's bridge (`sw-<short>`), up, with GRO on at both ends (native XDP on veth sees
/// the traffic it is sent then). Returns the host's interface name.
fn link_host(switch: &Netns, ns: &Netns, short: &str, v4: &str, v6: &str) -> String {
    let iface = format!("{}0", ns.name);
    let port = format!("sw-{short}");
    sh(&[
        "ip",
        "link",
        "add",
        &iface,
        "netns",
        &ns.name,
        "type",
        "veth",
        "peer",
        "name",
        &port,
        "netns",
        &switch.name,
    ]);
    switch.run(&["ip", "link", "set", &port, "master", "br0", "up"]);
    switch.run(&["ethtool", "-K", &port, "gro", "on"]);
    ns.run(&["ethtool", "-K", &iface, "gro", "on"]);
    ns.run(&["ip", "addr", "add", &format!("{v4}/24"), "dev", &iface]);
    ns.run(&[
        "ip",
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        &iface,
        "nodad",
    ]);
    ns.run(&["ip", "link", "set", &iface, "up"]);
    iface
}

/// Attaches an XDP_PASS program (native mode) to the switch's ports, so that frames a host's
/// native XDP sends back with XDP_TX are delivered by the veth pair. Detached on drop.
fn pass_on_switch_ports(switch: &Netns, ports: &'static [&'static str]) -> aya::Ebpf {
    switch
        .spawn(move || {
            let mut ebpf = aya::Ebpf::load(mailguard::kernel::guard::BENCH_FLOOR_OBJECT)
                .expect("reference programs");
            let program: &mut aya::programs::Xdp = ebpf
                .program_mut("xdp_pass")
                .expect("xdp_pass")
                .try_into()
                .expect("an XDP program");
            program.load().expect("load xdp_pass");
            for port in ports {
                program
                    .attach(port, aya::programs::XdpMode::Driver)
                    .unwrap_or_else(|e| panic!("xdp_pass on {port}: {e}"));
            }
            ebpf
        })
        .join()
        .expect("switch thread")
}

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

fn set_mode(path: &Path, mode: u32) {
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

/// A private Postfix instance (own configuration, queue and maildir) in the mail namespace.
pub struct Postfix {
    pub dir: PathBuf,
    ns_path: String,
}

impl Postfix {
    pub fn start(ns: &Netns, dir: &Path) -> Postfix {
        let etc = dir.join("etc");
        let data = dir.join("data");
        let mail = dir.join("mail");
        for d in [&etc, &dir.join("spool"), &data, &mail] {
            fs::create_dir_all(d).expect("postfix directories");
        }
        set_mode(dir, 0o755);
        sh(&["chown", "postfix", data.to_str().expect("UTF-8")]);
        sh(&["chown", "nobody:nogroup", mail.to_str().expect("UTF-8")]);
        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.lab.test
mydomain = lab.test
inet_interfaces = all
inet_protocols = all
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = lab.test
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
mynetworks = 198.18.0.0/15, [2001:db8::]/32, 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
biff = no
"
        );
        fs::write(etc.join("main.cf"), main_cf).expect("main.cf");
        fs::write(etc.join("master.cf"), MASTER_CF).expect("master.cf");
        let pf = Postfix {
            dir: dir.to_path_buf(),
            ns_path: ns.path(),
        };
        let out = pf.postfix("start");
        assert!(
            out.status.success(),
            "postfix start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pf.maillog()
        );
        pf
    }

    fn postfix(&self, action: &str) -> std::process::Output {
        let etc = self.dir.join("etc");
        Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .args(["--", "postfix", "-c"])
            .arg(&etc)
            .arg(action)
            .output()
            .expect("run postfix")
    }

    pub fn maillog(&self) -> String {
        fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Messages delivered to the maildir, as text.
    pub fn delivered(&self) -> Vec<String> {
        let new = self.dir.join("mail/inbox/new");
        let Ok(entries) = fs::read_dir(&new) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .collect()
    }

    /// Waits until a delivered message contains `marker`.
    pub fn wait_delivered(&self, marker: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.delivered().iter().any(|m| m.contains(marker)) {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn master_pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join("spool/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid = self.master_pid();
        let _ = self.postfix("stop");
        // `postfix stop` waits for the master; make sure the one we started is gone.
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && leftovers::running(pid) {
                thread::sleep(Duration::from_millis(50));
            }
            if leftovers::running(pid) {
                // SAFETY: SIGKILL to the master process this lab started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Postfix services without chroot: smtp (25) and submission (587) plus the internals.
const MASTER_CF: &str = "\
smtp       inet  n  -  n  -  -  smtpd
submission inet  n  -  n  -  -  smtpd
pickup     unix  n  -  n  60 1  pickup
cleanup    unix  n  -  n  -  0  cleanup
qmgr       unix  n  -  n  300 1 qmgr
rewrite    unix  -  -  n  -  -  trivial-rewrite
bounce     unix  -  -  n  -  0  bounce
defer      unix  -  -  n  -  0  bounce
trace      unix  -  -  n  -  0  bounce
verify     unix  -  -  n  -  1  verify
flush      unix  n  -  n  1000? 0 flush
proxymap   unix  -  -  n  -  -  proxymap
smtp       unix  -  -  n  -  -  smtp
relay      unix  -  -  n  -  -  smtp
showq      unix  n  -  n  -  -  showq
error      unix  -  -  n  -  -  error
retry      unix  -  -  n  -  -  error
discard    unix  -  -  n  -  -  discard
virtual    unix  -  n  n  -  -  virtual
anvil      unix  -  -  n  -  1  anvil
scache     unix  -  -  n  -  1  scache
postlog    unix-dgram n - n - 1 postlogd
";

/// A listener thread in a namespace, stopped and joined on drop.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Listener {
    /// Accepts TCP connections on every address (IPv4 and IPv6), writes a banner, closes.
    pub fn tcp(ns: &Netns, port: u16) -> Listener {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let v6: SocketAddr = format!("[::]:{port}").parse().expect("address");
            // A dual-stack socket serves IPv4 too.
            let listener = TcpListener::bind(v6).unwrap_or_else(|e| panic!("bind TCP {port}: {e}"));
            listener.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(format!("hello from port {port}\n").as_bytes());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("TCP listener started");
        Listener {
            stop,
            thread: Some(thread),
        }
    }

    /// Echoes UDP datagrams back to their sender (IPv4 and IPv6).
    pub fn udp_echo(ns: &Netns, port: u16) -> Listener {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let sock = UdpSocket::bind(format!("[::]:{port}"))
                .unwrap_or_else(|e| panic!("bind UDP {port}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("UDP echo started");
        Listener {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens a TCP connection from inside `ns` and reads the banner; `None` when it fails within
/// `timeout`.
pub fn tcp_banner(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Option<String> {
    ns.spawn(move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        let mut banner = String::new();
        s.read_to_string(&mut banner).ok()?;
        Some(banner)
    })
    .join()
    .expect("client thread")
}

/// Whether a TCP connection from inside `ns` to `addr` is established within `timeout` (for
/// servers that, like Postfix, keep the connection open after their banner).
pub fn tcp_connects(ns: &Netns, addr: SocketAddr, timeout: Duration) -> bool {
    ns.spawn(move || std::net::TcpStream::connect_timeout(&addr, timeout).is_ok())
        .join()
        .expect("client thread")
}

/// Sends one datagram from a connected UDP socket inside `ns` and waits for the echo.
pub fn udp_round_trip(ns: &Netns, to: SocketAddr, timeout: Duration) -> Option<Vec<u8>> {
    ns.spawn(move || {
        let bind = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let sock = UdpSocket::bind(bind).ok()?;
        sock.connect(to).ok()?;
        sock.set_read_timeout(Some(timeout)).ok()?;
        sock.send(b"mailguard udp probe").ok()?;
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    })
    .join()
    .expect("client thread")
}

/// What nmap reported for each port.
#[derive(Debug, Default)]
pub struct Scan {
    pub open: Vec<u16>,
    pub closed: Vec<u16>,
    pub filtered: Vec<u16>,
}

/// A SYN scan (`nmap -sS`) of `ports` on `target` from inside `ns`.
pub fn nmap_syn_scan(ns: &Netns, target: &str, ports: &[u16]) -> Scan {
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let mut args = vec![
        "nmap",
        "-sS",
        "-Pn",
        "-n",
        "--max-retries",
        "1",
        "--host-timeout",
        "120s",
        "-T4",
    ];
    if target.contains(':') {
        args.push("-6");
    }
    let joined = list.join(",");
    args.extend(["-p", &joined, "-oG", "-", target]);
    let out = ns.run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut scan = parse_grepable(&text);
    // nmap folds ports that share a state into "Ignored State: filtered (N)" and leaves them
    // out of the list: they are the requested ports it did not list.
    if let Some(state) = text
        .split("Ignored State: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
    {
        let listed: Vec<u16> = scan
            .open
            .iter()
            .chain(&scan.closed)
            .chain(&scan.filtered)
            .copied()
            .collect();
        let rest = ports.iter().copied().filter(|p| !listed.contains(p));
        match state {
            "filtered" => scan.filtered.extend(rest),
            "closed" => scan.closed.extend(rest),
            other => panic!("nmap left out ports in state {other}: {text}"),
        }
        scan.filtered.sort_unstable();
        scan.closed.sort_unstable();
    }
    scan
}

/// Parses the `Ports:` field of nmap's grepable output.
pub fn parse_grepable(text: &str) -> Scan {
    let mut scan = Scan::default();
    for line in text.lines() {
        let Some((_, ports)) = line.split_once("Ports: ") else {
            continue;
        };
        let ports = ports.split('\t').next().unwrap_or("");
        for entry in ports.split(", ") {
            let mut f = entry.split('/');
            let (Some(port), Some(state)) = (f.next(), f.next()) else {
                continue;
            };
            let Ok(port) = port.trim().parse::<u16>() else {
                continue;
            };
            match state {
                "open" => scan.open.push(port),
                "closed" => scan.closed.push(port),
                s if s.contains("filtered") => scan.filtered.push(port),
                _ => {}
            }
        }
    }
    for v in [&mut scan.open, &mut scan.closed, &mut scan.filtered] {
        v.sort_unstable();
    }
    scan
}

/// A plain HTTP GET from inside `ns`: the body of a 200 response, or what went wrong.
pub fn try_http_get(ns: &Netns, addr: &str, path: &str, accept: &str) -> Result<String, String> {
    let (addr, path, accept) = (addr.to_string(), path.to_string(), accept.to_string());
    ns.spawn(move || {
        let to: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut all = String::new();
        s.read_to_string(&mut all).map_err(|e| e.to_string())?;
        let (head, body) = all.split_once("\r\n\r\n").ok_or("not an HTTP response")?;
        if head.starts_with("HTTP/1.1 200") {
            Ok(body.to_string())
        } else {
            Err(head.to_string())
        }
    })
    .join()
    .expect("HTTP thread")
}

pub fn http_get(ns: &Netns, addr: &str, path: &str, accept: &str) -> String {
    try_http_get(ns, addr, path, accept).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// dnsmasq serving fixed records (and nothing else: no upstream, no /etc/hosts) on one address
/// inside a namespace. Stopped by pid on drop.
pub struct Dnsmasq {
    child: Child,
}

/// A record dnsmasq serves.
pub enum Record<'a> {
    Txt(&'a str, &'a str),
    /// A host's A or AAAA address.
    Addr(&'a str, &'a str),
    /// A domain's MX host.
    Mx(&'a str, &'a str),
}

impl Dnsmasq {
    pub fn start(ns: &Netns, listen: &str, records: &[Record]) -> Dnsmasq {
        let mut cmd = ns.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-negcache",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--port=53",
            "--log-queries",
            "--log-facility=-",
        ]);
        cmd.arg(format!("--listen-address={listen}"));
        // Names under these domains that have no record are NXDOMAIN, not forwarded.
        cmd.args(["--local=/test/"]);
        for r in records {
            cmd.arg(match r {
                // Passed as one argument: no quotes (they would be part of the text), and no
                // commas (they separate character-strings).
                Record::Txt(name, text) => format!("--txt-record={name},{text}"),
                Record::Addr(name, ip) => format!("--host-record={name},{ip}"),
                Record::Mx(name, host) => format!("--mx-host={name},{host},10"),
            });
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("start dnsmasq (Debian package dnsmasq-base)");
        let mut d = Dnsmasq { child };
        // Ready when it answers on port 53.
        let to: SocketAddr = format!("{listen}:53").parse().expect("listen address");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let query = ns.spawn(move || {
                let s = UdpSocket::bind("0.0.0.0:0").ok()?;
                s.connect(to).ok()?;
                s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
                // A query for `test` SOA (id 1, RD): any answer means it is up.
                s.send(&[
                    0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, b't', b'e', b's', b't', 0, 0, 6, 0, 1,
                ])
                .ok()?;
                let mut buf = [0u8; 512];
                s.recv(&mut buf).ok()
            });
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("dnsmasq exited ({status}): is {listen}:53 taken?");
            }
            if query.join().ok().flatten().is_some() {
                return d;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("dnsmasq did not answer on {listen}:53 within 10 s");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ip` and `port` as a socket address (IPv6 in brackets).
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
    .parse()
    .expect("address")
}

/// Delivers one message with swaks from inside `ns`; returns swaks' transcript on failure.
pub fn swaks(ns: &Netns, server: &str, port: u16, subject: &str) -> Result<(), String> {
    let port = port.to_string();
    let out = ns
        .command("swaks")
        .args([
            "--server",
            server,
            "--port",
            &port,
            "--from",
            "sender@client.test",
            "--to",
            "postmaster@lab.test",
        ])
        .args([
            "--header",
            &format!("Subject: {subject}"),
            "--body",
            &format!("mailguard lab message {subject}"),
        ])
        .args(["--timeout", "15"])
        .output()
        .map_err(|e| format!("cannot run swaks: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "swaks exited {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A spoofed SYN flood from the attacker to the mail host's port 25: trafgen (netsniff-ng)
/// sending as fast as it can (sendto), every SYN from a random source in 198.19.0.0/16 (inside
/// the test range, apart from the lab's hosts) with a random source port and sequence number.
/// Ended, with its whole process group, on drop.
pub struct SpoofedFlood {
    child: Child,
}

/// Writes trafgen's packet into the lab's directory and returns its path: a SYN from the
/// attacker to the mail host's port 25 from a random source in the /16 `sources` (random source
/// port and sequence number; trafgen computes the checksums per packet).
pub fn spoofed_syn_config(lab: &Lab, sources: [u8; 2]) -> PathBuf {
    let mac = crate::netns::link_info(Some(&lab.mail.ns), &lab.mail.iface)["address"]
        .as_str()
        .expect("the mail host's MAC address")
        .to_string();
    let [a, b] = sources;
    let conf = lab.dir.path.join(format!("spoofed-syn-{a}.{b}.trafgen"));
    fs::write(
        &conf,
        format!(
            "{{\n  eth(da={mac}),\n  ipv4(sa={a}.{b}.0.1, sa[2]=drnd(), sa[3]=drnd(), da={MAIL4}, ttl=64),\n  \
             tcp(sp=40000, sp[0]=drnd(), dp=25, seq=drnd(), syn, win=64240)\n}}\n"
        ),
    )
    .expect("write the trafgen configuration");
    conf
}

impl SpoofedFlood {
    pub fn start(lab: &Lab) -> SpoofedFlood {
        let conf = spoofed_syn_config(lab, [198, 19]);
        let child = lab
            .attacker
            .ns
            .command("trafgen")
            .args([
                "--dev",
                &lab.attacker.iface,
                "--notouch-irq",
                "--cpus",
                "1",
                "--gap",
                "0",
            ])
            .arg("--conf")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("trafgen");
        SpoofedFlood { child }
    }
}

impl Drop for SpoofedFlood {
    fn drop(&mut self) {
        // SAFETY: signals the process group this flood created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nmap_grepable_output() {
        let text = "# Nmap 7.93 scan\nHost: 198.18.0.1 ()\tStatus: Up\nHost: 198.18.0.1 ()\tPorts: 22/open/tcp//ssh///, 25/open/tcp//smtp///, 465/closed/tcp//smtps///, 3306/filtered/tcp//mysql///, 8080/open|filtered/tcp//http-proxy///\tIgnored State: filtered (3)\n";
        let s = parse_grepable(text);
        assert_eq!(s.open, vec![22, 25]);
        assert_eq!(s.closed, vec![465]);
        assert_eq!(s.filtered, vec![3306, 8080]);
    }
}
