//! `cargo xtask setup`: everything a fresh machine needs before mailguard builds and its tests
//! run. Every step first checks whether its work is already done, so running it again is cheap.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::{
    Result, TaskError,
    cmd::{capture, have_command, run, step, which},
};

/// The bpf-linker release verified against nightly's LLVM (see ../shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the test tiers, the demo lab and the benchmarks use, with what for.
pub const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "network namespaces and veth pairs"),
    ("ethtool", "GRO on veth so native XDP sees traffic"),
    ("util-linux", "nsenter"),
    ("postfix", "the real mail server in the test lab"),
    ("swaks", "the SMTP client that delivers test messages"),
    (
        "dovecot-imapd",
        "the real IMAP server and Postfix's SASL in the bans tests (and its auth policy client)",
    ),
    (
        "fail2ban",
        "the peer of mailguard's bans in benchmarks (its postfix-sasl and dovecot jails)",
    ),
    (
        "crowdsec",
        "CrowdSec's Local API and cscli: the fleet mailguard bounces in the CrowdSec tests (offline: no Central API)",
    ),
    (
        "crowdsec-firewall-bouncer",
        "CrowdSec's own nftables bouncer, the peer of mailguard's in benchmarks",
    ),
    (
        "openssl",
        "a certificate authority and the LAPI's TLS certificate in the CrowdSec tests",
    ),
    (
        "python3-pyinotify",
        "fail2ban's fastest file backend (inotify), so that it is measured at its best",
    ),
    ("libio-socket-inet6-perl", "swaks over IPv6"),
    ("nmap", "SYN scans from the client namespace"),
    (
        "dnsmasq-base",
        "a real DNS server serving a provider's SPF records in the lists tests",
    ),
    ("hping3", "SYN floods"),
    (
        "netsniff-ng",
        "trafgen, the fast random-source SYN flood in benchmarks",
    ),
    ("bpftool", "inspecting loaded programs and maps"),
    ("xdp-tools", "xdp-filter, the peer in benchmarks"),
    (
        "nftables",
        "the nftables recipe (ct count, limit rate), the peer on the wire in benchmarks",
    ),
    ("gnuplot-nox", "the benchmark report's PNG plots"),
    (
        "qemu-system-x86",
        "booting Debian's kernels for the kernels tier (virtme-ng)",
    ),
    ("busybox-static", "virtme-ng's initramfs"),
    (
        "kmod",
        "depmod for the kernel packages the kernels tier boots",
    ),
    (
        "lintian",
        "checking the Debian package `cargo xtask dist` builds",
    ),
    (
        "mmdebstrap",
        "the clean Debian root the package is installed into, under a real systemd",
    ),
    (
        "prometheus",
        "a real Prometheus server scraping /metrics, and promtool",
    ),
];

pub fn setup() -> Result<()> {
    println!("== mailguard setup: checking and installing what the build and tests need");
    check_root()?;
    nightly_toolchain()?;
    rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    bpffs()?;
    cgroup2()?;
    crate::kernels::fetch()?;
    crate::systemd_check::fetch()?;
    println!("== setup complete");
    Ok(())
}

fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { geteuid() };
    if euid != 0 {
        return Err(TaskError::step(
            "privileges",
            "mailguard's setup, tests and demo load eBPF programs, create network namespaces \
             and install Debian packages; run them as root",
        ));
    }
    Ok(())
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

fn nightly_toolchain() -> Result<()> {
    let toolchains = capture("rustup", &["toolchain", "list"])
        .map_err(|e| TaskError::step("nightly toolchain", e.to_string()))?;
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("nightly toolchain", "present");
        return Ok(());
    }
    step(
        "nightly toolchain",
        "missing; installing it with rustup (minimal profile)",
    );
    run(
        "nightly toolchain",
        "rustup",
        &["toolchain", "install", "nightly", "--profile", "minimal"],
        &[],
    )
}

fn rust_src() -> Result<()> {
    let installed = capture(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .map_err(|e| TaskError::step("rust-src", e.to_string()))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src (nightly)", "present");
        return Ok(());
    }
    step("rust-src (nightly)", "missing; adding it with rustup");
    run(
        "rust-src",
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
        &[],
    )
}

/// The directory holding nightly's own `libLLVM-*.so`, and that library's file stem.
fn nightly_llvm() -> Result<(PathBuf, String)> {
    let sysroot = capture("rustc", &["+nightly", "--print", "sysroot"])
        .map_err(|e| TaskError::step("bpf-linker", e.to_string()))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let entries = fs::read_dir(&lib)
        .map_err(|e| TaskError::step("bpf-linker", format!("reading {}: {e}", lib.display())))?;
    let mut stems: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("libLLVM") && n.ends_with(".so"))
        .map(|n| n.trim_end_matches(".so").to_string())
        .collect();
    stems.sort();
    match stems.into_iter().next() {
        Some(stem) => Ok((lib, stem)),
        None => Err(TaskError::step(
            "bpf-linker",
            format!("nightly ships no libLLVM-*.so in {}", lib.display()),
        )),
    }
}

/// LLVM major version in a `libLLVM-22-rust-...` or `libLLVM.so.22.1-rust-...` file stem.
fn llvm_major_of_stem(stem: &str) -> Option<u32> {
    let digits: String = stem
        .trim_start_matches("libLLVM")
        .trim_start_matches(['-', '.'])
        .trim_start_matches("so.")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn bpf_linker() -> Result<()> {
    let (lib, stem) = nightly_llvm()?;
    let want = llvm_major_of_stem(&stem).ok_or_else(|| {
        TaskError::step(
            "bpf-linker",
            format!("cannot read an LLVM version from {stem}"),
        )
    })?;
    if have_command("bpf-linker") {
        // A bpf-linker built by this recipe links nightly's own libLLVM dynamically; `ldd`
        // shows exactly which one. Anything else (another LLVM, a static build) is rebuilt.
        let linker = which("bpf-linker").unwrap_or_default();
        let libs = capture("ldd", &[&linker]).unwrap_or_default();
        let nightly_llvm = libs
            .lines()
            .any(|l| l.contains("libLLVM") && l.contains(&lib.display().to_string()));
        if nightly_llvm && !libs.contains("not found") {
            step(
                "bpf-linker",
                &format!("present, linked against nightly's LLVM {want}"),
            );
            return Ok(());
        }
        step(
            "bpf-linker",
            &format!("present but not linked against nightly's {stem} (LLVM {want}); rebuilding"),
        );
    } else {
        step(
            "bpf-linker",
            &format!(
                "missing; building {BPF_LINKER_VERSION} against nightly's LLVM {want} (about a minute)"
            ),
        );
    }
    let link_name = stem.trim_start_matches("lib");
    let rustflags = format!(
        "-C link-arg=-Wl,-rpath,{dir} -L {dir} -l dylib={link_name}",
        dir = lib.display()
    );
    let feature = format!("llvm-{want},no-llvm-linking");
    run(
        "bpf-linker",
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
            "--no-default-features",
            "--features",
            &feature,
        ],
        &[("RUSTFLAGS", &rustflags)],
    )?;
    if !have_command("bpf-linker") {
        return Err(TaskError::step(
            "bpf-linker",
            "installed, but not on PATH; add ~/.cargo/bin to PATH",
        ));
    }
    Ok(())
}

fn package_installed(name: &str) -> bool {
    capture("dpkg-query", &["-W", "-f=${Status}", name])
        .map(|s| s.contains("install ok installed"))
        .unwrap_or(false)
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !package_installed(name))
        .collect();
    if missing.is_empty() {
        step("Debian packages", "all present");
        return Ok(());
    }
    for (name, why) in DEBIAN_PACKAGES.iter().filter(|(n, _)| missing.contains(n)) {
        step("Debian packages", &format!("missing {name} ({why})"));
    }
    // Postfix must not configure itself as the host's MTA: the lab runs its own instances.
    run(
        "Debian packages",
        "sh",
        &[
            "-c",
            "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections",
        ],
        &[],
    )?;
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    run("Debian packages", "apt-get", &["update", "-q"], &env)?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    // Dovecot, Postfix and fail2ban must not start as the host's services: the tests run
    // their own instances, in namespaces. Debian's policy-rc.d (exit 101) keeps packages from
    // starting services while they install; one the host already has is left alone.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        fs::write(
            policy,
            "#!/bin/sh\n# mailguard setup: no service starts while it installs\nexit 101\n",
        )
        .and_then(|()| fs::set_permissions(policy, fs::Permissions::from_mode(0o755)))
        .map_err(|e| {
            TaskError::step(
                "Debian packages",
                format!("writing {}: {e}", policy.display()),
            )
        })?;
    }
    // CrowdSec's package registers with its Central API while it installs, unless a
    // credentials file is already there; these machines are offline (and the tests run their
    // own Local API), so one that says so is put there first.
    if missing.contains(&"crowdsec") {
        let capi = Path::new("/etc/crowdsec/online_api_credentials.yaml");
        if !capi.exists() || fs::metadata(capi).is_ok_and(|m| m.len() == 0) {
            fs::create_dir_all("/etc/crowdsec")
                .and_then(|()| {
                    fs::write(
                        capi,
                        "# mailguard setup: this host does not register with CrowdSec's Central API\n",
                    )
                })
                .map_err(|e| {
                    TaskError::step("Debian packages", format!("writing {}: {e}", capi.display()))
                })?;
        }
    }
    let installed = run("Debian packages", "apt-get", &args, &env);
    if ours {
        let _ = fs::remove_file(policy);
    }
    installed
}

fn mounted(fstype: &str, target: &str) -> bool {
    fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let (_, t, ty) = (f.next(), f.next(), f.next());
                t == Some(target) && ty == Some(fstype)
            })
        })
        .unwrap_or(false)
}

fn bpffs() -> Result<()> {
    if mounted("bpf", "/sys/fs/bpf") {
        step("bpffs", "mounted on /sys/fs/bpf");
        return Ok(());
    }
    step("bpffs", "not mounted; mounting it on /sys/fs/bpf");
    fs::create_dir_all("/sys/fs/bpf")
        .map_err(|e| TaskError::step("bpffs", format!("creating /sys/fs/bpf: {e}")))?;
    run("bpffs", "mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"], &[])
}

fn cgroup2() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts")
        .map_err(|e| TaskError::step("cgroup v2", format!("reading /proc/mounts: {e}")))?;
    match mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
    {
        Some(l) => {
            let at = l.split_whitespace().nth(1).unwrap_or("?");
            step("cgroup v2", &format!("mounted at {at}"));
            Ok(())
        }
        None => Err(TaskError::step(
            "cgroup v2",
            "no cgroup2 mount in /proc/mounts; sock_ops connection accounting needs one",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::llvm_major_of_stem;

    #[test]
    fn reads_llvm_major_from_library_names() {
        assert_eq!(
            llvm_major_of_stem("libLLVM-22-rust-1.97.0-nightly"),
            Some(22)
        );
        assert_eq!(
            llvm_major_of_stem("libLLVM.so.21.1-rust-1.90.0-nightly"),
            Some(21)
        );
        assert_eq!(llvm_major_of_stem("libLLVM"), None);
    }
}
