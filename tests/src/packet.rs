//! Crafted packets for BPF_PROG_TEST_RUN fixtures: Ethernet, VLAN tags, IPv4 (options,
//! fragments), IPv6 (extension headers), TCP, UDP, ICMP, ICMPv6. Checksums are left zero:
//! XDP runs before the kernel checks them, and the policy never reads them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

#[derive(Clone, Debug)]
pub enum Upper {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        data_offset: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        kind: u8,
        code: u8,
    },
    Icmp6 {
        kind: u8,
        code: u8,
    },
    /// Any other IP protocol, with a few payload bytes.
    Other {
        proto: u8,
    },
}

impl Upper {
    /// Length of the transport header (the part the policy must see whole).
    fn header_len(&self) -> usize {
        match self {
            Upper::Tcp { .. } => 20,
            Upper::Udp { .. } | Upper::Icmp { .. } | Upper::Icmp6 { .. } => 8,
            Upper::Other { .. } => 0,
        }
    }

    fn proto(&self) -> u8 {
        match self {
            Upper::Tcp { .. } => 6,
            Upper::Udp { .. } => 17,
            Upper::Icmp { .. } => 1,
            Upper::Icmp6 { .. } => 58,
            Upper::Other { proto } => *proto,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match *self {
            Upper::Tcp {
                sport,
                dport,
                flags,
                data_offset,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&1000u32.to_be_bytes());
                h[12] = data_offset << 4;
                h[13] = flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h
            }
            Upper::Udp { sport, dport } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&16u16.to_be_bytes());
                h.extend_from_slice(b"mailguar");
                h
            }
            Upper::Icmp { kind, code } | Upper::Icmp6 { kind, code } => {
                let mut h = vec![kind, code, 0, 0, 0, 1, 0, 1];
                h.extend_from_slice(b"payload!");
                h
            }
            Upper::Other { .. } => vec![0u8; 16],
        }
    }
}

/// An IPv6 extension header.
#[derive(Clone, Debug)]
pub enum Ext {
    HopByHop,
    DestOpts,
    Routing,
    /// Authentication header (length in 4-octet units).
    Auth,
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl Ext {
    fn proto(&self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment { .. } => 44,
            Ext::Auth => 51,
            Ext::DestOpts => 60,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            // 16 bytes: length field 1 (8-octet units beyond the first 8), PadN options.
            Ext::HopByHop | Ext::DestOpts => {
                let mut h = vec![next, 1, 1, 12];
                h.resize(16, 0);
                h
            }
            // Type 0 routing header with no addresses left: 8 bytes.
            Ext::Routing => vec![next, 0, 0, 0, 0, 0, 0, 0],
            // 24 bytes: payload length 4 (32-bit words minus 2), SPI, sequence, 8-byte ICV.
            Ext::Auth => {
                let mut h = vec![next, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
                h.resize(24, 0xaa);
                h
            }
            Ext::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(*more);
                let mut h = vec![next, 0];
                h.extend_from_slice(&field.to_be_bytes());
                h.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                h
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Net {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        options: usize,
        frag_offset: u16,
        more_fragments: bool,
        version: u8,
        ihl: Option<u8>,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ext: Vec<Ext>,
        version: u8,
        hop_limit: u8,
    },
}

/// A packet under construction.
#[derive(Clone, Debug)]
pub struct Packet {
    vlans: Vec<u16>,
    ethertype: Option<u16>,
    net: Option<Net>,
    upper: Option<Upper>,
    /// Bytes of data after the transport header.
    payload: usize,
}

pub const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

impl Packet {
    fn ip(net: Net, upper: Upper) -> Packet {
        Packet {
            vlans: vec![],
            ethertype: None,
            net: Some(net),
            upper: Some(upper),
            payload: 0,
        }
    }

    pub fn v4(src: &str, dst: &str, upper: Upper) -> Packet {
        Packet::ip(
            Net::V4 {
                src: src.parse().expect("IPv4 source"),
                dst: dst.parse().expect("IPv4 destination"),
                options: 0,
                frag_offset: 0,
                more_fragments: false,
                version: 4,
                ihl: None,
            },
            upper,
        )
    }

    pub fn v6(src: &str, dst: &str, upper: Upper) -> Packet {
        Packet::ip(
            Net::V6 {
                src: src.parse().expect("IPv6 source"),
                dst: dst.parse().expect("IPv6 destination"),
                ext: vec![],
                version: 6,
                hop_limit: 64,
            },
            upper,
        )
    }

    /// A frame of another EtherType (ARP, LLDP, ...) with a 28-byte body.
    pub fn ethertype(ethertype: u16) -> Packet {
        Packet {
            vlans: vec![],
            ethertype: Some(ethertype),
            net: None,
            upper: None,
            payload: 0,
        }
    }

    /// Adds a VLAN tag (outermost first); 802.1ad for the first of two or more tags.
    pub fn vlan(mut self, id: u16) -> Packet {
        self.vlans.push(id);
        self
    }

    /// IPv4 options of `bytes` bytes (a multiple of 4; NOPs ending in End of List).
    pub fn ip_options(mut self, bytes: usize) -> Packet {
        assert!(bytes.is_multiple_of(4) && bytes <= 40);
        if let Some(Net::V4 { options, .. }) = &mut self.net {
            *options = bytes;
        }
        self
    }

    /// Sets the IPv4 fragment offset (in 8-byte units) and the More Fragments flag.
    pub fn fragment(mut self, offset: u16, more: bool) -> Packet {
        match &mut self.net {
            Some(Net::V4 {
                frag_offset,
                more_fragments,
                ..
            }) => {
                *frag_offset = offset;
                *more_fragments = more;
            }
            _ => panic!("fragment() is for IPv4; use ext(Ext::Fragment) for IPv6"),
        }
        self
    }

    /// Appends `n` bytes of data after the transport header.
    pub fn payload(mut self, n: usize) -> Packet {
        self.payload = n;
        self
    }

    /// Overrides the IP version nibble.
    pub fn version(mut self, v: u8) -> Packet {
        match &mut self.net {
            Some(Net::V4 { version, .. }) | Some(Net::V6 { version, .. }) => *version = v,
            None => {}
        }
        self
    }

    /// Overrides the IPv4 header length field (32-bit words).
    pub fn ihl(mut self, words: u8) -> Packet {
        if let Some(Net::V4 { ihl, .. }) = &mut self.net {
            *ihl = Some(words);
        }
        self
    }

    /// Sets the IPv6 hop limit (64 unless set; neighbour discovery is sent with 255).
    pub fn hop_limit(mut self, hops: u8) -> Packet {
        match &mut self.net {
            Some(Net::V6 { hop_limit, .. }) => *hop_limit = hops,
            _ => panic!("hop_limit() is for IPv6"),
        }
        self
    }

    /// Appends an IPv6 extension header (in order, after the fixed header).
    pub fn ext(mut self, e: Ext) -> Packet {
        match &mut self.net {
            Some(Net::V6 { ext, .. }) => ext.push(e),
            _ => panic!("ext() is for IPv6"),
        }
        self
    }

    /// Offsets where each header starts, and where the last header (the transport header, or
    /// the Ethernet header of a non-IP frame) ends: the places truncation tests cut around.
    pub fn boundaries(&self) -> Vec<usize> {
        self.build_with_boundaries().1
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_boundaries().0
    }

    fn build_with_boundaries(&self) -> (Vec<u8>, Vec<usize>) {
        let mut b = Vec::with_capacity(128);
        let mut marks = vec![0];
        b.extend_from_slice(&MAC_DST);
        b.extend_from_slice(&MAC_SRC);
        let payload_type = match (&self.net, self.ethertype) {
            (_, Some(t)) => t,
            (Some(Net::V4 { .. }), None) => 0x0800,
            (Some(Net::V6 { .. }), None) => 0x86dd,
            (None, None) => unreachable!("a packet has a network layer or an EtherType"),
        };
        for (i, id) in self.vlans.iter().enumerate() {
            let tpid: u16 = if i == 0 && self.vlans.len() > 1 {
                0x88a8
            } else {
                0x8100
            };
            b.extend_from_slice(&tpid.to_be_bytes());
            marks.push(b.len());
            b.extend_from_slice(&id.to_be_bytes());
        }
        b.extend_from_slice(&payload_type.to_be_bytes());
        marks.push(b.len());
        let mut upper = self
            .upper
            .as_ref()
            .map(|u| u.bytes())
            .unwrap_or_else(|| vec![0x42; 28]);
        upper.extend(std::iter::repeat_n(0x61, self.payload));
        match &self.net {
            None => b.extend_from_slice(&upper),
            Some(Net::V4 {
                src,
                dst,
                options,
                frag_offset,
                more_fragments,
                version,
                ihl,
            }) => {
                let proto = self.upper.as_ref().map_or(0, |u| u.proto());
                let header_len = 20 + options;
                let words = ihl.unwrap_or((header_len / 4) as u8);
                let total = (header_len + upper.len()) as u16;
                b.push((version << 4) | (words & 0x0f));
                b.push(0);
                b.extend_from_slice(&total.to_be_bytes());
                b.extend_from_slice(&[0x12, 0x34]);
                let flags_frag = (u16::from(*more_fragments) << 13) | (frag_offset & 0x1fff);
                b.extend_from_slice(&flags_frag.to_be_bytes());
                b.push(64);
                b.push(proto);
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&src.octets());
                b.extend_from_slice(&dst.octets());
                if *options > 0 {
                    b.extend(std::iter::repeat_n(1u8, options - 1)); // NOP
                    b.push(0); // End of options list
                }
                marks.push(b.len());
                b.extend_from_slice(&upper);
            }
            Some(Net::V6 {
                src,
                dst,
                ext,
                version,
                hop_limit,
            }) => {
                let upper_proto = self.upper.as_ref().map_or(59, |u| u.proto());
                let mut ext_bytes = Vec::new();
                let mut ext_marks = Vec::new();
                for (i, e) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map_or(upper_proto, |n| n.proto());
                    ext_marks.push(ext_bytes.len());
                    ext_bytes.extend(e.bytes(next));
                }
                let first = ext.first().map_or(upper_proto, |e| e.proto());
                b.extend_from_slice(&[version << 4, 0, 0, 0]);
                b.extend_from_slice(&((ext_bytes.len() + upper.len()) as u16).to_be_bytes());
                b.push(first);
                b.push(*hop_limit);
                b.extend_from_slice(&src.octets());
                b.extend_from_slice(&dst.octets());
                let base = b.len();
                marks.extend(ext_marks.iter().map(|m| base + m));
                b.extend_from_slice(&ext_bytes);
                marks.push(b.len());
                b.extend_from_slice(&upper);
            }
        }
        let header_end = match (&self.net, &self.upper) {
            (Some(_), Some(u)) => b.len() - upper.len() + u.header_len(),
            _ => *marks.last().expect("marks"),
        };
        marks.push(header_end);
        marks.dedup();
        (b, marks)
    }
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Upper {
    Upper::Tcp {
        sport,
        dport,
        flags,
        data_offset: 5,
    }
}

pub fn udp(sport: u16, dport: u16) -> Upper {
    Upper::Udp { sport, dport }
}

pub fn icmp(kind: u8, code: u8) -> Upper {
    Upper::Icmp { kind, code }
}

pub fn icmp6(kind: u8, code: u8) -> Upper {
    Upper::Icmp6 { kind, code }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_layout() {
        let p = Packet::v4("198.18.0.2", "198.18.0.1", tcp(40000, 25, SYN)).build();
        assert_eq!(p.len(), 14 + 20 + 20);
        assert_eq!(&p[12..14], &[0x08, 0x00]);
        assert_eq!(p[14], 0x45);
        assert_eq!(p[23], 6);
        assert_eq!(&p[26..30], &[198, 18, 0, 2]);
        assert_eq!(&p[36..38], &[0, 25], "destination port in network order");
        assert_eq!(p[46], 0x50);
        assert_eq!(p[47], SYN);
    }

    #[test]
    fn vlan_options_and_boundaries() {
        let pkt = Packet::v4("198.18.0.2", "198.18.0.1", tcp(1, 25, SYN))
            .vlan(10)
            .vlan(20)
            .ip_options(8);
        let p = pkt.build();
        assert_eq!(&p[12..14], &[0x88, 0xa8]);
        assert_eq!(&p[16..18], &[0x81, 0x00]);
        assert_eq!(&p[20..22], &[0x08, 0x00]);
        assert_eq!(p[22], 0x47, "IHL 7 with 8 option bytes");
        assert_eq!(pkt.boundaries(), vec![0, 14, 18, 22, 50, 70]);
    }

    #[test]
    fn ipv6_extension_chain() {
        let pkt = Packet::v6("2001:db8::2", "2001:db8::1", tcp(1, 25, SYN))
            .ext(Ext::HopByHop)
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            });
        let p = pkt.build();
        assert_eq!(p[14] >> 4, 6);
        assert_eq!(p[14 + 6], 0, "first next header: hop-by-hop");
        assert_eq!(p[54], 44, "hop-by-hop's next header: fragment");
        assert_eq!(p[70], 6, "fragment's next header: TCP");
        assert_eq!(&p[72..74], &[0, 1], "offset 0, M flag");
        assert_eq!(pkt.boundaries(), vec![0, 14, 54, 70, 78, 98]);
        let udp = Packet::v4("198.18.0.2", "198.18.0.1", udp(1, 53));
        assert_eq!(
            udp.boundaries(),
            vec![0, 14, 34, 42],
            "ends after the UDP header, not the payload"
        );
    }
}
