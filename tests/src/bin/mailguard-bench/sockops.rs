//! Section 5: what sock_ops adds per connection, from the kernel's run-time statistics.

use std::{
    net::{TcpListener, TcpStream},
    thread,
};

use crate::CONNECTIONS;
use aya::sys::{Stats as BpfStats, enable_stats};
use guard_common::maps as names;
use mailguard::kernel::guard::Guard;

pub(crate) struct SockopsCost {
    pub(crate) ns_per_run: f64,
    pub(crate) runs_per_connection: f64,
    pub(crate) ns_per_connection: f64,
}

/// Real connections to a mail port in this namespace, with sock_ops attached and the kernel's
/// BPF run-time statistics on. Other sockets on the host run the program too (it returns at
/// once for them): they are in the per-run figure, not in the per-connection one beyond the
/// runs they add.
pub(crate) fn sockops_cost(guard: &mut Guard) -> Result<SockopsCost, String> {
    let _stats = enable_stats(BpfStats::RunTime).map_err(|e| e.to_string())?;
    guard.attach_sockops().map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("198.18.0.1:25").map_err(|e| e.to_string())?;
    let acceptor = thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            if let Ok((s, _)) = listener.accept() {
                drop(s);
            }
        }
    });
    let (time0, runs0) = guard
        .run_stats(names::SOCKOPS_PROGRAM)
        .map_err(|e| e.to_string())?;
    for _ in 0..CONNECTIONS {
        let c = TcpStream::connect("198.18.0.1:25").map_err(|e| e.to_string())?;
        drop(c);
    }
    acceptor.join().map_err(|_| "acceptor thread")?;
    // Let the last closes run their callbacks.
    thread::sleep(std::time::Duration::from_millis(200));
    let (time1, runs1) = guard
        .run_stats(names::SOCKOPS_PROGRAM)
        .map_err(|e| e.to_string())?;
    let runs = (runs1 - runs0) as f64;
    let ns = (time1 - time0).as_nanos() as f64;
    if runs < CONNECTIONS as f64 {
        return Err(format!(
            "sock_ops ran {runs} times for {CONNECTIONS} connections"
        ));
    }
    Ok(SockopsCost {
        ns_per_run: ns / runs,
        runs_per_connection: runs / CONNECTIONS as f64,
        ns_per_connection: ns / CONNECTIONS as f64,
    })
}
