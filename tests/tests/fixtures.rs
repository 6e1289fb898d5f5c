//! Tier 2: the real XDP program under BPF_PROG_TEST_RUN, over tables of crafted packets. Each
//! packet must get the expected action and move exactly its reason's counter by one.
//!
//! Each test runs in its own private network namespace, where it opens the sockets that the
//! reply fixtures must find (or must not find).

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
};

use guard_common::{Reason, Verdict};
use guard_tests::{
    fixture::{Fixture, Harness},
    netns::{enter_private_netns, sh},
    packet::{ACK, CWR, ECE, Ext, FIN, PSH, Packet, RST, SYN, URG, Upper, icmp, icmp6, tcp, udp},
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Addresses of the host under test and of its peers (all in 198.18.0.0/15 and 2001:db8::/32).
const HOST4: &str = "198.18.0.1";
const PEER4: &str = "198.18.0.2";
const HOST6: &str = "2001:db8::1";
const PEER6: &str = "2001:db8::2";
/// A second local network, on a veth pair, where "remote" peers live.
const LAN4_HOST: &str = "198.18.1.1";
const LAN4_PEER: &str = "198.18.1.99";
const LAN6_HOST: &str = "2001:db8:1::1";
const LAN6_PEER: &str = "2001:db8:1::99";

const CONFIG: &str = r#"
mail_ports = [25, 465, 587, 110, 995, 143, 993]
icmp_echo = "allow"

[[open_ports]]
port = 22

[[open_ports]]
port = 2222
from = ["198.18.0.0/16", "2001:db8:1::/48"]

[[open_ports]]
port = 51820
protocol = "udp"

[[open_ports]]
port = 5353
protocol = "udp"
from = ["198.18.7.0/24"]
"#;

/// Ports of the sockets opened for the reply fixtures.
#[derive(Clone, Copy)]
struct Sockets {
    /// Established TCP pair over loopback: listener port and client port (IPv4, IPv6).
    tcp4: (u16, u16),
    tcp6: (u16, u16),
    /// Local ports of TCP connections stuck in SYN-SENT towards LAN*_PEER:25.
    syn_sent4: u16,
    syn_sent6: u16,
    /// Local ports of UDP sockets connected to LAN*_PEER:53.
    udp4: u16,
    udp6: u16,
    /// A bound, unconnected UDP socket on HOST4 (a listener: not a reply path).
    udp_unconnected: u16,
}

/// Keeps the sockets of `Sockets` open.
struct SocketHold {
    _held: Vec<Box<dyn std::any::Any>>,
}

/// Addresses, a veth pair for the "LAN", and the sockets, in the calling thread's private
/// network namespace.
fn open_sockets() -> (Sockets, SocketHold) {
    sh(&["ip", "addr", "add", &format!("{HOST4}/32"), "dev", "lo"]);
    sh(&["ip", "addr", "add", &format!("{HOST6}/128"), "dev", "lo"]);
    sh(&[
        "ip", "link", "add", "fx0", "type", "veth", "peer", "name", "fx1",
    ]);
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{LAN4_HOST}/24"),
        "dev",
        "fx0",
    ]);
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{LAN6_HOST}/64"),
        "dev",
        "fx0",
        "nodad",
    ]);
    sh(&["ip", "link", "set", "fx0", "up"]);
    sh(&["ip", "link", "set", "fx1", "up"]);

    let mut held: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut established = |host: &str| {
        let listener = TcpListener::bind(format!("{host}:0")).expect("bind listener");
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).expect("connect over loopback");
        let (server_side, _) = listener.accept().expect("accept");
        let ports = (addr.port(), client.local_addr().unwrap().port());
        held.push(Box::new(listener));
        held.push(Box::new(client));
        held.push(Box::new(server_side));
        ports
    };
    let tcp4 = established(HOST4);
    let tcp6 = established(&format!("[{HOST6}]"));

    let mut syn_sent = |peer: &str, domain: Domain| {
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.set_nonblocking(true).unwrap();
        let to: SocketAddr = peer.parse().unwrap();
        // Nobody answers on the veth: the connection stays in SYN-SENT.
        let _ = s.connect(&SockAddr::from(to));
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        held.push(Box::new(s));
        port
    };
    let syn_sent4 = syn_sent(&format!("{LAN4_PEER}:25"), Domain::IPV4);
    let syn_sent6 = syn_sent(&format!("[{LAN6_PEER}]:25"), Domain::IPV6);

    let mut connected_udp = |bind: &str, peer: &str| {
        let s = UdpSocket::bind(bind).unwrap();
        s.connect(peer).unwrap();
        let port = s.local_addr().unwrap().port();
        held.push(Box::new(s));
        port
    };
    let udp4 = connected_udp(&format!("{LAN4_HOST}:0"), &format!("{LAN4_PEER}:53"));
    let udp6 = connected_udp(&format!("[{LAN6_HOST}]:0"), &format!("[{LAN6_PEER}]:53"));

    let unconnected = UdpSocket::bind(format!("{HOST4}:0")).unwrap();
    let udp_unconnected = unconnected.local_addr().unwrap().port();
    held.push(Box::new(unconnected));

    (
        Sockets {
            tcp4,
            tcp6,
            syn_sent4,
            syn_sent6,
            udp4,
            udp6,
            udp_unconnected,
        },
        SocketHold { _held: held },
    )
}

fn f(name: &str, p: Packet, expect: Reason) -> Fixture {
    Fixture::new(name, p.build(), expect)
}

/// The policy table: every reason at least once (checked by `every_reason_has_a_fixture`).
fn policy_table(s: &Sockets) -> Vec<Fixture> {
    use Reason::*;
    let v4 = |u: Upper| Packet::v4(PEER4, HOST4, u);
    let v6 = |u: Upper| Packet::v6(PEER6, HOST6, u);
    let mut t = vec![
        // Non-IP and VLANs.
        f("ARP request", Packet::ethertype(0x0806), NonIp),
        f("LLDP", Packet::ethertype(0x88cc), NonIp),
        f(
            "ARP in one VLAN tag",
            Packet::ethertype(0x0806).vlan(10),
            NonIp,
        ),
        f(
            "ARP in two VLAN tags",
            Packet::ethertype(0x0806).vlan(10).vlan(20),
            NonIp,
        ),
        f(
            "SYN to 25 in one VLAN tag",
            v4(tcp(40000, 25, SYN)).vlan(10),
            MailNew,
        ),
        f(
            "SYN to 25 in two VLAN tags",
            v4(tcp(40000, 25, SYN)).vlan(10).vlan(20),
            MailNew,
        ),
        f(
            "SYN to 3306 in two VLAN tags",
            v4(tcp(40000, 3306, SYN)).vlan(10).vlan(20),
            TcpNotAllowed,
        ),
        f(
            "IPv6 SYN to 25 in two VLAN tags",
            v6(tcp(40000, 25, SYN)).vlan(10).vlan(20),
            MailNew,
        ),
        f(
            "three VLAN tags",
            v4(tcp(40000, 25, SYN)).vlan(1).vlan(2).vlan(3),
            VlanTooDeep,
        ),
        // IPv4 header.
        f(
            "IPv4 version field 5",
            v4(tcp(40000, 25, SYN)).version(5),
            Malformed,
        ),
        f("IPv4 IHL 4", v4(tcp(40000, 25, SYN)).ihl(4), Malformed),
        f("IPv4 IHL 0", v4(tcp(40000, 25, SYN)).ihl(0), Malformed),
        f(
            "IPv4 options 4 bytes, SYN to 25",
            v4(tcp(40000, 25, SYN)).ip_options(4),
            MailNew,
        ),
        f(
            "IPv4 options 20 bytes, SYN to 587",
            v4(tcp(40000, 587, SYN)).ip_options(20),
            MailNew,
        ),
        f(
            "IPv4 options 40 bytes (IHL 15), SYN to 3306",
            v4(tcp(40000, 3306, SYN)).ip_options(40),
            TcpNotAllowed,
        ),
        f(
            "IPv4 options 40 bytes, SYN to 22",
            v4(tcp(40000, 22, SYN)).ip_options(40),
            OpenPort,
        ),
        // IHL says 60 bytes of header but the packet holds 20 of IP header + 20 of TCP.
        f(
            "IPv4 IHL beyond the packet",
            v4(tcp(40000, 25, SYN)).ihl(15),
            Truncated,
        ),
        // IPv6 header.
        f(
            "IPv6 version field 4",
            v6(tcp(40000, 25, SYN)).version(4),
            Malformed,
        ),
        // Mail ports.
        f("SYN to 25", v4(tcp(40000, 25, SYN)), MailNew),
        f("SYN to 465", v4(tcp(40000, 465, SYN)), MailNew),
        f("SYN to 587", v4(tcp(40000, 587, SYN)), MailNew),
        f("SYN to 110", v4(tcp(40000, 110, SYN)), MailNew),
        f("SYN to 995", v4(tcp(40000, 995, SYN)), MailNew),
        f("SYN to 143", v4(tcp(40000, 143, SYN)), MailNew),
        f("SYN to 993", v4(tcp(40000, 993, SYN)), MailNew),
        f(
            "ECN SYN (SYN+ECE+CWR) to 25",
            v4(tcp(40000, 25, SYN | ECE | CWR)),
            MailNew,
        ),
        f("ACK to 25", v4(tcp(40000, 25, ACK)), MailOther),
        f("PSH+ACK to 587", v4(tcp(40000, 587, PSH | ACK)), MailOther),
        f("FIN+ACK to 993", v4(tcp(40000, 993, FIN | ACK)), MailOther),
        f("RST to 25", v4(tcp(40000, 25, RST)), MailOther),
        f("IPv6 SYN to 25", v6(tcp(40000, 25, SYN)), MailNew),
        f("IPv6 ACK to 993", v6(tcp(40000, 993, ACK)), MailOther),
        // Byte-order traps: 25 and 22 stored byte-swapped would be 6400 and 5632.
        f(
            "SYN to 6400 (25 byte-swapped)",
            v4(tcp(40000, 6400, SYN)),
            TcpNotAllowed,
        ),
        f(
            "SYN to 5632 (22 byte-swapped)",
            v4(tcp(40000, 5632, SYN)),
            TcpNotAllowed,
        ),
        f(
            "SYN from port 25 to 6400",
            v4(tcp(25, 6400, SYN)),
            TcpNotAllowed,
        ),
        f(
            "UDP to 7883 (51820 byte-swapped)",
            v4(udp(40000, 7883)),
            UdpNotAllowed,
        ),
        // Open ports.
        f("SYN to 22", v4(tcp(40000, 22, SYN)), OpenPort),
        f("IPv6 SYN to 22", v6(tcp(40000, 22, SYN)), OpenPort),
        f(
            "SYN to 2222 from an allowed /16",
            Packet::v4("198.18.200.9", HOST4, tcp(40000, 2222, SYN)),
            OpenPort,
        ),
        f(
            "SYN to 2222 from outside the /16",
            Packet::v4("198.19.0.9", HOST4, tcp(40000, 2222, SYN)),
            OpenPortDenied,
        ),
        f(
            "ACK to 2222 from outside the /16",
            Packet::v4("198.19.0.9", HOST4, tcp(40000, 2222, ACK)),
            OpenPortDenied,
        ),
        f(
            "IPv6 SYN to 2222 from the allowed /48",
            Packet::v6("2001:db8:1:ffff::5", HOST6, tcp(40000, 2222, SYN)),
            OpenPort,
        ),
        f(
            "IPv6 SYN to 2222 from outside the /48",
            Packet::v6("2001:db8:2::5", HOST6, tcp(40000, 2222, SYN)),
            OpenPortDenied,
        ),
        f(
            "UDP to 51820 (open, any source)",
            v4(udp(40000, 51820)),
            OpenPort,
        ),
        f("IPv6 UDP to 51820", v6(udp(40000, 51820)), OpenPort),
        f(
            "TCP SYN to 51820 (opened for UDP only)",
            v4(tcp(40000, 51820, SYN)),
            TcpNotAllowed,
        ),
        f(
            "UDP to 5353 from the allowed /24",
            Packet::v4("198.18.7.7", HOST4, udp(5353, 5353)),
            OpenPort,
        ),
        f(
            "UDP to 5353 from elsewhere",
            Packet::v4("198.18.8.7", HOST4, udp(5353, 5353)),
            OpenPortDenied,
        ),
        f(
            "IPv6 UDP to 5353 (only IPv4 sources allowed)",
            v6(udp(5353, 5353)),
            OpenPortDenied,
        ),
        // Closed ports and replies.
        f("SYN to 3306", v4(tcp(40000, 3306, SYN)), TcpNotAllowed),
        f("SYN to 8080", v4(tcp(40000, 8080, SYN)), TcpNotAllowed),
        f("IPv6 SYN to 3306", v6(tcp(40000, 3306, SYN)), TcpNotAllowed),
        f(
            "ACK to 3306, no socket",
            v4(tcp(40000, 3306, ACK)),
            TcpNotAllowed,
        ),
        f(
            "ACK to a listening socket",
            Packet::v4(PEER4, HOST4, tcp(40000, s.tcp4.0, ACK)),
            TcpNotAllowed,
        ),
        f(
            "SYN to a listening socket on a closed port",
            Packet::v4(PEER4, HOST4, tcp(40000, s.tcp4.0, SYN)),
            TcpNotAllowed,
        ),
        f(
            "ACK on an established connection (to the client side)",
            Packet::v4(HOST4, HOST4, tcp(s.tcp4.0, s.tcp4.1, ACK)),
            TcpReply,
        ),
        f(
            "PSH+ACK on an established connection (to the server side)",
            Packet::v4(HOST4, HOST4, tcp(s.tcp4.1, s.tcp4.0, PSH | ACK)),
            TcpReply,
        ),
        f(
            "IPv6 ACK on an established connection",
            Packet::v6(HOST6, HOST6, tcp(s.tcp6.0, s.tcp6.1, ACK)),
            TcpReply,
        ),
        f(
            "SYN+ACK answering the host's own connect (SYN-SENT)",
            Packet::v4(LAN4_PEER, LAN4_HOST, tcp(25, s.syn_sent4, SYN | ACK)),
            TcpReply,
        ),
        f(
            "IPv6 SYN+ACK answering the host's own connect",
            Packet::v6(LAN6_PEER, LAN6_HOST, tcp(25, s.syn_sent6, SYN | ACK)),
            TcpReply,
        ),
        f(
            "SYN+ACK from the wrong remote port",
            Packet::v4(LAN4_PEER, LAN4_HOST, tcp(26, s.syn_sent4, SYN | ACK)),
            TcpNotAllowed,
        ),
        f(
            "bare SYN to the port of an outgoing connection",
            Packet::v4(LAN4_PEER, LAN4_HOST, tcp(25, s.syn_sent4, SYN)),
            TcpNotAllowed,
        ),
        f(
            "UDP reply to a connected socket",
            Packet::v4(LAN4_PEER, LAN4_HOST, udp(53, s.udp4)),
            UdpReply,
        ),
        f(
            "IPv6 UDP reply to a connected socket",
            Packet::v6(LAN6_PEER, LAN6_HOST, udp(53, s.udp6)),
            UdpReply,
        ),
        f(
            "UDP from another server to that socket",
            Packet::v4("198.18.1.98", LAN4_HOST, udp(53, s.udp4)),
            UdpNotAllowed,
        ),
        f(
            "UDP to an unconnected (listening) socket",
            Packet::v4(PEER4, HOST4, udp(40000, s.udp_unconnected)),
            UdpNotAllowed,
        ),
        f("UDP to 53, no socket", v4(udp(40000, 53)), UdpNotAllowed),
        f(
            "IPv6 UDP to 53, no socket",
            v6(udp(40000, 53)),
            UdpNotAllowed,
        ),
        f(
            "DHCP reply (67 -> 68)",
            Packet::v4("198.18.0.254", "255.255.255.255", udp(67, 68)),
            DhcpReply,
        ),
        f(
            "DHCP request to us (68 -> 67)",
            v4(udp(68, 67)),
            UdpNotAllowed,
        ),
        f(
            "DHCPv6 reply (547 -> 546)",
            Packet::v6("fe80::1", "fe80::2", udp(547, 546)),
            DhcpReply,
        ),
        f("DHCPv4 ports over IPv6", v6(udp(67, 68)), UdpNotAllowed),
        // TCP sanity.
        f("SYN+FIN to 25", v4(tcp(40000, 25, SYN | FIN)), TcpBadFlags),
        f("null scan to 25", v4(tcp(40000, 25, 0)), TcpBadFlags),
        f(
            "Xmas scan to 25",
            v4(tcp(40000, 25, FIN | PSH | URG)),
            TcpBadFlags,
        ),
        f("FIN scan to 3306", v4(tcp(40000, 3306, FIN)), TcpBadFlags),
        f(
            "IPv6 SYN+RST to 25",
            v6(tcp(40000, 25, SYN | RST)),
            TcpBadFlags,
        ),
        f(
            "TCP data offset 4",
            v4(Upper::Tcp {
                sport: 40000,
                dport: 25,
                flags: SYN,
                data_offset: 4,
            }),
            Malformed,
        ),
        // Fragments.
        f(
            "first fragment of TCP to 25",
            v4(tcp(40000, 25, SYN)).fragment(0, true),
            TcpFragment,
        ),
        f(
            "later fragment of TCP",
            v4(tcp(40000, 25, SYN)).fragment(185, false),
            TcpFragment,
        ),
        f(
            "middle fragment of TCP",
            v4(tcp(40000, 25, ACK)).fragment(185, true),
            TcpFragment,
        ),
        f(
            "later fragment of UDP",
            v4(udp(53, 40000)).fragment(185, false),
            LaterFragment,
        ),
        f(
            "later fragment of ICMP",
            v4(icmp(8, 0)).fragment(185, false),
            LaterFragment,
        ),
        f(
            "first fragment of UDP to an open port",
            v4(udp(40000, 51820)).fragment(0, true),
            OpenPort,
        ),
        f(
            "first fragment of UDP to a closed port",
            v4(udp(40000, 53)).fragment(0, true),
            UdpNotAllowed,
        ),
        f(
            "DF-only (not a fragment) SYN to 25",
            v4(tcp(40000, 25, SYN)).fragment(0, false),
            MailNew,
        ),
        f(
            "IPv6 first fragment of TCP",
            v6(tcp(40000, 25, SYN)).ext(Ext::Fragment {
                offset: 0,
                more: true,
            }),
            TcpFragment,
        ),
        f(
            "IPv6 later fragment of TCP",
            v6(tcp(40000, 25, SYN)).ext(Ext::Fragment {
                offset: 100,
                more: false,
            }),
            TcpFragment,
        ),
        f(
            "IPv6 later fragment of UDP",
            v6(udp(53, 40000)).ext(Ext::Fragment {
                offset: 100,
                more: true,
            }),
            LaterFragment,
        ),
        f(
            "IPv6 atomic fragment, SYN to 25",
            v6(tcp(40000, 25, SYN)).ext(Ext::Fragment {
                offset: 0,
                more: false,
            }),
            MailNew,
        ),
        // IPv6 extension headers.
        f(
            "IPv6 hop-by-hop, SYN to 25",
            v6(tcp(40000, 25, SYN)).ext(Ext::HopByHop),
            MailNew,
        ),
        f(
            "IPv6 hop-by-hop + routing + destination options, SYN to 25",
            v6(tcp(40000, 25, SYN))
                .ext(Ext::HopByHop)
                .ext(Ext::Routing)
                .ext(Ext::DestOpts),
            MailNew,
        ),
        f(
            "IPv6 AH, SYN to 587",
            v6(tcp(40000, 587, SYN)).ext(Ext::Auth),
            MailNew,
        ),
        f(
            "IPv6 hop-by-hop + fragment + AH, SYN to 3306",
            v6(tcp(40000, 3306, SYN))
                .ext(Ext::HopByHop)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: false,
                })
                .ext(Ext::Auth),
            TcpNotAllowed,
        ),
        f(
            "IPv6 six extension headers (the limit), SYN to 25",
            six_ext(v6(tcp(40000, 25, SYN))),
            MailNew,
        ),
        f(
            "IPv6 seven extension headers",
            six_ext(v6(tcp(40000, 25, SYN))).ext(Ext::DestOpts),
            Ipv6ExtTooDeep,
        ),
        f(
            "IPv6 hop-by-hop, UDP reply",
            Packet::v6(LAN6_PEER, LAN6_HOST, udp(53, s.udp6)).ext(Ext::HopByHop),
            UdpReply,
        ),
        // ICMP.
        f("ICMP echo request", v4(icmp(8, 0)), EchoRequestAllowed),
        f("ICMP echo reply", v4(icmp(0, 0)), EchoReply),
        f("ICMP fragmentation needed", v4(icmp(3, 4)), IcmpError),
        f("ICMP port unreachable", v4(icmp(3, 3)), IcmpError),
        f("ICMP time exceeded", v4(icmp(11, 0)), IcmpError),
        f("ICMP parameter problem", v4(icmp(12, 0)), IcmpError),
        f("ICMP redirect", v4(icmp(5, 1)), IcmpOther),
        f("ICMP timestamp request", v4(icmp(13, 0)), IcmpOther),
        f("ICMP source quench", v4(icmp(4, 0)), IcmpOther),
        f("ICMP router advertisement", v4(icmp(9, 0)), IcmpOther),
        f(
            "ICMP echo request in a VLAN with IP options",
            v4(icmp(8, 0)).vlan(5).ip_options(8),
            EchoRequestAllowed,
        ),
        // ICMPv6.
        f("ICMPv6 destination unreachable", v6(icmp6(1, 4)), IcmpError),
        f("ICMPv6 packet too big", v6(icmp6(2, 0)), IcmpError),
        f("ICMPv6 time exceeded", v6(icmp6(3, 0)), IcmpError),
        f("ICMPv6 parameter problem", v6(icmp6(4, 0)), IcmpError),
        f("ICMPv6 echo request", v6(icmp6(128, 0)), EchoRequestAllowed),
        f("ICMPv6 echo reply", v6(icmp6(129, 0)), EchoReply),
        f(
            "NDP router solicitation",
            Packet::v6("fe80::2", "ff02::2", icmp6(133, 0)),
            Ndp,
        ),
        f(
            "NDP router advertisement",
            Packet::v6("fe80::1", "ff02::1", icmp6(134, 0)),
            Ndp,
        ),
        f(
            "NDP neighbour solicitation",
            Packet::v6("fe80::2", "ff02::1:ff00:1", icmp6(135, 0)),
            Ndp,
        ),
        f(
            "NDP neighbour advertisement",
            Packet::v6("fe80::2", "fe80::1", icmp6(136, 0)),
            Ndp,
        ),
        f(
            "NDP redirect",
            Packet::v6("fe80::1", "fe80::2", icmp6(137, 0)),
            Ndp,
        ),
        f(
            "MLD query",
            Packet::v6("fe80::1", "ff02::1", icmp6(130, 0)).ext(Ext::HopByHop),
            Ndp,
        ),
        f(
            "MLDv1 report",
            Packet::v6("fe80::2", "ff02::1:ff00:1", icmp6(131, 0)).ext(Ext::HopByHop),
            Ndp,
        ),
        f(
            "MLD done",
            Packet::v6("fe80::2", "ff02::2", icmp6(132, 0)).ext(Ext::HopByHop),
            Ndp,
        ),
        f(
            "MLDv2 report behind hop-by-hop",
            Packet::v6("fe80::2", "ff02::16", icmp6(143, 0)).ext(Ext::HopByHop),
            Ndp,
        ),
        f(
            "NDP neighbour solicitation in a VLAN",
            Packet::v6("fe80::2", "ff02::1:ff00:1", icmp6(135, 0)).vlan(7),
            Ndp,
        ),
        f(
            "ICMPv6 node information query",
            v6(icmp6(139, 0)),
            IcmpOther,
        ),
        f(
            "ICMPv6 type 200 (private experimentation)",
            v6(icmp6(200, 0)),
            IcmpOther,
        ),
        // Other protocols.
        f("GRE", v4(Upper::Other { proto: 47 }), OtherProtocol),
        f("ESP", v4(Upper::Other { proto: 50 }), OtherProtocol),
        f("SCTP", v4(Upper::Other { proto: 132 }), OtherProtocol),
        f("IPv6 ESP", v6(Upper::Other { proto: 50 }), OtherProtocol),
        f(
            "IPv6 no next header",
            v6(Upper::Other { proto: 59 }),
            OtherProtocol,
        ),
        f("ICMPv6 inside IPv4", v4(icmp6(135, 0)), OtherProtocol),
        f("ICMP inside IPv6", v6(icmp(8, 0)), OtherProtocol),
    ];
    // A minimal 14-byte frame that announces IPv4 and ends there.
    t.push(Fixture::new(
        "Ethernet header only, EtherType IPv4",
        v4(tcp(1, 25, SYN)).build()[..14].to_vec(),
        Truncated,
    ));
    t
}

fn six_ext(p: Packet) -> Packet {
    p.ext(Ext::HopByHop)
        .ext(Ext::DestOpts)
        .ext(Ext::Routing)
        .ext(Ext::Fragment {
            offset: 0,
            more: false,
        })
        .ext(Ext::Auth)
        .ext(Ext::DestOpts)
}

/// Placeholder ports for inspecting the tables without a kernel.
const NO_SOCKETS: Sockets = Sockets {
    tcp4: (1, 2),
    tcp6: (1, 2),
    syn_sent4: 3,
    syn_sent6: 3,
    udp4: 4,
    udp6: 4,
    udp_unconnected: 5,
};

#[test]
fn every_reason_has_a_fixture() {
    let covered: BTreeSet<Reason> = policy_table(&NO_SOCKETS)
        .iter()
        .chain(&echo_dropped_table())
        .map(|f| f.expect)
        .collect();
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .filter(|r| !covered.contains(r))
        .map(|r| r.name())
        .collect();
    assert!(missing.is_empty(), "reasons without a fixture: {missing:?}");
}

#[test]
fn policy_table_verdicts_and_counters() {
    enter_private_netns();
    let (sockets, _hold) = open_sockets();
    let h = Harness::new(CONFIG);
    let n = h.check_all(&policy_table(&sockets));
    println!("{n} policy fixtures passed");
}

/// Every packet kind of the policy table, cut at every header boundary and one byte into
/// each header: each cut must count as `truncated` and be dropped, except cuts that leave
/// a whole non-IP frame.
#[test]
fn truncation_at_every_header_boundary() {
    enter_private_netns();
    let h = Harness::new(CONFIG);
    let shapes = [
        ("IPv4 TCP", Packet::v4(PEER4, HOST4, tcp(40000, 25, SYN))),
        (
            "IPv4 TCP, 2 VLANs, options",
            Packet::v4(PEER4, HOST4, tcp(40000, 25, SYN))
                .vlan(1)
                .vlan(2)
                .ip_options(12),
        ),
        ("IPv4 UDP", Packet::v4(PEER4, HOST4, udp(40000, 53))),
        ("IPv4 ICMP", Packet::v4(PEER4, HOST4, icmp(8, 0))),
        ("IPv6 TCP", Packet::v6(PEER6, HOST6, tcp(40000, 25, SYN))),
        ("IPv6 ICMPv6", Packet::v6(PEER6, HOST6, icmp6(135, 0))),
        (
            "IPv6 TCP behind 4 extension headers",
            Packet::v6(PEER6, HOST6, tcp(40000, 25, SYN))
                .ext(Ext::HopByHop)
                .ext(Ext::Routing)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: false,
                })
                .ext(Ext::Auth),
        ),
        (
            "IPv6 UDP, 1 VLAN, hop-by-hop",
            Packet::v6(PEER6, HOST6, udp(40000, 53))
                .vlan(3)
                .ext(Ext::HopByHop),
        ),
    ];
    let mut fixtures = Vec::new();
    for (name, shape) in shapes {
        let full = shape.build();
        let bounds = shape.boundaries();
        let mut cuts = BTreeSet::new();
        for w in bounds.windows(2) {
            // Cut where the header starts, one byte into it, and one byte before its end.
            let (start, end) = (w[0], w[1]);
            cuts.extend(
                [start, start + 1, end - 1]
                    .into_iter()
                    .filter(|&c| c > 0 && c < end),
            );
        }
        for cut in cuts {
            // BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header.
            if cut < 14 {
                continue;
            }
            fixtures.push(Fixture::new(
                format!("{name} cut at {cut} of {}", full.len()),
                full[..cut].to_vec(),
                Reason::Truncated,
            ));
        }
    }
    let n = h.check_all(&fixtures);
    assert!(n >= 40, "only {n} truncation cases");
    println!("{n} truncation fixtures passed");
}

/// Reference classification of TCP flags, from DESIGN.md and the README, written
/// independently of the kernel code.
fn flags_are_impossible(flags: u8) -> bool {
    let has = |f: u8| flags & f != 0;
    let core = flags & (FIN | SYN | RST | ACK);
    core == 0
        || (has(SYN) && has(FIN))
        || (has(SYN) && has(RST))
        || (has(FIN) && has(RST))
        || (has(FIN) && !has(ACK))
}

#[test]
fn tcp_flags_all_256_combinations() {
    enter_private_netns();
    let h = Harness::new(CONFIG);
    let mut fixtures = Vec::new();
    for flags in 0..=255u8 {
        let (mail, closed) = if flags_are_impossible(flags) {
            (Reason::TcpBadFlags, Reason::TcpBadFlags)
        } else if flags & (SYN | ACK) == SYN {
            (Reason::MailNew, Reason::TcpNotAllowed)
        } else {
            // Not a connection attempt: to a closed port it needs a socket, and there is none.
            (Reason::MailOther, Reason::TcpNotAllowed)
        };
        fixtures.push(f(
            &format!("flags {flags:#04x} to 25"),
            Packet::v4(PEER4, HOST4, tcp(40000, 25, flags)),
            mail,
        ));
        fixtures.push(f(
            &format!("flags {flags:#04x} to 3306"),
            Packet::v4(PEER4, HOST4, tcp(40000, 3306, flags)),
            closed,
        ));
        fixtures.push(f(
            &format!("IPv6 flags {flags:#04x} to 993"),
            Packet::v6(PEER6, HOST6, tcp(40000, 993, flags)),
            mail,
        ));
    }
    let bad = fixtures
        .iter()
        .filter(|f| f.expect == Reason::TcpBadFlags)
        .count()
        / 3;
    // Of the 16 combinations of FIN/SYN/RST/ACK, 10 are impossible (none; FIN alone; SYN+FIN
    // with any of RST/ACK: 4; SYN+RST without FIN: 2; FIN+RST without SYN: 2), each with all
    // 16 combinations of PSH/URG/ECE/CWR.
    assert_eq!(bad, 10 * 16, "reference classification changed");
    h.check_all(&fixtures);
    // URG with SYN is odd but not impossible: it still passes to mail ports.
    h.check(&f(
        "SYN+URG to 25",
        Packet::v4(PEER4, HOST4, tcp(1, 25, SYN | URG)),
        Reason::MailNew,
    ))
    .unwrap();
}

/// Packets under `icmp_echo = "drop"`.
fn echo_dropped_table() -> Vec<Fixture> {
    vec![
        f(
            "ICMP echo request, echo dropped",
            Packet::v4(PEER4, HOST4, icmp(8, 0)),
            Reason::EchoRequestDenied,
        ),
        f(
            "ICMPv6 echo request, echo dropped",
            Packet::v6(PEER6, HOST6, icmp6(128, 0)),
            Reason::EchoRequestDenied,
        ),
        // Errors and NDP are not affected by the echo setting.
        f(
            "ICMP fragmentation needed, echo dropped",
            Packet::v4(PEER4, HOST4, icmp(3, 4)),
            Reason::IcmpError,
        ),
        f(
            "ICMPv6 packet too big, echo dropped",
            Packet::v6(PEER6, HOST6, icmp6(2, 0)),
            Reason::IcmpError,
        ),
        f(
            "NDP NS, echo dropped",
            Packet::v6("fe80::2", "ff02::1:ff00:1", icmp6(135, 0)),
            Reason::Ndp,
        ),
        f(
            "echo reply, echo dropped",
            Packet::v4(PEER4, HOST4, icmp(0, 0)),
            Reason::EchoReply,
        ),
    ]
}

#[test]
fn echo_requests_follow_the_setting() {
    enter_private_netns();
    let mut h = Harness::new(CONFIG);
    let ping4 = f(
        "ICMP echo request",
        Packet::v4(PEER4, HOST4, icmp(8, 0)),
        Reason::EchoRequestAllowed,
    );
    let ping6 = f(
        "ICMPv6 echo request",
        Packet::v6(PEER6, HOST6, icmp6(128, 0)),
        Reason::EchoRequestAllowed,
    );
    h.check(&ping4).unwrap();
    h.check(&ping6).unwrap();
    h.reconfigure(&CONFIG.replace("icmp_echo = \"allow\"", "icmp_echo = \"drop\""));
    let denied = echo_dropped_table();
    h.check_all(&denied);
}

#[test]
fn monitor_mode_passes_everything_and_counts_the_verdict() {
    enter_private_netns();
    let (sockets, _hold) = open_sockets();
    let h = Harness::new(&format!("monitor = true\n{CONFIG}"));
    let table = policy_table(&sockets);
    let drops = table
        .iter()
        .filter(|f| f.expect.verdict() == Verdict::Drop)
        .count();
    assert!(drops > 30, "the table has {drops} would-drop packets");
    let failures: Vec<String> = table
        .iter()
        .filter_map(|f| h.check_with_action(f, Verdict::Pass).err())
        .collect();
    assert!(
        failures.is_empty(),
        "monitor mode:\n  {}",
        failures.join("\n  ")
    );
}

/// Reconfiguring moves ports between rules without leaving stale entries.
#[test]
fn reconfigured_ports_take_effect() {
    enter_private_netns();
    let mut h = Harness::new(CONFIG);
    let syn = |port| Packet::v4(PEER4, HOST4, tcp(40000, port, SYN));
    h.check(&f("SYN to 2525 before", syn(2525), Reason::TcpNotAllowed))
        .unwrap();
    h.reconfigure(
        "mail_ports = [25, 2525]\n[[open_ports]]\nport = 3306\nfrom = [\"198.18.0.2\"]\n",
    );
    h.check_all(&[
        f("SYN to 2525 after", syn(2525), Reason::MailNew),
        f(
            "SYN to 587 after it left mail_ports",
            syn(587),
            Reason::TcpNotAllowed,
        ),
        f(
            "SYN to 22 after it left open_ports",
            syn(22),
            Reason::TcpNotAllowed,
        ),
        f(
            "SYN to 3306 from the one allowed host",
            syn(3306),
            Reason::OpenPort,
        ),
        f(
            "SYN to 2222 after its rule went",
            Packet::v4("198.18.200.9", HOST4, tcp(1, 2222, SYN)),
            Reason::TcpNotAllowed,
        ),
    ]);
    h.check(&f(
        "SYN to 3306 from another host",
        Packet::v4("198.18.0.3", HOST4, tcp(1, 3306, SYN)),
        Reason::OpenPortDenied,
    ))
    .unwrap();
}

/// Prints the verifier's work for the XDP program, and keeps it well inside the kernel's
/// one-million-instruction limit.
#[test]
fn verifier_instruction_count() {
    let h = Harness::new(CONFIG);
    let n = h
        .guard()
        .verified_instructions()
        .expect("program info")
        .expect("kernel reports verified_insns");
    println!("verifier: mailguard_xdp processed {n} instructions (kernel limit 1000000)");
    assert!(n < 500_000, "verifier processed {n} instructions");
}
