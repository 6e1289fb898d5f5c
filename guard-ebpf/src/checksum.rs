//! The Internet checksum (RFC 1071), for the packets XDP writes: mailguard's RST
//! (`reject.rs`) and the benchmark's SYN flood generator (tests/reference-ebpf).

/// Sum of big-endian 16-bit words (`b` has an even length).
#[inline(always)]
pub fn sum16(b: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < b.len() {
        sum += u16::from_be_bytes([b[i], b[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// The Internet checksum of a 32-bit sum: folded to 16 bits, complemented.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
