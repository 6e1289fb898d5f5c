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
//!
//! This file is the topology (namespaces, links, the lab's lock); `daemon.rs` runs mailguard in
//! it, `services.rs` Postfix, listeners and dnsmasq, `probes.rs` what the tests send and read,
//! `floods.rs` the spoofed SYN flood.

use std::{
    fs::{self, File},
    os::fd::AsRawFd,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use crate::{
    leftovers,
    netns::{Netns, sh},
};

pub mod crowdsec;
pub mod daemon;
pub mod floods;
pub mod probes;
pub mod services;
pub mod tls;
pub mod xdp_flood;
pub use crowdsec::*;
pub use daemon::*;
pub use floods::*;
pub use probes::*;
pub use services::*;

pub const MAIL4: &str = "198.18.0.1";
pub const MAIL6: &str = "2001:db8::1";
pub const CLIENT4: &str = "198.18.0.2";
pub const CLIENT6: &str = "2001:db8::2";
pub const ATTACKER4: &str = "198.18.0.66";
pub const ATTACKER6: &str = "2001:db8::66";
/// The fleet (`Lab::add_fleet`): a second mail host, and the host of CrowdSec's Local API.
pub const MAIL2_4: &str = "198.18.0.3";
pub const MAIL2_6: &str = "2001:db8::3";
pub const MAIL2_IFACE: &str = "mg-mail20";
pub const LAPI4: &str = "198.18.0.9";
pub const LAPI6: &str = "2001:db8::9";

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
    pub dovecot: Option<Dovecot>,
    listeners: Vec<Listener>,
    _switch_xdp: aya::Ebpf,
    pub mail: Host,
    pub client: Host,
    pub attacker: Host,
    /// The fleet, after `add_fleet`: a second mail host with its own mailguard, and the LAPI's
    /// host. Dropped before the switch (fields drop in order).
    pub mailguard2: Option<Mailguard>,
    pub crowdsec: Option<CrowdsecLapi>,
    pub mail2: Option<Host>,
    pub lapi: Option<Host>,
    _fleet_xdp: Option<aya::Ebpf>,
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
        let [switch_ns, mail_ns, client_ns, attacker_ns, _, _] = leftovers::NAMESPACES;
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
            dovecot: None,
            listeners: Vec::new(),
            _switch_xdp: switch_xdp,
            mail,
            client,
            attacker,
            mailguard2: None,
            crowdsec: None,
            mail2: None,
            lapi: None,
            _fleet_xdp: None,
            switch,
            dir,
            _lock: lock,
        }
    }

    /// Adds the fleet: a second mail host (`MAIL2_4`, `MAIL2_6`) with a plain listener on 22,
    /// and the host of CrowdSec's Local API (`LAPI4`, `LAPI6`), both on the switch.
    pub fn add_fleet(&mut self) {
        let [_, _, _, _, mail2_ns, lapi_ns] = leftovers::NAMESPACES;
        let host = |name: &str, short: &str, v4: &'static str, v6: &'static str| {
            let ns = Netns::create(name);
            let iface = link_host(&self.switch, &ns, short, v4, v6);
            Host { ns, iface, v4, v6 }
        };
        let mail2 = host(mail2_ns, "mail2", MAIL2_4, MAIL2_6);
        let lapi = host(lapi_ns, "lapi", LAPI4, LAPI6);
        assert_eq!(mail2.iface, MAIL2_IFACE);
        self._fleet_xdp = Some(pass_on_switch_ports(&self.switch, &["sw-mail2", "sw-lapi"]));
        self.listeners.push(Listener::tcp(&mail2.ns, SSH_PORT));
        self.mail2 = Some(mail2);
        self.lapi = Some(lapi);
    }

    /// Starts CrowdSec's Local API on the LAPI host (after `add_fleet`), with its database in
    /// the lab directory; `restart_crowdsec` starts it again over the same database.
    pub fn start_crowdsec(&mut self) -> &CrowdsecLapi {
        self.start_crowdsec_with(None)
    }

    /// `start_crowdsec`, the LAPI serving HTTPS with a certificate for `LAPI4` that a CA of the
    /// lab's own signs (made in the lab directory); returns the CA's certificate file.
    pub fn start_crowdsec_tls(&mut self) -> std::path::PathBuf {
        let ca = tls::LabCa::make(&self.dir.path.join("ca"), LAPI4);
        let file = ca.ca.clone();
        self.start_crowdsec_with(Some(ca));
        file
    }

    fn start_crowdsec_with(&mut self, tls: Option<tls::LabCa>) -> &CrowdsecLapi {
        let lapi = self.lapi.as_ref().expect("add_fleet first");
        let c = CrowdsecLapi::start(&lapi.ns, &self.dir.path.join("crowdsec"), LAPI4, tls);
        self.crowdsec = Some(c);
        self.crowdsec.as_ref().expect("just set")
    }

    /// Writes `config` (with a state directory of its own) and starts mailguard on the second
    /// mail host with it.
    pub fn start_mailguard2(&mut self, config: &str) -> &Mailguard {
        let mail2 = self.mail2.as_ref().expect("add_fleet first");
        let root = self.dir.path.join("mail2");
        fs::create_dir_all(&root).expect("mail2 directory");
        let config = with_state_dir(config, &root.join("state"));
        let path = root.join("mailguard.toml");
        fs::write(&path, config).expect("write mailguard config");
        let pin_dir = std::path::PathBuf::from(format!(
            "{}-mail2",
            leftovers::pin_dir_of(std::process::id()).display()
        ));
        let mg = Mailguard::start_on(&mail2.ns, &root, &path, MAIL2_IFACE, pin_dir);
        self.mailguard2 = Some(mg);
        self.mailguard2.as_ref().expect("just set")
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

    /// Dovecot (IMAP on 143; asking `policy` before and after each authentication when given),
    /// then Postfix with SASL through Dovecot on submission, and the plain listeners of
    /// `start_services`.
    pub fn start_services_with_auth(&mut self, policy: Option<&str>) {
        let dovecot = Dovecot::start(&self.mail.ns, &self.dir.path.join("dovecot"), policy);
        self.postfix = Some(Postfix::start_with_sasl(
            &self.mail.ns,
            &self.dir.path.join("postfix"),
            Some(&dovecot.auth_socket()),
        ));
        self.dovecot = Some(dovecot);
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
        with_state_dir(config, &self.dir.path.join("state"))
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

/// `config` with `[lists] state_dir = dir` unless it names one.
fn with_state_dir(config: &str, dir: &std::path::Path) -> String {
    if config.contains("state_dir") {
        return config.to_string();
    }
    let line = format!("state_dir = \"{}\"\n", dir.display());
    match config.find("[lists]\n") {
        Some(at) => {
            let after = at + "[lists]\n".len();
            format!("{}{line}{}", &config[..after], &config[after..])
        }
        None => format!("{config}\n[lists]\n{line}"),
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
            let mut ebpf = aya::Ebpf::load(crate::reference::LAB_PASS).expect("the lab's XDP_PASS");
            let program = crate::reference::xdp_program(&mut ebpf, "xdp_pass")
                .unwrap_or_else(|e| panic!("{e}"));
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
