//! The kernels tier's systemd checks: a clean Debian 12 root made by mmdebstrap (systemd,
//! iproute2, netcat; no Rust), booted under QEMU on Debian 12's kernel with systemd as PID 1.
//! Inside, a oneshot unit runs `systemd_check.sh`: it installs the package `cargo xtask dist`
//! built and checks the unit step by step (start through sd_notify, capabilities, journal,
//! reload, stop keeping the protection, start adopting it, a failed start not looping with the
//! host unprotected, removal unloading). Each step's result is printed.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Result, TaskError,
    cmd::{run, step},
    kernels::{self, Kernel},
};

/// The check script the guest's oneshot unit runs.
const CHECK_SCRIPT: &str = include_str!("systemd_check.sh");

/// Packages of the root beside mmdebstrap's minbase.
const ROOT_PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,kmod,netcat-openbsd,procps,ethtool";

/// How long the booted system may take for every check.
const TIMEOUT: Duration = Duration::from_secs(10 * 60);

fn err(e: impl std::fmt::Display) -> TaskError {
    TaskError::step("systemd", e.to_string())
}

fn tarball() -> PathBuf {
    kernels::cache().join("bookworm-systemd-root.tar")
}

/// `cargo xtask setup`'s part: the root's tarball, made once.
pub fn fetch() -> Result<()> {
    if tarball().is_file() {
        step("systemd root", "Debian 12 root with systemd present");
        return Ok(());
    }
    if tarball().is_dir() {
        fs::remove_dir_all(tarball()).map_err(err)?;
    }
    step(
        "systemd root",
        "missing; making a Debian 12 root with systemd (mmdebstrap, about 20 s)",
    );
    let partial = tarball().with_extension("tar.partial");
    run(
        "systemd root",
        "mmdebstrap",
        &[
            "--variant=minbase",
            "--format=tar",
            &format!("--include={ROOT_PACKAGES}"),
            "bookworm",
            partial.to_str().ok_or_else(|| err("non-UTF-8 path"))?,
            "http://deb.debian.org/debian",
        ],
        &[],
    )?;
    fs::rename(&partial, tarball()).map_err(err)
}

/// One step's result, as the check script wrote it.
pub struct Step {
    pub ok: bool,
    pub line: String,
}

/// Boots the root with the package on `kernel` and returns each step's result.
pub fn check(kernel: &Kernel, deb: &Path) -> Result<Vec<Step>> {
    println!(
        "\n== systemd: {} with systemd as PID 1 under QEMU, the package installed and checked",
        kernel.package
    );
    let dir = kernels::cache().join("runs/systemd");
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(err)?;
    }
    let root = dir.join("root");
    fs::create_dir_all(&root).map_err(err)?;
    run(
        "systemd",
        "tar",
        &[
            "-C",
            root.to_str().ok_or_else(|| err("non-UTF-8 path"))?,
            "-xf",
            tarball().to_str().ok_or_else(|| err("non-UTF-8 path"))?,
        ],
        &[],
    )?;
    prepare(&root, kernel, deb)?;

    let started = Instant::now();
    let path = format!(
        "{}:{}",
        kernels::venv().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let console = fs::File::create(dir.join("console.log")).map_err(err)?;
    let mut child = Command::new(kernels::venv().join("bin/vng"))
        .env("PATH", path)
        .arg("--run")
        .arg(&kernel.vmlinuz)
        .arg("--root")
        .arg(&root)
        .args([
            "--rw",
            "--systemd",
            "--disable-kvm",
            "--cpus",
            "2",
            "--memory",
            "2G",
        ])
        .stdin(Stdio::null())
        .stdout(console.try_clone().map_err(err)?)
        .stderr(console)
        .spawn()
        .map_err(|e| err(format!("cannot start vng: {e}")))?;
    let results = root.join("root/results");
    loop {
        if let Some(status) = child.try_wait().map_err(err)? {
            if !results.join("done").exists() {
                return Err(err(format!(
                    "the system stopped (vng: {status}) before the checks finished; see {} and {}",
                    dir.join("console.log").display(),
                    results.join("check.log").display()
                )));
            }
            break;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let _ = Command::new("pkill")
                .args(["-f", &root.display().to_string()])
                .status();
            return Err(err(format!(
                "the checks did not finish in {} s; see {}",
                TIMEOUT.as_secs(),
                results.join("check.log").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let steps: Vec<Step> = fs::read_to_string(results.join("steps"))
        .map_err(err)?
        .lines()
        .map(|l| Step {
            ok: l.starts_with("ok "),
            line: l.to_string(),
        })
        .collect();
    for s in &steps {
        println!("  systemd: {}", s.line);
    }
    println!(
        "  ({:.0} s; journal in {})",
        started.elapsed().as_secs_f64(),
        results.join("journal.log").display()
    );
    Ok(steps)
}

/// Puts the package, the check script and its unit into the root, and the kernel's modules
/// (veth) where its modprobe looks.
fn prepare(root: &Path, kernel: &Kernel, deb: &Path) -> Result<()> {
    fs::copy(deb, root.join("root/mailguard.deb")).map_err(err)?;
    fs::write(root.join("root/check.sh"), CHECK_SCRIPT).map_err(err)?;
    run(
        "systemd",
        "chmod",
        &["+x", &root.join("root/check.sh").display().to_string()],
        &[],
    )?;
    let units = root.join("etc/systemd/system");
    fs::write(
        units.join("mailguard-check.service"),
        "[Unit]\nDescription=mailguard's systemd checks (cargo xtask test)\n\
         After=multi-user.target\n\n[Service]\nType=oneshot\nExecStart=/root/check.sh\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .map_err(err)?;
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants).map_err(err)?;
    symlink(
        "/etc/systemd/system/mailguard-check.service",
        wants.join("mailguard-check.service"),
    )
    .map_err(err)?;
    // No console logins: their serial device never appears under virtme-ng, and waiting for
    // it costs the boot 90 s.
    for unit in ["serial-getty@ttyS0.service", "getty@tty1.service"] {
        let _ = fs::remove_file(units.join(unit));
        symlink("/dev/null", units.join(unit)).map_err(err)?;
    }
    // The kernel's modules, hard-linked (same file system) into the root's /lib/modules.
    let release = &kernel.release;
    let modules = kernel
        .vmlinuz
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| err("kernel directory"))?
        .join("lib/modules")
        .join(release);
    let target = root.join("lib/modules");
    fs::create_dir_all(&target).map_err(err)?;
    run(
        "systemd",
        "cp",
        &[
            "-al",
            &modules.display().to_string(),
            &target.display().to_string(),
        ],
        &[],
    )
}
