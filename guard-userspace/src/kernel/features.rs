//! What the running kernel offers mailguard, probed the way libbpf does (a minimal program or
//! map of each kind; aya's `is_*_supported`), never inferred from the version number: a
//! distribution kernel carries backports, and a tuned one may lack what its version had.
//!
//! - What mailguard cannot work without is *required*: `run` refuses before it touches
//!   anything, naming the kernel and what it lacks.
//! - What it can do without is *optional*: the programs are told (guard-common's `features`),
//!   and the daemon says once what is lost.

use std::{fmt, sync::OnceLock};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use guard_common::{
    FEATURE_COARSE_CLOCK, FEATURE_RAW_SYN_COOKIE, FEATURE_SOCKOPS_NETNS_COOKIE, FEATURE_SYN_COOKIE,
};

/// One thing mailguard uses, with the Linux release that brought it (for the message only).
struct Requirement {
    what: &'static str,
    since: &'static str,
    probe: Probe,
}

enum Probe {
    Program(ProgramType),
    Map(MapType),
    Helper(ProgramType, BpfHelper),
}

impl Probe {
    fn supported(&self) -> bool {
        // A probe that fails for another reason (no permission, say) counts as support: the
        // load that follows then reports the real error.
        match self {
            Probe::Program(p) => is_program_supported(*p).unwrap_or(true),
            Probe::Map(m) => is_map_supported(*m).unwrap_or(true),
            Probe::Helper(p, h) => is_helper_supported(*p, *h).unwrap_or(true),
        }
    }
}

const fn helper(
    what: &'static str,
    since: &'static str,
    p: ProgramType,
    h: BpfHelper,
) -> Requirement {
    Requirement {
        what,
        since,
        probe: Probe::Helper(p, h),
    }
}

/// What mailguard cannot work without. Every item is older than Linux 5.10, the oldest kernel
/// the kernels tier boots; a kernel that lacks one of them is refused.
const REQUIRED: &[Requirement] = &[
    Requirement {
        what: "XDP programs",
        since: "4.8",
        probe: Probe::Program(ProgramType::Xdp),
    },
    Requirement {
        what: "sock_ops programs",
        since: "4.13",
        probe: Probe::Program(ProgramType::SockOps),
    },
    Requirement {
        what: "LPM trie maps",
        since: "4.11",
        probe: Probe::Map(MapType::LpmTrie),
    },
    Requirement {
        what: "LRU hash maps",
        since: "4.10",
        probe: Probe::Map(MapType::LruHash),
    },
    Requirement {
        what: "program arrays (tail calls)",
        since: "4.2",
        probe: Probe::Map(MapType::ProgramArray),
    },
    Requirement {
        what: "per-CPU arrays",
        since: "4.6",
        probe: Probe::Map(MapType::PerCpuArray),
    },
    helper(
        "bpf_tail_call in XDP",
        "4.8",
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_tail_call,
    ),
    helper(
        "bpf_skc_lookup_tcp in XDP",
        "5.2",
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_skc_lookup_tcp,
    ),
    helper(
        "bpf_sk_lookup_udp in XDP",
        "4.20",
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_sk_lookup_udp,
    ),
    helper(
        "bpf_jiffies64 in XDP",
        "5.5",
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_jiffies64,
    ),
    helper(
        "bpf_csum_diff in XDP",
        "4.6",
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_csum_diff,
    ),
    helper(
        "bpf_xdp_adjust_tail in XDP",
        "4.18",
        ProgramType::Xdp,
        BpfHelper::BPF_FUNC_xdp_adjust_tail,
    ),
    helper(
        "bpf_get_socket_cookie in sock_ops",
        "5.1",
        ProgramType::SockOps,
        BpfHelper::BPF_FUNC_get_socket_cookie,
    ),
    helper(
        "bpf_sock_ops_cb_flags_set in sock_ops",
        "4.17",
        ProgramType::SockOps,
        BpfHelper::BPF_FUNC_sock_ops_cb_flags_set,
    ),
];

/// What mailguard can do without, the program feature bit it sets, and what is lost without.
struct Optional {
    requirement: Requirement,
    feature: u32,
    lost: &'static str,
}

const OPTIONAL: &[Optional] = &[
    Optional {
        requirement: helper(
            "bpf_ktime_get_coarse_ns in XDP",
            "5.11",
            ProgramType::Xdp,
            BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
        ),
        feature: FEATURE_COARSE_CLOCK,
        lost: "budgets and block expiry read the precise clock instead: the same \
               CLOCK_MONOTONIC, about 20 ns more for each new mail connection",
    },
    Optional {
        requirement: helper(
            "bpf_get_netns_cookie in sock_ops",
            "5.15",
            ProgramType::SockOps,
            BpfHelper::BPF_FUNC_get_netns_cookie,
        ),
        feature: FEATURE_SOCKOPS_NETNS_COOKIE,
        lost: "connection caps count the connections to mail ports of every network \
               namespace (containers included), not only those of mailguard's own",
    },
    Optional {
        requirement: helper(
            "bpf_tcp_gen_syncookie in XDP",
            "5.3",
            ProgramType::Xdp,
            BpfHelper::BPF_FUNC_tcp_gen_syncookie,
        ),
        feature: FEATURE_SYN_COOKIE,
        lost: "no SYN is answered with a SYN cookie (`syn_cookies` has no effect): over the \
               SYN ceiling, SYNs are dropped",
    },
    Optional {
        requirement: helper(
            "bpf_tcp_raw_gen_syncookie_ipv4 in XDP",
            "6.0",
            ProgramType::Xdp,
            BpfHelper::BPF_FUNC_tcp_raw_gen_syncookie_ipv4,
        ),
        feature: FEATURE_RAW_SYN_COOKIE,
        lost: "SYN cookies from XDP need net.ipv4.tcp_syncookies at 2 while they are on, and \
               then the kernel answers every SYN that reaches it with a cookie too, known \
               clients' included",
    },
];

/// The kernel's answer to every probe.
#[derive(Clone, Debug)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    /// `FEATURE_*` bits for the programs.
    pub bits: u32,
    /// One line per optional feature this kernel lacks: what, since when, what is lost.
    pub degraded: Vec<String>,
    missing: Vec<String>,
}

/// The kernel lacks something mailguard cannot work without.
#[derive(Debug, thiserror::Error)]
pub struct Unsupported {
    pub release: String,
    pub missing: Vec<String>,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this kernel (Linux {}) lacks what mailguard needs: {}. mailguard runs on Linux 5.10 \
             and later (docs/KERNELS.md); nothing was changed",
            self.release,
            self.missing.join("; ")
        )
    }
}

impl KernelFeatures {
    /// Probes the running kernel (once per process; later calls return the first answer).
    pub fn probed() -> &'static KernelFeatures {
        static PROBED: OnceLock<KernelFeatures> = OnceLock::new();
        PROBED.get_or_init(KernelFeatures::probe)
    }

    fn probe() -> KernelFeatures {
        let missing = REQUIRED
            .iter()
            .filter(|r| !r.probe.supported())
            .map(|r| format!("{} (Linux {})", r.what, r.since))
            .collect();
        let mut bits = 0;
        let mut degraded = Vec::new();
        for o in OPTIONAL {
            if o.requirement.probe.supported() {
                bits |= o.feature;
            } else {
                degraded.push(format!(
                    "no {} (Linux {}): {}",
                    o.requirement.what, o.requirement.since, o.lost
                ));
            }
        }
        KernelFeatures {
            release: kernel_release(),
            bits,
            degraded,
            missing,
        }
    }

    /// `Err` naming what is missing when mailguard cannot work on this kernel.
    pub fn check(&self) -> Result<(), Unsupported> {
        if self.missing.is_empty() {
            Ok(())
        } else {
            Err(Unsupported {
                release: self.release.clone(),
                missing: self.missing.clone(),
            })
        }
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_features_cover_every_program_feature_bit() {
        let bits = OPTIONAL.iter().fold(0, |b, o| b | o.feature);
        assert_eq!(bits, guard_common::FEATURES_ALL);
    }

    #[test]
    fn the_refusal_names_the_kernel_and_what_it_lacks() {
        let e = Unsupported {
            release: "4.19.0-27-amd64".into(),
            missing: vec!["bpf_jiffies64 in XDP (Linux 5.5)".into()],
        };
        let text = e.to_string();
        assert!(text.contains("Linux 4.19.0-27-amd64"), "{text}");
        assert!(text.contains("bpf_jiffies64 in XDP (Linux 5.5)"), "{text}");
        assert!(text.contains("nothing was changed"), "{text}");
    }
}
