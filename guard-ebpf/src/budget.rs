//! Per-source budgets, charged for every new connection (bare SYN) to a mail port:
//!
//! 1. trusted sources pass without a budget;
//! 2. a source never seen completing a connection is held to the global SYN ceiling (a
//!    spoofed flood has a new source per packet; real senders complete handshakes);
//! 3. a source holding its class's maximum of concurrent connections is refused (counts kept
//!    exact by the sock_ops program);
//! 4. a source over its class's new-connection rate (GCRA) is refused.
//!
//! Refused means dropped, or with `action = "reject"` answered with a TCP RST while the
//! global RST rate limit allows. Every outcome is counted per class.
//!
//! Time is `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE, one tick): far cheaper than the
//! precise clock, and its steps do not accumulate into the rates.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key,
    programs::XdpContext,
};
use guard_common::{
    AccountingEvent, BUDGET_ACTIVE, BUDGET_REJECT, BudgetOutcome, BudgetSettings, ClassBudget,
    FAMILY_V4, FAMILY_V6, Reason, SETTING_MONITOR, SourceKey, SourceState, TRUSTED_V4_USED,
    TRUSTED_V6_USED, class_counter_slot, effective_count,
};

use crate::{
    maps::{
        ACCOUNTING, BUDGET_SETTINGS, BUDGETS, CLASS_COUNTERS, CONNECTIONS, RST_LIMIT, SOURCES,
        SYN_CEILING, TRUSTED_V4, TRUSTED_V6, VERIFIED,
    },
    parse::{Ip, bytes},
    policy::settings,
};

/// Charges a new connection to `class` from the packet's source; returns its reason.
#[inline(always)]
pub fn charge(ctx: &XdpContext, ip: &Ip, class: u8) -> Result<Reason, Reason> {
    let Some(budget) = BUDGETS.get(class as u32) else {
        return Ok(Reason::MailNew);
    };
    if budget.flags & BUDGET_ACTIVE == 0 {
        return Ok(counted(class, BudgetOutcome::Within, Reason::MailNew));
    }
    let Some(cfg) = BUDGET_SETTINGS.get(0) else {
        return Ok(Reason::MailNew);
    };
    let (key, trusted) = source(ctx, ip, cfg, class)?;
    if trusted {
        return Ok(counted(
            class,
            BudgetOutcome::Trusted,
            Reason::TrustedSource,
        ));
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };

    if !cfg.syn_ceiling.is_unlimited() {
        let verified = SourceKey { class: 0, ..key };
        if VERIFIED.get_ptr(verified).is_none() && !take(Limiter::SynCeiling, cfg, now) {
            // Never a RST here: the source is most likely spoofed.
            return Ok(counted(class, BudgetOutcome::Ceiling, Reason::SynCeiling));
        }
    }

    let state = match tracked_state(&key, now) {
        Some(s) => s,
        // Fails open: the connection passes, counted for the class as untracked.
        None => return Ok(counted(class, BudgetOutcome::Untracked, Reason::MailNew)),
    };
    // SAFETY: `state` points into a map value that stays valid while the program runs; the
    // counters are statistics, updated without atomics (a lost update is acceptable).
    unsafe {
        (*state).syns += 1;
        (*state).last_ns = now;
    }

    if budget.max_connections != 0
        && let Some(count) = CONNECTIONS.get_ptr(key)
    {
        // SAFETY: a map value pointer, valid while the program runs.
        if effective_count(unsafe { *count }) >= budget.max_connections {
            return Ok(refuse(ip, class, budget, state, BudgetOutcome::Cap));
        }
    }

    if !budget.rate.is_unlimited() {
        // SAFETY: as above.
        let tat = unsafe { (*state).tat_ns };
        match budget.rate.admit(tat, now) {
            Some(next) => unsafe { (*state).tat_ns = next },
            None => return Ok(refuse(ip, class, budget, state, BudgetOutcome::Rate)),
        }
    }
    Ok(counted(class, BudgetOutcome::Within, Reason::MailNew))
}

/// The source key of the packet, and whether the source is trusted.
#[inline(always)]
fn source(
    ctx: &XdpContext,
    ip: &Ip,
    cfg: &BudgetSettings,
    class: u8,
) -> Result<(SourceKey, bool), Reason> {
    let mut key = SourceKey {
        addr: [0; 16],
        family: FAMILY_V4,
        class,
        reserved: [0; 2],
    };
    let trusted = if ip.v6 {
        let a = bytes::<16>(ctx, ip.src_off())?;
        for ((k, a), m) in key.addr.iter_mut().zip(a).zip(cfg.mask_v6) {
            *k = a & m;
        }
        key.family = FAMILY_V6;
        cfg.flags & TRUSTED_V6_USED != 0 && TRUSTED_V6.get(Key::new(128, *a)).is_some()
    } else {
        let a = bytes::<4>(ctx, ip.src_off())?;
        for ((k, a), m) in key.addr.iter_mut().zip(a).zip(cfg.mask_v4) {
            *k = a & m;
        }
        cfg.flags & TRUSTED_V4_USED != 0 && TRUSTED_V4.get(Key::new(32, *a)).is_some()
    };
    Ok((key, trusted))
}

/// The source's rate state, created (with a full bucket) when missing.
#[inline(always)]
fn tracked_state(key: &SourceKey, now: u64) -> Option<*mut SourceState> {
    if let Some(s) = SOURCES.get_ptr_mut(key) {
        return Some(s);
    }
    let fresh = SourceState {
        tat_ns: now,
        syns: 0,
        refused: 0,
        first_ns: now,
        last_ns: now,
    };
    // Another CPU may insert the same source first: then its entry is used.
    if SOURCES.insert(key, fresh, BPF_NOEXIST as u64).is_ok()
        && let Some(c) = ACCOUNTING.get_ptr_mut(AccountingEvent::SourceTracked as u32)
    {
        // SAFETY: a per-CPU slot, written only by this CPU while the program runs.
        unsafe { *c += 1 };
    }
    SOURCES.get_ptr_mut(key)
}

/// Which per-CPU GCRA state a limit uses.
enum Limiter {
    SynCeiling,
    Rst,
}

/// Takes one event from a per-CPU limiter; false when over its rate.
#[inline(always)]
fn take(which: Limiter, cfg: &BudgetSettings, now: u64) -> bool {
    let (map, gcra) = match which {
        Limiter::SynCeiling => (&SYN_CEILING, &cfg.syn_ceiling),
        Limiter::Rst => (&RST_LIMIT, &cfg.reject_limit),
    };
    if gcra.is_unlimited() {
        return true;
    }
    let Some(tat) = map.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot, used only by this CPU while the program runs.
    match gcra.admit(unsafe { *tat }, now) {
        Some(next) => {
            unsafe { *tat = next };
            true
        }
        None => false,
    }
}

/// A refused new connection: dropped, or answered with a RST when the class says reject, the
/// packet can be turned into one, and the RST limit allows.
#[inline(always)]
fn refuse(
    ip: &Ip,
    class: u8,
    budget: &ClassBudget,
    state: *mut SourceState,
    outcome: BudgetOutcome,
) -> Reason {
    // SAFETY: a map value pointer, valid while the program runs (statistics, not atomic).
    unsafe { (*state).refused += 1 };
    let (drop, rejected) = match outcome {
        BudgetOutcome::Cap => (Reason::ConnectionCap, Reason::ConnectionCapRejected),
        _ => (Reason::SynRate, Reason::SynRateRejected),
    };
    if budget.flags & BUDGET_REJECT == 0 || !crate::reject::can_answer(ip) {
        return counted(class, outcome, drop);
    }
    count_class(class, outcome);
    // Monitor mode sends nothing, so it spends nothing of the RST limit.
    let monitor = settings().has(SETTING_MONITOR);
    let allowed = monitor
        || match BUDGET_SETTINGS.get(0) {
            // SAFETY: a helper without arguments.
            Some(cfg) => take(Limiter::Rst, cfg, unsafe { bpf_ktime_get_coarse_ns() }),
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
