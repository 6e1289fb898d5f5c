//! xdp-filter from Debian's xdp-tools, the closest XDP peer, set up the way a mail server would
//! use it: deny policy (a packet passes only when a rule matches), the mail ports allowed.
//!
//! `xdp-filter load` attaches its program to a veth in the benchmark's private network
//! namespace (skb mode: nothing is sent, the attachment only gives the program an id); the
//! benchmark then opens the program by id and times it with BPF_PROG_TEST_RUN like the others.
//! xdp-filter pins its maps under /sys/fs/bpf, which in the benchmark is a private bpffs of
//! its own mount namespace (see `main.rs`), so nothing of it outlives the benchmark.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
};

use guard_tests::netns::{link_info, sh};

use crate::measure::{Run, Timed};

const IFACE: &str = "xfpeer0";

/// xdp-filter loaded on a veth of the benchmark's namespace.
pub struct XdpFilter {
    prog: OwnedFd,
    /// xdp-filter and the version of its Debian package.
    pub version: String,
    /// The ports allowed, as a list for the report.
    pub ports: String,
}

impl XdpFilter {
    /// Loads xdp-filter with the deny policy and allows `ports` (destination, TCP and UDP).
    pub fn load(ports: &[u16]) -> Result<XdpFilter, String> {
        // Left down: no packet of the host's (neighbour discovery, MLD) reaches the program,
        // so its counters move only for the benchmark's runs.
        sh(&[
            "ip", "link", "add", IFACE, "type", "veth", "peer", "name", "xfpeer1",
        ]);
        xdp_filter(&["load", "--policy", "deny", "--mode", "skb", IFACE])?;
        for p in ports {
            xdp_filter(&["port", &p.to_string()])?;
        }
        let version = String::from_utf8_lossy(
            &sh(&[
                "dpkg-query",
                "-W",
                "-f",
                "xdp-filter of xdp-tools ${Version}",
                "xdp-tools",
            ])
            .stdout,
        )
        .into_owned();
        let id = attached_program_id(IFACE)?;
        Ok(XdpFilter {
            prog: prog_fd_by_id(id)
                .map_err(|e| format!("opening xdp-filter's program {id}: {e}"))?,
            version,
            ports: ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// xdp-filter's own per-action counters (`xdp-filter status`): (aborted, drop, pass).
    pub fn action_counts(&self) -> Result<[u64; 3], String> {
        let status = xdp_filter(&["status"])?;
        let count = |action: &str| -> Result<u64, String> {
            status
                .lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some(action)).then(|| w.next()?.parse().ok())?
                })
                .ok_or_else(|| format!("no {action} counter in `xdp-filter status`:\n{status}"))
        };
        Ok([
            count("XDP_ABORTED")?,
            count("XDP_DROP")?,
            count("XDP_PASS")?,
        ])
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = xdp_filter(&["unload", "--all"]);
        let _ = Command::new("ip").args(["link", "del", IFACE]).status();
    }
}

impl Timed for XdpFilter {
    fn run(&self, packet: &[u8], repeat: u32) -> Run {
        test_run_fd(&self.prog, packet, repeat)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on xdp-filter: {e}"))
    }
}

fn xdp_filter(args: &[&str]) -> Result<String, String> {
    let out = Command::new("xdp-filter")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run xdp-filter (Debian package xdp-tools): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`xdp-filter {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The id of the XDP program attached to `iface`.
fn attached_program_id(iface: &str) -> Result<u32, String> {
    link_info(None, iface)["xdp"]["prog"]["id"]
        .as_u64()
        .map(|id| id as u32)
        .ok_or_else(|| format!("no XDP program attached to {iface} after `xdp-filter load`"))
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (the fields up to `batch_size`).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, properly sized `union bpf_attr` prefix for `cmd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdAttr {
        id,
        ..GetFdAttr::default()
    };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn test_run_fd(prog: &OwnedFd, packet: &[u8], repeat: u32) -> io::Result<Run> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(Run {
        retval: attr.retval,
        ns: attr.duration as f64,
    })
}
