//! Dovecot's authentication policy service (`auth_policy_server_url`, Dovecot 2.2.27+),
//! answered by mailguard: Dovecot POSTs a JSON request before it checks a password
//! (`?command=allow`) and after (`?command=report`, with `"success"`). A report of a failure
//! is an event at once, with the address Dovecot itself took from the connection (`remote`,
//! its `%{rip}`), for IMAP and POP3 and for Postfix's SASL through Dovecot; a request from a
//! banned client is refused (`"status": -1`) before any password is checked.
//!
//! The HTTP is the little Dovecot's client speaks: HTTP/1.1 POSTs with a Content-Length,
//! kept alive. Requests are bounded (headers 16 KiB, body 64 KiB, connections 128), and a
//! request that cannot be read is answered 400 and counted, never guessed at.

use std::{
    collections::{BTreeSet, HashSet},
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use crate::feeds::{
    ban_sources::{Position, Sender, SourceKind},
    maillog::{Event, EventKind, Parsed},
};

const MAX_HEADERS: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
const MAX_CONNECTIONS: usize = 128;
/// Dovecot keeps idle connections for 10 s by default; a silent one is closed after this.
const IDLE: Duration = Duration::from_secs(60);

/// The bans in force, as the policy server checks them.
#[derive(Debug, Default)]
pub struct BannedSet {
    nets: HashSet<IpNet>,
    lengths: BTreeSet<u8>,
}

impl BannedSet {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> BannedSet {
        let nets: HashSet<IpNet> = nets.into_iter().collect();
        let lengths = nets.iter().map(|n| n.prefix_len()).collect();
        BannedSet { nets, lengths }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.lengths.iter().any(|len| {
            IpNet::new(addr, *len)
                .map(|n| self.nets.contains(&n.trunc()))
                .unwrap_or(false)
        })
    }
}

/// What the server counts.
#[derive(Debug, Default)]
pub struct PolicyCounts {
    pub allowed: AtomicU64,
    pub refused: AtomicU64,
    pub reports: AtomicU64,
    /// Requests that could not be read (answered 400).
    pub bad: AtomicU64,
}

/// What a request asks.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Before authentication: may this client try?
    Allow { remote: Option<IpAddr> },
    /// After: the outcome. A failure refused by the policy itself is not the client's.
    Report {
        remote: Option<IpAddr>,
        failed: bool,
    },
}

/// A request's target and body as a `Request`, or why not.
pub fn request(target: &str, body: &[u8]) -> Result<Request, String> {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let command = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("command="))
        .ok_or("no command= in the request's target")?;
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    // `remote` is Dovecot's %{rip}: the connection's address, never the client's words.
    let remote = json
        .get("remote")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<IpAddr>().ok())
        .map(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        });
    match command {
        "allow" => Ok(Request::Allow { remote }),
        "report" => {
            let success = json.get("success").and_then(|v| v.as_bool());
            let policy_reject = json
                .get("policy_reject")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            let success = success.ok_or("a report without \"success\"")?;
            Ok(Request::Report {
                remote,
                failed: !success && !policy_reject,
            })
        }
        other => Err(format!("unknown command `{other}`")),
    }
}

/// The policy server: a listener and its connection threads.
pub struct PolicyServer {
    pub local: SocketAddr,
    pub counts: Arc<PolicyCounts>,
}

impl PolicyServer {
    /// Listens on `addr`; reports go to `sender`, requests are checked against `banned`.
    pub fn start(
        addr: SocketAddr,
        sender: Sender,
        banned: Arc<RwLock<BannedSet>>,
    ) -> std::io::Result<PolicyServer> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let counts = Arc::new(PolicyCounts::default());
        let open = Arc::new(AtomicUsize::new(0));
        let c = counts.clone();
        thread::Builder::new()
            .name("bans-policy".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                        continue; // dropped: closed
                    }
                    open.fetch_add(1, Ordering::Relaxed);
                    let (sender, banned, counts, open) =
                        (sender.clone(), banned.clone(), c.clone(), open.clone());
                    let spawned = thread::Builder::new()
                        .name("bans-policy-conn".into())
                        .spawn(move || {
                            serve(stream, &sender, &banned, &counts);
                            open.fetch_sub(1, Ordering::Relaxed);
                        });
                    if spawned.is_err() {
                        log::warn!("bans: cannot serve a policy connection");
                    }
                }
            })?;
        Ok(PolicyServer { local, counts })
    }
}

/// One HTTP request: the target, whether the client keeps the connection, the body.
fn read_request(
    reader: &mut BufReader<TcpStream>,
) -> Result<Option<(String, bool, Vec<u8>)>, String> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader
            .by_ref()
            .take((MAX_HEADERS - head.len()) as u64 + 1)
            .read_until(b'\n', &mut head)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err("the connection ended inside a request".into())
            };
        }
        if head.len() > MAX_HEADERS {
            return Err("headers longer than 16 KiB".into());
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                head.clear(); // a blank line between requests
                continue;
            }
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let mut words = first.split(' ');
    let (method, target, version) = (words.next(), words.next(), words.next());
    if method != Some("POST") || !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(format!(
            "not an HTTP/1 POST: `{}`",
            crate::config::clip(first, 80)
        ));
    }
    let mut length = None;
    let mut keep = version == Some("HTTP/1.1");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(value.parse::<usize>().map_err(|_| "a bad Content-Length")?)
            }
            "transfer-encoding" => return Err("chunked bodies are not taken".into()),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let length = length.ok_or("a POST without Content-Length")?;
    if length > MAX_BODY {
        return Err("a body over 64 KiB".into());
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(Some((target.unwrap_or("/").to_string(), keep, body)))
}

fn respond(stream: &mut TcpStream, status: &str, body: &str, keep: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep { "keep-alive" } else { "close" }
    );
    stream.write_all(format!("{head}{body}").as_bytes())
}

fn serve(stream: TcpStream, sender: &Sender, banned: &RwLock<BannedSet>, counts: &PolicyCounts) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_nodelay(true);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let (target, keep, body) = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                counts.bad.fetch_add(1, Ordering::Relaxed);
                log::warn!("bans: a policy request refused: {e}");
                let _ = respond(&mut out, "400 Bad Request", "{}", false);
                return;
            }
        };
        let answer = match request(&target, &body) {
            Ok(Request::Allow { remote }) => {
                let refused = remote.is_some_and(|ip| {
                    banned
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(ip)
                });
                if refused {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    r#"{"status":-1,"msg":"banned by mailguard"}"#
                } else {
                    counts.allowed.fetch_add(1, Ordering::Relaxed);
                    r#"{"status":0,"msg":""}"#
                }
            }
            Ok(Request::Report { remote, failed }) => {
                counts.reports.fetch_add(1, Ordering::Relaxed);
                if let (Some(source), true) = (remote, failed) {
                    let event = Event {
                        kind: EventKind::AuthFailed,
                        source,
                        count: 1,
                        recipient: None,
                    };
                    let read_at = Instant::now();
                    if !sender.send(
                        SourceKind::Policy,
                        vec![Parsed::Event(event)],
                        Position::Live,
                        read_at,
                    ) {
                        return;
                    }
                }
                r#"{"status":0,"msg":""}"#
            }
            Err(e) => {
                counts.bad.fetch_add(1, Ordering::Relaxed);
                log::warn!("bans: a policy request refused: {e}");
                let _ = respond(&mut out, "400 Bad Request", "{}", keep);
                if keep {
                    continue;
                }
                return;
            }
        };
        if respond(&mut out, "200 OK", answer, keep).is_err() || !keep {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_as_dovecot_sends_them() {
        let allow = br#"{"device_id":"","login":"bob","protocol":"imap","pwhash":"ab12","remote":"198.18.100.7","session_id":"x"}"#;
        assert_eq!(
            request("/?command=allow", allow),
            Ok(Request::Allow {
                remote: Some("198.18.100.7".parse().unwrap())
            })
        );
        let failed =
            br#"{"login":"bob","remote":"2001:db8::7","success":false,"policy_reject":false}"#;
        assert_eq!(
            request("/policy?x=1&command=report", failed),
            Ok(Request::Report {
                remote: Some("2001:db8::7".parse().unwrap()),
                failed: true
            })
        );
        // Refused by the policy itself: not counted again.
        let refused = br#"{"remote":"198.18.100.7","success":false,"policy_reject":true}"#;
        assert!(matches!(
            request("/?command=report", refused),
            Ok(Request::Report { failed: false, .. })
        ));
        // A user name that looks like an address is not the address.
        let tricky = br#"{"login":"198.19.0.1","remote":"::ffff:198.18.100.9","success":false}"#;
        assert_eq!(
            request("/?command=report", tricky),
            Ok(Request::Report {
                remote: Some("198.18.100.9".parse().unwrap()),
                failed: true
            })
        );
        assert!(request("/", allow).is_err());
        assert!(request("/?command=allow", b"{").is_err());
        assert!(request("/?command=report", br#"{"remote":"198.18.0.1"}"#).is_err());
    }

    #[test]
    fn the_banned_set_matches_prefixes() {
        let set = BannedSet::new([
            "198.18.7.0/24".parse().unwrap(),
            "2001:db8::9/128".parse().unwrap(),
        ]);
        assert!(set.contains("198.18.7.200".parse().unwrap()));
        assert!(!set.contains("198.18.8.1".parse().unwrap()));
        assert!(set.contains("2001:db8::9".parse().unwrap()));
        assert!(!set.contains("2001:db8::8".parse().unwrap()));
    }

    #[test]
    fn the_server_answers_over_http_and_reports_failures() {
        let mut inbox = crate::feeds::ban_sources::Inbox::new().unwrap();
        let _logs = inbox.start_logs();
        let banned = Arc::new(RwLock::new(BannedSet::new(["198.18.100.66/32"
            .parse()
            .unwrap()])));
        let server =
            PolicyServer::start("127.0.0.1:0".parse().unwrap(), inbox.sender(), banned).unwrap();
        let mut s = TcpStream::connect(server.local).unwrap();
        let post = |s: &mut TcpStream, target: &str, body: &str| {
            write!(
                s,
                "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            (head, String::from_utf8(body).unwrap())
        };
        let (head, body) = post(&mut s, "/?command=allow", r#"{"remote":"198.18.100.66"}"#);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, r#"{"status":-1,"msg":"banned by mailguard"}"#);
        // The same connection, kept alive.
        let (_, body) = post(&mut s, "/?command=allow", r#"{"remote":"198.18.100.7"}"#);
        assert_eq!(body, r#"{"status":0,"msg":""}"#);
        post(
            &mut s,
            "/?command=report",
            r#"{"remote":"198.18.100.7","success":false}"#,
        );
        post(
            &mut s,
            "/?command=report",
            r#"{"remote":"198.18.100.7","success":true}"#,
        );
        let (head, _) = post(&mut s, "/?command=nonsense", "{}");
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        let batches = inbox.drain();
        assert_eq!(batches.len(), 1, "one failure reported: {batches:?}");
        assert_eq!(server.counts.refused.load(Ordering::Relaxed), 1);
        assert_eq!(server.counts.bad.load(Ordering::Relaxed), 1);
    }
}
