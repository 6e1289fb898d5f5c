//! Where the benchmark runs: a network and mount namespace of its own (a private bpffs), and
//! the CPUs it may use.

use guard_tests::netns::enter_private_netns;

/// A network namespace and a mount namespace of the benchmark's own, with a fresh bpffs on
/// /sys/fs/bpf: the veth, xdp-filter's attachment and its pins vanish with the process, and
/// nothing of the host's is touched.
pub(crate) fn enter_private_namespaces() -> Result<(), String> {
    enter_private_netns();
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: called before any thread starts; the mounts change only this new namespace.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(os("unshare(CLONE_NEWNS)"));
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(os("making / private in the benchmark's mount namespace"));
        }
        if libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            return Err(os("mounting a private bpffs on /sys/fs/bpf"));
        }
    }
    Ok(())
}

/// Lets this process (and what it starts from now on) run on every online CPU again.
pub(crate) fn unpin_cpus() {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    run_on(0..cpus);
}

pub(crate) use guard_tests::harness::run_on;
