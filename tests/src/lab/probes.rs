//! What the tests send through the lab and how they read the answer: TCP banners and connects,
//! UDP round trips, nmap SYN scans, HTTP GETs, swaks deliveries.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use crate::netns::Netns;

/// Opens a TCP connection from inside `ns` and reads the banner; `None` when it fails within
/// `timeout`.
pub fn tcp_banner(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Option<String> {
    ns.spawn(move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        let mut banner = String::new();
        s.read_to_string(&mut banner).ok()?;
        Some(banner)
    })
    .join()
    .expect("client thread")
}

/// Whether a TCP connection from inside `ns` to `addr` is established within `timeout` (for
/// servers that, like Postfix, keep the connection open after their banner).
pub fn tcp_connects(ns: &Netns, addr: SocketAddr, timeout: Duration) -> bool {
    ns.spawn(move || std::net::TcpStream::connect_timeout(&addr, timeout).is_ok())
        .join()
        .expect("client thread")
}

/// Sends one datagram from a connected UDP socket inside `ns` and waits for the echo.
pub fn udp_round_trip(ns: &Netns, to: SocketAddr, timeout: Duration) -> Option<Vec<u8>> {
    ns.spawn(move || {
        let bind = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let sock = UdpSocket::bind(bind).ok()?;
        sock.connect(to).ok()?;
        sock.set_read_timeout(Some(timeout)).ok()?;
        sock.send(b"mailguard udp probe").ok()?;
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    })
    .join()
    .expect("client thread")
}

/// What nmap reported for each port.
#[derive(Debug, Default)]
pub struct Scan {
    pub open: Vec<u16>,
    pub closed: Vec<u16>,
    pub filtered: Vec<u16>,
}

/// A SYN scan (`nmap -sS`) of `ports` on `target` from inside `ns`.
pub fn nmap_syn_scan(ns: &Netns, target: &str, ports: &[u16]) -> Scan {
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let mut args = vec![
        "nmap",
        "-sS",
        "-Pn",
        "-n",
        "--max-retries",
        "1",
        "--host-timeout",
        "120s",
        "-T4",
    ];
    if target.contains(':') {
        args.push("-6");
    }
    let joined = list.join(",");
    args.extend(["-p", &joined, "-oG", "-", target]);
    let out = ns.run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut scan = parse_grepable(&text);
    // nmap folds ports that share a state into "Ignored State: filtered (N)" and leaves them
    // out of the list: they are the requested ports it did not list.
    if let Some(state) = text
        .split("Ignored State: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
    {
        let listed: Vec<u16> = scan
            .open
            .iter()
            .chain(&scan.closed)
            .chain(&scan.filtered)
            .copied()
            .collect();
        let rest = ports.iter().copied().filter(|p| !listed.contains(p));
        match state {
            "filtered" => scan.filtered.extend(rest),
            "closed" => scan.closed.extend(rest),
            other => panic!("nmap left out ports in state {other}: {text}"),
        }
        scan.filtered.sort_unstable();
        scan.closed.sort_unstable();
    }
    scan
}

/// Parses the `Ports:` field of nmap's grepable output.
pub fn parse_grepable(text: &str) -> Scan {
    let mut scan = Scan::default();
    for line in text.lines() {
        let Some((_, ports)) = line.split_once("Ports: ") else {
            continue;
        };
        let ports = ports.split('\t').next().unwrap_or("");
        for entry in ports.split(", ") {
            let mut f = entry.split('/');
            let (Some(port), Some(state)) = (f.next(), f.next()) else {
                continue;
            };
            let Ok(port) = port.trim().parse::<u16>() else {
                continue;
            };
            match state {
                "open" => scan.open.push(port),
                "closed" => scan.closed.push(port),
                s if s.contains("filtered") => scan.filtered.push(port),
                _ => {}
            }
        }
    }
    for v in [&mut scan.open, &mut scan.closed, &mut scan.filtered] {
        v.sort_unstable();
    }
    scan
}

/// A plain HTTP GET from inside `ns`: the body of a 200 response, or what went wrong.
pub fn try_http_get(ns: &Netns, addr: &str, path: &str, accept: &str) -> Result<String, String> {
    let (addr, path, accept) = (addr.to_string(), path.to_string(), accept.to_string());
    ns.spawn(move || {
        let to: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut all = String::new();
        s.read_to_string(&mut all).map_err(|e| e.to_string())?;
        let (head, body) = all.split_once("\r\n\r\n").ok_or("not an HTTP response")?;
        if head.starts_with("HTTP/1.1 200") {
            Ok(body.to_string())
        } else {
            Err(head.to_string())
        }
    })
    .join()
    .expect("HTTP thread")
}

pub fn http_get(ns: &Netns, addr: &str, path: &str, accept: &str) -> String {
    try_http_get(ns, addr, path, accept).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// `ip` and `port` as a socket address (IPv6 in brackets).
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
    .parse()
    .expect("address")
}

/// What an authentication attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    Accepted,
    Refused,
    /// No answer: the connection was not made or went unanswered (dropped at the NIC).
    Unreachable(String),
}

/// An IMAP `LOGIN` from inside `ns` to `server`:143.
pub fn imap_login(ns: &Netns, server: &str, user: &str, password: &str) -> Login {
    let addr = addr(server, 143);
    let command = format!("a LOGIN \"{user}\" \"{password}\"\r\n");
    ns.spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let timeout = Duration::from_secs(20);
        let s = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => return Login::Unreachable(e.to_string()),
        };
        s.set_read_timeout(Some(timeout)).expect("timeout");
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || !line.starts_with("* OK") {
            return Login::Unreachable(format!("greeting: {line:?}"));
        }
        if (&s).write_all(command.as_bytes()).is_err() {
            return Login::Unreachable("write".into());
        }
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return Login::Unreachable(format!("no answer: {line:?}")),
                Ok(_) if line.starts_with("a OK") => return Login::Accepted,
                Ok(_) if line.starts_with("a NO") || line.starts_with("a BAD") => {
                    return Login::Refused;
                }
                Ok(_) => {}
            }
        }
    })
    .join()
    .expect("IMAP client thread")
}

/// SMTP AUTH LOGIN on submission (587) with swaks from inside `ns`, quitting after AUTH.
pub fn smtp_auth(ns: &Netns, server: &str, user: &str, password: &str) -> Login {
    let out = ns
        .command("swaks")
        .args(["--server", server, "--port", "587", "--auth", "LOGIN"])
        .args(["--auth-user", user, "--auth-password", password])
        .args([
            "--from",
            "sender@client.test",
            "--to",
            "postmaster@lab.test",
        ])
        .args(["--quit-after", "AUTH", "--timeout", "20"])
        .output()
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // swaks marks the server's lines `<-` (`<**` for an error), then the reply code.
    let replied = |code: &str| {
        text.lines()
            .any(|l| l.starts_with('<') && l.split_whitespace().nth(1) == Some(code))
    };
    if replied("235") {
        Login::Accepted
    } else if replied("535") {
        Login::Refused
    } else {
        Login::Unreachable(format!("{}{}", text, String::from_utf8_lossy(&out.stderr)))
    }
}

/// One SMTP session on port 25 from inside `ns` that names `recipients` (RCPT TO each) with
/// HELO `helo`, and quits before DATA. Returns swaks' transcript, or why it could not connect.
pub fn smtp_recipients(
    ns: &Netns,
    server: &str,
    helo: &str,
    recipients: &[String],
) -> Result<String, String> {
    let out = ns
        .command("swaks")
        .args(["--server", server, "--port", "25", "--helo", helo])
        .args([
            "--from",
            "sender@client.test",
            "--to",
            &recipients.join(","),
        ])
        .args(["--quit-after", "RCPT", "--timeout", "10"])
        .output()
        .expect("run swaks");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text
        .lines()
        .any(|l| l.starts_with("<-") && l.contains(" 220 "))
    {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Delivers one message with swaks from inside `ns`; returns swaks' transcript on failure.
pub fn swaks(ns: &Netns, server: &str, port: u16, subject: &str) -> Result<(), String> {
    let port = port.to_string();
    let out = ns
        .command("swaks")
        .args([
            "--server",
            server,
            "--port",
            &port,
            "--from",
            "sender@client.test",
            "--to",
            "postmaster@lab.test",
        ])
        .args([
            "--header",
            &format!("Subject: {subject}"),
            "--body",
            &format!("mailguard lab message {subject}"),
        ])
        .args(["--timeout", "15"])
        .output()
        .map_err(|e| format!("cannot run swaks: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "swaks exited {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The window scales of a TCP connection as the kernel keeps them (`TCP_INFO`): (the one the
/// peer offered, which this end applies to what it sends; the one this end offered).
pub fn tcp_window_scales(socket: &impl std::os::fd::AsRawFd) -> (u8, u8) {
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    // tcpi_snd_wscale and tcpi_rcv_wscale: the low and high nibbles of the seventh byte.
    (info[6] & 0xf, info[6] >> 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nmap_grepable_output() {
        let text = "# Nmap 7.93 scan\nHost: 198.18.0.1 ()\tStatus: Up\nHost: 198.18.0.1 ()\tPorts: 22/open/tcp//ssh///, 25/open/tcp//smtp///, 465/closed/tcp//smtps///, 3306/filtered/tcp//mysql///, 8080/open|filtered/tcp//http-proxy///\tIgnored State: filtered (3)\n";
        let s = parse_grepable(text);
        assert_eq!(s.open, vec![22, 25]);
        assert_eq!(s.closed, vec![465]);
        assert_eq!(s.filtered, vec![3306, 8080]);
    }
}
