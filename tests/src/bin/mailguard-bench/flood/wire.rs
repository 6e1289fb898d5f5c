//! What the flood section reads of the lab's network: packets sent, frames delivered, receive
//! steering and NAPI, backlog drops, SYNs sent and lost, conntrack evictions.

use guard_tests::{
    lab::{Lab, MAIL_SWITCH_PORT},
    netns::{Netns, link_info},
};

/// Packets the interface has sent, from the kernel's counters.
pub(crate) fn tx_packets(ns: &Netns, iface: &str) -> Result<u64, String> {
    link_info(Some(ns), iface)["stats64"]["tx"]["packets"]
        .as_u64()
        .ok_or_else(|| format!("no tx packet counter for {iface}"))
}

/// The CPU that does the mail host's receive work: the last one, while a one-worker generator
/// runs on the first (trafgen pins worker `i` to CPU `i`).
pub(crate) fn receive_cpu() -> usize {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    cpus - 1
}

/// Steers the mail host's receive processing (after the veth's NAPI, where XDP runs) to
/// `receive_cpu()` with RPS, as the NIC of a separate machine would deliver it to the mail
/// host's own CPU: without this, every packet's receive work runs on the CPU that sent it, so
/// the generator pays for the mail host's work and slows down by as much as the host spends.
/// The mail namespace's sysfs is mounted in a mount namespace of the command's own.
pub(crate) fn steer_receive(lab: &Lab) -> Result<usize, String> {
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
pub(crate) fn napi_on(lab: &Lab) {
    let iface = lab.mail.iface.as_str();
    lab.mail.ns.run(&["ethtool", "-K", iface, "gro", "off"]);
    lab.mail.ns.run(&["ethtool", "-K", iface, "gro", "on"]);
}

/// Frames the switch's port facing the mail host has delivered into the mail host's interface
/// by `ndo_xdp_xmit` since it was made (`tx_queue_0_xdp_xmit` of `ethtool -S`; absent until
/// the first).
pub(crate) fn xdp_frames_delivered(lab: &Lab) -> Result<u64, String> {
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
pub(crate) fn backlog_drops(cpu: usize) -> Result<u64, String> {
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
pub(crate) fn proc_net(ns: &Netns, file: &str) -> Result<String, String> {
    ns_output(ns, "cat", &[&format!("/proc/net/{file}")])
}

/// What `program` with `args` printed in namespace `ns`, or why it failed.
pub(crate) fn ns_output(ns: &Netns, program: &str, args: &[&str]) -> Result<String, String> {
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
pub(crate) fn snmp_counter(text: &str, prefix: &str, name: &str) -> Result<u64, String> {
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
pub(crate) fn syns_sent(ns: &Netns) -> Result<(u64, u64), String> {
    Ok((
        snmp_counter(&proc_net(ns, "snmp")?, "Tcp:", "ActiveOpens")?,
        snmp_counter(&proc_net(ns, "netstat")?, "TcpExt:", "TCPSynRetrans")?,
    ))
}

/// Entries a namespace's connection tracking evicted for room (the `early_drop` column of
/// `/proc/net/stat/nf_conntrack`, one hexadecimal line per CPU), since it began; 0 when
/// conntrack is not loaded.
pub(crate) fn conntrack_evictions(ns: &Netns) -> Result<u64, String> {
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

/// The softirq time of every CPU so far, in ns (`/proc/stat`'s `cpu` line, in USER_HZ ticks).
pub(crate) fn softirq_ns() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let ticks: u64 = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(7)?.parse().ok())
        .ok_or("no softirq time in /proc/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}
