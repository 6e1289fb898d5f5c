//! Per-source budgets, charged for every new connection (bare SYN) to a mail port:
//!
//! 1. trusted sources pass without a budget;
//! 2. a source never seen completing a connection is held to the global SYN ceiling (a
//!    spoofed flood has a new source per packet; real senders complete handshakes, and sock_ops
//!    flags their slots; `Ceiling` says when `VERIFIED` is read);
//! 3. a source holding its class's maximum of concurrent connections is refused (counts kept
//!    exact by the sock_ops program, read only when its bucket's count, the connections of
//!    every source of the bucket, has reached the cap: below, it proves the source below too);
//! 4. a source over its class's new-connection rate (GCRA) is refused.
//!
//! Refused means dropped, or with `action = "reject"` answered with a TCP RST while the
//! global RST rate limit allows. Every outcome is counted per class.
//!
//! A source's rate state lives in its slot of the `SOURCES` table (sources.rs): a known source
//! costs a hash, one bucket (two cache lines) and two compares, no hash-map lookup; a new one
//! claims a slot of the same bucket, whose connection count is in the same memory.
//!
//! Time is CLOCK_MONOTONIC_COARSE (one tick; clock.rs reads it for a load per packet): far
//! cheaper than the precise clock, and its steps do not accumulate into the rates.

use aya_ebpf::{
    maps::{PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use guard_common::{
    BUDGET_ACTIVE, BUDGET_REJECT, BudgetOutcome, BudgetSettings, COOKIES_ALWAYS, COOKIES_OFF,
    ClassBudget, FAMILY_V4, FAMILY_V6, Gcra, INDEX_TRUSTED, Reason, SETTING_MONITOR, SLOT_VERIFIED,
    Settings, SourceKey, SourceSlot, SourceState, TRUSTED_V4_USED, TRUSTED_V6_USED,
    class_counter_slot, effective_count, v6_words,
};

use crate::{
    clock::coarse_ns,
    lists::{v4_indexed, v6_indexed},
    maps::{
        BUDGET_SETTINGS, BUDGETS, CLASS_COUNTERS, CONNECTIONS, RST_LIMIT, SYN_CEILING, TRUSTED_V4,
        TRUSTED_V6, VERIFIED,
    },
    parse::{Ip, bytes},
    sources::Bucket,
};

/// Charges a new connection to `class` from the packet's source; returns its reason. `settings`
/// are the ones the caller read for this packet (the trusted list's index, monitor mode).
#[inline(always)]
pub fn charge(ctx: &XdpContext, ip: &Ip, class: u8, settings: &Settings) -> Result<Reason, Reason> {
    let Some(budget) = BUDGETS.get(class as u32) else {
        return Ok(Reason::MailNew);
    };
    if budget.flags & BUDGET_ACTIVE == 0 {
        return Ok(counted(class, BudgetOutcome::Within, Reason::MailNew));
    }
    let Some(cfg) = BUDGET_SETTINGS.get(0) else {
        return Ok(Reason::MailNew);
    };
    let (key, trusted) = source(ctx, ip, cfg, class, settings.index)?;
    if trusted {
        return Ok(counted(
            class,
            BudgetOutcome::Trusted,
            Reason::TrustedSource,
        ));
    }
    let now = coarse_ns();
    // With SYN cookies, a source not known to have completed a connection is answered before
    // its bucket of the rate table is read: a spoofed SYN touches no table that grows with the
    // sources tracked (`VERIFIED`, asked here, has a size of its own).
    let cookies = settings.cookie_mode();
    if cookies == COOKIES_ALWAYS && !listed_verified(&key) {
        return Ok(counted(class, BudgetOutcome::Ceiling, Reason::SynCookie));
    }
    let Some(bucket) = Bucket::of(key.slot_hash(), cfg.source_buckets) else {
        // Fails open: a table smaller than the settings say (a configuration mismatch).
        return Ok(counted(class, BudgetOutcome::Untracked, Reason::MailNew));
    };
    // The verified sources are looked up (when the ceiling is spent) before the bucket's slots
    // are compared, so that the two memory reads overlap.
    let ceiling = Ceiling::ask(&key, cfg, now);
    if cookies != COOKIES_OFF && ceiling.spent_and_unlisted() {
        // Never a RST here: the source is most likely spoofed. A cookie proves it is not.
        return Ok(counted(class, BudgetOutcome::Ceiling, Reason::SynCookie));
    }
    let found = bucket.find(&key);

    let flags = match ceiling.admit(found) {
        Some(flags) => flags,
        None => return Ok(counted(class, BudgetOutcome::Ceiling, Reason::SynCeiling)),
    };

    let slot = found.unwrap_or_else(|| bucket.claim(&key, flags, now));
    // SAFETY: `slot` points into a map value that stays valid while the program runs; the
    // counters are statistics, updated without atomics (a lost update is acceptable).
    let state = unsafe {
        (*slot).state.syns = (*slot).state.syns.saturating_add(1);
        (*slot).state.last_ns = now;
        &raw mut (*slot).state
    };

    if budget.max_connections != 0
        && bucket.may_be_at_cap(budget.max_connections)
        && let Some(count) = CONNECTIONS.get_ptr(key)
    {
        // SAFETY: a map value pointer, valid while the program runs.
        if effective_count(unsafe { *count }) >= budget.max_connections {
            return Ok(refuse_counted(
                state,
                ip,
                class,
                budget,
                settings,
                BudgetOutcome::Cap,
            ));
        }
    }

    if !budget.rate.is_unlimited() {
        // SAFETY: as above.
        let tat = unsafe { (*state).tat_ns };
        match budget.rate.admit(tat, now) {
            Some(next) => unsafe { (*state).tat_ns = next },
            None => {
                return Ok(refuse_counted(
                    state,
                    ip,
                    class,
                    budget,
                    settings,
                    BudgetOutcome::Rate,
                ));
            }
        }
    }
    Ok(counted(class, BudgetOutcome::Within, Reason::MailNew))
}

/// With SYN cookies on, an ACK to a mail port may answer a cookie, which the kernel turns into
/// a connection although its SYN was never charged to a budget (the SYN of a source not known
/// to have completed a connection is answered, not charged). Such an ACK from a source holding
/// its class's maximum of connections is dropped. Most ACKs cost one load: the bucket's sum of
/// connections proves the source below its cap; only at the cap is its exact count read, and
/// the kernel asked whether the ACK belongs to a connection it has (then it passes).
#[inline(always)]
pub fn cookie_ack(
    ctx: &XdpContext,
    ip: &Ip,
    class: u8,
    settings: &Settings,
    ports: ([u8; 2], [u8; 2]),
) -> Result<Reason, Reason> {
    let Some(budget) = BUDGETS.get(class as u32) else {
        return Ok(Reason::MailOther);
    };
    if budget.flags & BUDGET_ACTIVE == 0 || budget.max_connections == 0 {
        return Ok(Reason::MailOther);
    }
    let Some(cfg) = BUDGET_SETTINGS.get(0) else {
        return Ok(Reason::MailOther);
    };
    let (key, trusted) = source(ctx, ip, cfg, class, settings.index)?;
    if trusted {
        return Ok(Reason::MailOther);
    }
    let Some(bucket) = Bucket::of(key.slot_hash(), cfg.source_buckets) else {
        return Ok(Reason::MailOther);
    };
    if !bucket.may_be_at_cap(budget.max_connections) {
        return Ok(Reason::MailOther);
    }
    let Some(count) = CONNECTIONS.get_ptr(key) else {
        return Ok(Reason::MailOther);
    };
    // SAFETY: a map value pointer, valid while the program runs.
    if effective_count(unsafe { *count }) < budget.max_connections {
        return Ok(Reason::MailOther);
    }
    Ok(
        if crate::sockets::tcp_connection_exists(ctx, ip, ports.0, ports.1)? {
            Reason::MailOther
        } else {
            Reason::SynCookieAckCapped
        },
    )
}

/// Whether `key`'s source is in `VERIFIED` (it has completed a connection).
#[inline(always)]
fn listed_verified(key: &SourceKey) -> bool {
    let class0 = SourceKey { class: 0, ..*key };
    VERIFIED.get_ptr(class0).is_some()
}

/// The global SYN ceiling, which holds back only sources never seen completing a connection.
/// A slot flagged verified (by sock_ops at an established connection, or here) answers at once.
/// Any other source spends a ceiling token while there are any, and `VERIFIED` is read only
/// when the ceiling is spent: no SYN costs a lookup there until a flood drains the ceiling, and a
/// verified source is still never refused (its slot is then flagged).
///
/// `ask` reads the ceiling's state, and `VERIFIED` when it is spent, before the caller reads
/// the source's bucket: under a spoofed flood every SYN misses both in memory, and the two
/// reads then overlap instead of following each other.
struct Ceiling {
    limit: Limit,
    /// Whether the source is in `VERIFIED` (looked up only when the ceiling is spent).
    listed: bool,
}

impl Ceiling {
    #[inline(always)]
    fn ask(key: &SourceKey, cfg: &BudgetSettings, now: u64) -> Ceiling {
        let limit = Limit::now(&SYN_CEILING, &cfg.syn_ceiling, now);
        let listed = matches!(limit, Limit::Spent) && listed_verified(key);
        Ceiling { limit, listed }
    }

    /// The ceiling is spent and the source is not in `VERIFIED`: its SYN would be refused
    /// unless its slot is flagged (a source `VERIFIED` has forgotten), which a cookie answer
    /// does not read.
    #[inline(always)]
    fn spent_and_unlisted(&self) -> bool {
        matches!(self.limit, Limit::Spent) && !self.listed
    }

    /// `None` refuses the SYN, `Some` admits it with the flags for a new slot; `found` is the
    /// source's slot, if it has one.
    #[inline(always)]
    fn admit(self, found: Option<*mut SourceSlot>) -> Option<u32> {
        if let Limit::Off = self.limit {
            return Some(0);
        }
        if let Some(s) = found {
            // SAFETY: a map value pointer, valid while the program runs.
            if unsafe { (*s).flags } & SLOT_VERIFIED != 0 {
                return Some(SLOT_VERIFIED);
            }
        }
        if self.limit.take() {
            return Some(0);
        }
        if !self.listed {
            return None;
        }
        if let Some(s) = found {
            // SAFETY: as above.
            unsafe { (*s).flags |= SLOT_VERIFIED };
        }
        Some(SLOT_VERIFIED)
    }
}

/// The source key of the packet, and whether the source is trusted. The key is built as
/// words (address words masked by the source prefix), the form it is hashed and compared in.
#[inline(always)]
fn source(
    ctx: &XdpContext,
    ip: &Ip,
    cfg: &BudgetSettings,
    class: u8,
    index: u32,
) -> Result<(SourceKey, bool), Reason> {
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    if ip.v6 {
        let a = bytes::<16>(ctx, ip.src_off())?;
        let m = &cfg.mask_v6;
        let key = SourceKey::from_words([
            word(&a[0..4]) & word(&m[0..4]),
            word(&a[4..8]) & word(&m[4..8]),
            word(&a[8..12]) & word(&m[8..12]),
            word(&a[12..16]) & word(&m[12..16]),
            SourceKey::tag_word(FAMILY_V6, class),
        ]);
        let trusted = cfg.flags & TRUSTED_V6_USED != 0
            && match v6_indexed(INDEX_TRUSTED, index, &v6_words(a)) {
                Some(found) => found,
                None => TRUSTED_V6.get(Key::new(128, *a)).is_some(),
            };
        Ok((key, trusted))
    } else {
        let a = bytes::<4>(ctx, ip.src_off())?;
        let key = SourceKey::from_words([
            word(a) & word(&cfg.mask_v4),
            0,
            0,
            0,
            SourceKey::tag_word(FAMILY_V4, class),
        ]);
        let trusted = cfg.flags & TRUSTED_V4_USED != 0
            && match v4_indexed(INDEX_TRUSTED, index, *a) {
                Some(found) => found,
                None => TRUSTED_V4.get(Key::new(32, *a)).is_some(),
            };
        Ok((key, trusted))
    }
}

/// A per-CPU GCRA limit (the SYN ceiling, the RST limit) as it stands for one event now.
enum Limit {
    /// No limit (or its state cannot be read; it is an array slot, so it always can).
    Off,
    /// Within the rate: the limiter's state and its next value once the event is taken.
    Token(*mut u64, u64),
    /// Over the rate.
    Spent,
}

impl Limit {
    #[inline(always)]
    fn now(map: &PerCpuArray<u64>, gcra: &Gcra, now: u64) -> Limit {
        if gcra.is_unlimited() {
            return Limit::Off;
        }
        let Some(tat) = map.get_ptr_mut(0) else {
            return Limit::Off;
        };
        // SAFETY: this CPU's slot, used only by this CPU while the program runs.
        match gcra.admit(unsafe { *tat }, now) {
            Some(next) => Limit::Token(tat, next),
            None => Limit::Spent,
        }
    }

    /// Takes the event; false when over the rate.
    #[inline(always)]
    fn take(self) -> bool {
        match self {
            Limit::Off => true,
            Limit::Token(tat, next) => {
                // SAFETY: as in `now`.
                unsafe { *tat = next };
                true
            }
            Limit::Spent => false,
        }
    }
}

/// A refused new connection, counted in its source's state: see `refuse`.
#[inline(always)]
fn refuse_counted(
    state: *mut SourceState,
    ip: &Ip,
    class: u8,
    budget: &ClassBudget,
    settings: &Settings,
    outcome: BudgetOutcome,
) -> Reason {
    // SAFETY: a map value pointer, valid while the program runs (statistics, not atomic).
    unsafe { (*state).refused = (*state).refused.saturating_add(1) };
    refuse(ip, class, budget, settings, outcome)
}

/// A refused new connection: dropped, or answered with a RST when the class says reject, the
/// packet can be turned into one, and the RST limit allows. (A call of its own: five arguments,
/// the most a BPF call takes.)
#[inline(never)]
fn refuse(
    ip: &Ip,
    class: u8,
    budget: &ClassBudget,
    settings: &Settings,
    outcome: BudgetOutcome,
) -> Reason {
    let (drop, rejected) = match outcome {
        BudgetOutcome::Cap => (Reason::ConnectionCap, Reason::ConnectionCapRejected),
        _ => (Reason::SynRate, Reason::SynRateRejected),
    };
    if budget.flags & BUDGET_REJECT == 0 || !crate::reject::can_answer(ip) {
        return counted(class, outcome, drop);
    }
    count_class(class, outcome);
    // Monitor mode sends nothing, so it spends nothing of the RST limit.
    let monitor = settings.has(SETTING_MONITOR);
    let allowed = monitor
        || match BUDGET_SETTINGS.get(0) {
            Some(cfg) => Limit::now(&RST_LIMIT, &cfg.reject_limit, coarse_ns()).take(),
            None => false,
        };
    if allowed {
        counted(class, BudgetOutcome::RstSent, rejected)
    } else {
        counted(class, BudgetOutcome::RstLimited, Reason::RejectLimited)
    }
}

#[inline(always)]
fn count_class(class: u8, outcome: BudgetOutcome) {
    if let Some(c) = CLASS_COUNTERS.get_ptr_mut(class_counter_slot(class, outcome)) {
        // SAFETY: a per-CPU slot, written only by this CPU while the program runs.
        unsafe { *c += 1 };
    }
}

/// Counts `outcome` for `class` and returns `reason`.
#[inline(always)]
fn counted(class: u8, outcome: BudgetOutcome, reason: Reason) -> Reason {
    count_class(class, outcome);
    reason
}
