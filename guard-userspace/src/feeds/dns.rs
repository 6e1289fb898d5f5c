//! A small stub DNS client for the SPF lookups: A, AAAA, MX and TXT queries over UDP (TCP when
//! the answer is truncated), to the configured server or the system's (`/etc/resolv.conf`).
//! Answers are checked against the query (id, name, type) before they are believed.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

/// Record types mailguard asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    A = 1,
    Mx = 15,
    Txt = 16,
    Aaaa = 28,
}

impl RecordType {
    fn name(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Mx => "MX",
            RecordType::Txt => "TXT",
            RecordType::Aaaa => "AAAA",
        }
    }
}

/// Data of an answer record of the asked type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Addr(IpAddr),
    /// An MX record's exchange host.
    Mx(String),
    /// A TXT record, its character-strings joined.
    Txt(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("{name} does not exist (NXDOMAIN)")]
    NxDomain { name: String },
    #[error("{rtype} {name}: no answer from {server} (timed out)")]
    Timeout {
        name: String,
        rtype: &'static str,
        server: SocketAddr,
    },
    #[error("{rtype} {name}: {server} answered {rcode}")]
    Failed {
        name: String,
        rtype: &'static str,
        server: SocketAddr,
        rcode: &'static str,
    },
    #[error("{rtype} {name}: {server}: {message}")]
    Io {
        name: String,
        rtype: &'static str,
        server: SocketAddr,
        message: String,
    },
    #[error("{rtype} {name}: malformed answer from {server}: {message}")]
    Malformed {
        name: String,
        rtype: &'static str,
        server: SocketAddr,
        message: String,
    },
    #[error("no DNS server: {0}")]
    NoServer(String),
}

/// Where the queries go and how long to wait.
#[derive(Clone, Debug)]
pub struct Resolver {
    pub servers: Vec<SocketAddr>,
    /// Per attempt; each server is tried twice.
    pub timeout: Duration,
}

impl Resolver {
    /// `server`, or the name servers of `/etc/resolv.conf`.
    pub fn new(server: Option<SocketAddr>) -> Result<Resolver, DnsError> {
        let servers = match server {
            Some(s) => vec![s],
            None => system_servers(Path::new("/etc/resolv.conf"))?,
        };
        Ok(Resolver {
            servers,
            timeout: Duration::from_secs(2),
        })
    }

    /// The records of type `rtype` for `name` (none: the name exists without such records).
    /// Servers are tried in turn while they time out or fail.
    pub fn query(&self, name: &str, rtype: RecordType) -> Result<Vec<Answer>, DnsError> {
        let mut last = DnsError::NoServer("none configured".into());
        for server in &self.servers {
            for _ in 0..2 {
                match query_server(*server, name, rtype, self.timeout) {
                    Ok(answers) => return Ok(answers),
                    Err(e @ DnsError::NxDomain { .. }) => return Err(e),
                    Err(e @ DnsError::Timeout { .. }) => last = e,
                    Err(e) => {
                        last = e;
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

/// The `nameserver` lines of a resolv.conf.
pub fn system_servers(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DnsError::NoServer(format!("cannot read {}: {e}", path.display())))?;
    let servers = parse_resolv_conf(&text);
    if servers.is_empty() {
        return Err(DnsError::NoServer(format!(
            "{} lists no nameserver",
            path.display()
        )));
    }
    Ok(servers)
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // A link-local IPv6 server's `%scope` suffix is dropped: such servers are not supported.
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const CLASS_IN: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_OPT: u16 = 41;
/// The EDNS payload size we announce (the DNS flag day's safe size).
const EDNS_PAYLOAD: u16 = 1232;

fn random_id() -> u16 {
    let mut id = [0u8; 2];
    // SAFETY: getrandom writes at most 2 bytes into `id`.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), 2, 0) };
    if n != 2 {
        // Unpredictable enough as a fallback: the answer is checked against name and type too.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return (nanos ^ std::process::id()) as u16;
    }
    u16::from_be_bytes(id)
}

/// Encodes a query (with an EDNS OPT record) for `name`.
pub fn encode_query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&FLAG_RD.to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // 1 question, 1 additional (OPT)
    encode_name(&mut q, name);
    q.extend_from_slice(&(rtype as u16).to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    // OPT: root name, type, payload size, extended rcode/version/flags, no options.
    q.push(0);
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    q
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// A socket error of one query: a timeout, or the error itself (`transport` prefixes it).
fn io_error(
    e: std::io::Error,
    transport: &str,
    name: &str,
    rtype: RecordType,
    server: SocketAddr,
) -> DnsError {
    if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) {
        DnsError::Timeout {
            name: name.into(),
            rtype: rtype.name(),
            server,
        }
    } else {
        DnsError::Io {
            name: name.into(),
            rtype: rtype.name(),
            server,
            message: format!("{transport}{e}"),
        }
    }
}

fn query_server(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Vec<Answer>, DnsError> {
    let io = |e| io_error(e, "", name, rtype, server);
    let id = random_id();
    let query = encode_query(id, name, rtype);
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).map_err(io)?;
    socket.connect(server).map_err(io)?;
    socket.send(&query).map_err(io)?;
    let mut buf = vec![0u8; 65535];
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // What is left of `timeout` (never zero: that would mean no timeout).
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(io)?;
        let n = socket.recv(&mut buf).map_err(io)?;
        match decode_response(&buf[..n], id, name, rtype) {
            Ok(Decoded::Truncated) => return query_tcp(server, &query, id, name, rtype, timeout),
            Ok(Decoded::Answers(a)) => return Ok(a),
            Ok(Decoded::Failure(rcode)) => return Err(failure(rcode, name, rtype, server)),
            // Not an answer to this query (a late or forged datagram): keep waiting.
            Err(_) if std::time::Instant::now() < deadline => continue,
            Err(message) => {
                return Err(DnsError::Malformed {
                    name: name.into(),
                    rtype: rtype.name(),
                    server,
                    message,
                });
            }
        }
    }
}

fn query_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    name: &str,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Vec<Answer>, DnsError> {
    let io = |e| io_error(e, "TCP: ", name, rtype, server);
    let mut stream = TcpStream::connect_timeout(&server, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).map_err(io)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).map_err(io)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).map_err(io)?;
    match decode_response(&buf, id, name, rtype) {
        Ok(Decoded::Answers(a)) => Ok(a),
        Ok(Decoded::Failure(rcode)) => Err(failure(rcode, name, rtype, server)),
        Ok(Decoded::Truncated) => Err(DnsError::Malformed {
            name: name.into(),
            rtype: rtype.name(),
            server,
            message: "truncated over TCP".into(),
        }),
        Err(message) => Err(DnsError::Malformed {
            name: name.into(),
            rtype: rtype.name(),
            server,
            message,
        }),
    }
}

fn failure(rcode: u16, name: &str, rtype: RecordType, server: SocketAddr) -> DnsError {
    if rcode == 3 {
        return DnsError::NxDomain { name: name.into() };
    }
    let rcode = match rcode {
        1 => "FORMERR",
        2 => "SERVFAIL",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "an error",
    };
    DnsError::Failed {
        name: name.into(),
        rtype: rtype.name(),
        server,
        rcode,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Answers(Vec<Answer>),
    /// The answer did not fit: ask again over TCP.
    Truncated,
    /// A response code other than NOERROR.
    Failure(u16),
}

/// Reads a response to query `id` for `name`/`rtype`. An `Err` means it is not a well-formed
/// answer to that query.
pub fn decode_response(
    msg: &[u8],
    id: u16,
    name: &str,
    rtype: RecordType,
) -> Result<Decoded, String> {
    let u16_at = |at: usize| -> Result<u16, String> {
        msg.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "message ends early".to_string())
    };
    if u16_at(0)? != id {
        return Err("answer to another query (id differs)".into());
    }
    let flags = u16_at(2)?;
    if flags & FLAG_QR == 0 {
        return Err("not a response".into());
    }
    let (qdcount, ancount) = (u16_at(4)?, u16_at(6)?);
    if qdcount != 1 {
        return Err(format!("{qdcount} questions in the answer"));
    }
    let (qname, mut at) = read_name(msg, 12)?;
    if !qname.eq_ignore_ascii_case(name.trim_end_matches('.')) || u16_at(at)? != rtype as u16 {
        return Err("answer to another question".into());
    }
    at += 4;
    if flags & FLAG_TC != 0 {
        return Ok(Decoded::Truncated);
    }
    let rcode = flags & 0x000f;
    if rcode != 0 {
        return Ok(Decoded::Failure(rcode));
    }
    // Records of the asked type whose owner is the name or an alias it leads to (CNAME chain).
    let mut owners = vec![qname.to_ascii_lowercase()];
    let mut answers = Vec::new();
    for _ in 0..ancount {
        let (owner, next) = read_name(msg, at)?;
        let (typ, class) = (u16_at(next)?, u16_at(next + 2)?);
        let len = u16_at(next + 8)? as usize;
        let data = next + 10;
        let rdata = msg
            .get(data..data + len)
            .ok_or("record data runs past the message")?;
        at = data + len;
        if class != CLASS_IN || !owners.contains(&owner.to_ascii_lowercase()) {
            continue;
        }
        match typ {
            TYPE_CNAME => owners.push(read_name(msg, data)?.0.to_ascii_lowercase()),
            t if t == rtype as u16 => answers.push(match rtype {
                RecordType::A => {
                    let b: [u8; 4] = rdata.try_into().map_err(|_| "A record is not 4 bytes")?;
                    Answer::Addr(IpAddr::from(b))
                }
                RecordType::Aaaa => {
                    let b: [u8; 16] = rdata
                        .try_into()
                        .map_err(|_| "AAAA record is not 16 bytes")?;
                    Answer::Addr(IpAddr::from(b))
                }
                RecordType::Mx => {
                    if len < 3 {
                        return Err("MX record too short".into());
                    }
                    Answer::Mx(read_name(msg, data + 2)?.0)
                }
                RecordType::Txt => {
                    let mut text = Vec::new();
                    let mut i = 0;
                    while i < rdata.len() {
                        let l = rdata[i] as usize;
                        let s = rdata
                            .get(i + 1..i + 1 + l)
                            .ok_or("TXT string runs past its record")?;
                        text.extend_from_slice(s);
                        i += 1 + l;
                    }
                    Answer::Txt(String::from_utf8_lossy(&text).into_owned())
                }
            }),
            _ => {}
        }
    }
    Ok(Decoded::Answers(answers))
}

/// A (possibly compressed) name at `at`: the name (no trailing dot) and where the data after it
/// starts.
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), String> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    // Compression pointers may only point backwards; 128 jumps is far beyond any real name.
    for _ in 0..128 {
        let len = *msg.get(at).ok_or("name runs past the message")? as usize;
        match len {
            0 => {
                let name = labels.join(".");
                return Ok((name, end.unwrap_or(at + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let low = *msg.get(at + 1).ok_or("name runs past the message")? as usize;
                let target = ((l & 0x3f) << 8) | low;
                if target >= at {
                    return Err("name compression points forward".into());
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            l if l <= 63 => {
                let label = msg
                    .get(at + 1..at + 1 + l)
                    .ok_or("label runs past the message")?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                at += 1 + l;
            }
            _ => return Err("bad label length".into()),
        }
    }
    Err("name compression loops".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `query` with the given answer records (owner as a pointer to the question).
    fn response(query: &[u8], rcode: u16, records: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut r = query.to_vec();
        // Drop the OPT record: the response has no additional section here.
        r.truncate(r.len() - 11);
        r[2] = 0x81;
        r[3] = 0x80 | rcode as u8;
        r[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        r[10..12].copy_from_slice(&[0, 0]);
        for (typ, data) in records {
            r.extend_from_slice(&[0xc0, 12]);
            r.extend_from_slice(&typ.to_be_bytes());
            r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(data);
        }
        r
    }

    #[test]
    fn queries_are_well_formed() {
        let q = encode_query(0x1234, "_spf.Provider.test.", RecordType::Txt);
        assert_eq!(&q[..12], &[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&q[12..32], b"\x04_spf\x08Provider\x04test\x00");
        assert_eq!(&q[32..36], &[0, 16, 0, 1]);
        assert_eq!(q.len(), 36 + 11, "with the EDNS OPT record");
    }

    #[test]
    fn answers_are_decoded() {
        let q = encode_query(7, "provider.test", RecordType::Txt);
        let txt = b"\x0dv=spf1 ip4:19\x0d8.18.1.0/24 a".to_vec();
        let r = response(&q, 0, &[(16, txt)]);
        assert_eq!(
            decode_response(&r, 7, "provider.test", RecordType::Txt),
            Ok(Decoded::Answers(vec![Answer::Txt(
                "v=spf1 ip4:198.18.1.0/24 a".into()
            )]))
        );
        let q = encode_query(8, "mx.test", RecordType::Aaaa);
        let addr: Ipv6Addr = "2001:db8::25".parse().unwrap();
        let r = response(
            &q,
            0,
            &[(28, addr.octets().to_vec()), (1, vec![198, 18, 0, 1])],
        );
        assert_eq!(
            decode_response(&r, 8, "mx.test", RecordType::Aaaa),
            Ok(Decoded::Answers(vec![Answer::Addr(addr.into())])),
            "records of other types are skipped"
        );
        let q = encode_query(9, "provider.test", RecordType::Mx);
        let r = response(&q, 0, &[(15, vec![0, 10, 2, b'm', b'x', 0xc0, 12])]);
        assert_eq!(
            decode_response(&r, 9, "provider.test", RecordType::Mx),
            Ok(Decoded::Answers(vec![Answer::Mx(
                "mx.provider.test".into()
            )]))
        );
    }

    #[test]
    fn failures_and_forgeries_are_told_apart() {
        let q = encode_query(7, "gone.test", RecordType::Txt);
        let r = response(&q, 3, &[]);
        assert_eq!(
            decode_response(&r, 7, "gone.test", RecordType::Txt),
            Ok(Decoded::Failure(3))
        );
        assert!(
            decode_response(&r, 8, "gone.test", RecordType::Txt).is_err(),
            "other id"
        );
        assert!(
            decode_response(&r, 7, "other.test", RecordType::Txt).is_err(),
            "other name"
        );
        assert!(
            decode_response(&r, 7, "gone.test", RecordType::A).is_err(),
            "other type"
        );
        assert!(
            decode_response(&r[..20], 7, "gone.test", RecordType::Txt).is_err(),
            "cut short"
        );
        let mut tc = response(&q, 0, &[]);
        tc[2] |= 0x02;
        assert_eq!(
            decode_response(&tc, 7, "gone.test", RecordType::Txt),
            Ok(Decoded::Truncated)
        );
        let mut looped = response(&q, 0, &[(16, vec![1, b'x'])]);
        // The answer's owner points at itself.
        let owner = looped.len() - 14;
        looped[owner + 1] = owner as u8;
        assert!(decode_response(&looped, 7, "gone.test", RecordType::Txt).is_err());
    }

    #[test]
    fn resolv_conf_servers() {
        let s = parse_resolv_conf(
            "# comment\nsearch example.test\nnameserver 198.18.0.53\nnameserver 2001:db8::53\nnameserver fe80::1%eth0\n",
        );
        assert_eq!(
            s,
            vec![
                "198.18.0.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
    }
}
