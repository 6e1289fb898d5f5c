//! The reference programs (tests/reference-ebpf), one object each, built by tests/build.rs with
//! the toolchain and linker that build mailguard's. mailguard never holds or loads them.

use aya::{Ebpf, programs::Xdp};

/// `xdp_floor`: XDP_DROP and nothing else, the benchmarks' floor.
pub static FLOOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-floor"));

/// `xdp_bucket_touch`: the floor plus one source bucket's memory, the benchmarks' memory
/// reference (its maps `REF_TOUCH_BUCKETS`, `REF_TOUCH_TABLE`).
pub static BUCKET_TOUCH: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-bucket-touch"));

/// `xdp_cookie_only`: the floor plus the kernel's SYN cookie for the packet (Linux 6.0), the
/// benchmarks' least cost of a cookie answer.
pub static COOKIE_ONLY: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-cookie-only"));

/// `xdp_pass`: XDP_PASS, for the lab's veth peers.
pub static LAB_PASS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-lab-pass"));

/// `xdp_syn_flood`: the benchmark's SYN flood generator (BPF_PROG_TEST_RUN, live frames).
pub static SYN_FLOOD: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-syn-flood"));

/// The XDP program `name` of the loaded reference object `obj`, loaded into the kernel.
pub fn xdp_program<'a>(obj: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, String> {
    let program: &mut Xdp = obj
        .program_mut(name)
        .ok_or_else(|| format!("reference program {name} is missing"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))?;
    program.load().map_err(|e| format!("load {name}: {e}"))?;
    Ok(program)
}

#[cfg(test)]
mod tests {
    use aya::programs::{TestRun, TestRunOptions};

    use super::*;
    use crate::packet::{Packet, SYN, tcp};

    /// Each object loads, its programs pass the verifier, and the plain ones answer as their
    /// names say. (Loading needs root, as every test tier here.)
    #[test]
    fn every_reference_program_loads_and_answers() {
        let syn = Packet::v4("198.18.0.2", "198.18.0.1", tcp(40000, 25, SYN)).build();
        // Each object's programs: name, and the action it answers the SYN with (if plain).
        type Programs = &'static [(&'static str, Option<u32>)];
        let objects: [(&[u8], Programs); 5] = [
            (FLOOR, &[("xdp_floor", Some(1))]),
            (COOKIE_ONLY, &[("xdp_cookie_only", None)]),
            (LAB_PASS, &[("xdp_pass", Some(2))]),
            (BUCKET_TOUCH, &[("xdp_bucket_touch", None)]),
            (
                SYN_FLOOD,
                &[
                    ("xdp_syn_flood", Some(3)),
                    ("xdp_syn_relay", None),
                    ("xdp_bounce", Some(3)),
                ],
            ),
        ];
        for (object, programs) in objects {
            let mut obj = Ebpf::load(object).unwrap_or_else(|e| panic!("{programs:?}: {e}"));
            assert_eq!(obj.programs().count(), programs.len(), "{programs:?}");
            for &(name, action) in programs {
                let program = xdp_program(&mut obj, name).unwrap_or_else(|e| panic!("{e}"));
                if let Some(expected) = action {
                    let run = program
                        .test_run(TestRunOptions {
                            data_in: Some(&syn),
                            repeat: 1,
                            ..TestRunOptions::new()
                        })
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(run.return_value, expected, "{name}");
                }
            }
        }
    }

    /// The switch ports' program drops what goes to the spoofed floods' sources (198.19.0.0/16)
    /// and passes the rest.
    #[test]
    fn the_switch_drops_answers_to_spoofed_sources() {
        let mut obj = Ebpf::load(LAB_PASS).expect("lab_pass");
        let program = xdp_program(&mut obj, "xdp_pass").unwrap_or_else(|e| panic!("{e}"));
        for (to, expected) in [("198.19.3.4", 1), ("198.18.0.2", 2)] {
            let synack = Packet::v4("198.18.0.1", to, tcp(25, 40000, SYN)).build();
            let run = program
                .test_run(TestRunOptions {
                    data_in: Some(&synack),
                    repeat: 1,
                    ..TestRunOptions::new()
                })
                .expect("test run");
            assert_eq!(run.return_value, expected, "to {to}");
        }
    }
}
