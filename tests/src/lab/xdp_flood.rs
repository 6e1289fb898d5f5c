//! The flood's fastest generator: tests/reference-ebpf's `xdp_syn_flood` run by BPF_PROG_TEST_RUN in
//! live-frame mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, the way xdp-tools' xdp-trafficgen sends).
//! The kernel runs the program on copies of one SYN, and each copy it returns with XDP_TX
//! leaves by the test run's interface: the switch's port facing the mail host, so that the
//! frames arrive on the mail host's interface as a NIC receives them, without the bridge's
//! per-packet forwarding (a switch's work, not the mail host's). trafgen, sending through the
//! attacker's socket, its veth and the bridge, tops out at a few hundred thousand SYNs a
//! second here; this reaches what the mail host's receive path accepts.
//!
//! Some kernels refuse live frames (EPERM: seen on sandboxed 6.18 kernels that allow every
//! other test run). There the same program's SYNs come from a relay instead
//! ([`Drive::Relay`]): a few frames circle a veth pair the generator makes in the switch
//! namespace, and at every turn the relay program writes a new SYN into its frame and sends it
//! on around the circle and, by a broadcast redirect, out of the same switch port. Either way
//! the SYNs are made and sent in the kernel, on the generator's CPU, with no system call per
//! frame; [`XdpFlood::drive`] says which way this kernel took.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Lab, MAIL4};
use crate::{
    harness::run_on,
    netns::link_info,
    packet::{Packet, SYN, tcp},
    reference,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray, xdp::DevMap},
    programs::{TestRun, TestRunAttrs, TestRunOptions, XdpMode},
};

/// Copies of the SYN per test run: a few tens of milliseconds at the rates reached here, so
/// that a stop is seen promptly.
const RUNS_PER_CALL: u32 = 1 << 16;
/// Frames the kernel runs the program on before it sends them (the kernel's default, NAPI's).
const BATCH: u32 = 64;
/// The template's source: the program replaces its last two bytes per copy, so the flood's
/// sources are random in 198.19.0.0/16 (inside the test range, apart from the lab's hosts),
/// as the lab's trafgen flood's are.
const SOURCES: &str = "198.19.0.1";

/// The relay's veth pair, in the switch namespace: the relay program's end and the end that
/// sends every frame back.
const RELAY_END: &str = "mg-gen-relay";
const BOUNCE_END: &str = "mg-gen-bounce";
/// Frames put into the relay's circle whenever its count has not grown for a while: its
/// population grows until the veths' rings (256 frames each) are full, and stays there.
const RELAY_TOP_UP: usize = 32;
/// How often the relay's count is read (and the circle topped up).
const RELAY_TICK: Duration = Duration::from_millis(10);

/// How the generator's SYNs are driven on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drive {
    /// BPF_PROG_TEST_RUN in live-frame mode.
    LiveFrames,
    /// Frames circling a veth pair through the relay program (live frames refused).
    Relay,
}

impl Drive {
    pub fn describe(self) -> &'static str {
        match self {
            Drive::LiveFrames => "BPF_PROG_TEST_RUN live frames",
            Drive::Relay => {
                "a relay of frames circling a veth pair (this kernel refuses live frames)"
            }
        }
    }
}

/// A running generator; stopped, and its thread joined, on drop.
pub struct XdpFlood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    relay: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
    pub since: Instant,
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN reads it: data, data_end (the packet's length),
/// data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
fn xdp_md(len: usize, ingress_ifindex: u32) -> Vec<u8> {
    [0, len as u32, 0, ingress_ifindex, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_ne_bytes())
        .collect()
}

impl XdpFlood {
    /// Starts the generator on `cpu`, in the lab's switch namespace, sending into the switch's
    /// port `port` (the peer of the mail host's interface); returns once it has sent its first
    /// frames, or with the error that stopped it.
    pub fn start(lab: &Lab, port: &str, cpu: usize) -> Result<XdpFlood, String> {
        XdpFlood::start_driven(lab, port, cpu, None)
    }

    /// As `start`, driven as `drive` says: `Some(Drive::Relay)` even where live frames work, so
    /// that the fallback is tested on every kernel; `Some(Drive::LiveFrames)` fails where they
    /// are refused; `None` chooses as `start` does.
    pub fn start_driven(
        lab: &Lab,
        port: &str,
        cpu: usize,
        drive: Option<Drive>,
    ) -> Result<XdpFlood, String> {
        let force_relay = drive == Some(Drive::Relay);
        let mac = link_info(Some(&lab.mail.ns), &lab.mail.iface)["address"]
            .as_str()
            .ok_or("no MAC address for the mail host's interface")?
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, String>>()?;
        let mut packet = Packet::v4(SOURCES, MAIL4, tcp(40000, 25, SYN)).build();
        if packet.len() != 54 || mac.len() != 6 {
            return Err(format!(
                "the generator's SYN is {} bytes (54 expected), the MAC {} bytes",
                packet.len(),
                mac.len()
            ));
        }
        packet[..6].copy_from_slice(&mac);
        // From the attacker's MAC address, which the switch has learnt: what the mail host sends
        // back (the SYN-ACKs of SYN cookies) is addressed to the attacker's port alone, as it
        // would be to the router of a real network, rather than to every port as for an unknown
        // address (the switch's port drops it on entry: lab_pass.rs).
        let attacker = link_info(Some(&lab.attacker.ns), &lab.attacker.iface)["address"]
            .as_str()
            .ok_or("no MAC address for the attacker's interface")?
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, String>>()?;
        if attacker.len() == 6 {
            packet[6..12].copy_from_slice(&attacker);
        }
        let port = port.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let relay = Arc::new(AtomicBool::new(false));
        let (stop_t, sent_t, relay_t) = (stop.clone(), sent.clone(), relay.clone());
        let thread = lab.switch.spawn(move || -> Result<(), String> {
            run_on([cpu]);
            let template: [u8; 54] = packet.as_slice().try_into().map_err(|_| "a 54-byte SYN")?;
            let mut obj = EbpfLoader::new()
                .override_global("SYN_TEMPLATE", &template, true)
                .load(reference::SYN_FLOOD)
                .map_err(|e| e.to_string())?;
            let target = ifindex(&port)?;
            let live = if force_relay {
                Err(Refused::Eperm)
            } else {
                live_frames(&mut obj, &packet, target, &stop_t, &sent_t)
            };
            match live {
                Err(Refused::Eperm) if drive == Some(Drive::LiveFrames) => Err(format!(
                    "xdp_syn_flood's test run on {port}: this kernel refuses live frames (EPERM)"
                )),
                Err(Refused::Eperm) => {
                    relay_t.store(true, Ordering::Relaxed);
                    relay_frames(&mut obj, &packet, target, &stop_t, &sent_t)
                }
                Err(Refused::Other(e)) => Err(format!("xdp_syn_flood's test run on {port}: {e}")),
                Ok(()) => Ok(()),
            }
        });
        let flood = XdpFlood {
            stop,
            sent,
            relay,
            thread: Some(thread),
            since: Instant::now(),
        };
        while flood.sent() == 0 {
            if flood.thread.as_ref().is_some_and(|t| t.is_finished()) {
                return Err(match flood.stop() {
                    Err(e) => e,
                    Ok(_) => "the generator ended before it sent anything".into(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(flood)
    }

    /// How this kernel drives the generator (known once `start` has returned).
    pub fn drive(&self) -> Drive {
        if self.relay.load(Ordering::Relaxed) {
            Drive::Relay
        } else {
            Drive::LiveFrames
        }
    }

    /// SYNs sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the generator; returns the SYNs it sent, or the error that ended it.
    pub fn stop(mut self) -> Result<u64, String> {
        self.end()
    }

    fn end(&mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err("the generator's thread panicked".into()),
            _ => Ok(self.sent()),
        }
    }
}

impl Drop for XdpFlood {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// Why live frames did not run.
enum Refused {
    /// The kernel refuses live frames.
    Eperm,
    Other(String),
}

/// Index of `name` in the calling thread's namespace.
fn ifindex(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated name; the lookup is in this thread's namespace.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("no interface {name} in the switch namespace")),
        i => Ok(i),
    }
}

/// Runs `xdp_syn_flood` in live-frame mode out of interface `target` until `stop`.
fn live_frames(
    obj: &mut Ebpf,
    packet: &[u8],
    target: u32,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<(), Refused> {
    let prog = reference::xdp_program(obj, "xdp_syn_flood").map_err(Refused::Other)?;
    let ctx = xdp_md(packet.len(), target);
    while !stop.load(Ordering::Relaxed) {
        prog.test_run(TestRunOptions {
            data_in: Some(packet),
            ctx_in: Some(&ctx),
            repeat: RUNS_PER_CALL,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..TestRunOptions::new()
        })
        .map_err(|e| {
            let source = std::error::Error::source(&e);
            let os = source
                .and_then(|c| c.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error);
            if os == Some(libc::EPERM) && sent.load(Ordering::Relaxed) == 0 {
                Refused::Eperm
            } else {
                Refused::Other(format!(
                    "{e}{}",
                    source.map(|c| format!(": {c}")).unwrap_or_default()
                ))
            }
        })?;
        sent.fetch_add(u64::from(RUNS_PER_CALL), Ordering::Relaxed);
    }
    Ok(())
}

/// Runs the relay (module docs) out of interface `target` until `stop`: makes the veth pair,
/// attaches the relay and the bounce, puts frames into the circle and keeps it full; at the
/// end drops the circle's frames and deletes the pair.
fn relay_frames(
    obj: &mut Ebpf,
    packet: &[u8],
    target: u32,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<(), String> {
    let pair = VethPair::create(RELAY_END, BOUNCE_END)?;
    let mut stop_map: Array<_, u32> =
        Array::try_from(obj.take_map("RELAY_STOP").ok_or("no RELAY_STOP")?)
            .map_err(|e| format!("RELAY_STOP: {e}"))?;
    let result = (|| {
        let mut to = DevMap::try_from(obj.take_map("RELAY_TO").ok_or("no RELAY_TO")?)
            .map_err(|e| format!("RELAY_TO: {e}"))?;
        to.set(0, ifindex(RELAY_END)?, None, 0)
            .and_then(|()| to.set(1, target, None, 0))
            .map_err(|e| format!("RELAY_TO: {e}"))?;
        let count: PerCpuArray<_, u64> =
            PerCpuArray::try_from(obj.take_map("RELAY_SENT").ok_or("no RELAY_SENT")?)
                .map_err(|e| format!("RELAY_SENT: {e}"))?;
        for (name, end) in [("xdp_syn_relay", RELAY_END), ("xdp_bounce", BOUNCE_END)] {
            reference::xdp_program(obj, name)?
                .attach(end, XdpMode::Driver)
                .map_err(|e| format!("{name} on {end}: {e}"))?;
        }
        let socket = PacketSocket::bound(BOUNCE_END)?;
        let read = || -> Result<u64, String> {
            Ok(count
                .get(&0, 0)
                .map_err(|e| format!("RELAY_SENT: {e}"))?
                .iter()
                .sum())
        };
        let mut last = 0;
        while !stop.load(Ordering::Relaxed) {
            let now = read()?;
            if now == last {
                socket.send(packet, RELAY_TOP_UP)?;
            }
            sent.store(now, Ordering::Relaxed);
            last = now;
            std::thread::sleep(RELAY_TICK);
        }
        // The circle's frames dropped, then the last count.
        stop_map
            .set(0, 1, 0)
            .map_err(|e| format!("RELAY_STOP: {e}"))?;
        std::thread::sleep(RELAY_TICK);
        sent.store(read()?, Ordering::Relaxed);
        Ok(())
    })();
    let _ = stop_map.set(0, 1, 0);
    std::thread::sleep(RELAY_TICK);
    drop(pair);
    result
}

/// A veth pair made in the calling thread's namespace, both ends up; deleted on drop.
struct VethPair(String);

impl VethPair {
    fn create(a: &str, b: &str) -> Result<VethPair, String> {
        let _ = ip(&["link", "del", a]);
        ip(&["link", "add", "name", a, "type", "veth", "peer", "name", b])?;
        let pair = VethPair(a.to_string());
        ip(&["link", "set", a, "up"])?;
        ip(&["link", "set", b, "up"])?;
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

/// `ip` with `args`, run from the calling thread (so in its namespace).
fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A packet socket bound to one interface of the calling thread's namespace; closed on drop.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn bound(name: &str) -> Result<PacketSocket, String> {
        use std::os::fd::FromRawFd;
        let ifindex = ifindex(name)? as i32;
        // SAFETY: a plain socket call; its descriptor is owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(format!(
                "packet socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a descriptor just opened and owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        Ok(PacketSocket { fd, ifindex })
    }

    /// Sends `frame` out of the interface `times` times.
    fn send(&self, frame: &[u8], times: usize) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set are plain data.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        for _ in 0..times {
            // SAFETY: the frame and the address are valid for the lengths given.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc < 0 {
                return Err(format!(
                    "send into the relay: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        Ok(())
    }
}
