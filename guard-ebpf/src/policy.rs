//! The packet policy of docs/DESIGN.md, in its order. `decide` returns the `Reason` a packet is
//! counted under; the reason fixes the verdict (`Reason::verdict`).
//!
//! 1. Non-IP passes; up to two VLAN tags are looked through.
//! 2. The block list drops everything from a blocked source (`lists.rs`) but its neighbour
//!    discovery.
//! 3. Mail ports: impossible TCP flags and fragments are dropped; MX-only mode holds port 25 to
//!    the MX allowlist; new connections are charged to budgets (`budget.rs`), the rest passes.
//! 4. Ports opened on purpose pass, optionally only from given CIDRs.
//! 5. Everything else is dropped unless it is a reply to something the host started; essential
//!    ICMP/ICMPv6 always passes, echo requests follow the setting.

use aya_ebpf::programs::XdpContext;
use guard_common::{
    COOKIES_OFF, MailClass, OPEN_SOURCE_PREFIX_BITS, OpenSourceV4, OpenSourceV6,
    PORT_SOURCE_RESTRICTED, PortKind, PortRule, Reason, SETTING_ECHO_ALLOW, SETTING_MX_ONLY,
    Settings, Transport, port_rule_index,
};

use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    budget, lists,
    maps::{OPEN_SOURCES_V4, OPEN_SOURCES_V6, PORT_RULES, SETTINGS},
    parse::{self, Fragment, Ip, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tcp, bytes},
    settle::Slot,
    sockets,
};

/// Decides a packet: the reason it is counted under. A packet that cannot be parsed gets the
/// reason the parser gave. `slot`: this CPU's settle slot (settle.rs).
#[inline(always)]
pub fn decide(ctx: &XdpContext, settings: &Settings, slot: Slot) -> Reason {
    match judge(ctx, settings, slot) {
        Ok(reason) | Err(reason) => reason,
    }
}

#[inline(always)]
fn judge(ctx: &XdpContext, settings: &Settings, slot: Slot) -> Result<Reason, Reason> {
    let (ethertype, l3_off) = parse::ethernet(ctx)?;
    let v6 = match ethertype {
        parse::ETH_P_IPV4 => false,
        parse::ETH_P_IPV6 => true,
        _ => return Ok(Reason::NonIp),
    };
    // Before anything else: a blocked source gets nothing, not even a budget entry. Only the
    // source address is read, before the header's options and extension headers multiply
    // the paths the verifier walks.
    if lists::blocked(ctx, l3_off, v6, settings)? {
        // Except its neighbour discovery, as ARP (not IP) passes: dropping it would leave the
        // source's kernel unable to reach the host for seconds after the block ends.
        return Ok(if v6 && neighbour_discovery(ctx, l3_off) {
            Reason::Ndp
        } else {
            Reason::Blocked
        });
    }
    // The IP header is parsed from a settle point (settle.rs): one layout for the Ethernet
    // header with zero, one or two VLAN tags, for the verifier.
    let (l3_off, v6) = slot.settle_l3(l3_off, v6);
    let parsed = if v6 {
        parse::ipv6(ctx, l3_off)?
    } else {
        parse::ipv4(ctx, l3_off)?
    };
    if parsed.fragment == Fragment::Later {
        // No transport header to judge. The first fragment carried the verdict: if it was
        // dropped, reassembly fails and the kernel discards the rest.
        return Ok(if parsed.proto == parse::IPPROTO_TCP {
            Reason::TcpFragment
        } else {
            Reason::LaterFragment
        });
    }
    // The transport header is judged from a settle point: one layout for every way through
    // the IP header (options, extension headers), for the verifier.
    let (ip, _) = slot.settle(&parsed, 0);
    match ip.proto {
        parse::IPPROTO_TCP => tcp(ctx, &ip, settings, slot),
        parse::IPPROTO_UDP => udp(ctx, &ip),
        parse::IPPROTO_ICMP if !ip.v6 => icmp(ctx, &ip, settings),
        parse::IPPROTO_ICMPV6 if ip.v6 => icmpv6(ctx, &ip, settings),
        _ => Ok(Reason::OtherProtocol),
    }
}

/// A neighbour solicitation or advertisement in the fixed IPv6 header at `l3_off`: ICMPv6 type
/// 135 or 136 right after it, with the hop limit of 255 that RFC 4861 requires (the kernel
/// discards any other, and no router forwards one). Unreadable: not one.
#[inline(always)]
fn neighbour_discovery(ctx: &XdpContext, l3_off: usize) -> bool {
    let l3 = l3_off & parse::L3_OFF_MASK;
    let (Ok(&[next, hops]), Ok(&[kind])) = (
        bytes::<2>(ctx, l3 + parse::IPV6_NEXT_HEADER),
        bytes::<1>(ctx, l3 + parse::IPV6_HDR_LEN),
    ) else {
        return false;
    };
    next == parse::IPPROTO_ICMPV6 && hops == 255 && matches!(kind, 135 | 136)
}

/// Impossible flag combinations: nothing of SYN/FIN/RST/ACK (null scans, PSH- or URG-only),
/// SYN+FIN, SYN+RST, FIN+RST, and FIN without ACK (FIN and Xmas scans). PSH, URG, ECE and CWR
/// do not matter.
#[inline(always)]
pub fn tcp_flags_impossible(flags: u8) -> bool {
    // Index the 16 combinations of FIN (bit 0), SYN (1), RST (2) and ACK (bit 4, moved to 3).
    let index = (flags & (TCP_FIN | TCP_SYN | TCP_RST)) | ((flags & TCP_ACK) >> 1);
    (IMPOSSIBLE_FLAGS >> index) & 1 != 0
}

/// Bit `i` is set when flag combination `i` (see `tcp_flags_impossible`) is impossible.
const IMPOSSIBLE_FLAGS: u16 = {
    let mut mask = 0u16;
    let mut i = 0u8;
    while i < 16 {
        let (fin, syn, rst, ack) = (i & 1 != 0, i & 2 != 0, i & 4 != 0, i & 8 != 0);
        let impossible = !(fin || syn || rst || ack)
            || (syn && fin)
            || (syn && rst)
            || (fin && rst)
            || (fin && !ack);
        if impossible {
            mask |= 1 << i;
        }
        i += 1;
    }
    mask
};

/// A connection attempt: SYN without ACK (flags already checked for impossible combinations).
#[inline(always)]
fn bare_syn(t: &Tcp) -> bool {
    t.flags() & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
fn port_rule(transport: Transport, port: [u8; 2]) -> &'static PortRule {
    // Byte-order trap: the index takes the port in host order (25, never 6400).
    let index = port_rule_index(transport, u16::from_be_bytes(port));
    match PORT_RULES.get(index) {
        Some(rule) => rule,
        None => &PortRule::CLOSED,
    }
}

#[inline(always)]
fn tcp(ctx: &XdpContext, ip: &Ip, settings: &Settings, slot: Slot) -> Result<Reason, Reason> {
    let t = parse::tcp(ctx, ip.l4_off)?;
    if ip.fragment == Fragment::First {
        return Ok(Reason::TcpFragment);
    }
    if tcp_flags_impossible(t.flags()) {
        return Ok(Reason::TcpBadFlags);
    }
    let rule = port_rule(Transport::Tcp, t.dport());
    if rule.kind == PortKind::Mail as u8 {
        // MX-only: the mx ports (25) accept only the MX allowlist (a filtering provider).
        if rule.class == MailClass::Mx as u8
            && settings.has(SETTING_MX_ONLY)
            && !lists::mx_allowed(ctx, ip.l3_off, ip.v6, settings.index)?
        {
            return Ok(Reason::MxOnlyDenied);
        }
        if !bare_syn(&t) {
            // With SYN cookies on, a bare ACK may open a connection from a cookie.
            if settings.cookie_mode() != COOKIES_OFF
                && t.flags() & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_ACK
            {
                let ports = (t.sport(), t.dport());
                let (ack, class) = slot.settle(ip, rule.class);
                return budget::cookie_ack(ctx, &ack, class, settings, ports);
            }
            return Ok(Reason::MailOther);
        }
        // A new connection is charged to the source's budget for the port's class, from a
        // settle point: one state for every TCP decision above, for the verifier. (A RST
        // answering it is made from the layout this settle point left, `Slot::last`.)
        let (syn, class) = slot.settle(ip, rule.class);
        return budget::charge(ctx, &syn, class, settings);
    }
    if rule.kind == PortKind::Open as u8 {
        return open_port(ctx, ip, Transport::Tcp, t.dport(), rule);
    }
    if bare_syn(&t) {
        // A new connection to a port nobody opened: no socket lookup needed.
        return Ok(Reason::TcpNotAllowed);
    }
    Ok(
        if sockets::tcp_connection_exists(ctx, ip, t.sport(), t.dport())? {
            Reason::TcpReply
        } else {
            Reason::TcpNotAllowed
        },
    )
}

const DHCP_SERVER_PORT: [u8; 2] = 67u16.to_be_bytes();
const DHCP_CLIENT_PORT: [u8; 2] = 68u16.to_be_bytes();
const DHCPV6_SERVER_PORT: [u8; 2] = 547u16.to_be_bytes();
const DHCPV6_CLIENT_PORT: [u8; 2] = 546u16.to_be_bytes();

#[inline(always)]
fn udp(ctx: &XdpContext, ip: &Ip) -> Result<Reason, Reason> {
    let (sport, dport) = parse::udp(ctx, ip.l4_off)?;
    // DHCP clients often read replies on packet sockets, which see packets only after XDP:
    // without this the host would lose its address lease.
    let dhcp = if ip.v6 {
        sport == DHCPV6_SERVER_PORT && dport == DHCPV6_CLIENT_PORT
    } else {
        sport == DHCP_SERVER_PORT && dport == DHCP_CLIENT_PORT
    };
    if dhcp {
        return Ok(Reason::DhcpReply);
    }
    let rule = port_rule(Transport::Udp, dport);
    if rule.kind == PortKind::Open as u8 {
        return open_port(ctx, ip, Transport::Udp, dport, rule);
    }
    if sockets::udp_connected_socket_exists(ctx, ip, sport, dport)? {
        Ok(Reason::UdpReply)
    } else {
        Ok(Reason::UdpNotAllowed)
    }
}

#[inline(always)]
fn open_port(
    ctx: &XdpContext,
    ip: &Ip,
    transport: Transport,
    port: [u8; 2],
    rule: &PortRule,
) -> Result<Reason, Reason> {
    if rule.flags & PORT_SOURCE_RESTRICTED == 0 {
        return Ok(Reason::OpenPort);
    }
    let allowed = if ip.v6 {
        let addr = *bytes::<16>(ctx, ip.src_off())?;
        let data = OpenSourceV6 {
            proto: transport.ip_proto(),
            port,
            addr,
        };
        OPEN_SOURCES_V6
            .get(Key::new(OPEN_SOURCE_PREFIX_BITS + 128, data))
            .is_some()
    } else {
        let addr = *bytes::<4>(ctx, ip.src_off())?;
        let data = OpenSourceV4 {
            proto: transport.ip_proto(),
            port,
            addr,
        };
        OPEN_SOURCES_V4
            .get(Key::new(OPEN_SOURCE_PREFIX_BITS + 32, data))
            .is_some()
    };
    Ok(if allowed {
        Reason::OpenPort
    } else {
        Reason::OpenPortDenied
    })
}

#[inline(always)]
fn echo_request(settings: &Settings) -> Reason {
    if settings.has(SETTING_ECHO_ALLOW) {
        Reason::EchoRequestAllowed
    } else {
        Reason::EchoRequestDenied
    }
}

/// Used when the settings entry cannot be read (it always can: it is an array slot): enforce,
/// and let ping through.
const FALLBACK_SETTINGS: Settings = Settings {
    flags: SETTING_ECHO_ALLOW,
    index: 0,
    cookies: 0,
    cookie_mss: 0,
};

/// The run-time switches (one array slot, read once per packet).
#[inline(always)]
pub fn settings() -> &'static Settings {
    match SETTINGS.get(0) {
        Some(s) => s,
        None => &FALLBACK_SETTINGS,
    }
}

#[inline(always)]
fn icmp(ctx: &XdpContext, ip: &Ip, settings: &Settings) -> Result<Reason, Reason> {
    let (kind, _code) = parse::icmp(ctx, ip.l4_off)?;
    Ok(match kind {
        0 => Reason::EchoReply,
        8 => echo_request(settings),
        // Destination unreachable (fragmentation needed included), time exceeded,
        // parameter problem.
        3 | 11 | 12 => Reason::IcmpError,
        _ => Reason::IcmpOther,
    })
}

#[inline(always)]
fn icmpv6(ctx: &XdpContext, ip: &Ip, settings: &Settings) -> Result<Reason, Reason> {
    let (kind, _code) = parse::icmp(ctx, ip.l4_off)?;
    Ok(match kind {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        1..=4 => Reason::IcmpError,
        128 => echo_request(settings),
        129 => Reason::EchoReply,
        // Multicast listener query/report/done and MLDv2 report: switches with MLD snooping
        // stop forwarding neighbour solicitations to hosts that do not answer queries.
        130..=132 | 143 => Reason::Ndp,
        // Router/neighbour solicitation and advertisement, redirect.
        133..=137 => Reason::Ndp,
        _ => Reason::IcmpOther,
    })
}
