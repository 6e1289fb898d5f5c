//! On the wire: a random-source SYN flood from the attacker's namespace (trafgen, from
//! netsniff-ng: far faster than hping3) at several rates and, at the top setting, from the XDP
//! generator (`lab::xdp_flood`, faster still), while a legitimate sender (Postfix's smtp-source)
//! delivers mail from the client's namespace to the lab's Postfix, over veth pairs and a
//! bridge, with native XDP on the mail host's interface. Three protections on the same lab:
//!
//! - **none**: the kernel alone (SYN cookies on, as by default);
//! - **nftables**: the recipe operators use today, a per-source `ct count` cap and a per-source
//!   `limit rate` meter on SYNs to port 25, with the same numbers as mailguard's budget;
//! - **mailguard**: the daemon with that budget and a global SYN ceiling for unverified
//!   sources, SYNs over it dropped (`syn_cookies = "off"`);
//! - **mailguard-cookies**: the same, SYNs over the ceiling answered with SYN cookies from XDP
//!   (`syn_cookies = "under_flood"`);
//! - **xdp-filter** (the top setting only): xdp-filter of xdp-tools, the closest XDP peer, as an
//!   operator loads it on a mail host (its allow policy, a blocked address): it cannot tell a
//!   spoofed source, so the flood's SYNs pass to the kernel, which answers them itself. Beside
//!   mailguard-cookies it gives what the same flood SYN costs the whole machine under each.
//!
//! The mail host's receive work is steered (RPS) to a CPU the one-worker generator does not run
//! on, as a separate machine's NIC would deliver it, so that the generator does not pay for it.
//! Every point is `TRIALS` trials (`TOP_TRIALS` at the top setting, which the target is judged
//! on); the report gives medians with min-max.
//!
//! This file runs the trials; `attack.rs` starts and ends the flood, `wire.rs` reads the lab's
//! network counters, `report.rs` writes the section and its plots.

use std::{
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use guard_tests::lab::{Lab, MAIL_SWITCH_PORT, MAIL4, spoofed_syn_config, swaks};

use guard_tests::lab::xdp_flood::XdpFlood;

mod attack;
mod report;
pub(crate) mod wire;

use attack::{Flood, generator_kept_up, start_flood};
pub use report::{cookies_at_top, plot, report, splice_cookies_at_top};
use wire::*;

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
/// (`max-all`); then, the top setting, the XDP generator (`lab::xdp_flood`), several times faster
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
/// How this kernel drove the XDP generator (live frames, or the relay where they are refused),
/// for the report.
pub(crate) static XDP_DRIVE: std::sync::OnceLock<guard_tests::lab::xdp_flood::Drive> =
    std::sync::OnceLock::new();

pub const PROTECTIONS: [&str; 5] = [
    "none",
    "nftables",
    "mailguard",
    "mailguard-cookies",
    XDP_FILTER,
];
/// The XDP peer, measured at the top setting only (`runs_at`).
pub const XDP_FILTER: &str = "xdp-filter";
/// An address outside the lab's hosts and the flood's sources that xdp-filter drops, as an
/// operator's block list would: its rule makes it look up every packet's source.
pub(crate) const XDP_FILTER_BLOCKED: &str = "198.18.9.1";

/// Whether `protection` is measured at the attack setting `a` (an index into `ATTACKS`):
/// xdp-filter at the top setting alone, where issue 23's cookie targets are judged.
pub fn runs_at(protection: &str, a: usize) -> bool {
    protection != XDP_FILTER || a == ATTACKS.len() - 1
}

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
    /// The machine's softirq time (every CPU, `/proc/stat`) over the flood SYNs sent, from the
    /// flood's start to the sender's end, in ns; NaN without a flood. Generator and switch
    /// are the same for every protection, so the differences are the protections'.
    pub softirq_ns_per_flood_syn: f64,
    /// Share of the XDP generator's SYNs that reached the mail host's interface over the trial
    /// (the rest its full veth ring refused, as a NIC's full ring drops what the host does not
    /// take in time); NaN for the other floods.
    pub flood_received: f64,
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

fn mailguard_config(cookies: &str) -> String {
    format!(
        "[budgets]\nsyn_ceiling = 2000\nsyn_cookies = \"{cookies}\"\n[budgets.mx]\nrate = {RATE}\nburst = {BURST}\n\
         max_connections = {MAX_CONNECTIONS}\n"
    )
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
    let mut softirq0 = 0;
    let flood = match pacing {
        None => None,
        Some(XDP_PACING) => {
            let flood = XdpFlood::start(lab, MAIL_SWITCH_PORT, 0)?;
            let _ = XDP_DRIVE.set(flood.drive());
            softirq0 = softirq_ns()?;
            thread::sleep(FLOOD_LEAD);
            Some(Flood::Xdp(flood))
        }
        Some(p) => {
            let flood = start_flood(lab, trafgen_conf, p)?;
            softirq0 = softirq_ns()?;
            Some(Flood::Trafgen(flood))
        }
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
    let softirq = softirq_ns()? - softirq0;
    let drops1 = backlog_drops(receive_cpu())?;
    let syns1 = syns_sent(&lab.client.ns)?;
    let conntrack1 = conntrack_evictions(&lab.mail.ns)?;
    let mut flood_received = f64::NAN;
    if let Some(Flood::Xdp(x)) = flood {
        let sent = x.stop()?;
        let delivered = xdp_frames_delivered(lab)? - delivered0;
        // A lab fault (frames sent nowhere) delivers next to none; a mail host slower than the
        // flood takes what its ring holds, which is the share reported.
        if delivered * 10 < sent {
            return Err(format!(
                "only {delivered} of the XDP generator's {sent} SYNs reached the mail host's interface"
            ));
        }
        flood_received = delivered as f64 / sent.max(1) as f64;
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
        softirq_ns_per_flood_syn: match flood_window {
            Some((_, sent)) if sent > 0 => softirq as f64 / sent as f64,
            _ => f64::NAN,
        },
        flood_received,
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
            lab.start_mailguard(&mailguard_config("off"), &[]);
        }
        ("mailguard-cookies", true) => {
            lab.start_mailguard(&mailguard_config("under_flood"), &[]);
        }
        ("mailguard" | "mailguard-cookies", false) => lab.stop_mailguard(),
        (XDP_FILTER, true) => {
            // Native mode, as mailguard: the program runs in the veth's NAPI poll.
            let iface = lab.mail.iface.clone();
            lab.mail
                .ns
                .run(&["xdp-filter", "load", "--mode", "native", &iface]);
            lab.mail
                .ns
                .run(&["xdp-filter", "ip", "--mode", "src", XDP_FILTER_BLOCKED]);
        }
        (XDP_FILTER, false) => {
            let iface = lab.mail.iface.clone();
            lab.mail.ns.run(&["xdp-filter", "unload", &iface]);
        }
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
    // Trials of the protections interleave (their order rotating), so that the drift of
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
                if !runs_at(protection, a) {
                    continue;
                }
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
