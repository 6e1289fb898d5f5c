//! Section 7: bans from the mail logs, mailguard against fail2ban (Debian's, its
//! `postfix-sasl` jail with the `nftables-multiport` action and the inotify backend), side by
//! side in one lab, on the same input: the lines Postfix writes for failed SASL logins,
//! appended to a log file each tool follows (one file each, so that one tool's ban never
//! answers for the other's).
//!
//! - Event to drop: five failures from a fresh source (a real address of the attacker's
//!   namespace), then SYNs from it to port 25 every half millisecond until one goes unanswered (XDP drop)
//!   or is refused (fail2ban's reject); from the write of the fifth line to that SYN.
//!   Trials alternate between the tools.
//! - Bans per second: 2,000 sources, five failures each, written at once; until every one is
//!   banned. The tools' CPU time over it (with their children: fail2ban runs `nft` per ban)
//!   per 1,000 events.
//! - Restoring 100,000 bans at start-up: from mailguard's `bans.json`, from fail2ban's
//!   database (it bans again what its database holds), until all are in force.
//! - Parsing: log lines a second, mailguard's parser in process, fail2ban's with
//!   `fail2ban-regex` over the same file.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use guard_tests::{
    lab::{ATTACKER4, Lab, MAIL4},
    netns::Netns,
};
use mailguard::feeds::{
    ban_state::{Ban, BanState},
    maillog,
};

/// Event-to-drop trials per tool.
const TRIALS: usize = 15;
/// Failures that ban (mailguard's default `auth` rule; fail2ban's `maxretry`).
const THRESHOLD: usize = 5;
/// Sources in the sustained run.
const SUSTAINED: u32 = 2_000;
/// Bans restored at start-up.
const RESTORED: u32 = 100_000;
/// How long a tool may take to restore them before the run stops waiting.
const RESTORE_LIMIT: Duration = Duration::from_secs(240);

pub struct Results {
    /// Event to drop, per tool: sorted seconds (`None`: not dropped within 30 s).
    pub latency: [(String, Vec<f64>, usize); 2],
    /// Bans a second sustained, and CPU seconds per 1,000 events.
    pub sustained: [(String, f64, f64, u32); 2],
    /// Restoring `RESTORED` bans: seconds, and how many were in force when it stopped waiting.
    pub restore: [(String, f64, u32); 2],
    /// Parsing: lines a second.
    pub parsing: [(String, f64); 2],
    pub fail2ban_version: String,
}

fn line(source: Ipv4Addr) -> String {
    // As Postfix writes it to a syslog file (its `maillog_file` too): now, so that fail2ban's
    // `findtime` counts it.
    let now = Command::new("date")
        .arg("+%b %e %H:%M:%S")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{now} mail postfix/submission/smtpd[4242]: warning: unknown[{source}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6\n"
    )
}

/// Appends `text` to `path` in one write.
fn append(path: &Path, text: &str) -> Result<(), String> {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| e.to_string())
}

/// A private fail2ban in the mail namespace: Debian's filters and actions, one jail.
struct Fail2ban {
    dir: PathBuf,
    child: Child,
    ns_path: String,
}

impl Fail2ban {
    fn start(ns: &Netns, dir: &Path, log: &Path) -> Result<Fail2ban, String> {
        let _ = fs::remove_dir_all(dir.join("filter.d"));
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        for sub in ["filter.d", "action.d"] {
            let out = Command::new("cp")
                .arg("-r")
                .arg(Path::new("/etc/fail2ban").join(sub))
                .arg(dir)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "copying fail2ban's {sub}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        for file in [
            "fail2ban.conf",
            "jail.conf",
            "paths-common.conf",
            "paths-debian.conf",
        ] {
            fs::copy(Path::new("/etc/fail2ban").join(file), dir.join(file))
                .map_err(|e| format!("{file}: {e}"))?;
        }
        let d = dir.display();
        fs::write(
            dir.join("fail2ban.local"),
            format!(
                "[Definition]\nlogtarget = {d}/fail2ban.log\nsocket = {d}/fail2ban.sock\n\
                 pidfile = {d}/fail2ban.pid\ndbfile = {d}/fail2ban.sqlite3\ndbpurgeage = 1d\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        fs::write(
            dir.join("jail.local"),
            format!(
                "[DEFAULT]\nbanaction = nftables-multiport\nbanaction_allports = nftables-allports\n\
                 backend = pyinotify\nbantime = 1d\nfindtime = 10m\nmaxretry = {THRESHOLD}\n\
                 [postfix-sasl]\nenabled = true\nlogpath = {}\n",
                log.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = ns
            .command("fail2ban-server")
            .args(["-f", "-x", "-c"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start fail2ban-server: {e}"))?;
        let f = Fail2ban {
            dir: dir.to_path_buf(),
            child,
            ns_path: ns.path(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f
            .client(&["status", "postfix-sasl"])
            .contains("Currently banned")
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "fail2ban did not start its jail in 30 s: {}",
                    fs::read_to_string(dir.join("fail2ban.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(f)
    }

    fn client(&self, args: &[&str]) -> String {
        Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .args(["--", "fail2ban-client", "-c"])
            .arg(&self.dir)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    /// Bans in force (`Currently banned` of the jail).
    fn banned(&self) -> u32 {
        self.client(&["status", "postfix-sasl"])
            .lines()
            .find_map(|l| l.split("Currently banned:").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        let _ = self.client(&["stop"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU seconds of a process and its waited-for children (utime, stime, cutime, cstime).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, a)| a);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    fields.iter().sum::<u64>() as f64 / hz
}

/// How a SYN from `from` to the mail host's port 25 fares.
#[derive(PartialEq)]
enum Syn {
    Answered,
    /// Dropped (no answer within the wait) or refused (a RST or ICMP from a firewall).
    Blocked,
}

fn syn_from(from: Ipv4Addr, wait: Duration) -> Syn {
    use socket2::{Domain, Socket, Type};
    let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
        return Syn::Answered;
    };
    let _ = s.bind(&SocketAddr::new(from.into(), 0).into());
    let to: SocketAddr = format!("{MAIL4}:25").parse().expect("address");
    match s.connect_timeout(&to.into(), wait) {
        Ok(()) => Syn::Answered,
        Err(_) => Syn::Blocked,
    }
}

/// Writes the failures of `source` to `log`, then probes from it: the seconds from the write
/// to the first SYN blocked, or `None` after 30 s.
fn event_to_drop(lab: &Lab, log: &Path, source: Ipv4Addr) -> Result<Option<f64>, String> {
    if syn_in(lab, source, Duration::from_millis(500))? == Syn::Blocked {
        return Err(format!("{source} is blocked before its failures"));
    }
    let lines: String = (0..THRESHOLD).map(|_| line(source)).collect();
    let to = log.to_path_buf();
    lab.attacker
        .ns
        .spawn(move || -> Result<Option<f64>, String> {
            append(&to, &lines)?;
            let written = Instant::now();
            while written.elapsed() < Duration::from_secs(30) {
                let tried = written.elapsed();
                if syn_from(source, Duration::from_millis(20)) == Syn::Blocked {
                    return Ok(Some(tried.as_secs_f64()));
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(None)
        })
        .join()
        .map_err(|_| "prober panicked".to_string())?
}

fn syn_in(lab: &Lab, source: Ipv4Addr, wait: Duration) -> Result<Syn, String> {
    lab.attacker
        .ns
        .spawn(move || syn_from(source, wait))
        .join()
        .map_err(|_| "prober panicked".to_string())
}

fn config(log: &Path, state: &Path) -> String {
    format!(
        "interface = \"mg-mail0\"\n[[open_ports]]\nport = 22\n\
         [budgets]\nsyn_ceiling = 0\n[budgets.mx]\nrate = 0\nmax_connections = 0\n\
         [budgets.submission]\nrate = 0\nmax_connections = 0\n\
         [lists]\nstate_dir = \"{}\"\n\
         [bans]\nenabled = true\nfiles = [\"{}\"]\nmax_per_minute = 1000000\nmax_active = 200000\n",
        state.display(),
        log.display()
    )
}

fn mailguard_active(lab: &Lab) -> u32 {
    lab.mailguard().status()["bans"]["active"]
        .as_u64()
        .unwrap_or(0) as u32
}

pub fn measure() -> Result<Results, String> {
    let mut lab = Lab::create();
    lab.listen(|l| &l.mail.ns, 25);
    let iface = lab.attacker.iface.clone();
    // Fresh sources for the trials: addresses of the attacker's namespace.
    let trial_source = |i: usize| Ipv4Addr::new(198, 18, 0, 100 + i as u8);
    for i in 0..TRIALS * 2 {
        lab.attacker.ns.run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", trial_source(i)),
            "dev",
            &iface,
        ]);
    }
    let dir = lab.dir.path.clone();
    let (mg_log, f2b_log) = (
        dir.join("mailguard-input.log"),
        dir.join("fail2ban-input.log"),
    );
    append(&mg_log, "")?;
    append(&f2b_log, "")?;
    let state = dir.join("state");
    lab.start_mailguard(&config(&mg_log, &state), &[]);
    let f2b = Fail2ban::start(&lab.mail.ns, &dir.join("fail2ban"), &f2b_log)?;
    let fail2ban_version = Command::new("fail2ban-server")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let _ = ATTACKER4;

    // Event to drop, alternating.
    let (mut mg_lat, mut f2b_lat) = (Vec::new(), Vec::new());
    let (mut mg_missed, mut f2b_missed) = (0, 0);
    for t in 0..TRIALS {
        for k in 0..2 {
            let which = (t + k) % 2;
            let source = trial_source(t * 2 + which);
            let (log, lat, missed) = if which == 0 {
                (&mg_log, &mut mg_lat, &mut mg_missed)
            } else {
                (&f2b_log, &mut f2b_lat, &mut f2b_missed)
            };
            match event_to_drop(&lab, log, source)? {
                Some(s) => lat.push(s),
                None => *missed += 1,
            }
            println!(
                "bans: trial {t} {}: {}",
                if which == 0 { "mailguard" } else { "fail2ban" },
                lat.last().map_or("not dropped in 30 s".into(), |s| format!(
                    "{:.1} ms",
                    s * 1000.0
                ))
            );
        }
    }
    mg_lat.sort_by(f64::total_cmp);
    f2b_lat.sort_by(f64::total_cmp);

    // Sustained: 2,000 sources, five failures each, at once (no traffic: lines only).
    let sustained_source =
        |base: u32, i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, base as u8, 0)) + i);
    let mut sustained = Vec::new();
    for (name, log, base) in [("mailguard", &mg_log, 0u32), ("fail2ban", &f2b_log, 64)] {
        let pid = if name == "mailguard" {
            lab.mailguard().pid()
        } else {
            f2b.pid()
        };
        let before_bans = if name == "mailguard" {
            mailguard_active(&lab)
        } else {
            f2b.banned()
        };
        let text: String = (0..SUSTAINED)
            .flat_map(|i| (0..THRESHOLD).map(move |_| i))
            .map(|i| line(sustained_source(base, i)))
            .collect();
        let cpu0 = cpu_seconds(pid);
        let start = Instant::now();
        append(log, &text)?;
        let want = before_bans + SUSTAINED;
        let mut done = before_bans;
        while start.elapsed() < Duration::from_secs(180) {
            done = if name == "mailguard" {
                mailguard_active(&lab)
            } else {
                f2b.banned()
            };
            if done >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(if name == "mailguard" {
                20
            } else {
                200
            }));
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid) - cpu0;
        let banned = done - before_bans;
        let events = f64::from(banned) * THRESHOLD as f64;
        println!("bans: sustained {name}: {banned} bans in {secs:.2} s, {cpu:.2} s CPU");
        sustained.push((
            name.to_string(),
            f64::from(banned) / secs,
            if events > 0.0 {
                cpu / events * 1000.0
            } else {
                f64::NAN
            },
            banned,
        ));
    }

    // Restoring 100,000 bans at start-up.
    let restore_source = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i);
    let mailguard = lab.mailguard.take().ok_or("no mailguard")?;
    let _ = mailguard.end(libc::SIGTERM);
    let mut bans = BanState::load(&state).map_err(|e| e.to_string())?;
    let now = mailguard::feeds::saved::now_unix();
    for i in 0..RESTORED {
        bans.bans.insert(
            ipnet::IpNet::from(std::net::IpAddr::V4(restore_source(i))),
            Ban {
                rule: "auth".into(),
                origin: "auth".into(),
                since: now,
                until: now + 86_400,
                strike: 1,
            },
        );
    }
    bans.save(&state).map_err(|e| e.to_string())?;
    let in_force = bans.bans.values().filter(|b| b.until > now).count() as u32;
    let start = Instant::now();
    lab.start_mailguard(&config(&mg_log, &state), &[]);
    let mg_restore = start.elapsed().as_secs_f64();
    let mg_restored = mailguard_active(&lab);
    println!("bans: mailguard restored {mg_restored} of {in_force} bans in {mg_restore:.2} s");

    let f2b_dir = f2b.dir.clone();
    f2b.stop();
    let db = f2b_dir.join("fail2ban.sqlite3");
    let script = format!(
        "import sqlite3,time,json\n\
         c=sqlite3.connect('{}')\n\
         now=int(time.time())\n\
         rows=[('postfix-sasl','198.{{}}.{{}}.{{}}'.format(18+((64*256+i)>>16),((64*256+i)>>8)&255,i&255),now,86400,1,json.dumps({{'matches':[],'failures':5}})) for i in range({RESTORED})]\n\
         c.executemany('INSERT INTO bans(jail,ip,timeofban,bantime,bancount,data) VALUES(?,?,?,?,?,?)',rows)\n\
         c.executemany('INSERT OR REPLACE INTO bips(jail,ip,timeofban,bantime,bancount,data) VALUES(?,?,?,?,?,?)',rows)\n\
         c.commit()\n",
        db.display()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "filling fail2ban's database: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let start = Instant::now();
    let f2b = Fail2ban::start(&lab.mail.ns, &f2b_dir, &f2b_log)?;
    let mut f2b_restored = f2b.banned();
    while start.elapsed() < RESTORE_LIMIT && f2b_restored < RESTORED {
        std::thread::sleep(Duration::from_secs(1));
        f2b_restored = f2b.banned();
    }
    let f2b_restore = start.elapsed().as_secs_f64();
    println!("bans: fail2ban restored {f2b_restored} of {RESTORED} bans in {f2b_restore:.1} s");
    f2b.stop();

    // Parsing.
    let sample: Vec<String> = (0..300_000u32)
        .map(|i| match i % 3 {
            0 => line(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i)),
            1 => format!("Dec  6 01:00:00 mail postfix/smtpd[77]: NOQUEUE: reject: RCPT from unknown[198.19.{}.{}]: 550 5.1.1 <u{i}@lab.test>: Recipient address rejected: User unknown in virtual mailbox table; from=<a@b.test> to=<u{i}@lab.test> proto=ESMTP helo=<x>\n", (i >> 8) & 255, i & 255),
            _ => format!("Dec  6 01:00:00 mail postfix/smtpd[77]: connect from unknown[198.19.{}.{}]\n", (i >> 8) & 255, i & 255),
        })
        .collect();
    let start = Instant::now();
    let mut events = 0;
    for l in &sample {
        if matches!(maillog::parse(l.trim_end()), maillog::Parsed::Event(_)) {
            events += 1;
        }
    }
    let mg_parse = sample.len() as f64 / start.elapsed().as_secs_f64();
    if events != 200_000 {
        return Err(format!(
            "mailguard's parser found {events} events in the sample, not 200000"
        ));
    }
    let sample_file = dir.join("parse-sample.log");
    fs::write(&sample_file, sample.concat()).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let out = Command::new("fail2ban-regex")
        .arg(&sample_file)
        .arg("/etc/fail2ban/filter.d/postfix.conf[mode=auth]")
        .output()
        .map_err(|e| e.to_string())?;
    let f2b_secs = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("100000 matched") {
        return Err(format!(
            "fail2ban-regex did not match the sample's 100000 failures: {text}"
        ));
    }
    let f2b_parse = sample.len() as f64 / f2b_secs;
    println!(
        "bans: parsing: mailguard {mg_parse:.0} lines/s, fail2ban-regex {f2b_parse:.0} lines/s"
    );

    Ok(Results {
        latency: [
            ("mailguard".into(), mg_lat, mg_missed),
            ("fail2ban".into(), f2b_lat, f2b_missed),
        ],
        sustained: [sustained[0].clone(), sustained[1].clone()],
        restore: [
            ("mailguard".into(), mg_restore, mg_restored),
            ("fail2ban".into(), f2b_restore, f2b_restored),
        ],
        parsing: [
            ("mailguard".into(), mg_parse),
            ("fail2ban".into(), f2b_parse),
        ],
        fail2ban_version,
    })
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

fn ms(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{:.1} ms", s * 1000.0))
}

pub fn report(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Bans from the mail logs, beside fail2ban\n\n\
         mailguard's `[bans]` and {} (Debian's, jail `postfix-sasl`, action `nftables-multiport`, \
         backend `pyinotify`) in one lab, on the same input: the lines Postfix writes for failed \
         SASL logins (five ban), appended to a log file each tool follows. `cargo xtask bench` \
         (section 7, `bans.rs`).\n",
        r.fail2ban_version
    );
    let _ = writeln!(
        out,
        "| | mailguard | fail2ban | fail2ban / mailguard |\n|---|---|---|---|"
    );
    let (m, f) = (&r.latency[0], &r.latency[1]);
    for (label, q) in [
        ("event to first dropped packet, median", 0.5),
        ("event to first dropped packet, p99", 0.99),
    ] {
        let (a, b) = (quantile(&m.1, q), quantile(&f.1, q));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.0}×", b / a),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {label} ({} trials each) | {} | {} | {ratio} |",
            TRIALS,
            ms(a),
            ms(b)
        );
    }
    if m.2 + f.2 > 0 {
        let _ = writeln!(
            out,
            "| trials not dropped within 30 s | {} | {} | |",
            m.2, f.2
        );
    }
    let (ms_, fs_) = (&r.sustained[0], &r.sustained[1]);
    let _ = writeln!(
        out,
        "| bans per second sustained ({SUSTAINED} sources at once; mailguard's is a lower bound, its status read every 20 ms) | {:.0} | {:.1} | {:.0}× |",
        ms_.1,
        fs_.1,
        ms_.1 / fs_.1
    );
    let _ = writeln!(
        out,
        "| CPU per 1,000 events (with children) | {:.1} ms | {:.0} ms | {:.0}× |",
        ms_.2 * 1000.0,
        fs_.2 * 1000.0,
        fs_.2 / ms_.2
    );
    let (mr, fr) = (&r.restore[0], &r.restore[1]);
    let f2b_restore = if fr.2 >= RESTORED {
        format!("{:.0} s", fr.1)
    } else {
        format!(
            "{} of {RESTORED} in {:.0} s (all: about {:.0} s at that rate)",
            fr.2,
            fr.1,
            fr.1 * f64::from(RESTORED) / f64::from(fr.2.max(1))
        )
    };
    let _ = writeln!(
        out,
        "| restoring {RESTORED} bans at start-up | {:.2} s ({} in force) | {f2b_restore} | |",
        mr.1, mr.2
    );
    let _ = writeln!(
        out,
        "| parsing, log lines a second | {:.0} | {:.0} (`fail2ban-regex`) | {:.0}× |",
        r.parsing[0].1,
        r.parsing[1].1,
        r.parsing[0].1 / r.parsing[1].1
    );
    let p99 = quantile(&m.1, 0.99).unwrap_or(f64::INFINITY);
    let speedup = quantile(&f.1, 0.5).unwrap_or(0.0) / quantile(&m.1, 0.5).unwrap_or(f64::INFINITY);
    let _ = writeln!(
        out,
        "\nTargets: event to drop under 100 ms at p99: **{}** ({}); at least 100 times faster than \
         fail2ban (median): **{}** ({speedup:.0}×); parsing at least 200,000 lines a second: **{}**.\n\
         The time is measured from the write of the fifth line to the first SYN that goes \
         unanswered (probes every half millisecond): both tools are woken by inotify. A failure \
         Dovecot's policy service reports is banned before Dovecot answers the client (the \
         end-to-end tests show the first SYN after the answer dropped).",
        if p99 < 0.1 { "met" } else { "not met" },
        ms(Some(p99)),
        if speedup >= 100.0 { "met" } else { "not met" },
        if r.parsing[0].1 >= 200_000.0 {
            "met"
        } else {
            "not met"
        },
    );
    out
}

/// Replaces this section in the document at `path` (or appends it).
pub fn splice(path: &Path, section: &str) -> Result<(), String> {
    crate::report::splice(
        path,
        "\n## Bans from the mail logs, beside fail2ban",
        section,
    )
}
