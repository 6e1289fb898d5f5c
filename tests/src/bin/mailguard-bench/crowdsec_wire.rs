//! Section 8's per-packet cost: what a packet from a source CrowdSec banned costs the machine
//! that drops it, mailguard's XDP on the mail host against the firewall bouncer's nftables on the
//! second mail host, with one decision in force and with a hundred thousand.
//!
//! BPF_PROG_TEST_RUN cannot run nftables, so both are measured on the wire: from the attacker's
//! namespace, pinned to CPU 0, a raw packet socket (qdisc bypassed) sends `FRAMES` copies of one
//! TCP SYN from the banned IPv6 source to port 22 of the host under test. Sending does the
//! receiving too: the veth hands each frame to the bridge and the bridge to the host's veth in
//! the sender's own softirq, on CPU 0, where the host's XDP (or its stack up to nftables' input
//! hook) drops it (what the softirq leaves to ksoftirqd runs on CPU 0 too; when a veth's ring is
//! full, the sender pauses and sends the frame again). The cost is CPU 0's busy time (`/proc/stat`) over the frames sent: the same
//! sender and bridge for both, so the difference between the two is the difference between
//! their drops. Each trial checks that the frames were dropped where they should be: mailguard's
//! `blocked` counter rose by every frame and the mail host's IPv6 stack saw none; the second
//! host's IPv6 stack received them and its TCP saw none (and no CPU's backlog overflowed).

use std::time::{Duration, Instant};

use guard_tests::{
    lab::{Lab, MAIL_IFACE, MAIL2_6, MAIL2_IFACE, MAIL6},
    netns::{Netns, link_info},
    packet::{Packet, tcp},
};

use crate::flood::wire::{backlog_drops, proc_net};

/// Frames per trial.
const FRAMES: u64 = 1_000_000;
/// Trials per tool and set size.
pub const TRIALS: usize = 5;
/// The banned source the frames come from (its own decision, beside the hundred thousand).
pub const BANNED6: &str = "2001:db8:2000::9:1";

/// One tool at one set size: CPU nanoseconds per frame, a value per trial.
pub struct WireRow {
    pub tool: String,
    pub entries: u32,
    pub ns_per_frame: Vec<f64>,
}

/// CPU 0's busy time since boot, in nanoseconds (`/proc/stat`, USER_HZ ticks).
fn cpu0_busy_ns() -> Result<u64, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| e.to_string())?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu0 "))
        .ok_or("no cpu0 line in /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    let busy: u64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(busy * 1_000_000_000 / hz)
}

/// An IPv6 counter of namespace `ns` (`/proc/net/snmp6`: name, value per line).
fn snmp6(ns: &Netns, name: &str) -> Result<u64, String> {
    proc_net(ns, "snmp6")?
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
        })
        .ok_or_else(|| format!("no {name} in snmp6"))
}

/// A TCP counter of namespace `ns` (`/proc/net/snmp`).
fn tcp_in_segs(ns: &Netns) -> Result<u64, String> {
    crate::flood::wire::snmp_counter(&proc_net(ns, "snmp")?, "Tcp:", "InSegs")
}

fn mac(ns: &Netns, iface: &str) -> Result<[u8; 6], String> {
    let text = link_info(Some(ns), iface)["address"]
        .as_str()
        .ok_or_else(|| format!("no MAC address of {iface}"))?
        .to_string();
    let bytes: Vec<u8> = text
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    bytes
        .try_into()
        .map_err(|_| format!("{iface}: `{text}` is not a MAC address"))
}

/// A SYN from `BANNED6` to `dst` port 22, addressed to `dst_mac`.
fn frame(lab: &Lab, dst: &str, dst_mac: [u8; 6]) -> Result<Vec<u8>, String> {
    let mut f = Packet::v6(BANNED6, dst, tcp(40000, 22, 0x02)).build();
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&mac(&lab.attacker.ns, &lab.attacker.iface)?);
    Ok(f)
}

/// Sends `FRAMES` copies of `frame` out of the attacker's interface from CPU 0; returns CPU 0's
/// busy nanoseconds over the sending, and the frames the socket took.
fn blast(lab: &Lab, frame: Vec<u8>) -> Result<(u64, u64), String> {
    let iface = lab.attacker.iface.clone();
    lab.attacker
        .ns
        .spawn(move || -> Result<(u64, u64), String> {
            guard_tests::harness::run_on([0]);
            // SAFETY: plain system calls on a socket this closure owns and closes; the
            // structures passed are initialised and of the sizes given.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                if fd < 0 {
                    return Err(format!(
                        "packet socket: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                let name = std::ffi::CString::new(iface.as_str()).expect("name");
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                let one: libc::c_int = 1;
                libc::setsockopt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_QDISC_BYPASS,
                    (&raw const one).cast(),
                    size_of::<libc::c_int>() as u32,
                );
                if libc::bind(
                    fd,
                    (&raw const sll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                ) != 0
                {
                    let e = std::io::Error::last_os_error();
                    libc::close(fd);
                    return Err(format!("bind to {iface}: {e}"));
                }
                let before = cpu0_busy_ns()?;
                let mut sent = 0u64;
                // Softirq work the sends leave over (the veths' NAPI polls, at most their
                // budget each time) runs in ksoftirqd, on this CPU. When a veth's ring is full
                // the send fails (ENOBUFS): the sender pauses for ksoftirqd and sends the frame
                // again, so that every frame is dropped where it should be, not by a ring.
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 20_000,
                };
                let mut retries = 0u64;
                while sent < FRAMES {
                    if libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) > 0 {
                        sent += 1;
                        continue;
                    }
                    retries += 1;
                    if retries > FRAMES {
                        break;
                    }
                    libc::nanosleep(&pause, std::ptr::null_mut());
                }
                let busy = cpu0_busy_ns()? - before;
                libc::close(fd);
                Ok((busy, sent))
            }
        })
        .join()
        .map_err(|_| "the sender panicked".to_string())?
}

/// mailguard's packet counters by reason.
fn reasons(lab: &Lab) -> std::collections::BTreeMap<String, u64> {
    lab.mailguard().status()["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["reason"].as_str()?.to_string(), c["packets"].as_u64()?)))
        .collect()
}

/// Which host a trial sends to.
#[derive(Clone, Copy)]
pub enum Target {
    Mailguard,
    Bouncer,
}

/// One trial: CPU nanoseconds per frame, after checking where the frames were dropped.
fn trial(lab: &Lab, target: Target) -> Result<f64, String> {
    let mail2 = &lab.mail2.as_ref().ok_or("the fleet")?.ns;
    let (ns, iface, dst) = match target {
        Target::Mailguard => (&lab.mail.ns, MAIL_IFACE, MAIL6),
        Target::Bouncer => (mail2, MAIL2_IFACE, MAIL2_6),
    };
    let f = frame(lab, dst, mac(ns, iface)?)?;
    let blocked = |lab: &Lab| lab.mailguard().count("blocked");
    let reasons_before = reasons(lab);
    let before = (
        blocked(lab),
        snmp6(ns, "Ip6InReceives")?,
        tcp_in_segs(ns)?,
        backlog_drops(0)?,
    );
    let (busy, sent) = blast(lab, f)?;
    // The counters and softirqs settle (XDP's counters are read per CPU at once).
    std::thread::sleep(Duration::from_millis(200));
    let after = (
        blocked(lab),
        snmp6(ns, "Ip6InReceives")?,
        tcp_in_segs(ns)?,
        backlog_drops(0)?,
    );
    if sent < FRAMES {
        return Err(format!(
            "the socket took {sent} of {FRAMES} frames, after as many refused sends"
        ));
    }
    if after.3 > before.3 {
        return Err(format!(
            "CPU 0's backlog overflowed ({} packets): the trial measured drops of the backlog",
            after.3 - before.3
        ));
    }
    let tcp_saw = after.2 - before.2;
    match target {
        Target::Mailguard => {
            let dropped = after.0 - before.0;
            let stack = after.1 - before.1;
            if dropped < sent || stack > sent / 100 {
                let now = reasons(lab);
                let moved: Vec<String> = now
                    .iter()
                    .filter_map(|(r, n)| {
                        let d = n - reasons_before.get(r).copied().unwrap_or(0);
                        (d > 0).then(|| format!("{r} {d}"))
                    })
                    .collect();
                let log = lab.mailguard().log();
                return Err(format!(
                    "mailguard counted {dropped} blocked of {sent}; the mail host's IPv6 stack received {stack}; mailguard's counters rose: {}; its log ends:\n{}",
                    moved.join(", "),
                    log[log.len().saturating_sub(15)..].join("\n")
                ));
            }
        }
        Target::Bouncer => {
            let stack = after.1 - before.1;
            if stack < sent || tcp_saw > sent / 100 {
                return Err(format!(
                    "the second host's IPv6 stack received {stack} of {sent}, its TCP {tcp_saw}: not dropped by nftables"
                ));
            }
        }
    }
    Ok(busy as f64 / sent as f64)
}

/// `TRIALS` trials of each tool, alternating, the order rotating.
pub fn measure(lab: &Lab, entries: [u32; 2]) -> Result<[WireRow; 2], String> {
    let mut rows = [
        WireRow {
            tool: "mailguard".into(),
            entries: entries[0],
            ns_per_frame: Vec::new(),
        },
        WireRow {
            tool: "crowdsec-firewall-bouncer (nftables)".into(),
            entries: entries[1],
            ns_per_frame: Vec::new(),
        },
    ];
    let started = Instant::now();
    for t in 0..TRIALS {
        let order = if t % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let target = if i == 0 {
                Target::Mailguard
            } else {
                Target::Bouncer
            };
            let ns = trial(lab, target)?;
            rows[i].ns_per_frame.push(ns);
        }
    }
    println!(
        "crowdsec: wire cost at {:?} entries: mailguard {:?}, firewall bouncer {:?} ns per frame ({:.0?})",
        entries,
        rows[0]
            .ns_per_frame
            .iter()
            .map(|v| v.round())
            .collect::<Vec<_>>(),
        rows[1]
            .ns_per_frame
            .iter()
            .map(|v| v.round())
            .collect::<Vec<_>>(),
        started.elapsed()
    );
    Ok(rows)
}
