//! Names of mailguard's BPF maps and programs. The kernel side declares the maps with these
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
/// Array of `ClassBudget`, indexed by `MailClass`.
pub const BUDGETS: &str = "MG_BUDGETS";
/// Single-entry array of `BudgetSettings`.
pub const BUDGET_SETTINGS: &str = "MG_BUDGET_CFG";
/// Array of `SourceBucket` by `source_bucket`: rate state per source and class (two slots per
/// bucket), and the connections counted for the bucket's keys (sock_ops).
pub const SOURCES: &str = "MG_SOURCES";
/// Hash `SourceKey` -> `u32`: concurrent connections per source and class (sock_ops).
pub const CONNECTIONS: &str = "MG_CONNS";
/// Hash socket cookie (`u64`) -> `SourceKey`: the connections sock_ops counted.
pub const SOCKETS: &str = "MG_SOCKETS";
/// LRU hash `SourceKey` (class 0) -> `u64` time: sources seen completing a connection.
pub const VERIFIED: &str = "MG_VERIFIED";
/// LPM trie of trusted IPv4 sources (exempt from budgets): address -> `u8`.
pub const TRUSTED_V4: &str = "MG_TRUSTED_V4";
/// LPM trie of trusted IPv6 sources.
pub const TRUSTED_V6: &str = "MG_TRUSTED_V6";
/// Per-CPU `u64`: GCRA state of the global SYN ceiling.
pub const SYN_CEILING: &str = "MG_CEILING";
/// Per-CPU `u64`: GCRA state of the RST rate limit.
pub const RST_LIMIT: &str = "MG_RST_LIMIT";
/// Per-CPU `[u64; 2]`: jiffies and the coarse clock read at them (a cache of the clock).
pub const CLOCK: &str = "MG_CLOCK";
/// Per-CPU `u64` budget outcomes by class (`class_counter_slot`).
pub const CLASS_COUNTERS: &str = "MG_CLASS_CNT";
/// Per-CPU `u64` sock_ops events (`AccountingEvent`).
pub const ACCOUNTING: &str = "MG_ACCOUNTING";

/// LPM tries of the MX allowlist (MX-only mode): address -> `u8`.
pub const MX_ALLOW_V4: &str = "MG_MX_ALLOW_V4";
pub const MX_ALLOW_V6: &str = "MG_MX_ALLOW_V6";
/// The IPv4 list index (see `list_index`): level 16 and 24 entries (`u32`), level 32 bitmap
/// words (`u64`).
pub const V4_INDEX_16: &str = "MG_V4_INDEX_16";
pub const V4_INDEX_24: &str = "MG_V4_INDEX_24";
pub const V4_INDEX_32: &str = "MG_V4_INDEX_32";
/// The IPv6 list index (see `list_index`): the prefix table (array of `V6Bucket`), and the
/// lists' length tables (array of `V6Lengths` by `index_area`).
pub const V6_TABLE: &str = "MG_V6_TABLE";
pub const V6_LENGTHS: &str = "MG_V6_LENGTHS";
/// Array of `u64` by TCP port: until when (CLOCK_MONOTONIC ns) the port's listeners accept
/// cookies XDP makes without them (`FEATURE_RAW_SYN_COOKIE`).
pub const COOKIE_PORTS: &str = "MG_COOKIE_PORTS";
/// LPM tries of the block list: address -> `BlockEntry`.
pub const BLOCK_V4: &str = "MG_BLOCK_V4";
pub const BLOCK_V6: &str = "MG_BLOCK_V6";

/// Every map that is pinned and reused across starts, for pinning and inspection.
pub const ALL: &[&str] = &[
    COUNTERS,
    SETTINGS,
    PORT_RULES,
    OPEN_SOURCES_V4,
    OPEN_SOURCES_V6,
    BUDGETS,
    BUDGET_SETTINGS,
    SOURCES,
    CONNECTIONS,
    SOCKETS,
    VERIFIED,
    TRUSTED_V4,
    TRUSTED_V6,
    SYN_CEILING,
    RST_LIMIT,
    CLOCK,
    CLASS_COUNTERS,
    ACCOUNTING,
    MX_ALLOW_V4,
    MX_ALLOW_V6,
    BLOCK_V4,
    BLOCK_V6,
    V4_INDEX_16,
    V4_INDEX_24,
    V4_INDEX_32,
    V6_TABLE,
    V6_LENGTHS,
    COOKIE_PORTS,
];

/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "mailguard_xdp";
/// Name of the sock_ops program in the object file.
pub const SOCKOPS_PROGRAM: &str = "mailguard_sockops";
