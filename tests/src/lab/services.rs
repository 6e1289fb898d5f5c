//! The lab's services: Postfix on the mail host, plain TCP listeners and UDP echoes, and dnsmasq
//! serving the records the list tests resolve.

use std::{
    fs::{self},
    io::Write,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use super::daemon::set_mode;
use crate::{leftovers, netns::Netns};

/// A private Postfix instance (own configuration, queue and maildir) in the mail namespace.
pub struct Postfix {
    pub dir: PathBuf,
    ns_path: String,
}

/// Users the lab's Postfix knows (mail to anyone else at lab.test is refused `550 5.1.1`) and
/// Dovecot authenticates, with their passwords.
pub const MAIL_USERS: [(&str, &str); 2] = [
    ("postmaster@lab.test", "lab-postmaster-pw"),
    ("alice@lab.test", "alice-right-pw"),
];

impl Postfix {
    pub fn start(ns: &Netns, dir: &Path) -> Postfix {
        Postfix::start_with_sasl(ns, dir, None)
    }

    /// Postfix, with SASL authentication on submission (587) through Dovecot's socket `sasl`
    /// when given.
    pub fn start_with_sasl(ns: &Netns, dir: &Path, sasl: Option<&Path>) -> Postfix {
        let etc = dir.join("etc");
        let data = dir.join("data");
        let mail = dir.join("mail");
        for d in [&etc, &dir.join("spool"), &data, &mail] {
            fs::create_dir_all(d).expect("postfix directories");
        }
        set_mode(dir, 0o755);
        std::os::unix::fs::chown(
            &mail,
            Some(account("nobody", false)),
            Some(account("nogroup", true)),
        )
        .expect("chown the maildir nobody:nogroup");
        make_queue(&dir.join("spool"), &data);
        let d = dir.display();
        let users = MAIL_USERS
            .iter()
            .map(|(u, _)| format!("{u}=inbox/"))
            .collect::<Vec<_>>()
            .join(", ");
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
virtual_mailbox_maps = inline:{{ {users} }}
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
        let master_cf = match sasl {
            None => MASTER_CF.to_string(),
            Some(socket) => MASTER_CF.replace(
                "submission inet  n  -  n  -  -  smtpd\n",
                &format!(
                    "submission inet  n  -  n  -  -  smtpd\n  -o smtpd_sasl_auth_enable=yes\n  \
                     -o smtpd_sasl_type=dovecot\n  -o smtpd_sasl_path={}\n  \
                     -o smtpd_tls_security_level=none\n",
                    socket.display()
                ),
            ),
        };
        fs::write(etc.join("master.cf"), master_cf).expect("master.cf");
        // Postfix reads a configuration file changed within the last second again and again,
        // 300 ms apart, until it is older (it may be half written): dated back, the two files
        // are read at once, and each start saves about 2 s.
        for file in ["main.cf", "master.cf"] {
            fs::File::options()
                .write(true)
                .open(etc.join(file))
                .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(10)))
                .unwrap_or_else(|e| panic!("date back {file}: {e}"));
        }
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

/// Postfix's queue and data directories under `queue` and `data`, made as its own
/// `post-install create-missing` makes them (from `/etc/postfix/postfix-files`: each directory's
/// owner, group and mode), with `quick-start` left in the queue: `postfix start` then goes
/// straight to its master and skips its integrity checks (check-fatal, check-warn), a hundred
/// processes that took most of a minute under QEMU without KVM. A Postfix without
/// `quick-start` runs them, and makes what is missing itself.
fn make_queue(queue: &Path, data: &Path) {
    const FILES: &str = "/etc/postfix/postfix-files";
    let table = fs::read_to_string(FILES)
        .unwrap_or_else(|e| panic!("{FILES} (Debian package postfix): {e}"));
    let mut made = 0;
    for line in table.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(':').collect();
        let [path, "d", owner, group, mode, ..] = fields.as_slice() else {
            continue;
        };
        let path = if *path == "$data_directory" {
            data.to_path_buf()
        } else if let Some(rest) = path.strip_prefix("$queue_directory") {
            queue.join(rest.trim_start_matches('/'))
        } else {
            continue;
        };
        let owner = account(owner.replace("$mail_owner", "postfix").as_str(), false);
        let group = match *group {
            "-" => None,
            g => Some(account(
                g.replace("$setgid_group", "postdrop").as_str(),
                true,
            )),
        };
        let mode = u32::from_str_radix(mode, 8)
            .unwrap_or_else(|e| panic!("{FILES}: mode {mode} of {}: {e}", path.display()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::os::unix::fs::chown(&path, Some(owner), group)
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        set_mode(&path, mode);
        made += 1;
    }
    assert!(made >= 10, "{FILES} lists {made} queue directories");
    fs::write(queue.join("quick-start"), "").expect("quick-start");
}

/// The uid of user `name` (or with `group`, the gid of group `name`).
fn account(name: &str, group: bool) -> u32 {
    let c = std::ffi::CString::new(name).expect("an account name");
    // SAFETY: a NUL-terminated name; the returned entry is read at once, before any other
    // call that could reuse its storage (the lab runs one test at a time).
    let id = unsafe {
        if group {
            let g = libc::getgrnam(c.as_ptr());
            (!g.is_null()).then(|| (*g).gr_gid)
        } else {
            let p = libc::getpwnam(c.as_ptr());
            (!p.is_null()).then(|| (*p).pw_uid)
        }
    };
    id.unwrap_or_else(|| {
        panic!(
            "no {} {name} on this system (Debian package postfix)",
            if group { "group" } else { "user" }
        )
    })
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

/// A private Dovecot (IMAP on 143, and the SASL socket Postfix's submission authenticates
/// through) in the mail namespace, its users `MAIL_USERS`. With `policy`, it asks that URL
/// (mailguard's policy server) before and after every authentication. Stopped by pid on drop
/// (its helpers end with their master).
pub struct Dovecot {
    child: Child,
    pub dir: PathBuf,
}

impl Dovecot {
    pub fn start(ns: &Netns, dir: &Path, policy: Option<&str>) -> Dovecot {
        fs::create_dir_all(dir).expect("dovecot directory");
        set_mode(dir, 0o755);
        let d = dir.display();
        let users: String = MAIL_USERS
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
            .collect();
        fs::write(dir.join("users"), users).expect("dovecot users");
        let policy = policy.map_or(String::new(), |url| {
            format!(
                "auth_policy_server_url = {url}\nauth_policy_hash_nonce = lab\n\
                 auth_policy_request_attributes = login=%{{requested_username}} remote=%{{rip}} protocol=%s\n"
            )
        });
        let conf = format!(
            "base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
instance_name = mg-lab-dovecot
protocols = imap
listen = *, ::
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{d}/home/%u/Maildir
{policy}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={d}/home/%u
}}
service auth {{
  unix_listener auth-client {{
    path = {d}/auth-client
    mode = 0666
  }}
}}
"
        );
        fs::write(dir.join("dovecot.conf"), conf).expect("dovecot.conf");
        let mut cmd = ns.command("dovecot");
        cmd.args(["-F", "-c"])
            .arg(dir.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("start dovecot (Debian package dovecot-imapd)");
        let mut dv = Dovecot {
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(dir.join("auth-client").exists()
            && super::tcp_connects(
                ns,
                super::addr(super::MAIL4, 143),
                Duration::from_millis(500),
            ))
        {
            if let Ok(Some(status)) = dv.child.try_wait() {
                panic!("dovecot exited ({status}):\n{}", dv.log());
            }
            assert!(
                Instant::now() < deadline,
                "dovecot not ready after 15 s:\n{}",
                dv.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        dv
    }

    /// The SASL socket for Postfix.
    pub fn auth_socket(&self) -> PathBuf {
        self.dir.join("auth-client")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        end_child(&mut self.child, Duration::from_secs(5));
    }
}

/// Ends a process the lab (or the bench) started: SIGTERM by its pid, then SIGKILL when it is
/// still running after `grace`; reaped either way.
pub fn end_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: SIGTERM to our own child process, by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Postfix services without chroot: smtp (25) and submission (587) plus the internals.
pub(crate) const MASTER_CF: &str = "\
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
