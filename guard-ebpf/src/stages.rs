//! The hand-over between the XDP program's stages (guard-common's `stages`): a stage writes
//! what it parsed into this CPU's `HANDOVER` slot and tail-calls the next; that one reads it
//! back. Nothing runs on this CPU in between, so the slot is the packet's own.

use aya_ebpf::programs::XdpContext;
use guard_common::{HANDOVER_FIRST_FRAGMENT, HANDOVER_V6, Handover, Reason, Stage};

use crate::parse::{MAX_L3_OFF, MAX_L4_OFF};

use crate::{
    maps::{HANDOVER, STAGES},
    parse::{Fragment, Ip},
};

/// Hands the packet to `stage`, which counts it and gives its verdict; `class` is the mail
/// class for the budget stage. Returns only when the stage is not in place (`STAGES` empty at
/// its slot, which a correct load never leaves): the packet then passes unjudged, counted,
/// rather than the host losing everything the stage would have let through.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, stage: Stage, ip: &Ip, class: u8) -> Reason {
    if let Some(slot) = HANDOVER.get_ptr_mut(0) {
        let mut flags = 0;
        if ip.v6 {
            flags |= HANDOVER_V6;
        }
        if ip.fragment == Fragment::First {
            flags |= HANDOVER_FIRST_FRAGMENT;
        }
        // SAFETY: this CPU's slot, used only by this CPU while the program and the stage it
        // calls run.
        unsafe {
            *slot = Handover {
                l3_off: ip.l3_off as u16,
                l4_off: ip.l4_off as u16,
                flags,
                class,
                reserved: [0; 2],
            };
            STAGES.tail_call(ctx, stage as u32);
        }
    }
    Reason::StageMissing
}

/// The packet handed over: its IP layout (a segment of protocol `proto`; a later fragment
/// never is handed over), and the mail class for the budget stage. `None` if the slot holds an
/// offset no stage can have written (the checks also tell the verifier the offsets' bounds).
#[inline(always)]
pub fn handed_over(proto: u8) -> Option<(Ip, u8)> {
    let h = HANDOVER.get(0)?;
    let (l3_off, l4_off) = (h.l3_off as usize, h.l4_off as usize);
    if l3_off > MAX_L3_OFF || l4_off > MAX_L4_OFF {
        return None;
    }
    let ip = Ip {
        v6: h.flags & HANDOVER_V6 != 0,
        l3_off,
        proto,
        l4_off,
        fragment: if h.flags & HANDOVER_FIRST_FRAGMENT != 0 {
            Fragment::First
        } else {
            Fragment::None
        },
    };
    Some((ip, h.class))
}
