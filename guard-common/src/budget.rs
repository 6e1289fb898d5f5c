//! Per-source budgets: keys and values of the budget maps shared by the XDP program (which
//! charges new connections), the sock_ops program (which counts concurrent connections), and
//! userspace (which configures them and reads them for `mailguard top`).

/// A rate as GCRA (generic cell rate algorithm) parameters: one event per `interval_ns`, with
/// up to `burst` events at once (`tolerance_ns = (burst - 1) * interval_ns`). `interval_ns == 0`
/// means unlimited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gcra {
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Gcra>() == 16);

impl Gcra {
    pub const UNLIMITED: Gcra = Gcra {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    /// `per_second` events per second (fractions allowed), bursts of up to `burst`.
    pub fn new(per_second: f64, burst: u32) -> Gcra {
        if per_second <= 0.0 {
            return Gcra::UNLIMITED;
        }
        let interval_ns = ((1e9 / per_second) as u64).max(1);
        Gcra {
            interval_ns,
            tolerance_ns: interval_ns * (burst.max(1) as u64 - 1),
        }
    }

    #[inline(always)]
    pub const fn is_unlimited(&self) -> bool {
        self.interval_ns == 0
    }

    /// One event at `now_ns` against the theoretical arrival time `tat`: returns the new `tat`
    /// when the event conforms, `None` when it exceeds the rate.
    #[inline(always)]
    pub const fn admit(&self, tat: u64, now_ns: u64) -> Option<u64> {
        let start = if tat > now_ns { tat } else { now_ns };
        if start - now_ns > self.tolerance_ns {
            None
        } else {
            Some(start + self.interval_ns)
        }
    }
}

/// `ClassBudget::flags`: the class has a budget (rate, cap or both); without it, new
/// connections to its ports are only counted.
pub const BUDGET_ACTIVE: u32 = 1 << 0;
/// `ClassBudget::flags`: refuse over-budget connections with a TCP RST instead of dropping.
pub const BUDGET_REJECT: u32 = 1 << 1;

/// The budget of one service class; value of the `BUDGETS` array map, indexed by `MailClass`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassBudget {
    /// New connections per source.
    pub rate: Gcra,
    /// Concurrent connections per source; 0 means unlimited.
    pub max_connections: u32,
    /// `BUDGET_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<ClassBudget>() == 24);

/// Capacity of the `BUDGETS` array: one slot per `MailClass` value.
pub const CLASS_SLOTS: u32 = 4;

/// Global budget settings; the single entry of the `BUDGET_SETTINGS` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetSettings {
    /// SYNs to mail ports per CPU from sources never seen completing a connection.
    pub syn_ceiling: Gcra,
    /// RSTs sent per CPU by the `reject` action.
    pub reject_limit: Gcra,
    /// Network namespace (cookie) whose connections sock_ops counts; 0 counts all.
    pub netns_cookie: u64,
    /// Masks applied to source addresses: the source prefix (e.g. /32 for IPv4, /64 for IPv6).
    pub mask_v4: [u8; 4],
    pub mask_v6: [u8; 16],
    /// `TRUSTED_*` bits: which trusted tries have entries (empty ones are not looked up).
    pub flags: u32,
    /// Buckets of the `SOURCES` table (`source_buckets(budgets.tracked_sources)`): the range
    /// the source hash is mapped onto. A value larger than the map makes lookups fail (fails
    /// open).
    pub source_buckets: u32,
    /// Zero.
    pub reserved: u32,
}

/// `BudgetSettings::flags`: `TRUSTED_V4` has entries.
pub const TRUSTED_V4_USED: u32 = 1 << 0;
/// `BudgetSettings::flags`: `TRUSTED_V6` has entries.
pub const TRUSTED_V6_USED: u32 = 1 << 1;
const _: () = assert!(core::mem::size_of::<BudgetSettings>() == 72);

/// Address family tags in `SourceKey::family`.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A source prefix charged with connections, per class. Key of `SOURCES` slots, `CONNECTIONS`
/// and (with class 0) `VERIFIED`. Aligned to 4 bytes so that it hashes and compares as five
/// 32-bit words (see `sources`).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    /// Source address masked to the source prefix, network byte order; IPv4 uses the first 4
    /// bytes and leaves the rest zero.
    pub addr: [u8; 16],
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// A `MailClass` value; 0 in `VERIFIED`.
    pub class: u8,
    pub reserved: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<SourceKey>() == 20);

impl SourceKey {
    /// `class` is a `MailClass` value.
    pub fn v4(addr: [u8; 4], mask: [u8; 4], class: u8) -> SourceKey {
        let mut a = [0u8; 16];
        for i in 0..4 {
            a[i] = addr[i] & mask[i];
        }
        SourceKey {
            addr: a,
            family: FAMILY_V4,
            class,
            reserved: [0; 2],
        }
    }

    /// `class` is a `MailClass` value.
    pub fn v6(addr: [u8; 16], mask: [u8; 16], class: u8) -> SourceKey {
        let mut a = [0u8; 16];
        for i in 0..16 {
            a[i] = addr[i] & mask[i];
        }
        SourceKey {
            addr: a,
            family: FAMILY_V6,
            class,
            reserved: [0; 2],
        }
    }
}

/// What XDP keeps per source and class, in its `SourceSlot` of the `SOURCES` table (32 bytes,
/// so that two slots and their bucket's connection count fill two cache lines).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// GCRA theoretical arrival time of the next SYN, in `bpf_ktime_get_coarse_ns` time
    /// (CLOCK_MONOTONIC_COARSE).
    pub tat_ns: u64,
    /// Time (as `tat_ns`) of the first SYN since the source was tracked.
    pub first_ns: u64,
    /// Time (as `tat_ns`) of the last SYN.
    pub last_ns: u64,
    /// SYNs seen, saturating (approximate under concurrency: not atomic).
    pub syns: u32,
    /// SYNs refused by the budget, saturating (approximate, as `syns`).
    pub refused: u32,
}
const _: () = assert!(core::mem::size_of::<SourceState>() == 32);

/// Prefix masks (network byte order) for a source prefix length.
pub fn prefix_mask<const N: usize>(prefix_len: u32) -> [u8; N] {
    let mut mask = [0u8; N];
    for (i, byte) in mask.iter_mut().enumerate() {
        let bits = prefix_len.saturating_sub(8 * i as u32).min(8);
        *byte = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    mask
}

/// Budget outcomes counted per class (`CLASS_COUNTERS[class * CLASS_OUTCOMES + outcome]`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetOutcome {
    /// Within budget: passed.
    Within = 0,
    /// From a trusted source: passed without a budget.
    Trusted = 1,
    /// The source's rate state could not be stored: passed as `mail_new` (fails open).
    Untracked = 2,
    /// Refused: the global SYN ceiling for unverified sources.
    Ceiling = 3,
    /// Refused: the source's new-connection rate.
    Rate = 4,
    /// Refused: the source's concurrent connections.
    Cap = 5,
    /// A refusal answered with a TCP RST.
    RstSent = 6,
    /// A refusal that wanted a RST, dropped instead: the RST rate limit was reached.
    RstLimited = 7,
}

pub const CLASS_OUTCOMES: u32 = 8;

impl BudgetOutcome {
    pub const ALL: [BudgetOutcome; CLASS_OUTCOMES as usize] = [
        BudgetOutcome::Within,
        BudgetOutcome::Trusted,
        BudgetOutcome::Untracked,
        BudgetOutcome::Ceiling,
        BudgetOutcome::Rate,
        BudgetOutcome::Cap,
        BudgetOutcome::RstSent,
        BudgetOutcome::RstLimited,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            BudgetOutcome::Within => "within",
            BudgetOutcome::Trusted => "trusted",
            BudgetOutcome::Untracked => "untracked",
            BudgetOutcome::Ceiling => "ceiling",
            BudgetOutcome::Rate => "rate",
            BudgetOutcome::Cap => "cap",
            BudgetOutcome::RstSent => "rst_sent",
            BudgetOutcome::RstLimited => "rst_limited",
        }
    }
}

/// Slot of a (class, outcome) pair in `CLASS_COUNTERS`.
#[inline(always)]
pub const fn class_counter_slot(class: u8, outcome: BudgetOutcome) -> u32 {
    (class as u32 % CLASS_SLOTS) * CLASS_OUTCOMES + outcome as u32
}

pub const CLASS_COUNTER_SLOTS: u32 = CLASS_SLOTS * CLASS_OUTCOMES;

/// Tracking events (sock_ops counting, XDP rate state), counted in `ACCOUNTING` (per CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountingEvent {
    /// A passive connection to a mail port was counted.
    Counted = 0,
    /// A counted connection closed and was uncounted.
    Uncounted = 1,
    /// Not counted: the socket table (`SOCKETS`) was full. Fails open.
    SocketTableFull = 2,
    /// Not counted: the connection-count table (`CONNECTIONS`) was full. Fails open.
    CountTableFull = 3,
    /// A count found at zero at close (lost to a race with a table clean-up): left at zero.
    UnderflowAvoided = 4,
    /// XDP started tracking the rate of a new source.
    SourceTracked = 5,
    /// Not counted: the kernel refused close callbacks for the socket. Fails open.
    NoCloseCallback = 6,
    /// A new source took the slot of another (both slots of its bucket were in use): the other
    /// is forgotten and starts again with a full bucket (fails open). Many of these mean
    /// `budgets.tracked_sources` is too small for the sources seen.
    SourceEvicted = 7,
}

pub const ACCOUNTING_SLOTS: u32 = 8;

impl AccountingEvent {
    pub const ALL: [AccountingEvent; 8] = [
        AccountingEvent::Counted,
        AccountingEvent::Uncounted,
        AccountingEvent::SocketTableFull,
        AccountingEvent::CountTableFull,
        AccountingEvent::UnderflowAvoided,
        AccountingEvent::SourceTracked,
        AccountingEvent::NoCloseCallback,
        AccountingEvent::SourceEvicted,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            AccountingEvent::Counted => "counted",
            AccountingEvent::Uncounted => "uncounted",
            AccountingEvent::SocketTableFull => "socket_table_full",
            AccountingEvent::CountTableFull => "count_table_full",
            AccountingEvent::UnderflowAvoided => "underflow_avoided",
            AccountingEvent::SourceTracked => "source_tracked",
            AccountingEvent::NoCloseCallback => "no_close_callback",
            AccountingEvent::SourceEvicted => "source_evicted",
        }
    }
}

/// A connection count as read by XDP: values with the top bit set (a decrement that raced a
/// clean-up) count as zero, so that a source is never locked out by a lost decrement.
#[inline(always)]
pub const fn effective_count(raw: u32) -> u32 {
    if raw & 0x8000_0000 != 0 { 0 } else { raw }
}

/// Default capacities of the tracking maps (configurable).
pub const DEFAULT_TRACKED_SOURCES: u32 = 65_536;
pub const DEFAULT_TRACKED_CONNECTIONS: u32 = 65_536;
/// Capacity of `VERIFIED`: sources seen completing a connection.
pub const VERIFIED_ENTRIES: u32 = 65_536;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MailClass;

    #[test]
    fn gcra_allows_burst_then_rate() {
        let g = Gcra::new(10.0, 3); // every 100 ms, bursts of 3
        assert_eq!(g.interval_ns, 100_000_000);
        let mut tat = 0;
        let t0 = 1_000_000_000;
        for i in 0..3 {
            tat = g
                .admit(tat, t0)
                .unwrap_or_else(|| panic!("burst event {i}"));
        }
        assert_eq!(
            g.admit(tat, t0),
            None,
            "the fourth at once exceeds the burst"
        );
        assert!(
            g.admit(tat, t0 + 100_000_000).is_some(),
            "one interval later one more fits"
        );
        assert!(Gcra::new(0.0, 5).is_unlimited());
        let slow = Gcra::new(0.5, 1); // one every 2 s, no burst
        let tat = slow.admit(0, t0).unwrap();
        assert_eq!(slow.admit(tat, t0 + 1_999_999_999), None);
        assert!(slow.admit(tat, t0 + 2_000_000_000).is_some());
    }

    #[test]
    fn masks_and_keys() {
        assert_eq!(prefix_mask::<4>(32), [255; 4]);
        assert_eq!(prefix_mask::<4>(24), [255, 255, 255, 0]);
        assert_eq!(prefix_mask::<4>(20), [255, 255, 240, 0]);
        let m6 = prefix_mask::<16>(64);
        assert_eq!(&m6[..8], &[255; 8]);
        assert_eq!(&m6[8..], &[0; 8]);
        let a = SourceKey::v6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            m6,
            MailClass::Mx as u8,
        );
        let b = SourceKey::v6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
            m6,
            MailClass::Mx as u8,
        );
        let c = SourceKey::v6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2],
            m6,
            MailClass::Mx as u8,
        );
        assert_eq!(a, b, "two addresses in one /64 share a key");
        assert_ne!(a, c, "different /64s do not");
        let k4 = SourceKey::v4([198, 18, 0, 2], [255; 4], MailClass::Submission as u8);
        assert_eq!(&k4.addr[..5], &[198, 18, 0, 2, 0]);
        assert_eq!((k4.family, k4.class), (FAMILY_V4, 2));
    }

    #[test]
    fn counts_with_the_top_bit_are_zero() {
        assert_eq!(effective_count(3), 3);
        assert_eq!(effective_count(u32::MAX), 0);
        assert_eq!(
            class_counter_slot(MailClass::Mailbox as u8, BudgetOutcome::RstLimited),
            3 * 8 + 7
        );
    }
}
