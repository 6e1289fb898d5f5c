//! The kernels tier: mailguard on the kernels Debian ships, each booted under QEMU with
//! virtme-ng over this machine's own root file system (read-only), running the fixture tier,
//! the smoke test and the kernel report built here.
//!
//! `cargo xtask setup` fetches what it needs (`fetch`): virtme-ng in a virtual environment, and
//! each kernel package with `apt-get download` from Debian's archive through a private apt
//! configuration (the system's sources stay untouched), unpacked under `target/kernels`.
//! `MAILGUARD_KERNELS=6.1,6.12` chooses kernels for a quick run (`none` skips the tier, loudly).

use std::{
    fs,
    io::Read,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Result, TaskError,
    cmd::{capture, run, step},
    tiers::Tally,
};

/// A kernel series Debian ships, and what the tier expects of it.
pub struct Series {
    /// The version prefix (`6.1`): the newest `linux-image-amd64` of this series in the suites
    /// below is used.
    pub name: &'static str,
    /// Who runs it.
    pub who: &'static str,
    /// Whether mailguard must work on it; otherwise a clean refusal is accepted too.
    pub must_work: bool,
}

pub const SERIES: &[Series] = &[
    Series {
        name: "6.1",
        who: "Debian 12 bookworm (most mail servers)",
        must_work: true,
    },
    Series {
        name: "6.12",
        who: "Debian 13 trixie, bookworm-backports",
        must_work: true,
    },
    Series {
        name: "5.10",
        who: "Debian 11 bullseye; stands in for RHEL 9 (5.14), Ubuntu 22.04 (5.15)",
        must_work: false,
    },
];

/// The Debian suites the kernels come from.
const SUITES: &[(&str, &str)] = &[
    ("http://deb.debian.org/debian", "bookworm"),
    ("http://deb.debian.org/debian", "bookworm-updates"),
    ("http://deb.debian.org/debian-security", "bookworm-security"),
    ("http://deb.debian.org/debian", "bookworm-backports"),
    ("http://deb.debian.org/debian", "bullseye"),
    ("http://deb.debian.org/debian-security", "bullseye-security"),
    ("http://deb.debian.org/debian", "trixie"),
];

/// virtme-ng, from PyPI (the release this tier was written against).
const VIRTME_NG: &str = "virtme-ng==1.42";

/// Time one kernel's run may take before it is stopped and reported failed.
const VM_TIMEOUT: Duration = Duration::from_secs(12 * 60);

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cache() -> PathBuf {
    root().join("target/kernels")
}

fn err(step_name: &str) -> impl Fn(std::io::Error) -> TaskError + '_ {
    move |e| TaskError::step(step_name, e.to_string())
}

/// The series `MAILGUARD_KERNELS` selects (all by default); `None` when it says `none`.
pub fn selected() -> Result<Option<Vec<&'static Series>>> {
    let Ok(wanted) = std::env::var("MAILGUARD_KERNELS") else {
        return Ok(Some(SERIES.iter().collect()));
    };
    if wanted.trim() == "none" {
        return Ok(None);
    }
    let mut chosen = Vec::new();
    for name in wanted.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let series = SERIES.iter().find(|s| s.name == name).ok_or_else(|| {
            TaskError::step(
                "kernels",
                format!(
                    "MAILGUARD_KERNELS names `{name}`; known: {}, or none",
                    SERIES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        chosen.push(series);
    }
    Ok(Some(chosen))
}

/// A kernel package unpacked in the cache.
pub struct Kernel {
    pub series: &'static Series,
    /// `linux-image-6.1.0-57-amd64`
    pub package: String,
    /// `6.1.192-3`
    pub version: String,
    /// `6.1.0-57-amd64`
    pub release: String,
    pub vmlinuz: PathBuf,
}

impl Kernel {
    fn dir(package: &str, version: &str) -> PathBuf {
        cache().join(format!("{package}_{version}"))
    }

    /// The kernel of `series` already in the cache, if any.
    fn cached(series: &'static Series) -> Option<Kernel> {
        let entries = fs::read_dir(cache()).ok()?;
        let mut found: Vec<Kernel> = entries
            .flatten()
            .filter(|e| e.path().join(".ready").exists())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (package, version) = name.split_once('_')?;
                let release = package.strip_prefix("linux-image-")?.to_string();
                (release.starts_with(&format!("{}.", series.name))).then_some(())?;
                let vmlinuz = e.path().join("boot").join(format!("vmlinuz-{release}"));
                Some(Kernel {
                    series,
                    package: package.to_string(),
                    version: version.to_string(),
                    release,
                    vmlinuz,
                })
            })
            .collect();
        found.sort_by(|a, b| a.version.cmp(&b.version));
        found.pop()
    }
}

/// Every selected kernel, from the cache.
pub fn kernels(series: &[&'static Series]) -> Result<Vec<Kernel>> {
    series
        .iter()
        .map(|s| {
            Kernel::cached(s).ok_or_else(|| {
                TaskError::step(
                    "kernels",
                    format!(
                        "no {} kernel in {}: `cargo xtask setup` fetches it",
                        s.name,
                        cache().display()
                    ),
                )
            })
        })
        .collect()
}

/// `cargo xtask setup`'s part: virtme-ng, and each selected kernel unless already cached.
pub fn fetch() -> Result<()> {
    virtme_ng()?;
    let Some(series) = selected()? else {
        step("kernels", "MAILGUARD_KERNELS=none: no kernel fetched");
        return Ok(());
    };
    let missing: Vec<&'static Series> = series
        .iter()
        .copied()
        .filter(|s| Kernel::cached(s).is_none())
        .collect();
    for s in &series {
        if let Some(k) = Kernel::cached(s) {
            step("kernels", &format!("{} {} present", k.package, k.version));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let apt = Apt::new()?;
    apt.update()?;
    for s in missing {
        let (package, version) = apt.newest(s)?;
        step(
            "kernels",
            &format!(
                "fetching {package} {version} ({}) from Debian's archive",
                s.who
            ),
        );
        apt.unpack(&package, &version)?;
    }
    Ok(())
}

/// The virtual environment with virtme-ng, created and filled once.
pub fn venv() -> PathBuf {
    cache().join("venv")
}

fn virtme_ng() -> Result<()> {
    let vng = venv().join("bin/vng");
    if vng.exists() {
        step("virtme-ng", "present");
        return Ok(());
    }
    step(
        "virtme-ng",
        &format!(
            "missing; installing {VIRTME_NG} from PyPI into {}",
            venv().display()
        ),
    );
    fs::create_dir_all(cache()).map_err(err("virtme-ng"))?;
    let venv_dir = venv().display().to_string();
    let python = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-m", "venv", "--help"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or_else(|| {
            TaskError::step(
                "virtme-ng",
                "no python3 with the venv module (python3-venv)",
            )
        })?;
    run("virtme-ng", python, &["-m", "venv", &venv_dir], &[])?;
    let pip = venv().join("bin/pip").display().to_string();
    run("virtme-ng", &pip, &["install", "-q", VIRTME_NG], &[])
}

/// apt with a private configuration: its own sources, lists and cache under `target/kernels`.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new() -> Result<Apt> {
        let dir = cache().join("apt");
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d)).map_err(err("kernels"))?;
        }
        let sources: String = SUITES
            .iter()
            .map(|(url, suite)| {
                format!(
                    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {url} {suite} main\n"
                )
            })
            .collect();
        let list = dir.join("sources.list");
        fs::write(&list, sources).map_err(err("kernels"))?;
        let options = [
            format!("Dir::Etc::SourceList={}", list.display()),
            "Dir::Etc::SourceParts=/dev/null".to_string(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            // Downloads land in our own directory, which the sandbox user cannot write.
            "APT::Sandbox::User=root".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        Ok(Apt { options })
    }

    fn args<'a>(&'a self, more: &[&'a str]) -> Vec<&'a str> {
        let mut args: Vec<&str> = self.options.iter().map(String::as_str).collect();
        args.extend_from_slice(more);
        args
    }

    fn update(&self) -> Result<()> {
        run("kernels", "apt-get", &self.args(&["-q", "update"]), &[])
    }

    /// The newest kernel package of `series`: the dependency of the newest `linux-image-amd64`
    /// whose version starts with the series.
    fn newest(&self, series: &Series) -> Result<(String, String)> {
        let text = capture("apt-cache", &self.args(&["show", "linux-image-amd64"]))
            .map_err(|e| TaskError::step("kernels", e.to_string()))?;
        let mut best: Option<(String, String)> = None;
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let (Some(version), Some(depends)) = (field("Version:"), field("Depends:")) else {
                continue;
            };
            if !version.starts_with(&format!("{}.", series.name)) {
                continue;
            }
            // "linux-image-6.1.0-57-amd64 (= 6.1.192-3)"
            let Some((package, pinned)) = depends
                .split(',')
                .next()
                .and_then(|d| d.split_once(" (= "))
                .map(|(p, v)| (p.trim().to_string(), v.trim_end_matches(')').to_string()))
            else {
                continue;
            };
            let newer = match &best {
                None => true,
                Some((_, v)) => Command::new("dpkg")
                    .args(["--compare-versions", &pinned, "gt", v])
                    .status()
                    .is_ok_and(|s| s.success()),
            };
            if newer {
                best = Some((package, pinned));
            }
        }
        best.ok_or_else(|| {
            TaskError::step(
                "kernels",
                format!(
                    "Debian's archive lists no linux-image-amd64 {}.x",
                    series.name
                ),
            )
        })
    }

    /// Downloads a kernel package and unpacks it into the cache, with its module index.
    fn unpack(&self, package: &str, version: &str) -> Result<()> {
        let downloads = cache().join("apt/debs");
        fs::create_dir_all(&downloads).map_err(err("kernels"))?;
        let pinned = format!("{package}={version}");
        let status = Command::new("apt-get")
            .current_dir(&downloads)
            .args(self.args(&["-q", "download", &pinned]))
            .status()
            .map_err(err("kernels"))?;
        if !status.success() {
            return Err(TaskError::step(
                "kernels",
                format!("apt-get download {pinned} exited with {status}"),
            ));
        }
        let deb = fs::read_dir(&downloads)
            .map_err(err("kernels"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| TaskError::step("kernels", format!("{package}: no .deb downloaded")))?;
        let dir = Kernel::dir(package, version);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(err("kernels"))?;
        }
        fs::create_dir_all(&dir).map_err(err("kernels"))?;
        let dir_s = dir.display().to_string();
        run(
            "kernels",
            "dpkg-deb",
            &["-x", &deb.display().to_string(), &dir_s],
            &[],
        )?;
        // Newer packages keep their modules under usr/lib (merged /usr); depmod and virtme-ng
        // look under lib/.
        if !dir.join("lib").exists() && dir.join("usr/lib").exists() {
            std::os::unix::fs::symlink("usr/lib", dir.join("lib")).map_err(err("kernels"))?;
        }
        let release = package.trim_start_matches("linux-image-");
        run("kernels", "depmod", &["-a", "-b", &dir_s, release], &[])?;
        fs::write(dir.join(".ready"), version).map_err(err("kernels"))?;
        let _ = fs::remove_file(&deb);
        Ok(())
    }
}

/// The binaries the guest runs, built on this machine (the guest sees its file system).
pub struct GuestBinaries {
    pub fixtures: PathBuf,
    pub smoke: PathBuf,
    pub report: PathBuf,
    pub mailguard: PathBuf,
}

impl GuestBinaries {
    /// Built optimised: under QEMU without KVM a debug build's userspace work (building the
    /// fixtures' packets and lists, the daemon's start) took most of each kernel's run.
    pub fn build() -> Result<GuestBinaries> {
        println!(
            "== building the kernels tier's binaries, optimised (fixtures, smoke test, kernel report, mailguard)"
        );
        run(
            "kernels",
            "cargo",
            &[
                "build",
                "--release",
                "-p",
                "guard-userspace",
                "-p",
                "guard-tests",
                "--bin",
                "mailguard",
                "--bin",
                "mailguard-kernel-report",
            ],
            &[],
        )?;
        let out = Command::new("cargo")
            .current_dir(root())
            .args([
                "test",
                "--release",
                "-p",
                "guard-tests",
                "--test",
                "fixtures",
                "--test",
                "smoke",
                "--no-run",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit())
            .output()
            .map_err(err("kernels"))?;
        if !out.status.success() {
            return Err(TaskError::step(
                "kernels",
                "building the test binaries failed",
            ));
        }
        let mut fixtures = None;
        let mut smoke = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = json_str(line, "\"name\":\"") else {
                continue;
            };
            let Some(exe) = json_str(line, "\"executable\":\"") else {
                continue;
            };
            match name {
                "fixtures" => fixtures = Some(PathBuf::from(exe)),
                "smoke" => smoke = Some(PathBuf::from(exe)),
                _ => {}
            }
        }
        let missing = |what: &str| TaskError::step("kernels", format!("no {what} test binary"));
        Ok(GuestBinaries {
            fixtures: fixtures.ok_or_else(|| missing("fixtures"))?,
            smoke: smoke.ok_or_else(|| missing("smoke"))?,
            report: root().join("target/release/mailguard-kernel-report"),
            mailguard: root().join("target/release/mailguard"),
        })
    }
}

/// The value of the first `"key":"value"` after `key` in a line of cargo's JSON (values here
/// are names and paths without quotes or escapes).
fn json_str<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// The script a guest (or the host) runs; results go to files in `out`.
fn guest_script(bins: &GuestBinaries, out: &Path) -> String {
    format!(
        r#"#!/bin/bash
# Written by `cargo xtask test` (kernels tier); runs inside the guest.
exec > {out}/guest.log 2>&1
set -x
uname -r > {out}/release
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
ulimit -l unlimited
modprobe veth 2>/dev/null
cd {root}
export MAILGUARD_BIN={mailguard}
{report} > {out}/report.json 2> {out}/report.err
echo $? > {out}/report.rc
{fixtures} --test-threads=2 --show-output > {out}/fixtures.out 2>&1
echo $? > {out}/fixtures.rc
{smoke} --nocapture > {out}/smoke.out 2>&1
echo $? > {out}/smoke.rc
dmesg > {out}/dmesg.txt 2>&1
echo done > {out}/done
"#,
        out = out.display(),
        root = root().display(),
        mailguard = bins.mailguard.display(),
        report = bins.report.display(),
        fixtures = bins.fixtures.display(),
        smoke = bins.smoke.display(),
    )
}

/// What one kernel's run showed.
pub struct Outcome {
    pub kernel: String,
    pub package: String,
    pub who: String,
    pub xdp: String,
    pub sockops: String,
    pub load: String,
    pub fixtures: String,
    pub smoke: String,
    pub degraded: Vec<String>,
    /// Tests inside the guest that reported themselves skipped (a line starting `SKIPPED`),
    /// with their reason.
    pub skipped: Vec<String>,
    pub refused: Option<String>,
    pub seconds: f64,
    pub problems: Vec<String>,
}

/// Boots `kernel` (or, with `None`, runs on this machine's own kernel) and collects the results.
pub fn run_one(kernel: Option<&Kernel>, bins: &GuestBinaries) -> Result<Outcome> {
    let name = kernel.map_or("host".to_string(), |k| k.release.clone());
    let out = cache().join("runs").join(&name);
    if out.exists() {
        fs::remove_dir_all(&out).map_err(err("kernels"))?;
    }
    fs::create_dir_all(&out).map_err(err("kernels"))?;
    let script = out.join("guest.sh");
    fs::write(&script, guest_script(bins, &out)).map_err(err("kernels"))?;
    let started = Instant::now();
    let mut problems = Vec::new();
    match kernel {
        None => {
            println!("\n== kernels tier: this machine's kernel");
            let status = Command::new("bash")
                .arg(&script)
                .status()
                .map_err(err("kernels"))?;
            if !status.success() {
                problems.push(format!("the script exited with {status}"));
            }
        }
        Some(k) => {
            println!(
                "\n== kernels tier: {} {} ({}) under QEMU",
                k.package, k.version, k.series.who
            );
            if let Err(e) = boot(k, &script, &out) {
                problems.push(e);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(collect(kernel, &name, &out, seconds, problems))
}

/// Boots the kernel under QEMU (TCG: this machine's KVM is unusable) with the guest script.
fn boot(k: &Kernel, script: &Path, out: &Path) -> std::result::Result<(), String> {
    let path = format!(
        "{}:{}",
        venv().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new(venv().join("bin/vng"))
        .current_dir(root())
        .env("PATH", path)
        .args(["--run"])
        .arg(&k.vmlinuz)
        .args(["--disable-kvm", "--cpus", "2", "--memory", "4G", "--rwdir"])
        .arg(out)
        .arg("--exec")
        .arg(format!("bash {}", script.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start vng: {e}"))?;
    let deadline = Instant::now() + VM_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if !out.join("done").exists() {
                    let mut console = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut console);
                    }
                    let tail: Vec<&str> = console.lines().rev().take(15).collect();
                    return Err(format!(
                        "the guest did not finish (vng exited with {status}); its console ended:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
                return Ok(());
            }
            Ok(None) if Instant::now() > deadline => {
                // SAFETY: ends the process group of the vng we started (QEMU included).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!("stopped after {} s", VM_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn read(out: &Path, file: &str) -> String {
    fs::read_to_string(out.join(file)).unwrap_or_default()
}

/// A libtest run's result as "passed/total", with a problem when it failed or ran nothing.
fn tests_result(out: &Path, file: &str, what: &str, problems: &mut Vec<String>) -> String {
    let text = read(out, file);
    let mut tally = Tally::default();
    for line in text.lines() {
        tally.add(line);
    }
    let rc = read(out, &format!("{file}.rc").replace(".out.rc", ".rc"));
    let total = tally.passed + tally.failed + tally.ignored;
    if rc.trim() != "0" || tally.failed > 0 || tally.passed == 0 || tally.ignored > 0 {
        let failures: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("test ") && l.ends_with("FAILED"))
            .collect();
        problems.push(format!(
            "{what}: {} of {total} passed (exit {}){}",
            tally.passed,
            rc.trim(),
            if failures.is_empty() {
                String::new()
            } else {
                format!("; {}", failures.join("; "))
            }
        ));
    }
    format!("{}/{total}", tally.passed)
}

fn collect(
    kernel: Option<&Kernel>,
    name: &str,
    out: &Path,
    seconds: f64,
    mut problems: Vec<String>,
) -> Outcome {
    let report_text = read(out, "report.json");
    let report: Option<serde_json::Value> = serde_json::from_str(report_text.trim()).ok();
    let field = |r: &serde_json::Value, program: &str| match &r["programs"][program] {
        serde_json::Value::Null => "not reported (before 5.16)".to_string(),
        n => n.to_string(),
    };
    let refused = report
        .as_ref()
        .and_then(|r| r["refused"].as_str().map(str::to_string));
    let (xdp, sockops, load, degraded) = match &report {
        Some(r) if r.get("programs").is_some() => (
            field(r, "mailguard_xdp"),
            field(r, "mailguard_sockops"),
            format!("{} ms", r["load_ms"]),
            r["degraded"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        Some(r) => {
            if refused.is_none() {
                problems.push(format!(
                    "the kernel report failed: {}",
                    r["load_error"].as_str().unwrap_or("no reason given")
                ));
            }
            ("-".into(), "-".into(), "-".into(), Vec::new())
        }
        None => {
            problems.push(format!(
                "no kernel report ({})",
                read(out, "report.err")
                    .lines()
                    .last()
                    .unwrap_or("nothing written")
            ));
            ("-".into(), "-".into(), "-".into(), Vec::new())
        }
    };
    let must_work = kernel.is_none_or(|k| k.series.must_work);
    let (fixtures, smoke) = match &refused {
        Some(message) => {
            if must_work {
                problems.push(format!("refused: {message}"));
            } else if !message.contains(name) {
                problems.push(format!("the refusal does not name the kernel: {message}"));
            }
            ("refused".to_string(), "refused".to_string())
        }
        None => (
            tests_result(out, "fixtures.out", "fixtures", &mut problems),
            tests_result(out, "smoke.out", "smoke test", &mut problems),
        ),
    };
    let release = report
        .as_ref()
        .and_then(|r| r["release"].as_str().map(str::to_string));
    let skipped = ["fixtures.out", "smoke.out"]
        .iter()
        .flat_map(|file| {
            read(out, file)
                .lines()
                .filter(|l| l.starts_with("SKIPPED"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    Outcome {
        kernel: match (kernel, release) {
            (None, Some(release)) => format!("{release} (this machine)"),
            _ => name.to_string(),
        },
        package: kernel.map_or("this machine".to_string(), |k| {
            format!("{} {}", k.package, k.version)
        }),
        who: kernel.map_or(String::new(), |k| k.series.who.to_string()),
        xdp,
        sockops,
        load,
        fixtures,
        smoke,
        degraded,
        skipped,
        refused,
        seconds,
        problems,
    }
}

/// The table of outcomes, as Markdown.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut t = String::from(
        "| kernel | package | who runs it | mailguard_xdp insns | mailguard_sockops insns | load | fixtures | smoke | run time |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |\n",
            o.kernel, o.package, o.who, o.xdp, o.sockops, o.load, o.fixtures, o.smoke, o.seconds
        ));
    }
    let notes: Vec<String> = outcomes
        .iter()
        .flat_map(|o| {
            o.degraded
                .iter()
                .map(move |d| format!("- {}: {d}", o.kernel))
                .chain(
                    o.refused
                        .iter()
                        .map(move |r| format!("- {}: refused: {r}", o.kernel)),
                )
                .chain(
                    o.skipped
                        .iter()
                        .map(move |s| format!("- {}: {s}", o.kernel)),
                )
        })
        .collect();
    if !notes.is_empty() {
        t.push('\n');
        t.push_str(&notes.join("\n"));
        t.push('\n');
    }
    t
}
