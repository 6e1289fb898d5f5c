//! Tier 3, the daemon's life cycle: protection survives the daemon (SIGKILL included), a restart
//! adopts the pinned state, and the program is replaced atomically under traffic.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use guard_tests::{
    lab::{Lab, MAIL4, Mailguard},
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
