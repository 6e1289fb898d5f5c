//! The control socket: how `mailguard reload` and `mailguard confirm` reach the running daemon.
//! A Unix stream socket at `<run dir>/control.sock`, mode 0600, whose peers must be root
//! (checked with SO_PEERCRED). One JSON request line, one JSON response line.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::clip, config::durations::MAX_ENTRY_SECONDS, config::lists::ListName,
    daemon::state::Dirs,
};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Re-read the configuration file; with `confirm_within`, roll it back unless confirmed.
    Reload {
        confirm_within: Option<u64>,
        /// Apply it even if it would cut a live session or block every source.
        #[serde(default)]
        force: bool,
    },
    /// Keep the change waiting for confirmation.
    Confirm,
    /// Add entries to a list (until `seconds` from now, if given), or remove them.
    ListEdit {
        list: ListName,
        add: bool,
        entries: Vec<String>,
        seconds: Option<u64>,
        /// Apply it even if it would cut a live session or block every source.
        #[serde(default)]
        force: bool,
    },
    /// The lists at a glance; with `list`, that list's entries too.
    ListShow { list: Option<ListName> },
    /// Refresh the lists' files and SPF records now; answered when done.
    ListRefresh { force: bool },
}

/// The longest confirmation window a change may ask for: a day.
pub const MAX_CONFIRM_SECONDS: u64 = 86_400;
/// The most entries one list edit may carry (larger sets belong in a list file).
pub const MAX_EDIT_ENTRIES: usize = 100_000;
/// The longest request line the daemon reads; the rest of a longer one is not read.
pub const MAX_REQUEST_BYTES: u64 = 8 << 20;

impl Request {
    /// Checks the request's values against what the daemon accepts, before it acts on any.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Request::Reload {
                confirm_within: Some(s),
                ..
            } if !(1..=MAX_CONFIRM_SECONDS).contains(s) => Err(format!(
                "confirm_within {s}: a confirmation window is 1 to {MAX_CONFIRM_SECONDS} seconds"
            )),
            Request::ListEdit {
                seconds: Some(s), ..
            } if !(1..=MAX_ENTRY_SECONDS).contains(s) => Err(format!(
                "seconds {s}: a timed entry lasts 1 to {MAX_ENTRY_SECONDS} seconds (ten years); \
                 without a duration it lasts until removed"
            )),
            Request::ListEdit { entries, .. } if entries.len() > MAX_EDIT_ENTRIES => Err(format!(
                "{} entries in one edit: at most {MAX_EDIT_ENTRIES}; use a list file",
                entries.len()
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    /// What the request asked for (`lists show`, `lists refresh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: message.into(),
            data: None,
        }
    }

    pub fn failed(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            message: message.into(),
            data: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("mailguard is not running (cannot reach {}: {source})", path.display())]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {}: unreadable answer: {0}", path.display())]
    Protocol { path: PathBuf, message: String },
}

/// A request line as the daemon takes it: JSON, then the values checked (`Request::check`).
/// An error quotes at most the first 200 characters of what it could not use.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str::<Request>(line)
        .map_err(|e| format!("bad request: {}", clip(&e.to_string(), 200)))
        .and_then(|r| r.check().map(|()| r))
}

pub fn socket_path(dirs: &Dirs) -> PathBuf {
    dirs.run.join("control.sock")
}

/// Sends one request to the daemon and returns its answer.
pub fn request(dirs: &Dirs, req: &Request) -> Result<Response, ControlError> {
    let path = socket_path(dirs);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(&path).map_err(|source| ControlError::Unreachable {
        path: path.clone(),
        source,
    })?;
    // A reload can take a moment (the maps are compared and written); a refresh waits for
    // DNS and every list's swap.
    let wait = match req {
        Request::ListRefresh { .. } => 600,
        _ => 60,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(wait)))
        .map_err(io)?;
    let mut line = serde_json::to_string(req).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    if answer.is_empty() {
        return Err(ControlError::Protocol {
            path: path.clone(),
            message: "the daemon closed the connection without answering (did it stop? its log \
                      says why)"
                .to_string(),
        });
    }
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol {
        path: path.clone(),
        message: format!("{e}: {}", clip(answer.trim_end(), 200)),
    })
}

/// The daemon's end: a non-blocking listener, polled by the daemon's loop.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    pub fn bind(dirs: &Dirs) -> Result<ControlServer, ControlError> {
        let path = socket_path(dirs);
        let io = |source| ControlError::Io {
            path: path.clone(),
            source,
        };
        // A socket left by a daemon that died (we hold the daemon lock: nobody uses it).
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        Ok(ControlServer { listener, path })
    }

    /// The next pending request, if any, with the stream to answer on.
    pub fn next(&self) -> Option<(Result<Request, String>, UnixStream)> {
        let (stream, _) = self.listener.accept().ok()?;
        if let Err(e) = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(5))))
        {
            log::warn!("control socket: {e}");
            return None;
        }
        if peer_uid(&stream) != Some(0) {
            let _ = answer(
                &stream,
                &Response::failed("only root may control mailguard"),
            );
            return None;
        }
        let mut line = String::new();
        let req = match BufReader::new((&stream).take(MAX_REQUEST_BYTES)).read_line(&mut line) {
            Ok(_) if !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST_BYTES => Err(
                format!("bad request: longer than {MAX_REQUEST_BYTES} bytes"),
            ),
            Ok(_) => parse_request(&line),
            Err(e) => Err(format!("bad request: {e}")),
        };
        Some((req, stream))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening descriptor (readable when a client connects).
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.listener.as_raw_fd()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn answer(mut stream: &UnixStream, response: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(response).expect("responses serialize");
    line.push('\n');
    stream.write_all(line.as_bytes())
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line() {
        let r = Request::Reload {
            confirm_within: Some(30),
            force: false,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"command":"reload","confirm_within":30,"force":false}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"confirm"}"#).unwrap(),
            Request::Confirm
        );
        let edit = r#"{"command":"list_edit","list":"block","add":true,"entries":["198.19.0.1"],"seconds":3600}"#;
        assert_eq!(
            serde_json::from_str::<Request>(edit).unwrap(),
            Request::ListEdit {
                list: ListName::Block,
                add: true,
                entries: vec!["198.19.0.1".into()],
                seconds: Some(3600),
                force: false,
            }
        );
        assert_eq!(
            serde_json::to_string(&Response::ok("done")).unwrap(),
            r#"{"ok":true,"message":"done"}"#
        );
    }

    #[test]
    fn requests_and_answers_cross_the_socket() {
        let dir = std::env::temp_dir().join(format!("mailguard-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dirs = Dirs {
            pin: dir.join("pins"),
            run: dir.clone(),
        };
        let server = ControlServer::bind(&dirs).unwrap();
        let mode = std::fs::metadata(server.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "root only");
        let client = std::thread::spawn({
            let dirs = dirs.clone();
            move || request(&dirs, &Request::Confirm).unwrap()
        });
        let (req, stream) = loop {
            if let Some(r) = server.next() {
                break r;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(req.unwrap(), Request::Confirm);
        answer(&stream, &Response::ok("kept")).unwrap();
        assert_eq!(client.join().unwrap(), Response::ok("kept"));
        drop(server);
        assert!(
            !socket_path(&dirs).exists(),
            "the socket goes with the server"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn values_the_daemon_cannot_hold_are_refused_before_anything_happens() {
        let edit = |seconds: Option<u64>, entries: usize| Request::ListEdit {
            list: ListName::Block,
            add: true,
            entries: vec!["198.19.0.1".to_string(); entries],
            seconds,
            force: false,
        };
        // Near 2^64 seconds: a Duration added to now would overflow (the daemon died of it).
        let err = edit(Some(u64::MAX - 1), 1).check().unwrap_err();
        assert!(err.contains("1 to 315360000 seconds"), "{err}");
        assert!(edit(Some(0), 1).check().is_err());
        assert!(edit(Some(3600), 1).check().is_ok());
        assert!(edit(None, MAX_EDIT_ENTRIES).check().is_ok());
        assert!(edit(None, MAX_EDIT_ENTRIES + 1).check().is_err());
        let reload = |s| Request::Reload {
            confirm_within: Some(s),
            force: false,
        };
        assert!(reload(u64::MAX).check().is_err());
        assert!(reload(0).check().is_err());
        assert!(reload(30).check().is_ok());
        assert!(
            Request::Reload {
                confirm_within: None,
                force: false,
            }
            .check()
            .is_ok()
        );
    }

    #[test]
    fn a_huge_timed_entry_is_an_error_not_a_panic() {
        let mut state = crate::feeds::saved::ListState::default();
        let net: ipnet::IpNet = "198.19.0.1/32".parse().unwrap();
        let lists = crate::config::lists::Lists::default();
        let r = state.edit(&lists, ListName::Block, true, &[net], Some(u64::MAX));
        assert!(r.is_err(), "{r:?}");
    }
}
