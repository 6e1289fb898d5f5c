//! Test support for mailguard: crafted packets and the BPF_PROG_TEST_RUN harness (fixture
//! tier), network namespaces and the mail lab (end-to-end tier and `cargo xtask demo`).

pub mod harness;
pub mod lab;
pub mod leftovers;
pub mod netns;
pub mod packet;
pub mod reference;
