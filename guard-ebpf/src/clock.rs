//! The clock of budgets and block expiry: CLOCK_MONOTONIC_COARSE in ns, the time at the last
//! timer tick. The helper that reads it costs a packet ~20 ns, while `bpf_jiffies64` is
//! inlined by the verifier into one load; the coarse time only moves when jiffies does, so each
//! CPU keeps the coarse time it read with the jiffies it read it at, and calls the helper once
//! per tick.
//!
//! A CPU that reads jiffies just after the tick advanced them but before the tick updated the
//! coarse time keeps a time one tick old until the next tick: the same error the coarse clock
//! itself has, and never a step backwards.
//!
//! A kernel without the coarse helper (before 5.11) gives the precise CLOCK_MONOTONIC instead:
//! the same clock, read with more resolution and at more cost.

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use guard_common::FEATURE_COARSE_CLOCK;

use crate::{features, maps::CLOCK};

/// CLOCK_MONOTONIC_COARSE now, in ns (CLOCK_MONOTONIC where the kernel has no coarse helper).
#[inline(always)]
pub fn coarse_ns() -> u64 {
    if !features::has(FEATURE_COARSE_CLOCK) {
        // SAFETY: a helper without arguments.
        return unsafe { bpf_ktime_get_ns() };
    }
    // SAFETY: helpers without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cached) = CLOCK.get_ptr_mut(0) else {
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot, used only by this CPU while the program runs.
    unsafe {
        if (*cached)[0] != jiffies {
            *cached = [jiffies, bpf_ktime_get_coarse_ns()];
        }
        (*cached)[1]
    }
}
