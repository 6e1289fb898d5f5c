//! The HTTP server of the metrics endpoint: one thread, non-blocking sockets and poll(2), so
//! that no client holds up another. Each connection may send one request of at most
//! `MAX_REQUEST` bytes and must have it answered within `DEADLINE` of being accepted; a client
//! that is slower, idle, or sends more is dropped. Memory is bounded whatever arrives: at most
//! `MAX_CLIENTS` connections, each with at most `MAX_REQUEST` bytes buffered (the oldest
//! connection is closed when a new one would exceed the number, or when the process is out of
//! file descriptors).

use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

/// The longest request (request line and headers) read; a longer one is answered 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// From accepting a connection to the last byte of its answer.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Connections held at once; beyond, the oldest is closed.
pub const MAX_CLIENTS: usize = 4096;

struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    /// The answer, and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

/// Serves `listener` for ever: `respond` turns a whole request (request line and headers) into
/// a whole response.
pub fn serve(listener: TcpListener, respond: impl Fn(&[u8]) -> Vec<u8>) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut clients: VecDeque<Client> = VecDeque::new();
    loop {
        let now = Instant::now();
        clients.retain(|c| c.deadline > now);
        let wait = clients
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let mut fds: Vec<libc::pollfd> = std::iter::once(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .chain(clients.iter().map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: if c.answer.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            },
            revents: 0,
        }))
        .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis().max(1) as i32,
            )
        };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Clients first (their indexes match `fds[1..]`), then new connections.
        let mut done = vec![false; clients.len()];
        for (i, client) in clients.iter_mut().enumerate() {
            if fds[i + 1].revents != 0 {
                done[i] = !step(client, &respond);
            }
        }
        let mut i = 0;
        clients.retain(|_| {
            i += 1;
            !done[i - 1]
        });
        if fds[0].revents != 0 {
            accept_all(&listener, &mut clients);
        }
    }
}

/// Accepts every pending connection, closing the oldest ones to stay within `MAX_CLIENTS` and
/// within the process's file descriptors.
fn accept_all(listener: &TcpListener, clients: &mut VecDeque<Client>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if clients.len() >= MAX_CLIENTS {
                    clients.pop_front();
                }
                clients.push_back(Client {
                    stream,
                    request: Vec::new(),
                    answer: None,
                    deadline: Instant::now() + DEADLINE,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) && !clients.is_empty() => {
                // Out of descriptors: the oldest connection makes room for the new one.
                clients.pop_front();
            }
            Err(_) => return,
        }
    }
}

/// Reads or writes what the client's socket is ready for; false when the client is done (its
/// answer written, or it closed, or it failed).
fn step(client: &mut Client, respond: &impl Fn(&[u8]) -> Vec<u8>) -> bool {
    if let Some((answer, written)) = &mut client.answer {
        return match client.stream.write(&answer[*written..]) {
            Ok(n) => {
                *written += n;
                *written < answer.len()
            }
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
    }
    let mut buf = [0u8; 2048];
    loop {
        let room = MAX_REQUEST - client.request.len();
        match client.stream.read(&mut buf[..room.min(2048)]) {
            Ok(0) => return false,
            Ok(n) => {
                client.request.extend_from_slice(&buf[..n]);
                if let Some(end) = header_end(&client.request) {
                    client.answer = Some((respond(&client.request[..end]), 0));
                    return step(client, respond);
                }
                if client.request.len() >= MAX_REQUEST {
                    client.answer = Some((too_large(), 0));
                    return step(client, respond);
                }
            }
            Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
        }
    }
}

/// Where the request's headers end (after the blank line), if they do.
fn header_end(request: &[u8]) -> Option<usize> {
    request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| request.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
}

fn too_large() -> Vec<u8> {
    let body = format!("request headers larger than {MAX_REQUEST} bytes\n");
    format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_end_at_the_blank_line() {
        assert_eq!(header_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\n"), Some(24));
        assert_eq!(header_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(header_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn a_slow_client_does_not_hold_up_another_and_a_huge_header_is_cut() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, |_| b"HTTP/1.1 200 OK\r\n\r\nok".to_vec()));
        // A client that sends one byte and then nothing.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"G").unwrap();
        let started = Instant::now();
        let mut fast = TcpStream::connect(addr).unwrap();
        fast.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        fast.read_to_string(&mut answer).unwrap();
        assert!(answer.ends_with("ok"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // Headers without an end: cut at MAX_REQUEST (answered 431 and closed, which resets
        // the sender's connection while it still writes).
        let mut huge = TcpStream::connect(addr).unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < 64 << 20 {
            match huge.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        assert!(sent < 64 << 20, "the server read 64 MiB of headers");
        // And it still answers.
        let mut again = TcpStream::connect(addr).unwrap();
        again.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        again.read_to_string(&mut answer).unwrap();
        assert!(answer.ends_with("ok"), "{answer}");
    }
}
