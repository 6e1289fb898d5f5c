//! A spoofed SYN flood from the attacker (trafgen, random sources in 198.19.0.0/16).

use std::{
    fs,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Stdio},
};

use super::{Lab, MAIL4};

/// A spoofed SYN flood from the attacker to the mail host's port 25: trafgen (netsniff-ng)
/// sending as fast as it can (sendto), every SYN from a random source in 198.19.0.0/16 (inside
/// the test range, apart from the lab's hosts) with a random source port and sequence number.
/// Ended, with its whole process group, on drop.
pub struct SpoofedFlood {
    child: Child,
}

/// Writes trafgen's packet into the lab's directory and returns its path: a SYN from the
/// attacker to the mail host's port 25 from a random source in the /16 `sources` (random source
/// port and sequence number; trafgen computes the checksums per packet).
pub fn spoofed_syn_config(lab: &Lab, sources: [u8; 2]) -> PathBuf {
    let mac = crate::netns::link_info(Some(&lab.mail.ns), &lab.mail.iface)["address"]
        .as_str()
        .expect("the mail host's MAC address")
        .to_string();
    let [a, b] = sources;
    let conf = lab.dir.path.join(format!("spoofed-syn-{a}.{b}.trafgen"));
    fs::write(
        &conf,
        format!(
            "{{\n  eth(da={mac}),\n  ipv4(sa={a}.{b}.0.1, sa[2]=drnd(), sa[3]=drnd(), da={MAIL4}, ttl=64),\n  \
             tcp(sp=40000, sp[0]=drnd(), dp=25, seq=drnd(), syn, win=64240)\n}}\n"
        ),
    )
    .expect("write the trafgen configuration");
    conf
}

impl SpoofedFlood {
    pub fn start(lab: &Lab) -> SpoofedFlood {
        let conf = spoofed_syn_config(lab, [198, 19]);
        let child = lab
            .attacker
            .ns
            .command("trafgen")
            .args([
                "--dev",
                &lab.attacker.iface,
                "--notouch-irq",
                "--cpus",
                "1",
                "--gap",
                "0",
            ])
            .arg("--conf")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("trafgen");
        SpoofedFlood { child }
    }
}

impl Drop for SpoofedFlood {
    fn drop(&mut self) {
        // SAFETY: signals the process group this flood created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
