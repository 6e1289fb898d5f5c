//! Layer 2, the kernel side: the embedded eBPF object and everything that touches it.
//!
//! - `features`: what the running kernel offers (probed), and what mailguard needs of it
//! - `guard`: the loaded object: load, maps, counters; `attach`: attaching it (XDP, sock_ops)
//! - `pins`: what stays pinned in bpffs when the daemon is gone, and its reuse
//! - `policy`: a `Config` and the lists turned into map contents; `policy_maps`: written
//!   into the maps
//! - `index_v4`, `index_v6`: the lists expanded into the indexes XDP reads in constant time
//! - `mapped`: mmapable array maps as memory; `source_table`: the per-source rate table
//! - `link_watch`: rtnetlink: interfaces coming and going, the XDP program on one
//! - `cookies`, `syncookie_sysctl`, `listener_marks`: what SYN cookies made in XDP need of the
//!   kernel's TCP (`netstat`: its counters)

pub mod attach;
pub mod cookies;
pub mod features;
pub mod guard;
pub mod index_v4;
pub mod index_v6;
pub mod link_watch;
pub mod listener_marks;
pub mod mapped;
pub mod netstat;
pub mod pins;
pub mod policy;
pub mod policy_maps;
pub mod source_table;
pub mod syncookie_sysctl;
#[cfg(test)]
mod test_rng;

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock XDP reads (guard-ebpf's clock.rs) for
/// budgets, block expiry and the marks of `COOKIE_PORTS`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
