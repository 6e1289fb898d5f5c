//! The flood's fastest generator: tests/reference-ebpf's `xdp_syn_flood` run by BPF_PROG_TEST_RUN in
//! live-frame mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, the way xdp-tools' xdp-trafficgen sends).
//! The kernel runs the program on copies of one SYN, and each copy it returns with XDP_TX
//! leaves by the test run's interface: the switch's port facing the mail host, so that the
//! frames arrive on the mail host's interface as a NIC receives them, without the bridge's
//! per-packet forwarding (a switch's work, not the mail host's). trafgen, sending through the
//! attacker's socket, its veth and the bridge, tops out at a few hundred thousand SYNs a
//! second here; this reaches what the mail host's receive path accepts.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use super::{Lab, MAIL4};
use crate::{
    harness::run_on,
    netns::link_info,
    packet::{Packet, SYN, tcp},
    reference,
};
use aya::{
    EbpfLoader,
    programs::{TestRun, TestRunAttrs, TestRunOptions},
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

/// A running generator; stopped, and its thread joined, on drop.
pub struct XdpFlood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
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
        let (stop_t, sent_t) = (stop.clone(), sent.clone());
        let thread = lab.switch.spawn(move || -> Result<(), String> {
            run_on([cpu]);
            let template: [u8; 54] = packet.as_slice().try_into().map_err(|_| "a 54-byte SYN")?;
            let mut obj = EbpfLoader::new()
                .override_global("SYN_TEMPLATE", &template, true)
                .load(reference::SYN_FLOOD)
                .map_err(|e| e.to_string())?;
            let prog = reference::xdp_program(&mut obj, "xdp_syn_flood")?;
            let name = std::ffi::CString::new(port.clone()).map_err(|e| e.to_string())?;
            // SAFETY: a NUL-terminated name; the lookup is in this thread's namespace.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(format!("no interface {port} in the switch namespace"));
            }
            let ctx = xdp_md(packet.len(), ifindex);
            while !stop_t.load(Ordering::Relaxed) {
                prog.test_run(TestRunOptions {
                    data_in: Some(&packet),
                    ctx_in: Some(&ctx),
                    repeat: RUNS_PER_CALL,
                    attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                    ..TestRunOptions::new()
                })
                .map_err(|e| {
                    let cause = std::error::Error::source(&e)
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default();
                    format!("xdp_syn_flood's test run on {port}: {e}{cause}")
                })?;
                sent_t.fetch_add(u64::from(RUNS_PER_CALL), Ordering::Relaxed);
            }
            Ok(())
        });
        let flood = XdpFlood {
            stop,
            sent,
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
