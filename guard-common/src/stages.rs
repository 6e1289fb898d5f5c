//! The XDP program in stages. `mailguard_xdp` (the entry, attached to the interface) parses
//! Ethernet, VLAN tags and the IP header, applies the block list and decides ICMP and
//! fragments; a TCP segment is handed to the TCP stage (and a bare SYN to a mail port from
//! there to the budget stage), a UDP datagram to the UDP stage: tail calls through the `STAGES` program array, with what the next stage
//! needs in this CPU's `HANDOVER` slot.
//!
//! Each stage is a program of its own, so the kernel's verifier walks the paths of each
//! separately instead of every combination of them: every way through the IP header times
//! every TCP or UDP decision times every budget outcome. This is what makes the program load on Linux
//! 6.1, whose verifier gives up on the single program (its precision tracking stops at
//! subprogram calls, and the number of states then explodes). It is katran's pattern
//! (`balancer_kern.c` hands work to programs in a program array).

/// Slot of each stage in the `STAGES` program array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `mailguard_xdp_tcp`: TCP sanity, port rules, MX-only, replies to the host's connections.
    Tcp = 0,
    /// `mailguard_xdp_udp`: DHCP replies, opened ports, replies to the host's sockets.
    Udp = 1,
    /// `mailguard_xdp_budget`: charges a new mail connection to its source's budget.
    Budget = 2,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Tcp, Stage::Udp, Stage::Budget];

    /// Name of the stage's program in the object file.
    pub const fn program(self) -> &'static str {
        match self {
            Stage::Tcp => crate::maps::TCP_PROGRAM,
            Stage::Udp => crate::maps::UDP_PROGRAM,
            Stage::Budget => crate::maps::BUDGET_PROGRAM,
        }
    }
}

/// Capacity of the `STAGES` program array: room for later stages.
pub const STAGE_SLOTS: u32 = 4;

/// `Handover::flags`: the packet is IPv6.
pub const HANDOVER_V6: u8 = 1 << 0;
/// `Handover::flags`: the packet is the first fragment of a fragmented datagram.
pub const HANDOVER_FIRST_FRAGMENT: u8 = 1 << 1;

/// What a stage tells the next about the packet it hands over (the one value of the per-CPU
/// `HANDOVER` array, written just before the tail call on the same CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handover {
    /// Offset of the IPv4 or IPv6 header (after Ethernet and VLAN tags).
    pub l3_off: u16,
    /// Offset of the TCP header (after IPv4 options or IPv6 extension headers).
    pub l4_off: u16,
    /// `HANDOVER_*` bits.
    pub flags: u8,
    /// The `MailClass` of the destination port (for the budget stage).
    pub class: u8,
    pub reserved: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Handover>() == 8);
