//! Tier 3, the daemon's life cycle: protection survives the daemon (SIGKILL included), a restart
//! adopts the pinned state, and the program is replaced atomically under traffic. And the lab's
//! own: a demo interrupted (Ctrl-C) or killed leaves nothing behind.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use guard_tests::{
    lab::{Lab, LabLock, MAIL4, Mailguard, http_get, try_http_get},
    leftovers::{self, NAMESPACES, pin_dir_of, process_stat, running, temp_dir_of},
    netns::Netns,
};

const CONFIG: &str = "interface = \"mg-mail0\"\n[budgets]\nsyn_ceiling = 0\n";

/// Traffic that runs in the client namespace until stopped: probes of a port mailguard must
/// keep closed, and SMTP sessions that must keep working.
struct Traffic {
    stop: Arc<AtomicBool>,
    probes: Arc<AtomicU64>,
    probes_through: Arc<AtomicU64>,
    sessions: Arc<AtomicU64>,
    session_failures: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(client: &Netns) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (probes, probes_through) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (sessions, session_failures) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut threads = Vec::new();
        let (s, p, t) = (stop.clone(), probes.clone(), probes_through.clone());
        threads.push(client.spawn(move || {
            let to: SocketAddr = format!("{MAIL4}:3306").parse().unwrap();
            while !s.load(Ordering::Relaxed) {
                p.fetch_add(1, Ordering::Relaxed);
                if TcpStream::connect_timeout(&to, Duration::from_millis(100)).is_ok() {
                    t.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        let (s, n, f) = (stop.clone(), sessions.clone(), session_failures.clone());
        threads.push(client.spawn(move || {
            let to: SocketAddr = format!("{MAIL4}:25").parse().unwrap();
            while !s.load(Ordering::Relaxed) {
                n.fetch_add(1, Ordering::Relaxed);
                if smtp_session(to).is_err() {
                    f.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        Traffic {
            stop,
            probes,
            probes_through,
            sessions,
            session_failures,
            threads,
        }
    }

    /// Stops the traffic: (probes, probes through, sessions, failed sessions).
    fn finish(self) -> (u64, u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("traffic thread");
        }
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            get(&self.probes),
            get(&self.probes_through),
            get(&self.sessions),
            get(&self.session_failures),
        )
    }
}

/// An SMTP session: banner, EHLO, QUIT.
fn smtp_session(to: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    if !buf[..n].starts_with(b"220") {
        return Err(std::io::Error::other("no banner"));
    }
    s.write_all(b"EHLO client.test\r\n")?;
    let n = s.read(&mut buf)?;
    if !buf[..n].starts_with(b"250") {
        return Err(std::io::Error::other("no EHLO reply"));
    }
    s.write_all(b"QUIT\r\n")?;
    let _ = s.read(&mut buf);
    Ok(())
}

fn restart(lab: &mut Lab, old: Mailguard, signal: i32) {
    old.end(signal);
    lab.start_mailguard(CONFIG, &[]);
}

#[test]
fn sigkill_keeps_protection_and_a_restart_adopts_the_state() {
    let mut lab = Lab::create();
    lab.start_services();
    lab.start_mailguard(CONFIG, &[]);
    let traffic = Traffic::start(&lab.client.ns);
    thread::sleep(Duration::from_millis(500));
    let before = lab.mailguard().count("tcp_not_allowed");
    let old_program = lab.mailguard().status()["program_id"].clone();

    let mg = lab.mailguard.take().expect("mailguard");
    let status = mg.end(libc::SIGKILL);
    assert_eq!(status.code(), None, "killed by a signal");
    thread::sleep(Duration::from_secs(1));
    let link =
        String::from_utf8_lossy(&lab.mail.ns.run(&["ip", "link", "show", "mg-mail0"]).stdout)
            .to_string();
    assert!(
        link.contains("prog/xdp"),
        "protection gone with the daemon: {link}"
    );

    lab.start_mailguard(CONFIG, &[]);
    thread::sleep(Duration::from_millis(500));
    let (probes, through, sessions, failed) = traffic.finish();
    let mg = lab.mailguard();
    let after = mg.count("tcp_not_allowed");
    println!(
        "sigkill: {probes} probes of 3306 ({through} through), {sessions} SMTP sessions ({failed} failed); \
         tcp_not_allowed {before} before the kill, {after} after the restart"
    );
    assert_eq!(
        through, 0,
        "a probe got through while the daemon was dead or restarting"
    );
    assert_eq!(failed, 0, "SMTP sessions failed");
    assert!(
        after > before,
        "counters continue from where they were ({before} -> {after})"
    );
    assert_ne!(
        mg.status()["program_id"],
        old_program,
        "the restart replaced the program"
    );
}

#[test]
fn program_replaced_100_times_under_traffic() {
    let mut lab = Lab::create();
    lab.start_services();
    lab.start_mailguard(CONFIG, &[]);
    let traffic = Traffic::start(&lab.client.ns);
    let first = lab.mailguard().count("tcp_not_allowed");
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let old = lab.mailguard.take().expect("mailguard");
        restart(&mut lab, old, libc::SIGTERM);
    }
    let took = started.elapsed();
    let (probes, through, sessions, failed) = traffic.finish();
    let last = lab.mailguard().count("tcp_not_allowed");
    println!(
        "upgrade: 100 replacements in {took:.1?}; {probes} probes of 3306 ({through} through), {sessions} SMTP \
         sessions ({failed} failed); tcp_not_allowed {first} -> {last}"
    );
    assert_eq!(through, 0, "a probe got through during a replacement");
    assert_eq!(failed, 0, "SMTP sessions failed during replacements");
    assert!(
        sessions > 100 && probes > 100,
        "too little traffic to mean anything"
    );
    assert!(
        last >= first + probes / 2,
        "the counters carried over the replacements"
    );
}

const METRICS: &str = "198.18.0.1:9477";

/// Ends a process we started, by pid.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_the_metrics() {
    let mut lab = Lab::create();
    lab.start_services();
    lab.start_mailguard(&format!("{CONFIG}[metrics]\nlisten = \"{METRICS}\"\n"), &[]);
    // Some traffic, so that counters move.
    let _ = guard_tests::lab::swaks(&lab.client.ns, MAIL4, 25, "metrics");

    // The text format passes promtool.
    let text = http_get(&lab.mail.ns, METRICS, "/metrics", "text/plain");
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(&text);
    assert!(
        check.0.success(),
        "promtool check metrics: {}\n{text}",
        check.1
    );
    for name in [
        "mailguard_packets_total{reason=\"mail_new\",verdict=\"pass\"}",
        "mailguard_budget_decisions_total{class=\"mx\",outcome=\"within\"}",
        "mailguard_attached_info{interface=\"mg-mail0\",mode=\"native\"}",
        "mailguard_config_reloads_total{result=\"failure\"}",
        "mailguard_map_fill_ratio{map=\"sources\"}",
        "mailguard_build_info{version=",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    assert!(
        !text.contains("198.18.0.2"),
        "a source address leaked into a label"
    );
    let openmetrics = http_get(
        &lab.mail.ns,
        METRICS,
        "/metrics",
        "application/openmetrics-text;version=1.0.0",
    );
    assert!(
        openmetrics.ends_with("# EOF\n"),
        "OpenMetrics when asked for it"
    );

    // A real Prometheus server scrapes it.
    let dir = lab.dir.path.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mailguard\n    static_configs:\n      - targets: [\"{METRICS}\"]\n"),
    )
    .unwrap();
    let server = lab
        .mail
        .ns
        .command("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=198.18.0.1:9090")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus");
    let _server = Child(server);
    let query = |q: &str| {
        let path = format!(
            "/api/v1/query?query={}",
            q.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
                .replace('(', "%28")
                .replace(')', "%29")
        );
        try_http_get(&lab.mail.ns, "198.18.0.1:9090", &path, "application/json").unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let up = query("up{job=\"mailguard\"}");
        if up.contains("\"value\":[") && up.contains(",\"1\"]") {
            println!("prometheus: {up}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mailguard target is not up in Prometheus: {up}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    let series = query("count(mailguard_packets_total)");
    assert!(
        series.contains(&format!(",\"{}\"]", guard_common::Reason::ALL.len())),
        "one series per reason: {series}"
    );
    let decisions = query("count(mailguard_budget_decisions_total)");
    assert!(
        decisions.contains(",\"24\"]"),
        "3 classes x 8 outcomes: {decisions}"
    );
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &str) -> (std::process::ExitStatus, String);
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &str) -> (std::process::ExitStatus, String) {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        (
            out.status,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

#[test]
fn reload_refuses_a_broken_file_and_applies_a_good_one_without_reattaching() {
    let mut lab = Lab::create();
    lab.start_services();
    let config = format!("{CONFIG}[metrics]\nlisten = \"{METRICS}\"\n");
    lab.start_mailguard(&config, &[]);
    let mg = lab.mailguard();
    let program = mg.status()["program_id"].clone();
    let to_8080: SocketAddr = format!("{MAIL4}:8080").parse().unwrap();
    let reachable = |lab: &Lab| {
        guard_tests::lab::tcp_banner(&lab.client.ns, to_8080, Duration::from_secs(2)).is_some()
    };
    assert!(!reachable(&lab), "8080 is closed to start with");

    // A broken file: refused; the old configuration stays in force.
    lab.rewrite_mailguard_config(&format!(
        "{config}[[open_ports]]\nport = 8080\nfrom = [\"198.18.0.1/24\"]\n"
    ));
    lab.mailguard().signal(libc::SIGHUP);
    thread::sleep(Duration::from_secs(1));
    assert!(
        !reachable(&lab),
        "8080 must stay closed after a refused reload"
    );
    let text = http_get(&lab.mail.ns, METRICS, "/metrics", "text/plain");
    assert!(
        text.contains("mailguard_config_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );
    assert!(
        lab.mailguard()
            .log()
            .iter()
            .any(|l| l.contains("reload refused") && l.contains("host bits set")),
        "the refusal is logged with its reason"
    );

    // A good file: applied, with the same program and attachment.
    lab.rewrite_mailguard_config(&format!(
        "{config}[[open_ports]]\nport = 22\n[[open_ports]]\nport = 8080\n"
    ));
    lab.mailguard().signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !reachable(&lab) {
        assert!(
            std::time::Instant::now() < deadline,
            "8080 not open after a good reload"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        lab.mailguard().status()["program_id"],
        program,
        "no new program, no re-attach"
    );
    let text = http_get(&lab.mail.ns, METRICS, "/metrics", "text/plain");
    assert!(
        text.contains("mailguard_config_reloads_total{result=\"success\"} 1"),
        "{text}"
    );
}

fn open_8080(lab: &Lab) -> bool {
    let to: SocketAddr = format!("{MAIL4}:8080").parse().unwrap();
    guard_tests::lab::tcp_banner(&lab.client.ns, to, Duration::from_secs(2)).is_some()
}

#[test]
fn unconfirmed_reload_is_rolled_back_on_time() {
    let mut lab = Lab::create();
    lab.start_services();
    let config = format!("{CONFIG}[metrics]\nlisten = \"{METRICS}\"\n");
    lab.start_mailguard(&config, &[]);
    assert!(!open_8080(&lab));
    lab.rewrite_mailguard_config(&format!(
        "{config}[[open_ports]]\nport = 22\n[[open_ports]]\nport = 8080\n"
    ));

    // Confirmed: stays.
    let out = lab.mailguard().cli(&["reload", "--confirm-within", "3"]);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rolled back in 3s unless"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(open_8080(&lab), "the reload opened 8080");
    let out = lab.mailguard().cli(&["confirm"]);
    assert!(
        out.status.success(),
        "confirm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    thread::sleep(Duration::from_secs(4));
    assert!(open_8080(&lab), "a confirmed change stays");
    let out = lab.mailguard().cli(&["confirm"]);
    assert_eq!(out.status.code(), Some(1), "nothing left to confirm");

    // Not confirmed: rolled back on time.
    lab.rewrite_mailguard_config(&config);
    let out = lab.mailguard().cli(&["reload"]);
    assert!(out.status.success());
    assert!(!open_8080(&lab), "8080 closed again");
    lab.rewrite_mailguard_config(&format!(
        "{config}[[open_ports]]\nport = 22\n[[open_ports]]\nport = 8080\n"
    ));
    let started = std::time::Instant::now();
    let out = lab.mailguard().cli(&["reload", "--confirm-within", "3"]);
    assert!(out.status.success());
    assert!(open_8080(&lab), "open until the deadline");
    let rolled_back = |lab: &Lab| {
        http_get(&lab.mail.ns, METRICS, "/metrics", "text/plain")
            .contains("mailguard_config_reloads_total{result=\"rolled_back\"} 1")
    };
    while !rolled_back(&lab) {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "not rolled back 8 s after a 3 s deadline"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    println!(
        "confirm-within: the unconfirmed reload was rolled back after {took:.1?} (deadline 3 s)"
    );
    assert!(
        took >= Duration::from_millis(2900),
        "rolled back before the deadline: {took:?}"
    );
    assert!(!open_8080(&lab), "8080 closed again after the rollback");
}

#[test]
fn unconfirmed_start_unloads_itself() {
    let mut lab = Lab::create();
    lab.start_services();
    lab.start_mailguard(CONFIG, &["--confirm-within", "3"]);
    let to_3306: SocketAddr = format!("{MAIL4}:3306").parse().unwrap();
    assert!(
        guard_tests::lab::tcp_banner(&lab.client.ns, to_3306, Duration::from_secs(1)).is_none(),
        "protected at first"
    );
    let mg = lab.mailguard.take().expect("mailguard");
    let pin_dir = mg.pin_dir.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pin_dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "still loaded 10 s after a 3 s deadline"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let status = mg.end(libc::SIGTERM);
    assert_eq!(status.code(), Some(4), "exit code 4: rolled back");
    let link =
        String::from_utf8_lossy(&lab.mail.ns.run(&["ip", "link", "show", "mg-mail0"]).stdout)
            .to_string();
    assert!(!link.contains("xdp"), "XDP detached: {link}");
    assert!(
        guard_tests::lab::tcp_banner(&lab.client.ns, to_3306, Duration::from_secs(3)).is_some(),
        "unprotected again"
    );

    // Confirmed in time: stays.
    lab.start_mailguard(CONFIG, &["--confirm-within", "3"]);
    let out = lab.mailguard().cli(&["confirm", "--json"]);
    assert!(
        out.status.success(),
        "confirm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\":true"));
    thread::sleep(Duration::from_secs(4));
    assert_eq!(
        lab.mailguard().status()["running"],
        true,
        "a confirmed start stays"
    );
}

/// `cargo xtask demo`'s program, started in a process group of its own as a shell starts a
/// job, and run until its mailguard has pinned its state (the lab is then complete: Postfix,
/// listeners, mailguard with XDP and sock_ops attached). Dropping it kills the group and
/// removes what is left, also when the test fails.
struct Demo {
    child: std::process::Child,
    output: Arc<Mutex<String>>,
    pin_dir: PathBuf,
    temp_dir: PathBuf,
    /// Processes in the lab's namespaces, and the links of the sock_ops program the demo's
    /// mailguard attached to the root cgroup, while it ran.
    lab_pids: Vec<i32>,
    sock_ops: BTreeSet<u64>,
}

/// Ids of the BPF links that attach a sock_ops program to a cgroup (`bpftool link show`).
fn sock_ops_links() -> BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool link show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bpftool link show printed JSON");
    listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["type"] == "cgroup" && l["attach_type"] == "cgroup_sock_ops")
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

impl Demo {
    fn start() -> Demo {
        let before = sock_ops_links();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailguard-demo"))
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let sink = output.clone();
            thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    sink.lock()
                        .expect("output")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let pid = child.id();
        let mut demo = Demo {
            child,
            output,
            pin_dir: pin_dir_of(pid),
            temp_dir: temp_dir_of(pid),
            lab_pids: Vec::new(),
            sock_ops: BTreeSet::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !demo.output().contains("attached in") {
            assert!(
                Instant::now() < deadline && demo.child.try_wait().ok().flatten().is_none(),
                "the demo did not attach mailguard within 120 s:\n{}",
                demo.output()
            );
            thread::sleep(Duration::from_millis(100));
        }
        demo.lab_pids = NAMESPACES
            .iter()
            .flat_map(|ns| leftovers::pids_in(ns))
            .collect();
        demo.sock_ops = sock_ops_links().difference(&before).copied().collect();
        assert!(
            demo.pin_dir.is_dir() && demo.temp_dir.is_dir(),
            "the demo's lab pinned nothing in {} or has no directory {}",
            demo.pin_dir.display(),
            demo.temp_dir.display()
        );
        assert!(
            !demo.lab_pids.is_empty(),
            "no process runs in the lab's namespaces (Postfix, mailguard)"
        );
        assert_eq!(
            demo.sock_ops.len(),
            1,
            "the demo's mailguard attached its sock_ops program to a cgroup by one link"
        );
        demo
    }

    fn output(&self) -> String {
        self.output.lock().expect("output").clone()
    }

    /// Sends `signal` to the demo's process group (as a terminal's Ctrl-C does) and waits up to
    /// 60 s for the demo to end.
    fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        // SAFETY: signals the process group of the demo this test started.
        unsafe { libc::kill(-(self.child.id() as i32), signal) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the demo") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not end within 60 s of signal {signal}:\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// What of the demo's lab is still there.
    fn left(&self) -> Vec<String> {
        let mut left: Vec<String> = NAMESPACES
            .iter()
            .filter(|ns| Path::new("/run/netns").join(ns).exists())
            .map(|ns| format!("namespace {ns}"))
            .collect();
        left.extend(self.lab_pids.iter().filter(|&&p| running(p)).map(|&p| {
            match process_stat(p) {
                Ok((command, state)) => format!("process {p} ({command}, state {state})"),
                Err(_) => format!("process {p}"),
            }
        }));
        left.extend(
            [&self.pin_dir, &self.temp_dir]
                .into_iter()
                .filter(|d| d.exists())
                .map(|d| format!("directory {}", d.display())),
        );
        let attached = sock_ops_links();
        left.extend(
            self.sock_ops
                .iter()
                .filter(|id| attached.contains(id))
                .map(|id| format!("sock_ops link {id}")),
        );
        left
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SAFETY: as in `signal_and_wait`.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let _lock = LabLock::acquire();
        leftovers::sweep(false);
    }
}

#[test]
fn an_interrupted_demo_removes_its_lab() {
    let mut demo = Demo::start();
    let status = demo.signal_and_wait(libc::SIGINT);
    let output = demo.output();
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGINT),
        "the demo exits with 128 + SIGINT:\n{output}"
    );
    assert!(
        output.contains("removing the lab"),
        "the demo says it removes the lab:\n{output}"
    );
    let left = demo.left();
    println!(
        "interrupted demo: {} lab processes, pins {}; left behind: {left:?}",
        demo.lab_pids.len(),
        demo.pin_dir.display()
    );
    assert!(left.is_empty(), "left behind: {left:?}\n{output}");
}

#[test]
fn a_killed_demo_is_removed_by_the_next_lab() {
    let mut demo = Demo::start();
    let status = demo.signal_and_wait(libc::SIGKILL);
    assert_eq!(status.code(), None, "killed by a signal");
    let left = demo.left();
    assert!(
        left.iter().any(|l| l.starts_with("namespace"))
            && left.iter().any(|l| l.starts_with("directory")),
        "SIGKILL leaves the lab behind for the next lab to remove: {left:?}"
    );
    let lab = Lab::create();
    let still = demo.left();
    println!("killed demo left {left:?}; after the next lab was built: {still:?}");
    // The new lab has namespaces of the same names; everything else of the killed one is gone.
    assert!(
        still.iter().all(|l| l.starts_with("namespace")),
        "the next lab did not remove: {still:?}"
    );
    assert!(
        demo.lab_pids.iter().all(|&p| !running(p)),
        "processes of the killed lab still run"
    );
    drop(lab);
}
