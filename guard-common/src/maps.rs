//! Names and capacities of mailguard's BPF maps. The kernel side declares the maps with these
//! names (see guard-ebpf/src/maps.rs for key, value, byte order and capacity of each); userspace
//! looks them up by the same names.

/// Per-CPU `u64` packet counters, one slot per `Reason`.
pub const COUNTERS: &str = "MG_COUNTERS";
/// Single-entry array of `Settings`.
pub const SETTINGS: &str = "MG_SETTINGS";
/// Array of `PortRule`, indexed by `port_rule_index`.
pub const PORT_RULES: &str = "MG_PORT_RULES";
/// LPM trie of `OpenSourceV4` -> `u8` (1).
pub const OPEN_SOURCES_V4: &str = "MG_OPEN_SRC_V4";
/// LPM trie of `OpenSourceV6` -> `u8` (1).
pub const OPEN_SOURCES_V6: &str = "MG_OPEN_SRC_V6";

/// Every map, for pinning and inspection.
pub const ALL: &[&str] = &[
    COUNTERS,
    SETTINGS,
    PORT_RULES,
    OPEN_SOURCES_V4,
    OPEN_SOURCES_V6,
];

/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "mailguard_xdp";
