//! The clock of budgets and block expiry: CLOCK_MONOTONIC_COARSE in ns, the time at the last
//! timer tick. The helper that reads it costs a packet ~20 ns, while `bpf_jiffies64` is
//! inlined by the verifier into one load; the coarse time only moves when jiffies does, so each
//! CPU keeps the coarse time it read with the jiffies it read it at, and calls the helper once
//! per tick.
//!
//! A CPU that reads jiffies just after the tick advanced them but before the tick updated the
//! coarse time keeps a time one tick old until the next tick: the same error the coarse clock
//! itself has, and never a step backwards.

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::CLOCK;

/// CLOCK_MONOTONIC_COARSE now, in ns.
#[inline(always)]
pub fn coarse_ns() -> u64 {
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
