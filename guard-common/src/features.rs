//! Kernel features mailguard's programs use when the kernel has them, and do without when it
//! has not. Userspace probes the running kernel before loading and writes the bits it found
//! into the programs' read-only global `FEATURES_GLOBAL`; the verifier knows a read-only
//! global's value, so it never walks (nor refuses) the code of a feature that is absent.

/// `bpf_ktime_get_coarse_ns` in XDP (Linux 5.11). Without it the budgets and block expiry read
/// the precise clock, `bpf_ktime_get_ns`: the same CLOCK_MONOTONIC, about 20 ns more a read.
pub const FEATURE_COARSE_CLOCK: u32 = 1 << 0;
/// `bpf_get_netns_cookie` in sock_ops (Linux 5.15). Without it the connection counts include
/// connections to mail ports in every network namespace of the host, not only mailguard's.
pub const FEATURE_SOCKOPS_NETNS_COOKIE: u32 = 1 << 1;
/// `bpf_tcp_gen_syncookie` in XDP (Linux 5.3). Without it no SYN is answered with a cookie: over
/// the SYN ceiling, SYNs are dropped as with `syn_cookies = "off"`.
pub const FEATURE_SYN_COOKIE: u32 = 1 << 2;

/// `bpf_tcp_raw_gen_syncookie_ipv4/ipv6` in XDP (Linux 6.0): the kernel's cookie made from the
/// SYN's headers alone, with no socket lookup and whatever `net.ipv4.tcp_syncookies` says.
/// XDP answers with it only on ports whose listeners the daemon has marked as sending cookies
/// (`COOKIE_PORTS`). Without it XDP uses `bpf_tcp_gen_syncookie` on the listener, which makes a
/// cookie only while `net.ipv4.tcp_syncookies` is 2.
pub const FEATURE_RAW_SYN_COOKIE: u32 = 1 << 3;

/// Every feature: the programs' default when userspace writes nothing.
pub const FEATURES_ALL: u32 = FEATURE_COARSE_CLOCK
    | FEATURE_SOCKOPS_NETNS_COOKIE
    | FEATURE_SYN_COOKIE
    | FEATURE_RAW_SYN_COOKIE;

/// Name of the read-only global (`u32`, `FEATURE_*` bits) in the eBPF object.
pub const FEATURES_GLOBAL: &str = "MG_FEATURES";
