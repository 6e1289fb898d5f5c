//! Why a packet got its verdict. The XDP program counts every packet under exactly one
//! `Reason`; userspace names and sums those counters. This is the only definition of the list.

/// What XDP does with a packet. The values are the kernel's `xdp_action` codes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop = 1,
    Pass = 2,
    /// Sent back out of the interface it came in on (a TCP RST, or a SYN-ACK with a SYN cookie,
    /// made from the packet).
    Tx = 3,
}

impl Verdict {
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Drop => "drop",
            Verdict::Pass => "pass",
            Verdict::Tx => "reject",
        }
    }
}

macro_rules! reasons {
    ($( $variant:ident = $value:literal, $verdict:ident, $name:literal, $desc:literal; )*) => {
        /// Why a packet got its verdict; the value indexes the per-CPU counter array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Reason {
            $( #[doc = $desc] $variant = $value, )*
        }

        impl Reason {
            /// Every reason, in counter-slot order.
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant, )* ];

            /// The verdict the policy gives a packet counted under this reason (outside
            /// monitor mode, where everything passes).
            #[inline(always)]
            pub const fn verdict(self) -> Verdict {
                // Bit tests instead of a match: the XDP program calls this for every packet.
                let bit = 1u64 << (self as u32);
                if Self::PASS_MASK & bit != 0 {
                    Verdict::Pass
                } else if Self::TX_MASK & bit != 0 {
                    Verdict::Tx
                } else {
                    Verdict::Drop
                }
            }

            /// Bit `r` is set when the reason with slot `r` passes its packet.
            const PASS_MASK: u64 = {
                let mut mask = 0u64;
                $( if matches!(Verdict::$verdict, Verdict::Pass) { mask |= 1 << $value; } )*
                mask
            };

            /// Bit `r` is set when the reason with slot `r` answers with a RST.
            const TX_MASK: u64 = {
                let mut mask = 0u64;
                $( if matches!(Verdict::$verdict, Verdict::Tx) { mask |= 1 << $value; } )*
                mask
            };

            /// Stable snake_case name, used in `status`, JSON output and metric labels.
            pub const fn name(self) -> &'static str {
                match self { $( Reason::$variant => $name, )* }
            }

            /// The reason stored in counter slot `slot`, if any.
            pub const fn from_slot(slot: u32) -> Option<Reason> {
                match slot { $( $value => Some(Reason::$variant), )* _ => None }
            }

            /// One-line description of the reason for humans.
            pub const fn describe(self) -> &'static str {
                match self { $( Reason::$variant => $desc, )* }
            }
        }
    };
}

reasons! {
    NonIp = 0, Pass, "non_ip",
        "not IPv4 or IPv6 (ARP, LLDP, ...)";
    Truncated = 1, Drop, "truncated",
        "a header ends beyond the end of the packet";
    Malformed = 2, Drop, "malformed",
        "a header field holds an impossible value (IP version, IHL, TCP data offset)";
    VlanTooDeep = 3, Drop, "vlan_too_deep",
        "more than two VLAN tags";
    Ipv6ExtTooDeep = 4, Drop, "ipv6_ext_too_deep",
        "more IPv6 extension headers than the parser walks";
    TcpBadFlags = 5, Drop, "tcp_bad_flags",
        "impossible TCP flag combination (no flags, SYN+FIN, SYN+RST, FIN+RST, FIN without ACK)";
    TcpFragment = 6, Drop, "tcp_fragment",
        "fragmented TCP";
    LaterFragment = 7, Pass, "later_fragment",
        "a non-first fragment of UDP/ICMP; its first fragment carried the verdict";
    MailNew = 8, Pass, "mail_new",
        "new connection (bare SYN) to a mail port";
    MailOther = 9, Pass, "mail_other",
        "other TCP to a mail port (established sessions)";
    OpenPort = 10, Pass, "open_port",
        "to a port opened on purpose, from an allowed source";
    OpenPortDenied = 11, Drop, "open_port_denied",
        "to an opened port from a source outside its allowed CIDRs";
    TcpReply = 12, Pass, "tcp_reply",
        "TCP reply to a connection the host has (matches a non-listening socket)";
    TcpNotAllowed = 13, Drop, "tcp_not_allowed",
        "TCP that is neither to a mail or open port nor part of a connection of the host";
    UdpReply = 14, Pass, "udp_reply",
        "UDP reply to a connected socket of the host";
    UdpNotAllowed = 15, Drop, "udp_not_allowed",
        "UDP that is neither to an open port nor to a connected socket";
    DhcpReply = 16, Pass, "dhcp_reply",
        "DHCP or DHCPv6 server reply to the host's client (keeps address leases alive)";
    IcmpError = 17, Pass, "icmp_error",
        "ICMP/ICMPv6 error (unreachable, fragmentation needed, packet too big, time exceeded, parameter problem)";
    EchoRequestAllowed = 18, Pass, "echo_request_allowed",
        "echo request, allowed by `icmp_echo = \"allow\"`";
    EchoRequestDenied = 19, Drop, "echo_request_denied",
        "echo request, dropped by `icmp_echo = \"drop\"`";
    EchoReply = 20, Pass, "echo_reply",
        "echo reply to the host's own ping";
    Ndp = 21, Pass, "ndp",
        "IPv6 neighbour discovery and multicast listener messages";
    IcmpOther = 22, Drop, "icmp_other",
        "any other ICMP or ICMPv6 type (redirect, timestamp, node information, ...)";
    OtherProtocol = 23, Drop, "other_protocol",
        "an IP protocol mailguard does not serve (GRE, ESP, SCTP, ...)";
    TrustedSource = 24, Pass, "trusted_source",
        "new connection to a mail port from a trusted source (no budget applies)";
    SynCeiling = 25, Drop, "syn_ceiling",
        "new connection from a source never seen completing one, over the global SYN ceiling";
    SynRate = 26, Drop, "syn_rate",
        "new connection over the source's rate budget";
    ConnectionCap = 27, Drop, "connection_cap",
        "new connection while the source holds its maximum of concurrent connections";
    SynRateRejected = 28, Tx, "syn_rate_rejected",
        "over the rate budget, refused with a TCP RST (action reject)";
    ConnectionCapRejected = 29, Tx, "connection_cap_rejected",
        "over the connection cap, refused with a TCP RST (action reject)";
    RejectLimited = 30, Drop, "reject_limited",
        "over budget with action reject, dropped: the global RST rate limit was reached";
    Blocked = 31, Drop, "blocked",
        "from a source on the block list";
    MxOnlyDenied = 32, Drop, "mx_only_denied",
        "to port 25 in MX-only mode from a source outside the MX allowlist";
    Internal = 33, Pass, "internal",
        "passed unjudged: the XDP program could not read its own per-CPU scratch slot (never expected)";
    SynCookie = 34, Tx, "syn_cookie",
        "new connection from a source not known to have completed one, answered in XDP with the kernel's SYN cookie (syn_cookies)";
    SynCookieUnavailable = 35, Drop, "syn_cookie_unavailable",
        "as syn_cookie, but no cookie could be made (no listener, the kernel not making cookies, IP options): dropped as over the SYN ceiling";
    SynCookieAckCapped = 36, Drop, "syn_cookie_ack_capped",
        "with SYN cookies on, an ACK that would open a connection from a cookie, from a source holding its maximum of concurrent connections";
}

/// Number of counter slots. Larger than the number of reasons so that later reasons fit in
/// an existing counter map without changing its capacity.
pub const COUNTER_SLOTS: u32 = 64;

const _: () = assert!((Reason::ALL.len() as u32) <= COUNTER_SLOTS);
const _: () = {
    // Slot numbers are dense and in order, so ALL[i] is the reason of slot i.
    let mut i = 0;
    while i < Reason::ALL.len() {
        assert!(Reason::ALL[i] as usize == i);
        i += 1;
    }
};

impl Reason {
    /// How `status` and the metrics name the reason's verdict: `reject` for the RSTs of the
    /// reject action, `answer` for the SYN-ACKs of SYN cookies (both sent with XDP_TX).
    pub const fn verdict_label(self) -> &'static str {
        match self {
            Reason::SynCookie => "answer",
            r => r.verdict().name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn slots_round_trip_and_names_are_unique() {
        let mut names: Vec<&str> = Vec::new();
        for &r in Reason::ALL {
            assert_eq!(Reason::from_slot(r as u32), Some(r));
            assert!(!names.contains(&r.name()), "duplicate name {}", r.name());
            assert!(
                r.name()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            );
            assert!(!r.describe().is_empty());
            names.push(r.name());
        }
        assert_eq!(Reason::from_slot(Reason::ALL.len() as u32), None);
    }

    #[test]
    fn verdicts_use_kernel_xdp_action_codes() {
        // XDP_DROP = 1 and XDP_PASS = 2 in include/uapi/linux/bpf.h.
        assert_eq!(Verdict::Drop as u32, 1);
        assert_eq!(Verdict::Pass as u32, 2);
        assert_eq!(Reason::TcpNotAllowed.verdict(), Verdict::Drop);
        assert_eq!(Reason::NonIp.verdict(), Verdict::Pass);
        assert_eq!(Reason::OtherProtocol.verdict(), Verdict::Drop);
        assert_eq!(Verdict::Tx as u32, 3, "XDP_TX");
        assert_eq!(Reason::SynRateRejected.verdict(), Verdict::Tx);
        assert_eq!(Reason::ConnectionCapRejected.verdict(), Verdict::Tx);
        assert_eq!(Reason::ConnectionCap.verdict(), Verdict::Drop);
        let passing: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| r.verdict() == Verdict::Pass)
            .map(|r| r.name())
            .collect();
        assert_eq!(
            passing,
            [
                "non_ip",
                "later_fragment",
                "mail_new",
                "mail_other",
                "open_port",
                "tcp_reply",
                "udp_reply",
                "dhcp_reply",
                "icmp_error",
                "echo_request_allowed",
                "echo_reply",
                "ndp",
                "trusted_source",
                "internal"
            ]
        );
    }
}
