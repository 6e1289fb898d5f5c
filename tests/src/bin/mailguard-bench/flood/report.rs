//! The flood section of the report: medians, the top setting's figures, the text and plots.

use super::{
    ATTACKS, BURST, FLOOD_LEAD, MAX_CONNECTIONS, MESSAGES, PROTECTIONS, Point, RATE,
    SENDER_LIMIT_S, SESSIONS, TOP_TRIALS, TRIALS, Trial, XDP_FILTER, XDP_FILTER_BLOCKED,
    nft_recipe, runs_at, wire::receive_cpu,
};
use guard_tests::lab::xdp_flood::Drive;

pub(crate) fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
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
    /// The share of the XDP generator's SYNs the mail host took in, in percent.
    pub fn received(&self) -> (f64, f64, f64) {
        median(
            self.trials
                .iter()
                .map(|t| t.flood_received * 100.0)
                .collect(),
        )
    }
    pub fn softirq_ns_per_flood_syn(&self) -> (f64, f64, f64) {
        median(
            self.trials
                .iter()
                .map(|t| t.softirq_ns_per_flood_syn)
                .collect(),
        )
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
pub(crate) fn success_at_top(points: &[Point], protection: &str) -> Option<f64> {
    top_points(points)
        .find(|p| p.protection == protection)
        .map(|p| p.success().0)
}

/// The points of the top attack setting, one per protection, in `PROTECTIONS`' order.
pub(crate) fn top_points(points: &[Point]) -> impl Iterator<Item = &Point> {
    let top = ATTACKS[ATTACKS.len() - 1].0;
    PROTECTIONS.iter().filter_map(move |protection| {
        points
            .iter()
            .find(|p| p.protection == *protection && p.attack == top)
    })
}

/// (trials with a success below 99%, trials) of `protection` at the settings from 100 kpps up.
pub(crate) fn trials_below_99_from_100_kpps(points: &[Point], protection: &str) -> (usize, usize) {
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
pub(crate) fn throughput_at_top(points: &[Point]) -> String {
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
pub(crate) fn syns_lost_at_top(points: &[Point]) -> String {
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
    for protection in plotted() {
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

/// The protections measured at every attack setting, which the plots draw as lines.
fn plotted() -> impl Iterator<Item = &'static str> {
    PROTECTIONS.into_iter().filter(|p| runs_at(p, 0))
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
         full); at the top setting, the **XDP generator**: tests/reference-ebpf's `xdp_syn_flood`, {}, on CPU 0 \
         (sources in 198.19.0.0/16, both checksums computed per frame), each frame sent out of the switch's port \
         facing the mail host, so that it arrives on the mail host's interface as a NIC receives it, without the bridge's forwarding (each trial checks \
         that at least a tenth of its frames reached the mail host's interface, the rest refused by the veth's full \
         ring as a NIC's full ring drops what the host does not take in time; the section \"SYN cookies under the \
         top flood\" gives the share). \
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
         - **mailguard**: `mailguard run` with `syn_ceiling = 2000` (SYNs over it dropped: `syn_cookies = \"off\"`) and the budget above; the sender has delivered \
         once before (a warm-up message, for every protection alike), so it is a source seen completing \
         connections;\n\
         - **mailguard-cookies**: the same, with SYNs over the ceiling answered with SYN cookies from XDP \
         (`syn_cookies = \"under_flood\"`; {});\n\
         - **{XDP_FILTER}** (the top setting only): xdp-filter of xdp-tools, the closest XDP peer, as an operator \
         loads it on a mail host (native mode, its allow policy, the source {XDP_FILTER_BLOCKED} blocked): it cannot \
         tell a spoofed source from a real one, so the flood's SYNs pass to the kernel, which answers them as \
         under none.\n\n\
         Every figure is the median of {TRIALS} trials ({TOP_TRIALS} at the top setting, on which the target is \
         judged), with min-max; the protections' trials interleave, their \
         order rotating, each set up afresh (mailguard started, the nftables table loaded) before its trial. \
         Before each flood the attacker's interface is taken down and up, and a trial whose generator reached \
         less than a fifth of its paced rate (or under 5000 packets/s at max) is run again: on this machine trafgen \
         now and then sends next to nothing (its sends fail with EAGAIN), which measures nothing about the \
         protections. Trials run again in this report: {retried}.\n\n",
        match super::XDP_DRIVE.get() {
            Some(Drive::Relay) =>
                "driven by a relay, as this kernel refuses BPF_PROG_TEST_RUN's live frames (EPERM): a few frames \
                 circle a veth pair of the generator's own in the switch's namespace, and at every turn the relay \
                 program writes a new SYN into its frame and sends it on around the circle and, by a broadcast \
                 redirect, to the mail host",
            _ =>
                "run by BPF_PROG_TEST_RUN in live-frame mode as xdp-tools' xdp-trafficgen sends (XDP_TX)",
        },
        FLOOD_LEAD.as_secs(),
        nft_recipe(),
        if mailguard::kernel::cookies::from_the_syn() {
            "cookies made from the SYN alone, the listeners marked while the flood lasts"
        } else {
            "`net.ipv4.tcp_syncookies` is 2 while the flood lasts"
        }
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
        plotted()
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

/// The section of issue 23's targets at the top setting: each protection's legitimate messages
/// per second and success, and the machine's softirq time per flood SYN.
pub fn cookies_at_top(points: &[Point]) -> String {
    let top = ATTACKS[ATTACKS.len() - 1].0;
    let drive = match super::XDP_DRIVE.get() {
        Some(Drive::Relay) => {
            "a relay of frames circling a veth pair, as this kernel refuses live frames: its turns are \
             softirq work too"
        }
        _ => "BPF_PROG_TEST_RUN live frames",
    };
    let mut s = format!(
        "\n## SYN cookies under the top flood\n\nThe flood section's top setting ({top}): the same lab, sender and trials \
         (medians of {TOP_TRIALS}, min-max), with the softirq time of the whole machine (every CPU, `/proc/stat`) from the \
         flood's start to the sender's end over the flood SYNs sent in that time. The generator ({drive}), the switch \
         and the mail host share the machine, so the figure includes the generator's side, the same for every \
         protection: the differences between rows are what each protection costs. `cargo xtask bench` (section 6) \
         writes this with the flood section; `MAILGUARD_BENCH_ONLY=flood-top` writes it alone.\n\n\
         The received column is the share of the generator's SYNs that reached the mail host's interface, the \
         rest refused by its full veth ring (as a NIC's full ring drops what the host does not take in time, the \
         legitimate sender's frames with the flood's): it falls where the mail host spends more per flood SYN.\n\n\
         | protection | attack pkt/s | received % | legitimate msg/s | success % | softirq ns per flood SYN |\n|---|---:|---:|---:|---:|---:|\n"
    );
    for p in top_points(points) {
        let (a, _, _) = p.attack_pps();
        let (m, m0, m1) = p.messages_per_s();
        let (ok, ok0, ok1) = p.success();
        let (irq, irq0, irq1) = p.softirq_ns_per_flood_syn();
        let (r, r0, r1) = p.received();
        s += &format!(
            "| {} | {a:.0} | {r:.0} ({r0:.0}-{r1:.0}) | {m:.1} ({m0:.1}-{m1:.1}) | {ok:.1} ({ok0:.1}-{ok1:.1}) | {irq:.0} ({irq0:.0}-{irq1:.0}) |\n",
            p.protection
        );
    }
    let at = |protection: &str| top_points(points).find(|p| p.protection == protection);
    if let (Some(c), Some(n)) = (at("mailguard-cookies"), at("nftables")) {
        let (cm, nm, cs) = (c.messages_per_s().0, n.messages_per_s().0, c.success().0);
        let met = cm >= 5.0 * nm && cs >= 99.0;
        s += &format!(
            "\nTarget (issue 23): legitimate mail at the top rate with SYN cookies at least 5 times the nftables recipe's \
             messages per second, at 99% or more success: {cm:.1} against {nm:.1} ({:.1}x), {cs:.1}% success: **{}**.\n",
            cm / nm.max(0.01),
            if met { "met" } else { "NOT met" }
        );
    }
    if let (Some(c), Some(x)) = (at("mailguard-cookies"), at(XDP_FILTER)) {
        let (ci, xi) = (
            c.softirq_ns_per_flood_syn().0,
            x.softirq_ns_per_flood_syn().0,
        );
        let (cr, xr) = (c.received().0, x.received().0);
        let trials: Vec<String> = x
            .trials
            .iter()
            .map(|t| format!("{:.0} SYNs/s and {:.1}%", t.attack_pps, t.success * 100.0))
            .collect();
        s += &format!(
            "\nThe same flood SYN on the whole machine: answered in XDP by mailguard with the kernel's cookie, \
             {ci:.0} ns of softirq time per SYN sent ({cr:.0}% of them taken in); passed by xdp-filter to the kernel, \
             which makes the same cookie and sends its SYN-ACK through its stack, {xi:.0} ns ({:.1} times as much; \
             {xr:.0}% taken in: the machine's softirq time is bounded by its CPUs, so where fewer SYNs are taken in, \
             the time per SYN sent understates what each costs). The floods they met differ: the generator shares \
             CPU 0 with the mail host's receive work, so the more the host spends per SYN, the slower the flood it \
             meets ({:.0} SYNs/s against mailguard with cookies, {:.0} against xdp-filter, medians), and legitimate \
             mail under each ({:.1} and {:.1} messages a second) is not measured against the same flood. \
             xdp-filter's trials, flood and success: {}. The section \"A flood SYN answered with a SYN cookie\" \
             compares the XDP programs alone on that packet.\n",
            xi / ci,
            c.attack_pps().0,
            x.attack_pps().0,
            c.messages_per_s().0,
            x.messages_per_s().0,
            trials.join("; "),
        );
    }
    s += &format!("\n{}", cookie_path());
    s += " The SYN-ACKs XDP sends back leave the mail host as from a NIC and are dropped where they enter the switch \
          (its port's XDP program drops what goes to the spoofed sources, 198.19.0.0/16): toward addresses that are \
          no one's, their way on is the network's work, not the mail host's, as the generator's SYNs reach the mail \
          host without the bridge's forwarding. What the mail host spends on them (the rewrite, XDP_TX, the veth's \
          send) is in the softirq column, and so is the switch port's receive and drop of each, softirq work of \
          this machine too: the column overstates what the answer costs the mail host by that much.\n";
    s
}

/// How this kernel's cookies were made, and what that does to the known sender.
fn cookie_path() -> &'static str {
    if mailguard::kernel::cookies::from_the_syn() {
        "This kernel makes the cookies from the SYN alone (`bpf_tcp_raw_gen_syncookie`, Linux 6.0): \
         `net.ipv4.tcp_syncookies` keeps its value and the daemon marks the listeners as sending cookies while \
         the flood lasts, so the known sender's SYNs go through the SYN queue as without cookies (docs/DESIGN.md, \
         SYN cookies)."
    } else {
        "This kernel makes the cookies only with `net.ipv4.tcp_syncookies` at 2 (before Linux 6.0), which the \
         daemon sets while the flood lasts, so the known sender's own handshakes are the kernel's cookies too: a \
         last ACK of a handshake lost in the flood leaves its session waiting for a greeting until the sender's \
         limit ends it, where the SYN queue would have sent the SYN-ACK again. That is why its messages per \
         second fall while nearly all of them arrive (docs/DESIGN.md, SYN cookies)."
    }
}

/// Puts the section of `cookies_at_top` into the report at `path`.
pub fn splice_cookies_at_top(path: &std::path::Path, section: &str) -> Result<(), String> {
    crate::report::splice(path, "\n## SYN cookies under the top flood", section)
}
