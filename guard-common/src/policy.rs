//! Values and keys of the policy maps that userspace fills and XDP reads.
//!
//! Every type is `#[repr(C)]` (or packed where the kernel wants bytes with no gaps), has no
//! implicit padding, and has its size asserted. Multi-byte network fields are `[u8; N]` in
//! network byte order; host-order numbers are plain integers.

/// `Settings::flags`: compute and count every verdict, but pass every packet.
pub const SETTING_MONITOR: u32 = 1 << 0;
/// `Settings::flags`: ICMP echo requests (ping) pass; without it they are dropped.
pub const SETTING_ECHO_ALLOW: u32 = 1 << 1;
/// `Settings::flags`: MX-only: port 25 accepts only sources in `MX_ALLOW_V4/V6`.
pub const SETTING_MX_ONLY: u32 = 1 << 2;
/// `Settings::flags`: `BLOCK_V4` has entries (an empty list is not looked up).
pub const SETTING_BLOCK_V4_USED: u32 = 1 << 3;
/// `Settings::flags`: `BLOCK_V6` has entries.
pub const SETTING_BLOCK_V6_USED: u32 = 1 << 4;

/// Value of the `BLOCK_V4/V6` tries: when the block ends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// CLOCK_MONOTONIC_COARSE nanoseconds (`bpf_ktime_get_coarse_ns`) at which the block ends;
    /// 0 blocks until removed.
    pub expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<BlockEntry>() == 8);

/// The most prefixes a list (`mx_allow`, `trusted`, `block`) holds per address family: a
/// provider's ranges, a blocklist feed.
pub const LIST_MAX_ENTRIES: u32 = 1 << 20;

/// Capacity of each list trie: twice the most a list holds, so that a swap can add the whole
/// new version before it removes the old one. LPM tries allocate per entry: unused capacity
/// costs no memory.
pub const LIST_MAP_CAPACITY: u32 = 2 * LIST_MAX_ENTRIES;

/// Run-time switches of the XDP program; the single entry of the `SETTINGS` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `SETTING_*` bits.
    pub flags: u32,
    /// Which lists are indexed and which generation of each is in use (`index_active_bit`,
    /// `index_generation_bit`; IPv4 lists by `INDEX_*`, IPv6 ones by `v6_list`; see
    /// `list_index`).
    pub index: u32,
    /// SYN cookies: `COOKIES_*` mode and bits, and the window scale the SYN-ACK offers
    /// (`COOKIE_WSCALE_SHIFT`). Zero (off) in maps pinned by a version without them.
    pub cookies: u32,
    /// The MSS a SYN-ACK made in XDP offers: IPv4 in the low 16 bits, IPv6 in the high 16.
    pub cookie_mss: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 16);

/// Capacity of the `COOKIE_PORTS` array: one entry per TCP port.
pub const COOKIE_PORT_ENTRIES: u32 = 1 << 16;

/// `Settings::cookies` mode (the low two bits): no SYN cookies from XDP.
pub const COOKIES_OFF: u32 = 0;
/// A SYN the SYN ceiling would drop is answered with a cookie instead.
pub const COOKIES_UNDER_FLOOD: u32 = 1;
/// Every SYN from a source not known to have completed a connection is answered with a cookie.
pub const COOKIES_ALWAYS: u32 = 2;
pub const COOKIES_MODE_MASK: u32 = 0b11;
/// The SYN-ACK may carry timestamps (the cookie's window scale and SACK bits in its TSval):
/// set only when the kernel adds no per-connection offset to its timestamps
/// (`net.ipv4.tcp_timestamps` = 2), which would garble those bits.
pub const COOKIES_TIMESTAMPS: u32 = 1 << 2;
/// Where the window scale the SYN-ACK offers sits in `Settings::cookies` (4 bits): the one the
/// kernel computes for the connection it makes from the cookie.
pub const COOKIE_WSCALE_SHIFT: u32 = 4;

impl Settings {
    /// The SYN cookie mode (`COOKIES_OFF`, `COOKIES_UNDER_FLOOD`, `COOKIES_ALWAYS`).
    #[inline(always)]
    pub const fn cookie_mode(&self) -> u32 {
        self.cookies & COOKIES_MODE_MASK
    }
}

impl Settings {
    #[inline(always)]
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

/// What a destination port is for.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// Not opened: only replies to the host's own connections pass.
    Closed = 0,
    /// A mail service port (TCP only): new connections are charged to its class's budget.
    Mail = 1,
    /// Opened on purpose (for example SSH), optionally only from some sources.
    Open = 2,
}

/// Service class of a mail port; budgets are set per class.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailClass {
    None = 0,
    /// Port 25: other MTAs delivering mail.
    Mx = 1,
    /// Ports 465 and 587: users submitting mail.
    Submission = 2,
    /// Ports 110, 143, 993, 995: users reading mail.
    Mailbox = 3,
}

impl MailClass {
    /// The class a mail port belongs to by convention; other mail ports count as `Mx`.
    pub const fn of_port(port: u16) -> MailClass {
        match port {
            465 | 587 => MailClass::Submission,
            110 | 143 | 993 | 995 => MailClass::Mailbox,
            _ => MailClass::Mx,
        }
    }
}

/// `PortRule::flags`: only sources in the `OPEN_SOURCES_V4/V6` tries may use this port.
pub const PORT_SOURCE_RESTRICTED: u8 = 1 << 0;

/// The rule for one (protocol, destination port); value of the `PORT_RULES` array map.
/// Aligned to 4 so that XDP reads it with one load.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRule {
    /// A `PortKind` value.
    pub kind: u8,
    /// A `MailClass` value (for `PortKind::Mail`).
    pub class: u8,
    /// `PORT_*` bits.
    pub flags: u8,
    pub reserved: u8,
}
const _: () = assert!(core::mem::size_of::<PortRule>() == 4);

impl PortRule {
    pub const CLOSED: PortRule = PortRule {
        kind: PortKind::Closed as u8,
        class: 0,
        flags: 0,
        reserved: 0,
    };

    pub const fn mail(class: MailClass) -> PortRule {
        PortRule {
            kind: PortKind::Mail as u8,
            class: class as u8,
            flags: 0,
            reserved: 0,
        }
    }

    pub const fn open(source_restricted: bool) -> PortRule {
        let flags = if source_restricted {
            PORT_SOURCE_RESTRICTED
        } else {
            0
        };
        PortRule {
            kind: PortKind::Open as u8,
            class: 0,
            flags,
            reserved: 0,
        }
    }
}

/// Transport protocols that have port rules.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp = 0,
    Udp = 1,
}

impl Transport {
    /// The IP protocol number.
    pub const fn ip_proto(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }
}

/// Index of the rule for `port` (host byte order) over `transport` in `PORT_RULES`.
#[inline(always)]
pub const fn port_rule_index(transport: Transport, port: u16) -> u32 {
    ((transport as u32) << 16) | port as u32
}

/// Capacity of `PORT_RULES`: every port of TCP and of UDP.
pub const PORT_RULE_ENTRIES: u32 = 2 << 16;

/// Key data of `OPEN_SOURCES_V4` (an LPM trie): which IPv4 sources may use an open port.
/// Matched bits: 8 (protocol) + 16 (port) + the CIDR's prefix length.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenSourceV4 {
    /// IP protocol number (6 or 17).
    pub proto: u8,
    /// Destination port, network byte order.
    pub port: [u8; 2],
    /// Source address, network byte order.
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<OpenSourceV4>() == 7);

/// Key data of `OPEN_SOURCES_V6`, as `OpenSourceV4` with an IPv6 source.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenSourceV6 {
    pub proto: u8,
    pub port: [u8; 2],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<OpenSourceV6>() == 19);

/// Bits of an `OpenSource*` key before the address: protocol and port.
pub const OPEN_SOURCE_PREFIX_BITS: u32 = 24;

impl OpenSourceV4 {
    pub const fn new(transport: Transport, port: u16, addr: [u8; 4]) -> Self {
        Self {
            proto: transport.ip_proto(),
            port: port.to_be_bytes(),
            addr,
        }
    }
}

impl OpenSourceV6 {
    pub const fn new(transport: Transport, port: u16, addr: [u8; 16]) -> Self {
        Self {
            proto: transport.ip_proto(),
            port: port.to_be_bytes(),
            addr,
        }
    }
}

/// Capacity of each `OPEN_SOURCES_*` trie (CIDRs over all open ports).
pub const OPEN_SOURCE_ENTRIES: u32 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_rule_index_is_host_order_port() {
        assert_eq!(port_rule_index(Transport::Tcp, 25), 25);
        assert_eq!(port_rule_index(Transport::Udp, 25), 65536 + 25);
        // 25 stored byte-swapped would be 6400: the index must never be that.
        assert_ne!(
            port_rule_index(Transport::Tcp, 25),
            u16::from_le_bytes(25u16.to_be_bytes()) as u32
        );
        assert_eq!(
            port_rule_index(Transport::Udp, u16::MAX),
            PORT_RULE_ENTRIES - 1
        );
    }

    #[test]
    fn open_source_keys_hold_network_order() {
        let k = OpenSourceV4::new(Transport::Tcp, 22, [198, 18, 0, 1]);
        let bytes: [u8; 7] = unsafe { core::mem::transmute(k) };
        assert_eq!(bytes, [6, 0, 22, 198, 18, 0, 1]);
        let k6 = OpenSourceV6::new(
            Transport::Udp,
            0x1234,
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        );
        let bytes: [u8; 19] = unsafe { core::mem::transmute(k6) };
        assert_eq!(&bytes[..5], &[17, 0x12, 0x34, 0x20, 0x01]);
    }

    #[test]
    fn mail_classes_follow_service_ports() {
        assert_eq!(MailClass::of_port(25), MailClass::Mx);
        assert_eq!(MailClass::of_port(587), MailClass::Submission);
        assert_eq!(MailClass::of_port(465), MailClass::Submission);
        for p in [110, 143, 993, 995] {
            assert_eq!(MailClass::of_port(p), MailClass::Mailbox);
        }
    }

    #[test]
    fn settings_flags() {
        let s = Settings {
            flags: SETTING_MONITOR,
            index: 0,
            cookies: 0,
            cookie_mss: 0,
        };
        assert!(s.has(SETTING_MONITOR));
        assert!(!s.has(SETTING_ECHO_ALLOW));
    }
}
