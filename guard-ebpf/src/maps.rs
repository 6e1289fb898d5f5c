//! Every BPF map of the XDP program. Userspace finds them by the names in
//! `guard_common::maps`; the types of keys and values come from guard-common (but for the
//! settle points' scratch slot, which only this program reads).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use guard_common::{
    ACCOUNTING_SLOTS, BlockEntry, BudgetSettings, CLASS_COUNTER_SLOTS, CLASS_SLOTS,
    COOKIE_PORT_ENTRIES, COUNTER_SLOTS, ClassBudget, DEFAULT_TRACKED_CONNECTIONS,
    DEFAULT_TRACKED_SOURCES, LIST_MAP_CAPACITY, OPEN_SOURCE_ENTRIES, OpenSourceV4, OpenSourceV6,
    PORT_RULE_ENTRIES, PortRule, Settings, SourceBucket, SourceKey, V4_INDEX_16_ENTRIES,
    V4_INDEX_24_ENTRIES, V4_INDEX_32_ENTRIES, V6_DEFAULT_BUCKETS, V6_LENGTH_TABLES, V6Bucket,
    V6Lengths, VERIFIED_ENTRIES, maps as names, source_buckets,
};

use crate::{settle::Scratch, syncookie::CookieScan};

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

/// Budget of each service class.
/// key: `u32` `MailClass` value (1 mx, 2 submission, 3 mailbox; 0 unused);
/// value: `ClassBudget` (host order); capacity: `CLASS_SLOTS` (4).
#[map(name = "MG_BUDGETS")]
pub static BUDGETS: Array<ClassBudget> = Array::with_max_entries(CLASS_SLOTS, 0);

/// Global budget settings: SYN ceiling, RST limit, counted namespace, source prefix masks.
/// key: `u32` 0; value: `BudgetSettings` (numbers host order, masks network order); capacity 1.
#[map(name = "MG_BUDGET_CFG")]
pub static BUDGET_SETTINGS: Array<BudgetSettings> = Array::with_max_entries(1, 0);

/// Rate state of each source prefix and class, and the open connections counted per bucket:
/// a two-way set-associative table (see guard-common's `sources`). A new source takes a free
/// slot of its bucket or evicts the one with the older last SYN (the evicted source starts
/// again with a full bucket: fails open). The bucket's `connections` (kept by sock_ops beside
/// `CONNECTIONS`) is the sum of the counts of every key of the bucket, so a bucket below a
/// class's cap proves each of those sources below it, and XDP looks up `CONNECTIONS` only when
/// it has reached the cap.
/// key: `u32` `source_bucket(key.slot_hash(), source_buckets)`; value: `SourceBucket`
/// {`connections` (host order), two `SourceSlot`s {`SourceKey` (address network order), flags,
/// `SourceState` (host order)}, a slot all zero when free}; capacity:
/// `source_buckets(budgets.tracked_sources)` (two sources per bucket; default 32768), set at
/// load. Mmapable: page aligned, so every 128-byte bucket is two whole cache lines, and
/// userspace reads the whole table as memory.
#[map(name = "MG_SOURCES")]
pub static SOURCES: Array<SourceBucket> =
    Array::with_max_entries(source_buckets(DEFAULT_TRACKED_SOURCES), BPF_F_MMAPABLE);

/// Concurrent connections of each source prefix and class, kept exact by sock_ops
/// (incremented at passive establishment, decremented at close). Entries are removed at zero.
/// When full, new sources are not counted (fails open).
/// key: `SourceKey`; value: `u32` count (host order; top bit set reads as 0);
/// capacity: `budgets.tracked_connections` (default 65536), set at load.
#[map(name = "MG_CONNS")]
pub static CONNECTIONS: HashMap<SourceKey, u32> =
    HashMap::with_max_entries(DEFAULT_TRACKED_CONNECTIONS, 0);

/// The connections sock_ops counted, so that exactly those are uncounted at close.
/// key: `u64` socket cookie (host order); value: `SourceKey`;
/// capacity: `budgets.tracked_connections` (default 65536), set at load.
#[map(name = "MG_SOCKETS")]
pub static SOCKETS: HashMap<u64, SourceKey> =
    HashMap::with_max_entries(DEFAULT_TRACKED_CONNECTIONS, 0);

/// Sources seen completing a connection: exempt from the global SYN ceiling (spoofed
/// sources never complete one). key: `SourceKey` with class 0; value: `u64`
/// `bpf_ktime_get_ns` of the first completion seen; capacity: `VERIFIED_ENTRIES` (65536), LRU
/// with per-CPU lists.
#[map(name = "MG_VERIFIED")]
pub static VERIFIED: LruHashMap<SourceKey, u64> =
    LruHashMap::with_max_entries(VERIFIED_ENTRIES, BPF_F_NO_COMMON_LRU);

/// Trusted IPv4 sources, exempt from budgets. key: LPM prefix length (host order) + address
/// (network order); value: `u8` 1; capacity: `LIST_MAP_CAPACITY` (2097152).
#[map(name = "MG_TRUSTED_V4")]
pub static TRUSTED_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(LIST_MAP_CAPACITY, 0);

/// Trusted IPv6 sources; as `TRUSTED_V4` with 16-byte addresses.
#[map(name = "MG_TRUSTED_V6")]
pub static TRUSTED_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(LIST_MAP_CAPACITY, 0);

/// GCRA state (theoretical arrival time, ns) of the global SYN ceiling, one per CPU.
/// key: `u32` 0; value: `u64`; capacity 1.
#[map(name = "MG_CEILING")]
pub static SYN_CEILING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The coarse clock as this CPU last read it (clock.rs): key `u32` 0; value `[u64; 2]`
/// {jiffies, CLOCK_MONOTONIC_COARSE ns} (host order), one per CPU; capacity 1.
#[map(name = "MG_CLOCK")]
pub static CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// GCRA state of the RST rate limit of the `reject` action, one per CPU.
/// key: `u32` 0; value: `u64`; capacity 1.
#[map(name = "MG_RST_LIMIT")]
pub static RST_LIMIT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Budget outcomes per class. key: `u32` `class_counter_slot(class, outcome)`;
/// value: `u64` per CPU; capacity: `CLASS_COUNTER_SLOTS` (32).
#[map(name = "MG_CLASS_CNT")]
pub static CLASS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CLASS_COUNTER_SLOTS, 0);

/// What sock_ops did. key: `u32` `AccountingEvent`; value: `u64` per CPU;
/// capacity: `ACCOUNTING_SLOTS` (8).
#[map(name = "MG_ACCOUNTING")]
pub static ACCOUNTING: PerCpuArray<u64> = PerCpuArray::with_max_entries(ACCOUNTING_SLOTS, 0);

/// The MX allowlist (MX-only mode: the only sources port 25 accepts), IPv4.
/// key: LPM prefix length (host order) + address (network order); value: `u8` 1;
/// capacity: `LIST_MAP_CAPACITY` (2097152).
#[map(name = "MG_MX_ALLOW_V4")]
pub static MX_ALLOW_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(LIST_MAP_CAPACITY, 0);

/// The MX allowlist, IPv6; as `MX_ALLOW_V4` with 16-byte addresses.
#[map(name = "MG_MX_ALLOW_V6")]
pub static MX_ALLOW_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(LIST_MAP_CAPACITY, 0);

/// The block list (every packet from these sources is dropped), IPv4.
/// key: LPM prefix length (host order) + address (network order);
/// value: `BlockEntry` (expiry, host order); capacity: `LIST_MAP_CAPACITY` (2097152).
#[map(name = "MG_BLOCK_V4")]
pub static BLOCK_V4: LpmTrie<[u8; 4], BlockEntry> = LpmTrie::with_max_entries(LIST_MAP_CAPACITY, 0);

/// The block list, IPv6; as `BLOCK_V4` with 16-byte addresses.
#[map(name = "MG_BLOCK_V6")]
pub static BLOCK_V6: LpmTrie<[u8; 16], BlockEntry> =
    LpmTrie::with_max_entries(LIST_MAP_CAPACITY, 0);

/// The IPv4 list index (guard-common's `list_index`), level 16: one entry per /16 for each
/// list and generation. key: `u32` `v4_slot_16(area, address)`; value: `u32` `INDEX_NONE`,
/// `INDEX_COVERED` or `INDEX_CHILD + block` (host order); capacity `V4_INDEX_16_ENTRIES`
/// (393216). Written by userspace through mmap.
#[map(name = "MG_V4_INDEX_16")]
pub static V4_INDEX_16: Array<u32> = Array::with_max_entries(V4_INDEX_16_ENTRIES, BPF_F_MMAPABLE);

/// Level 24: blocks of 256 entries, one per /24 of a partial /16. key: `u32`
/// `v4_slot_24(area, block, address)`; value: `u32` as level 16, `INDEX_CHILD + bitmap`;
/// capacity `V4_INDEX_24_ENTRIES` (1572864).
#[map(name = "MG_V4_INDEX_24")]
pub static V4_INDEX_24: Array<u32> = Array::with_max_entries(V4_INDEX_24_ENTRIES, BPF_F_MMAPABLE);

/// Level 32: 256-bit bitmaps of partial /24s, four words each. key: `u32`
/// `v4_slot_32(area, bitmap, address).0`; value: `u64`, bit `address & 63` set for an address
/// in the list (host order); capacity `V4_INDEX_32_ENTRIES` (393216).
#[map(name = "MG_V4_INDEX_32")]
pub static V4_INDEX_32: Array<u64> = Array::with_max_entries(V4_INDEX_32_ENTRIES, BPF_F_MMAPABLE);

/// The IPv6 list index (guard-common's `list_index`): the prefix table, a bucketed cuckoo hash
/// of every indexed IPv6 list's prefixes. key: `u32` bucket, one of the two `v6_buckets` of a
/// prefix; value: `V6Bucket` (64 bytes), three `V6Slot`s {`v6_slot_tag`: list, length and
/// fingerprint, 0 when free; the address masked to the length as four `u32` words in host
/// order}; capacity: `v6_buckets_for(lists.ipv6_index_capacity)` buckets (default 65536), set
/// at load. Written by userspace through mmap.
#[map(name = "MG_V6_TABLE")]
pub static V6_TABLE: Array<V6Bucket> = Array::with_max_entries(V6_DEFAULT_BUCKETS, BPF_F_MMAPABLE);

/// The distinct prefix lengths of each indexed IPv6 list. key: `u32` `index_area(list,
/// generation)`; value: `V6Lengths` (numbers and masks host order); capacity
/// `V6_LENGTH_TABLES` (6).
#[map(name = "MG_V6_LENGTHS")]
pub static V6_LENGTHS: Array<V6Lengths> = Array::with_max_entries(V6_LENGTH_TABLES, 0);

/// The settle points' slot (`settle.rs`): a packet's layout, written and read back at once.
/// key: `u32` 0; value: `u64` layout (`settle::Scratch`), one per CPU; capacity 1.
/// Never pinned: it holds nothing between packets.
#[map(name = "MG_SCRATCH")]
pub static SCRATCH: Scratch = PerCpuArray::with_max_entries(1, 0);

/// The SYN cookie's work area (`syncookie.rs`) for a SYN with options: its headers and what
/// its options offered.
/// key: `u32` 0; value: `CookieScan`, one per CPU; capacity 1. Never pinned: it holds nothing
/// between packets.
#[map(name = "MG_COOKIE_SCAN")]
pub static COOKIE_SCAN: PerCpuArray<CookieScan> = PerCpuArray::with_max_entries(1, 0);

/// The ports whose listeners accept the cookies XDP makes from a SYN's headers alone
/// (`bpf_tcp_raw_gen_syncookie_*`, `FEATURE_RAW_SYN_COOKIE`). The kernel accepts a cookie ACK
/// only on a listener that sent a cookie itself less than two minutes before; the daemon makes
/// each mail listener do so while cookies are needed (`daemon::cookie_marks`) and writes here
/// until when that holds.
/// key: `u32` TCP port (host order); value: `u64` CLOCK_MONOTONIC ns until which XDP may answer
/// a SYN to the port with a cookie, 0 never (host order); capacity: `COOKIE_PORT_ENTRIES`
/// (65536, every port).
#[map(name = "MG_COOKIE_PORTS")]
pub static COOKIE_PORTS: Array<u64> = Array::with_max_entries(COOKIE_PORT_ENTRIES, 0);

// The names above must be the ones userspace looks up.
const _: () = {
    assert!(const_str_eq(names::COUNTERS, "MG_COUNTERS"));
    assert!(const_str_eq(names::SETTINGS, "MG_SETTINGS"));
    assert!(const_str_eq(names::PORT_RULES, "MG_PORT_RULES"));
    assert!(const_str_eq(names::OPEN_SOURCES_V4, "MG_OPEN_SRC_V4"));
    assert!(const_str_eq(names::OPEN_SOURCES_V6, "MG_OPEN_SRC_V6"));
    assert!(const_str_eq(names::BUDGETS, "MG_BUDGETS"));
    assert!(const_str_eq(names::BUDGET_SETTINGS, "MG_BUDGET_CFG"));
    assert!(const_str_eq(names::SOURCES, "MG_SOURCES"));
    assert!(const_str_eq(names::CONNECTIONS, "MG_CONNS"));
    assert!(const_str_eq(names::SOCKETS, "MG_SOCKETS"));
    assert!(const_str_eq(names::VERIFIED, "MG_VERIFIED"));
    assert!(const_str_eq(names::TRUSTED_V4, "MG_TRUSTED_V4"));
    assert!(const_str_eq(names::TRUSTED_V6, "MG_TRUSTED_V6"));
    assert!(const_str_eq(names::SYN_CEILING, "MG_CEILING"));
    assert!(const_str_eq(names::RST_LIMIT, "MG_RST_LIMIT"));
    assert!(const_str_eq(names::CLOCK, "MG_CLOCK"));
    assert!(const_str_eq(names::CLASS_COUNTERS, "MG_CLASS_CNT"));
    assert!(const_str_eq(names::ACCOUNTING, "MG_ACCOUNTING"));
    assert!(const_str_eq(names::MX_ALLOW_V4, "MG_MX_ALLOW_V4"));
    assert!(const_str_eq(names::MX_ALLOW_V6, "MG_MX_ALLOW_V6"));
    assert!(const_str_eq(names::BLOCK_V4, "MG_BLOCK_V4"));
    assert!(const_str_eq(names::BLOCK_V6, "MG_BLOCK_V6"));
    assert!(const_str_eq(names::V4_INDEX_16, "MG_V4_INDEX_16"));
    assert!(const_str_eq(names::V4_INDEX_24, "MG_V4_INDEX_24"));
    assert!(const_str_eq(names::V4_INDEX_32, "MG_V4_INDEX_32"));
    assert!(const_str_eq(names::V6_TABLE, "MG_V6_TABLE"));
    assert!(const_str_eq(names::V6_LENGTHS, "MG_V6_LENGTHS"));
    assert!(const_str_eq(names::COOKIE_PORTS, "MG_COOKIE_PORTS"));
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
