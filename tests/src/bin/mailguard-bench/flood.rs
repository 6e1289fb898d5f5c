//! On the wire: a random-source SYN flood from the attacker's namespace (trafgen, from
//! netsniff-ng: far faster than hping3) at several rates and, at the top setting, from the XDP
//! generator (`xdp_flood.rs`, faster still), while a legitimate sender (Postfix's smtp-source)
//! delivers mail from the client's namespace to the lab's Postfix, over veth pairs and a
//! bridge, with native XDP on the mail host's interface. Three protections on the same lab:
//!
//! - **none**: the kernel alone (SYN cookies on, as by default);
//! - **nftables**: the recipe operators use today, a per-source `ct count` cap and a per-source
//!   `limit rate` meter on SYNs to port 25, with the same numbers as mailguard's budget;
//! - **mailguard**: the daemon with that budget and a global SYN ceiling for unverified
//!   sources.
//!
//! The mail host's receive work is steered (RPS) to a CPU the one-worker generator does not run
//! on, as a separate machine's NIC would deliver it, so that the generator does not pay for it.
//! Every point is `TRIALS` trials (`TOP_TRIALS` at the top setting, which the target is judged
//! on); the report gives medians with min-max.

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use guard_tests::{
    lab::{Lab, MAIL_SWITCH_PORT, MAIL4, spoofed_syn_config, swaks},
    netns::{Netns, link_info},
};

use crate::xdp_flood::XdpFlood;

/// Trials per point.
pub const TRIALS: usize = 3;
/// Trials per point at the top setting: the target is judged on their medians, and a sender
/// under the nftables recipe there either delivers nearly everything or stalls, so three
/// trials' median could fall either way.
pub const TOP_TRIALS: usize = 5;
/// Messages the legitimate sender sends per trial, over `SESSIONS` parallel sessions.
pub const MESSAGES: usize = 500;
const SESSIONS: usize = 5;
/// Flood before the sender starts, so that queues and tables are in their flooded state.
const FLOOD_LEAD: Duration = Duration::from_secs(3);
/// smtp-source is ended after this long, whatever it has delivered.
const SENDER_LIMIT_S: u32 = 60;

/// The budget both peers enforce on port 25, per source: new connections a second with a
/// burst, and connections at once. Sized for the legitimate sender (one connection per message,
/// a few hundred a second here), as an operator sizes it for a large sender: the flood, not the
/// budget, is what the sender meets.
const RATE: u32 = 1000;
const BURST: u32 = 1000;
const MAX_CONNECTIONS: u32 = 20;

/// The attack rates: trafgen's `--rate` from one worker, or as fast as one worker per CPU sends
/// (`max-all`); then, the top setting, the XDP generator (`xdp_flood.rs`), several times faster
/// than trafgen here. The rate reported is what the attacker sent.
pub const ATTACKS: [(&str, Option<&str>); 6] = [
    ("no attack", None),
    ("1 kpps", Some("1000pps")),
    ("10 kpps", Some("10000pps")),
    ("100 kpps", Some("100000pps")),
    ("trafgen max, every CPU", Some("max-all")),
    (XDP_ATTACK, Some(XDP_PACING)),
];

/// The top attack setting: the XDP generator on CPU 0, as fast as it goes.
const XDP_ATTACK: &str = "XDP generator max";
const XDP_PACING: &str = "xdp";

pub const PROTECTIONS: [&str; 3] = ["none", "nftables", "mailguard"];

/// One trial's figures.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    /// SYNs per second the attacker's interface sent from the flood's start to the sender's end.
    pub attack_pps: f64,
    /// Messages delivered per second of the sender's run.
    pub messages_per_s: f64,
    /// Share of the messages sent that Postfix delivered.
    pub success: f64,
    /// Packets per second the mail host's receive CPU dropped from its full backlog while the
    /// sender ran (`/proc/net/softnet_stat`).
    pub backlog_drops_per_s: f64,
    /// Share of the SYNs the legitimate sender sent that it had to send again (no answer within
    /// the retransmission timeout): its namespace's `TCPSynRetrans` over `ActiveOpens` plus
    /// `TCPSynRetrans`, while it ran.
    pub syns_lost: f64,
    /// Entries per second the mail host's connection tracking evicted from its full table to
    /// make room for new ones while the sender ran (`early_drop` of
    /// `/proc/net/stat/nf_conntrack`): only nftables' `ct count` uses conntrack here.
    pub conntrack_evictions_per_s: f64,
}

/// All trials of one protection at one attack setting.
pub struct Point {
    pub protection: &'static str,
    pub attack: &'static str,
    pub trials: Vec<Trial>,
}

/// The nftables recipe, in the mail host's namespace.
fn nft_recipe() -> String {
    format!(
        "table inet mg_recipe {{
    set conn4 {{ type ipv4_addr; size 65535; flags dynamic; }}
    set conn6 {{ type ipv6_addr; size 65535; flags dynamic; }}
    set rate4 {{ type ipv4_addr; size 65535; flags dynamic,timeout; timeout 60s; }}
    set rate6 {{ type ipv6_addr; size 65535; flags dynamic,timeout; timeout 60s; }}
    chain input {{
        type filter hook input priority filter; policy accept;
        tcp dport 25 tcp flags & (syn | ack) == syn update @rate4 {{ ip saddr limit rate over {RATE}/second burst {BURST} packets }} drop
        tcp dport 25 tcp flags & (syn | ack) == syn update @rate6 {{ ip6 saddr limit rate over {RATE}/second burst {BURST} packets }} drop
        tcp dport 25 ct state new add @conn4 {{ ip saddr ct count over {MAX_CONNECTIONS} }} drop
        tcp dport 25 ct state new add @conn6 {{ ip6 saddr ct count over {MAX_CONNECTIONS} }} drop
    }}
}}
"
    )
}

fn mailguard_config() -> String {
    format!(
        "[budgets]\nsyn_ceiling = 2000\n[budgets.mx]\nrate = {RATE}\nburst = {BURST}\n\
         max_connections = {MAX_CONNECTIONS}\n"
    )
}

/// A running flood: trafgen, or the XDP generator.
enum Flood {
    Trafgen(Started),
    Xdp(XdpFlood),
}

impl Flood {
    fn since(&self) -> Instant {
        match self {
            Flood::Trafgen(t) => t.since,
            Flood::Xdp(x) => x.since,
        }
    }

    /// SYNs sent since the flood started.
    fn sent(&self, lab: &Lab) -> Result<u64, String> {
        match self {
            Flood::Trafgen(t) => {
                Ok(tx_packets(&lab.attacker.ns, &lab.attacker.iface)? - t.tx_before)
            }
            Flood::Xdp(x) => Ok(x.sent()),
        }
    }
}

/// A flood generator this benchmark started in a process group of its own (trafgen forks a
/// worker per CPU): the whole group is ended, and only it.
struct Started {
    child: Child,
    /// When it started, and the attacker's interface's sent packets just before.
    since: Instant,
    tx_before: u64,
}

impl Drop for Started {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: signals a process group this benchmark created.
        unsafe { libc::kill(group, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the group's workers go even if the leader has exited.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Packets the interface has sent, from the kernel's counters.
fn tx_packets(ns: &Netns, iface: &str) -> Result<u64, String> {
    link_info(Some(ns), iface)["stats64"]["tx"]["packets"]
        .as_u64()
        .ok_or_else(|| format!("no tx packet counter for {iface}"))
}

/// The CPU that does the mail host's receive work: the last one, while a one-worker generator
/// runs on the first (trafgen pins worker `i` to CPU `i`).
fn receive_cpu() -> usize {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    cpus - 1
}

/// Steers the mail host's receive processing (after the veth's NAPI, where XDP runs) to
/// `receive_cpu()` with RPS, as the NIC of a separate machine would deliver it to the mail
/// host's own CPU: without this, every packet's receive work runs on the CPU that sent it, so
/// the generator pays for the mail host's work and slows down by as much as the host spends.
/// The mail namespace's sysfs is mounted in a mount namespace of the command's own.
fn steer_receive(lab: &Lab) -> Result<usize, String> {
    let cpu = receive_cpu();
    let mask = format!("{:x}", 1u64 << cpu);
    let file = format!("/sys/class/net/{}/queues/rx-0/rps_cpus", lab.mail.iface);
    let script = format!("mount -t sysfs none /sys && echo {mask} > {file} && cat {file}");
    let out = lab
        .mail
        .ns
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    let now = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || u64::from_str_radix(now.trim(), 16) != Ok(1u64 << cpu) {
        return Err(format!(
            "could not steer {}'s receive work to CPU {cpu} ({file}): {}{}",
            lab.mail.iface,
            now.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(cpu)
}

/// Turns the NAPI poll of the mail host's interface on, whatever the protection: the XDP
/// generator's frames (`ndo_xdp_xmit` of the switch's port) are delivered only into a veth with
/// NAPI on, which an XDP program or GRO turns on. The lab asks for GRO before the interface is
/// up, and here that left NAPI off: the switch port delivered none of the generator's frames
/// (`tx_queue_0_xdp_xmit` absent) until mailguard's XDP had been attached once, after which NAPI
/// stayed on, so the protections tried before the first mailguard trial saw no flood. Turning GRO
/// off and on again on the running interface turns NAPI on. Each XDP trial checks that the
/// frames arrived (`xdp_frames_delivered`).
fn napi_on(lab: &Lab) {
    let iface = lab.mail.iface.as_str();
    lab.mail.ns.run(&["ethtool", "-K", iface, "gro", "off"]);
    lab.mail.ns.run(&["ethtool", "-K", iface, "gro", "on"]);
}

/// Frames the switch's port facing the mail host has delivered into the mail host's interface
/// by `ndo_xdp_xmit` since it was made (`tx_queue_0_xdp_xmit` of `ethtool -S`; absent until
/// the first).
fn xdp_frames_delivered(lab: &Lab) -> Result<u64, String> {
    Ok(
        ns_output(&lab.switch, "ethtool", &["-S", MAIL_SWITCH_PORT])?
            .lines()
            .filter_map(|l| l.trim().strip_prefix("tx_queue_0_xdp_xmit: "))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum(),
    )
}

/// Packets `cpu` has dropped because its backlog was full, since boot (second column of its
/// line in `/proc/net/softnet_stat`, hexadecimal; the 13th column names the CPU).
fn backlog_drops(cpu: usize) -> Result<u64, String> {
    let stat = std::fs::read_to_string("/proc/net/softnet_stat").map_err(|e| e.to_string())?;
    stat.lines()
        .enumerate()
        .find_map(|(i, line)| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let id = f
                .get(12)
                .and_then(|c| usize::from_str_radix(c, 16).ok())
                .unwrap_or(i);
            (id == cpu).then(|| f.get(1).and_then(|d| u64::from_str_radix(d, 16).ok()))?
        })
        .ok_or_else(|| format!("no softnet_stat line for CPU {cpu}"))
}

/// A `/proc/net` file of namespace `ns`.
fn proc_net(ns: &Netns, file: &str) -> Result<String, String> {
    ns_output(ns, "cat", &[&format!("/proc/net/{file}")])
}

/// What `program` with `args` printed in namespace `ns`, or why it failed.
fn ns_output(ns: &Netns, program: &str, args: &[&str]) -> Result<String, String> {
    let what = format!("{program} {}", args.join(" "));
    let out = ns
        .command(program)
        .args(args)
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A counter of a `/proc/net/snmp`-style file: a line of names after `prefix`, then a line of
/// values after it.
fn snmp_counter(text: &str, prefix: &str, name: &str) -> Result<u64, String> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next(), lines.next());
    names
        .zip(values)
        .and_then(|(names, values)| {
            let i = names.split_whitespace().position(|n| n == name)?;
            values.split_whitespace().nth(i)?.parse().ok()
        })
        .ok_or_else(|| format!("no {prefix} {name} counter"))
}

/// The SYNs a namespace's connections sent: (first SYNs, SYNs sent again).
fn syns_sent(ns: &Netns) -> Result<(u64, u64), String> {
    Ok((
        snmp_counter(&proc_net(ns, "snmp")?, "Tcp:", "ActiveOpens")?,
        snmp_counter(&proc_net(ns, "netstat")?, "TcpExt:", "TCPSynRetrans")?,
    ))
}

/// Entries a namespace's connection tracking evicted for room (the `early_drop` column of
/// `/proc/net/stat/nf_conntrack`, one hexadecimal line per CPU), since it began; 0 when
/// conntrack is not loaded.
fn conntrack_evictions(ns: &Netns) -> Result<u64, String> {
    let Ok(text) = proc_net(ns, "stat/nf_conntrack") else {
        return Ok(0);
    };
    let mut lines = text.lines();
    let column = lines
        .next()
        .and_then(|h| h.split_whitespace().position(|n| n == "early_drop"))
        .ok_or("no early_drop column in /proc/net/stat/nf_conntrack")?;
    Ok(lines
        .filter_map(|l| l.split_whitespace().nth(column))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .sum())
}

/// Attempts at starting the generator: trafgen occasionally fails to flush its TX ring
/// (EAGAIN) and then sends nothing at all; that is the generator failing, not the host under
/// test, so it is started again.
const FLOOD_STARTS: usize = 3;

/// Starts trafgen at `pacing` and returns once the attacker's interface is sending; a run that
/// sends nothing within the lead time is ended and started again (at most `FLOOD_STARTS`
/// attempts, each reported).
fn start_flood(lab: &Lab, trafgen_conf: &std::path::Path, pacing: &str) -> Result<Started, String> {
    let mut said = String::new();
    for attempt in 1..=FLOOD_STARTS {
        reset_attacker_link(lab);
        let mut cmd = lab.attacker.ns.command("trafgen");
        let cpus = if pacing == "max-all" {
            // SAFETY: sysconf has no preconditions.
            unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1)
        } else {
            1
        };
        cmd.args(["--dev", &lab.attacker.iface, "--notouch-irq", "--cpus"])
            .arg(cpus.to_string())
            .arg("--conf")
            .arg(trafgen_conf);
        if pacing.starts_with("max") {
            // sendto(2) instead of the TX_RING: trafgen gives up when flushing its ring fails
            // (EAGAIN, the veth's queue full), while a failed sendto only loses that packet.
            cmd.args(["--gap", "0"]);
        } else {
            cmd.args(["--rate", pacing]);
        }
        let log_path = lab.dir.path.join("trafgen.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("trafgen.log: {e}"))?;
        let before = tx_packets(&lab.attacker.ns, &lab.attacker.iface)?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("trafgen: {e}"))?;
        let flood = Started {
            child,
            since: Instant::now(),
            tx_before: before,
        };
        thread::sleep(FLOOD_LEAD);
        if tx_packets(&lab.attacker.ns, &lab.attacker.iface)? > before + 100 {
            return Ok(flood);
        }
        drop(flood);
        said = std::fs::read_to_string(&log_path).unwrap_or_default();
        println!(
            "flood: trafgen ({pacing}) sent nothing in {} s (attempt {attempt} of {FLOOD_STARTS}), it said: {}",
            FLOOD_LEAD.as_secs(),
            said.trim()
        );
    }
    Err(format!(
        "trafgen ({pacing}) sent nothing in {FLOOD_STARTS} attempts; it said:\n{said}"
    ))
}

/// Takes the attacker's interface down and up before a flood, so that a transmit queue left
/// stopped by an earlier flood (trafgen's sends then fail with EAGAIN) starts running again.
fn reset_attacker_link(lab: &Lab) {
    let iface = lab.attacker.iface.as_str();
    lab.attacker.ns.run(&["ip", "link", "set", iface, "down"]);
    lab.attacker.ns.run(&["ip", "link", "set", iface, "up"]);
}

/// Whether the generator ran: a fifth of a paced rate, or a flood worth the name at `max`.
/// Below that it stalled, and the trial measured nothing about the protections. (Above it, a
/// generator short of its rate is a result: on a machine whose CPUs the generator shares with
/// the mail host, a protection that costs the host more per SYN leaves the generator less.)
fn generator_kept_up(pacing: Option<&str>, attack_pps: f64) -> bool {
    match pacing {
        None => true,
        Some(p) if p.starts_with("max") || p == XDP_PACING => attack_pps >= 5_000.0,
        Some(p) => p
            .trim_end_matches("pps")
            .parse::<f64>()
            .is_ok_and(|rate| attack_pps >= rate / 5.0),
    }
}

/// Times a trial is run when the generator fails to keep up.
const TRIAL_ATTEMPTS: usize = 5;

fn trial(
    lab: &Lab,
    trafgen_conf: &std::path::Path,
    pacing: Option<&str>,
    subject: &str,
) -> Result<Trial, String> {
    let postfix = lab.postfix.as_ref().ok_or("no Postfix in the lab")?;
    let before = postfix.delivered().len();
    let delivered0 = xdp_frames_delivered(lab)?;
    let flood = match pacing {
        None => None,
        Some(XDP_PACING) => {
            let flood = XdpFlood::start(lab, MAIL_SWITCH_PORT, 0)?;
            thread::sleep(FLOOD_LEAD);
            Some(Flood::Xdp(flood))
        }
        Some(p) => Some(Flood::Trafgen(start_flood(lab, trafgen_conf, p)?)),
    };
    let tx_lead = tx_packets(&lab.attacker.ns, &lab.attacker.iface)?;
    let drops0 = backlog_drops(receive_cpu())?;
    let syns0 = syns_sent(&lab.client.ns)?;
    let conntrack0 = conntrack_evictions(&lab.mail.ns)?;
    let started = Instant::now();
    lab.client
        .ns
        .command("timeout")
        .args([
            &SENDER_LIMIT_S.to_string(),
            "smtp-source",
            "-s",
            &SESSIONS.to_string(),
            "-m",
            &MESSAGES.to_string(),
            "-l",
            "1024",
            "-S",
            subject,
            "-f",
            "sender@client.test",
            "-t",
            "postmaster@lab.test",
            &format!("{MAIL4}:25"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("smtp-source: {e}"))?;
    let sending = started.elapsed();
    let tx1 = tx_packets(&lab.attacker.ns, &lab.attacker.iface)?;
    let flood_window = match &flood {
        Some(f) => Some((f.since().elapsed(), f.sent(lab)?)),
        None => None,
    };
    let drops1 = backlog_drops(receive_cpu())?;
    let syns1 = syns_sent(&lab.client.ns)?;
    let conntrack1 = conntrack_evictions(&lab.mail.ns)?;
    if let Some(Flood::Xdp(x)) = flood {
        let sent = x.stop()?;
        let delivered = xdp_frames_delivered(lab)? - delivered0;
        if delivered * 2 < sent {
            return Err(format!(
                "only {delivered} of the XDP generator's {sent} SYNs reached the mail host's interface"
            ));
        }
    } else {
        drop(flood);
    }
    // Mail accepted by the time smtp-source ended is delivered within moments.
    let deadline = Instant::now() + Duration::from_secs(20);
    while postfix.delivered().len() - before < MESSAGES && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // Only this trial's messages count, whatever else arrives late.
    let delivered = postfix
        .delivered()
        .iter()
        .filter(|m| m.contains(subject))
        .count();
    if delivered > MESSAGES {
        return Err(format!(
            "{delivered} delivered messages carry the subject {subject:?}, but {MESSAGES} were sent"
        ));
    }
    // From the flood's start: trafgen paces in bursts (a second apart at 1 kpps), which the
    // sender's run alone (about a second) would alias into zero or double.
    let attack_pps = match &flood_window {
        Some((since, sent)) => *sent as f64 / since.as_secs_f64(),
        None => (tx1 - tx_lead) as f64 / sending.as_secs_f64(),
    };
    if pacing.is_none() && attack_pps > 100.0 {
        return Err(format!(
            "the attacker sent {attack_pps:.0} packets/s with no flood started: an earlier generator still runs"
        ));
    }
    Ok(Trial {
        attack_pps,
        messages_per_s: delivered as f64 / sending.as_secs_f64(),
        success: delivered as f64 / MESSAGES as f64,
        backlog_drops_per_s: (drops1 - drops0) as f64 / sending.as_secs_f64(),
        syns_lost: {
            let (first, again) = (syns1.0 - syns0.0, syns1.1 - syns0.1);
            again as f64 / (first + again).max(1) as f64
        },
        conntrack_evictions_per_s: conntrack1.saturating_sub(conntrack0) as f64
            / sending.as_secs_f64(),
    })
}

/// Lets the mail host's queues and tables settle between trials.
fn settle() {
    thread::sleep(Duration::from_secs(1));
}

/// Turns a protection on the mail host on (`on`) or off again.
fn protect(lab: &mut Lab, protection: &str, on: bool) -> Result<(), String> {
    match (protection, on) {
        ("nftables", true) => {
            let path = lab.dir.path.join("recipe.nft");
            std::fs::write(&path, nft_recipe()).map_err(|e| e.to_string())?;
            lab.mail
                .ns
                .run(&["nft", "-f", path.to_str().ok_or("path")?]);
        }
        ("nftables", false) => {
            lab.mail
                .ns
                .run(&["nft", "delete", "table", "inet", "mg_recipe"]);
        }
        ("mailguard", true) => {
            lab.start_mailguard(&mailguard_config(), &[]);
        }
        ("mailguard", false) => lab.stop_mailguard(),
        _ => {}
    }
    Ok(())
}

/// One message delivered before the trial, under every protection alike (for mailguard it
/// makes the sender a source seen completing connections, exempt from the ceiling).
fn warm_up(lab: &Lab, marker: &str) -> Result<(), String> {
    swaks(&lab.client.ns, MAIL4, 25, marker)
        .map_err(|e| format!("warm-up delivery failed: {e}"))?;
    let postfix = lab.postfix.as_ref().ok_or("no Postfix in the lab")?;
    if !postfix.wait_delivered(marker, Duration::from_secs(20)) {
        return Err("the warm-up message was not delivered".into());
    }
    Ok(())
}

/// Every protection at every attack setting, and how many trials were run again because the
/// generator stalled.
/// `top_only`: the top setting alone (`MAILGUARD_BENCH_ONLY=flood-top`, for trying a change).
pub fn measure(top_only: bool) -> Result<(Vec<Point>, usize), String> {
    let mut lab = Lab::create();
    lab.start_services();
    let cpu = steer_receive(&lab)?;
    napi_on(&lab);
    println!("flood: the mail host's receive work runs on CPU {cpu} (RPS)");
    // Sources in 198.18.0.0/16, as in the committed report's runs.
    let trafgen_conf = spoofed_syn_config(&lab, [198, 18]);
    let mut points: Vec<Point> = PROTECTIONS
        .iter()
        .flat_map(|protection| {
            ATTACKS.iter().map(move |(attack, _)| Point {
                protection,
                attack,
                trials: Vec::new(),
            })
        })
        .collect();
    let mut retried = 0;
    // Trials of the three protections interleave (their order rotating), so that the drift of
    // a shared machine's speed over minutes falls on all of them alike.
    for (a, (attack, pacing)) in ATTACKS.into_iter().enumerate() {
        if top_only && a != ATTACKS.len() - 1 {
            continue;
        }
        let trials = if a == ATTACKS.len() - 1 {
            TOP_TRIALS
        } else {
            TRIALS
        };
        for n in 0..trials {
            for k in 0..PROTECTIONS.len() {
                let p = (n + k) % PROTECTIONS.len();
                let protection = PROTECTIONS[p];
                let mut attempt = 0;
                let t = loop {
                    attempt += 1;
                    protect(&mut lab, protection, true)?;
                    let subject = format!("flood trial {protection} {attack} {n} {attempt}");
                    let result = warm_up(
                        &lab,
                        &format!("warm-up {protection} {attack} {n} {attempt}"),
                    )
                    .and_then(|()| trial(&lab, &trafgen_conf, pacing, &subject));
                    protect(&mut lab, protection, false)?;
                    let t = result.map_err(|e| format!("{protection}, {attack}: {e}"))?;
                    if generator_kept_up(pacing, t.attack_pps) {
                        break t;
                    }
                    if attempt == TRIAL_ATTEMPTS {
                        return Err(format!(
                            "{protection}, {attack}: the generator reached only {:.0} packets/s in \
                             {TRIAL_ATTEMPTS} attempts",
                            t.attack_pps
                        ));
                    }
                    let said = std::fs::read_to_string(lab.dir.path.join("trafgen.log"))
                        .unwrap_or_default();
                    println!(
                        "flood {protection:<9} {attack:<14} generator reached only {:.0} pkt/s: trial run again \
                         (trafgen said: {})",
                        t.attack_pps,
                        said.trim()
                    );
                    retried += 1;
                    settle();
                };
                println!(
                    "flood {protection:<9} {attack:<14} attack {:>7.0} pkt/s  legitimate {:>6.1} msg/s  success {:>5.1}%  \
                     SYNs lost {:>5.1}%  conntrack evictions {:>6.0}/s",
                    t.attack_pps,
                    t.messages_per_s,
                    t.success * 100.0,
                    t.syns_lost * 100.0,
                    t.conntrack_evictions_per_s
                );
                points[p * ATTACKS.len() + a].trials.push(t);
                settle();
            }
        }
    }
    points.retain(|p| !p.trials.is_empty());
    Ok((points, retried))
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

impl Point {
    pub fn attack_pps(&self) -> (f64, f64, f64) {
        median(self.trials.iter().map(|t| t.attack_pps).collect())
    }
    pub fn messages_per_s(&self) -> (f64, f64, f64) {
        median(self.trials.iter().map(|t| t.messages_per_s).collect())
    }
    pub fn success(&self) -> (f64, f64, f64) {
        median(self.trials.iter().map(|t| t.success * 100.0).collect())
    }
    pub fn backlog_drops_per_s(&self) -> (f64, f64, f64) {
        median(self.trials.iter().map(|t| t.backlog_drops_per_s).collect())
    }
    pub fn syns_lost(&self) -> (f64, f64, f64) {
        median(self.trials.iter().map(|t| t.syns_lost * 100.0).collect())
    }
    pub fn conntrack_evictions_per_s(&self) -> (f64, f64, f64) {
        median(
            self.trials
                .iter()
                .map(|t| t.conntrack_evictions_per_s)
                .collect(),
        )
    }
}

/// The highest attack setting's median success of `protection`, in percent.
fn success_at_top(points: &[Point], protection: &str) -> Option<f64> {
    top_points(points)
        .find(|p| p.protection == protection)
        .map(|p| p.success().0)
}

/// The points of the top attack setting, one per protection, in `PROTECTIONS`' order.
fn top_points(points: &[Point]) -> impl Iterator<Item = &Point> {
    let top = ATTACKS[ATTACKS.len() - 1].0;
    PROTECTIONS.iter().filter_map(move |protection| {
        points
            .iter()
            .find(|p| p.protection == *protection && p.attack == top)
    })
}

/// (trials with a success below 99%, trials) of `protection` at the settings from 100 kpps up.
fn trials_below_99_from_100_kpps(points: &[Point], protection: &str) -> (usize, usize) {
    let from = ATTACKS
        .iter()
        .position(|(attack, _)| *attack == "100 kpps")
        .unwrap_or(0);
    let high: Vec<&str> = ATTACKS[from..].iter().map(|(attack, _)| *attack).collect();
    let trials: Vec<&Trial> = points
        .iter()
        .filter(|p| p.protection == protection && high.contains(&p.attack))
        .flat_map(|p| &p.trials)
        .collect();
    (
        trials.iter().filter(|t| t.success < 0.99).count(),
        trials.len(),
    )
}

/// The sentence comparing mailguard's legitimate messages per second at the top setting with
/// the other protections'.
fn throughput_at_top(points: &[Point]) -> String {
    let rate = |protection: &str| {
        top_points(points)
            .find(|p| p.protection == protection)
            .map(|p| p.messages_per_s().0)
    };
    let Some(mg) = rate("mailguard") else {
        return String::new();
    };
    let others: Vec<String> = PROTECTIONS
        .iter()
        .filter(|p| **p != "mailguard")
        .filter_map(|p| rate(p).map(|r| (p, r)))
        .map(|(p, r)| {
            format!(
                "{r:.1} with {p} ({:.1} times as many with mailguard)",
                mg / r.max(0.01)
            )
        })
        .collect();
    format!(
        " There, legitimate messages delivered per second (medians): {mg:.1} with mailguard, {}.",
        others.join(", ")
    )
}

/// The sentence giving each protection's median legitimate SYN loss at the top setting.
fn syns_lost_at_top(points: &[Point]) -> String {
    let top = ATTACKS[ATTACKS.len() - 1].0;
    let each: Vec<String> = top_points(points)
        .map(|p| format!("{:.1}% with {}", p.syns_lost().0, p.protection))
        .collect();
    if each.is_empty() {
        return String::new();
    }
    format!(
        " At the top setting ({top}), the legitimate sender's SYNs lost (medians): {}.",
        each.join(", ")
    )
}

/// gnuplot data blocks: one per protection, rows of attack rate, messages/s and success with
/// their min-max.
pub fn plot_data(points: &[Point]) -> String {
    let mut data = String::new();
    for protection in PROTECTIONS {
        data += &format!("${} << EOD\n", protection.replace('-', "_"));
        for p in points.iter().filter(|p| p.protection == protection) {
            let (a, _, _) = p.attack_pps();
            let (m, m0, m1) = p.messages_per_s();
            let (s, s0, s1) = p.success();
            data += &format!("{a:.0} {m:.2} {m0:.2} {m1:.2} {s:.2} {s0:.2} {s1:.2}\n");
        }
        data += "EOD\n";
    }
    data
}

/// The report's section; `plots` are the image paths relative to the report.
pub fn report(points: &[Point], retried: usize, plots: &[(&str, String)]) -> String {
    use std::fmt::Write as _;
    let mut md = format!(
        "## On the wire: legitimate mail under a SYN flood\n\n\
         Three namespaces on a bridge, veth pairs with native XDP on the mail host's interface: the mail host runs \
         Postfix; the attacker floods port 25 with SYNs from random spoofed sources, random source port and sequence \
         number, at the rate shown: trafgen from netsniff-ng (sources in 198.18.0.0/16) from one worker at the paced \
         rates and one worker per CPU at its max (sendto(2) at max: trafgen's TX_RING gives up when the veth's queue is \
         full); at the top setting, the **XDP generator**: tests/reference-ebpf's `xdp_syn_flood` run by BPF_PROG_TEST_RUN in \
         live-frame mode on CPU 0, as xdp-tools' xdp-trafficgen sends (sources in 198.19.0.0/16, both checksums \
         computed per frame), each frame sent with XDP_TX out of the switch's port facing the mail host, so that it \
         arrives on the mail host's interface as a NIC receives it, without the bridge's forwarding (each trial checks \
         that at least half of its frames reached the mail host's interface: the rest the full veth ring refused). \
         From another namespace a legitimate sender, Postfix's `smtp-source`, sends {MESSAGES} \
         messages of 1 KiB over {SESSIONS} parallel sessions (ended after {SENDER_LIMIT_S} s whatever it has \
         done), starting {} s into the flood. The attack rate is what the attacker sent from the flood's start \
         to the sender's end (trafgen: its interface's sent packets, paced in bursts a second apart at the lowest \
         rate; the XDP generator: its runs); messages per second are messages Postfix delivered over the sender's run time; success is \
         delivered over sent. Protections, each with the same budget on port 25 (per source {RATE} new \
         connections a second, burst {BURST}, at most {MAX_CONNECTIONS} at once; sized for the legitimate \
         sender, as an operator sizes it for a large sender, so that the flood and not the budget is what the \
         sender meets):\n\n\
         - **none**: the kernel alone (SYN cookies as by default);\n\
         - **nftables**: the recipe operators use today, in the mail host's namespace:\n\n\
         ```\n{}```\n\n\
         - **mailguard**: `mailguard run` with `syn_ceiling = 2000` and the budget above; the sender has delivered \
         once before (a warm-up message, for every protection alike), so it is a source seen completing \
         connections.\n\n\
         Every figure is the median of {TRIALS} trials ({TOP_TRIALS} at the top setting, on which the target is \
         judged), with min-max; the protections' trials interleave, their \
         order rotating, each set up afresh (mailguard started, the nftables table loaded) before its trial. \
         Before each flood the attacker's interface is taken down and up, and a trial whose generator reached \
         less than a fifth of its paced rate (or under 5000 packets/s at max) is run again: on this machine trafgen \
         now and then sends next to nothing (its sends fail with EAGAIN), which measures nothing about the \
         protections. Trials run again in this report: {retried}.\n\n",
        FLOOD_LEAD.as_secs(),
        nft_recipe()
    );
    for (alt, path) in plots {
        let _ = writeln!(md, "![{alt}]({path})\n");
    }
    md += "| protection | attack | attack SYN/s (min-max) | legitimate msg/s (min-max) | success % (min-max) | legitimate SYNs lost % (min-max) | receive CPU backlog drops/s (min-max) | conntrack evictions/s (min-max) |\n\
           |---|---|---:|---:|---:|---:|---:|---:|\n";
    for p in points {
        let (a, a0, a1) = p.attack_pps();
        let (m, m0, m1) = p.messages_per_s();
        let (s, s0, s1) = p.success();
        let (l, l0, l1) = p.syns_lost();
        let (d, d0, d1) = p.backlog_drops_per_s();
        let (c, c0, c1) = p.conntrack_evictions_per_s();
        let _ = writeln!(
            md,
            "| {} | {} | {a:.0} ({a0:.0}-{a1:.0}) | {m:.1} ({m0:.1}-{m1:.1}) | {s:.1} ({s0:.1}-{s1:.1}) | {l:.1} ({l0:.1}-{l1:.1}) | {d:.0} ({d0:.0}-{d1:.0}) | {c:.0} ({c0:.0}-{c1:.0}) |",
            p.protection, p.attack
        );
    }
    let top = ATTACKS[ATTACKS.len() - 1].0;
    let top_rates: Vec<String> = top_points(points)
        .map(|p| format!("{:.0} against {}", p.attack_pps().0, p.protection))
        .collect();
    let _ = writeln!(
        md,
        "\nThe generator, the bridge, the mail host, Postfix and the sender share this machine's {cpus} CPUs. \
         A packet's receive work would run on the CPU that sent it, making the generator pay for the mail \
         host's work; so, as a separate machine's NIC would, the mail host's interface hands its received \
         packets to CPU {rx} (RPS), while a one-worker generator runs on CPU 0 (at trafgen's max a second \
         worker runs on CPU {rx} too). What RPS moves is the work after the veth's NAPI poll: that poll, and XDP \
         in it (mailguard's drop, whose cost per SYN the per-packet section gives), still runs on the sending CPU. \
         The XDP generator and the mail host's NAPI poll it starts share CPU 0: the less the mail host spends there \
         per SYN, the faster the generator goes, which is why the top setting's attack rate differs by protection, \
         and why there the veth's ring now and then fills and refuses frames, the legitimate sender's among them. When the receive CPU cannot keep up, its backlog (`net.core.netdev_max_backlog` packets) overflows and drops \
         packets without regard to whose they are (backlog drops column): the legitimate sender's with the flood's. \
         A trial whose sender reached its {SENDER_LIMIT_S} s limit shows at most {:.1} messages/s: it delivered \
         what it could in that time, a success near 100% there meaning the messages got through at a fraction \
         of their rate. At the top setting the attacker sent {} SYNs/s.{}",
        MESSAGES as f64 / SENDER_LIMIT_S as f64,
        top_rates.join(", "),
        throughput_at_top(points),
        cpus = receive_cpu() + 1,
        rx = receive_cpu()
    );
    let conntrack_max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .map(|m| format!("{} entries here", m.trim()))
        .unwrap_or_else(|_| "its size unknown here".to_string());
    let _ = writeln!(
        md,
        "\nThe legitimate SYNs lost column is what the sender's own TCP saw: the SYNs it had to send again \
         because no answer came within the retransmission timeout, over all the SYNs it sent (its namespace's \
         `TCPSynRetrans` and `ActiveOpens`). The conntrack evictions column counts the entries the mail host's \
         connection tracking evicted from its full table (`net.netfilter.nf_conntrack_max`, {conntrack_max}) \
         to make room for new ones: the nftables recipe's `ct count` needs an entry for every SYN, the \
         flood's included, so at the higher rates the table is full from the flood's first seconds and every \
         flood SYN costs the receive CPU a lookup, an eviction and an insertion; the backlog drops column shows \
         that CPU falling behind, and the packets it drops are the legitimate sender's as much as the \
         flood's. TCP recovers a lost packet only after a timeout that doubles each time (1 s, then 2, 4, 8 s \
         for a SYN), so a few losses in a row hold one of the sender's {SESSIONS} sessions for tens of \
         seconds: that is how a trial can deliver nearly every message within seconds and then wait out its \
         {SENDER_LIMIT_S} s limit on the last ones, and why such trials differ so much from one another. \
         mailguard drops the flood in XDP, before the receive CPU's backlog and conntrack.{}",
        syns_lost_at_top(points)
    );
    let (mg, nft) = (
        success_at_top(points, "mailguard").unwrap_or(0.0),
        success_at_top(points, "nftables").unwrap_or(100.0),
    );
    let met = mg >= 99.0 && nft < 99.0;
    let _ = writeln!(
        md,
        "\nTarget (issue 6): at the highest flood rate here ({top}), mailguard keeps at least 99% of legitimate \
         mail while the nftables recipe falls below it: mailguard {mg:.1}%, nftables {nft:.1}% (medians): {}. \
         Single trials at 100 kpps and above with a success below 99%: {}.\n",
        if met { "met" } else { "**not met**" },
        PROTECTIONS
            .iter()
            .map(|protection| {
                let (below, all) = trials_below_99_from_100_kpps(points, protection);
                format!("{below} of {all} with {protection}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    md
}

/// Messages per second and success against the attack rate, one line per protection;
/// returns (alt text, file name) of each PNG written into `dir`.
pub fn plot(
    points: &[Point],
    dir: &std::path::Path,
) -> Result<Vec<(&'static str, String)>, String> {
    let data = plot_data(points);
    let lines = |column: usize, low: usize, high: usize| {
        PROTECTIONS
            .iter()
            .map(|p| {
                format!(
                    "${} using 1:{column}:{low}:{high} with yerrorlines lw 2 pt 7 title '{p}'",
                    p.replace('-', "_")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let common = "set xlabel 'attack: spoofed SYNs per second sent'\nset grid\nset key outside right top\n\
                  set xrange [-1000:*]\n";
    let mut written = Vec::new();
    crate::plots::render(
        &dir.join("flood-messages.png"),
        "Legitimate mail under a random-source SYN flood",
        &format!(
            "{data}{common}set ylabel 'legitimate messages delivered per second'\nset yrange [0:*]\nplot {}\n",
            lines(2, 3, 4)
        ),
    )?;
    written.push((
        "legitimate messages per second against attack rate",
        "flood-messages.png".to_string(),
    ));
    crate::plots::render(
        &dir.join("flood-success.png"),
        "Share of legitimate mail delivered under the flood",
        &format!(
            "{data}{common}set ylabel 'messages delivered, % of sent'\nset yrange [0:105]\nplot {}\n",
            lines(5, 6, 7)
        ),
    )?;
    written.push((
        "legitimate success rate against attack rate",
        "flood-success.png".to_string(),
    ));
    Ok(written)
}
