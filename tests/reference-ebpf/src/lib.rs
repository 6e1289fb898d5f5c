#![no_std]
//! Reference XDP programs for mailguard's tests and benchmarks, one to a binary target
//! (`src/bin/`): the benchmarks' floor and memory reference, the lab's XDP_PASS and the SYN
//! flood generator. tests/build.rs builds them, and `guard_tests::reference` embeds them;
//! mailguard itself never holds them. This library target exists so that the test crate can
//! name this one as a build dependency.
