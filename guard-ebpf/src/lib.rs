#![no_std]
//! The programs are the binary targets (src/main.rs: mailguard's; src/floor.rs: the reference
//! programs of tests and benchmarks); this library target holds what both use, and exists so
//! that guard-userspace can name this crate as a build dependency.

pub mod checksum;
