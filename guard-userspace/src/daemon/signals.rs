//! The daemon's signals (SIGINT, SIGTERM, SIGHUP): blocked, then read from a signalfd, so that
//! one `poll` waits for a signal, a control request, or a timeout.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    /// Blocks the signals (call before any other thread exists: threads inherit the mask) and
    /// opens the signalfd that receives them.
    pub fn block() -> io::Result<Signals> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask changes only
        // this thread's mask; signalfd returns a new descriptor that OwnedFd then owns.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Signals {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    /// Waits at most `timeout` for a signal (returned) or for one of `wake` to become readable
    /// (`None`, as after the timeout).
    pub fn wait(&self, timeout: Duration, wake: &[RawFd]) -> io::Result<Option<i32>> {
        let mut fds: Vec<libc::pollfd> = std::iter::once(self.fd.as_raw_fd())
            .chain(wake.iter().copied())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll reads and writes `fds`, an array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if fds[0].revents & libc::POLLIN == 0 {
            return Ok(None);
        }
        // SAFETY: signalfd_siginfo is plain data; read writes at most its size into it.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let got = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if got == size as isize {
            Ok(Some(info.ssi_signo as i32))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readable_descriptor_wakes_the_wait() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let signals = Signals::block().unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            signals
                .wait(Duration::from_millis(50), &[a.as_raw_fd()])
                .unwrap(),
            None
        );
        assert!(
            started.elapsed() >= Duration::from_millis(45),
            "timed out, nothing readable"
        );
        std::io::Write::write_all(&mut b, b"x").unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            signals
                .wait(Duration::from_secs(10), &[a.as_raw_fd()])
                .unwrap(),
            None
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken by the descriptor"
        );
        // SAFETY: raises a blocked signal at this thread; it stays pending until read.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
        assert_eq!(
            signals.wait(Duration::from_secs(10), &[]).unwrap(),
            Some(libc::SIGHUP)
        );
    }
}
