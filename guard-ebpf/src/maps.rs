//! Every BPF map of the XDP program. Userspace finds them by the names in
//! `guard_common::maps`; the types of keys and values come from guard-common.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray},
};
use guard_common::{
    COUNTER_SLOTS, OPEN_SOURCE_ENTRIES, OpenSourceV4, OpenSourceV6, PORT_RULE_ENTRIES, PortRule,
    Settings, maps as names,
};

/// Packets counted by reason.
/// key: `u32` counter slot = `Reason as u32` (host order);
/// value: `u64` packet count, one per CPU (userspace sums them);
/// capacity: `COUNTER_SLOTS` (64), more than there are reasons.
#[map(name = "MG_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Run-time switches (monitor mode, echo policy).
/// key: `u32` 0; value: `Settings` (flags in host order); capacity: 1.
#[map(name = "MG_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// What each destination port is for.
/// key: `u32` = `port_rule_index(transport, port)`: transport (0 TCP, 1 UDP) << 16 | port,
/// the port in HOST byte order (port 25 is index 25, never 6400);
/// value: `PortRule`; capacity: `PORT_RULE_ENTRIES` (131072: every TCP and UDP port).
/// Unset entries are zero, which is `PortKind::Closed`.
#[map(name = "MG_PORT_RULES")]
pub static PORT_RULES: Array<PortRule> = Array::with_max_entries(PORT_RULE_ENTRIES, 0);

/// IPv4 sources allowed on source-restricted open ports.
/// key: LPM prefix length (host order) + `OpenSourceV4` {proto, port (network order),
/// address (network order)}; matched bits = 24 + CIDR length; value: `u8` 1;
/// capacity: `OPEN_SOURCE_ENTRIES` (4096).
#[map(name = "MG_OPEN_SRC_V4")]
pub static OPEN_SOURCES_V4: LpmTrie<OpenSourceV4, u8> =
    LpmTrie::with_max_entries(OPEN_SOURCE_ENTRIES, 0);

/// IPv6 sources allowed on source-restricted open ports; as `OPEN_SOURCES_V4` with
/// `OpenSourceV6` keys (16-byte address). Capacity: `OPEN_SOURCE_ENTRIES` (4096).
#[map(name = "MG_OPEN_SRC_V6")]
pub static OPEN_SOURCES_V6: LpmTrie<OpenSourceV6, u8> =
    LpmTrie::with_max_entries(OPEN_SOURCE_ENTRIES, 0);

// The names above must be the ones userspace looks up.
const _: () = {
    assert!(const_str_eq(names::COUNTERS, "MG_COUNTERS"));
    assert!(const_str_eq(names::SETTINGS, "MG_SETTINGS"));
    assert!(const_str_eq(names::PORT_RULES, "MG_PORT_RULES"));
    assert!(const_str_eq(names::OPEN_SOURCES_V4, "MG_OPEN_SRC_V4"));
    assert!(const_str_eq(names::OPEN_SOURCES_V6, "MG_OPEN_SRC_V6"));
};

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
