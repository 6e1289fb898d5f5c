//! What the kernel offers, as userspace probed it before loading (guard-common's `features`).

use guard_common::FEATURES_ALL;

/// `FEATURE_*` bits. Read-only: userspace sets it at load (`FEATURES_GLOBAL`), and the verifier,
/// which knows the value, drops the code of an absent feature before it checks its helpers.
#[unsafe(no_mangle)]
static MG_FEATURES: u32 = FEATURES_ALL;

/// Whether the kernel has `feature` (a `FEATURE_*` bit).
#[inline(always)]
pub fn has(feature: u32) -> bool {
    // SAFETY: a read of a static; volatile so that the compiler reads the value userspace set
    // rather than the initial one.
    unsafe { core::ptr::read_volatile(&MG_FEATURES) & feature != 0 }
}
