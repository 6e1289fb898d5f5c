//! The attack: trafgen at a paced rate or at its max, or the XDP generator, started and ended
//! per trial, and whether it kept up.

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use guard_tests::lab::Lab;

use super::{FLOOD_LEAD, XDP_PACING, wire::tx_packets};
use guard_tests::lab::xdp_flood::XdpFlood;

/// A running flood: trafgen, or the XDP generator.
pub(crate) enum Flood {
    Trafgen(Started),
    Xdp(XdpFlood),
}

impl Flood {
    pub(super) fn since(&self) -> Instant {
        match self {
            Flood::Trafgen(t) => t.since,
            Flood::Xdp(x) => x.since,
        }
    }

    /// SYNs sent since the flood started.
    pub(super) fn sent(&self, lab: &Lab) -> Result<u64, String> {
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
pub(crate) struct Started {
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

/// Attempts at starting the generator: trafgen occasionally fails to flush its TX ring
/// (EAGAIN) and then sends nothing at all; that is the generator failing, not the host under
/// test, so it is started again.
pub(crate) const FLOOD_STARTS: usize = 3;

/// Starts trafgen at `pacing` and returns once the attacker's interface is sending; a run that
/// sends nothing within the lead time is ended and started again (at most `FLOOD_STARTS`
/// attempts, each reported).
pub(crate) fn start_flood(
    lab: &Lab,
    trafgen_conf: &std::path::Path,
    pacing: &str,
) -> Result<Started, String> {
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
pub(crate) fn reset_attacker_link(lab: &Lab) {
    let iface = lab.attacker.iface.as_str();
    lab.attacker.ns.run(&["ip", "link", "set", iface, "down"]);
    lab.attacker.ns.run(&["ip", "link", "set", iface, "up"]);
}

/// Whether the generator ran: a fifth of a paced rate, or a flood worth the name at `max`.
/// Below that it stalled, and the trial measured nothing about the protections. (Above it, a
/// generator short of its rate is a result: on a machine whose CPUs the generator shares with
/// the mail host, a protection that costs the host more per SYN leaves the generator less.)
pub(crate) fn generator_kept_up(pacing: Option<&str>, attack_pps: f64) -> bool {
    match pacing {
        None => true,
        Some(p) if p.starts_with("max") || p == XDP_PACING => attack_pps >= 5_000.0,
        Some(p) => p
            .trim_end_matches("pps")
            .parse::<f64>()
            .is_ok_and(|rate| attack_pps >= rate / 5.0),
    }
}
