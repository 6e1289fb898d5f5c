//! Settle points: where many verified paths through the program meet, the packet's layout is
//! written to this CPU's `SCRATCH` slot and read back, and the program goes on with the values
//! read back. There are three: before the IP header is parsed (after Ethernet, the VLAN tags
//! and the block list), before the transport header is judged, and before a new mail
//! connection is charged to its budget.
//!
//! At run time a settle point costs one store and one load to a cache line of this CPU. For
//! the kernel's verifier it is what lets the program load on Linux 6.1. The verifier walks
//! every path and keeps each path's exact offsets: zero, one or two VLAN tags, an IPv4 header
//! with or without options, an IPv6 header with each chain of extension headers. Without
//! settle points it walks every later decision once for each of those layouts, and 6.1's
//! verifier gives up at a million instructions (its precision tracking stops at subprogram
//! calls and then keeps every value exact, so no two paths look alike). A value loaded from
//! map memory has no history: after a settle point every layout is the same bounded unknown,
//! and the paths merge into a few. docs/KERNELS.md has the instructions each kernel processes.
//!
//! Programs chained by tail calls (katran's pattern) would also split the walk; measured here,
//! each tail call cost a packet 3 ns (direct) to 15 ns (an indirect one, through a retpoline),
//! several times a settle point, and a program array must be pinned apart from the other
//! maps, since the kernel empties one that no file descriptor or pin holds.

use aya_ebpf::maps::PerCpuArray;
use guard_common::Reason;

use crate::{
    maps::SCRATCH,
    parse::{Fragment, Ip, L3_OFF_MASK, MAX_L3_OFF, MAX_L4_OFF},
};

/// The value of `SCRATCH`: a packet's layout as a settle point stores it, packed into one
/// 64-bit word so that it is written and read back with one store and one load (a load that
/// spans several narrower stores is not forwarded from them, and waits for them to reach the
/// cache): bits 0-15 the IP header's offset, 16-31 the transport header's, 32-39 `LAYOUT_*`
/// flags, 40-47 the transport protocol, 48-55 the mail class (the budget's settle point).
pub type Scratch = PerCpuArray<u64>;

/// Layout flag: the packet is IPv6.
const LAYOUT_V6: u64 = 1 << 32;
/// Layout flag: the packet is the first fragment of a fragmented datagram.
const LAYOUT_FIRST_FRAGMENT: u64 = 1 << 33;

/// This CPU's slot, looked up once for the packet and used by each of its settle points.
#[derive(Clone, Copy)]
pub struct Slot(*mut u64);

impl Slot {
    /// This CPU's slot. `Err` only when it cannot be read, which a one-slot array never does
    /// (the packet then passes unjudged, counted as `internal`).
    #[inline(always)]
    pub fn of_this_cpu() -> Result<Slot, Reason> {
        SCRATCH.get_ptr_mut(0).map(Slot).ok_or(Reason::Internal)
    }

    /// Settles `ip` (and `class`, for the budget): the same layout, read back from memory.
    #[inline(always)]
    pub fn settle(self, ip: &Ip, class: u8) -> (Ip, u8) {
        let mut layout = (ip.l3_off as u64 & 0xffff)
            | (ip.l4_off as u64 & 0xffff) << 16
            | (ip.proto as u64) << 40
            | (class as u64) << 48;
        if ip.v6 {
            layout |= LAYOUT_V6;
        }
        if ip.fragment == Fragment::First {
            layout |= LAYOUT_FIRST_FRAGMENT;
        }
        // SAFETY: this CPU's slot, used only by this CPU while the program runs. Volatile, so
        // that the compiler neither drops the store nor forwards the stored value past the
        // load.
        unsafe { core::ptr::write_volatile(self.0, layout) };
        self.read()
    }

    /// Settles the offset and family of the IP header (the first settle point, before the IP
    /// header is parsed).
    #[inline(always)]
    pub fn settle_l3(self, l3_off: usize, v6: bool) -> (usize, bool) {
        let at = Ip {
            v6,
            l3_off,
            proto: 0,
            l4_off: l3_off,
            fragment: Fragment::None,
        };
        let (ip, _) = self.settle(&at, 0);
        (ip.l3_off, ip.v6)
    }

    /// The layout the last settle point of the packet being decided left in the slot.
    #[inline(always)]
    pub fn last(self) -> Ip {
        self.read().0
    }

    #[inline(always)]
    fn read(self) -> (Ip, u8) {
        // SAFETY: as in `settle`.
        let l = unsafe { core::ptr::read_volatile(self.0) };
        // The masks keep every offset the parser can produce (`MAX_L3_OFF`, `MAX_L4_OFF`) and
        // give the verifier the bounds of the values read back.
        let ip = Ip {
            v6: l & LAYOUT_V6 != 0,
            l3_off: l as usize & L3_OFF_MASK,
            proto: (l >> 40) as u8,
            l4_off: (l >> 16) as usize & MAX_L4_OFF,
            fragment: if l & LAYOUT_FIRST_FRAGMENT != 0 {
                Fragment::First
            } else {
                Fragment::None
            },
        };
        (ip, (l >> 48) as u8)
    }
}

const _: () = assert!(MAX_L3_OFF <= L3_OFF_MASK && (MAX_L4_OFF + 1).is_power_of_two());
