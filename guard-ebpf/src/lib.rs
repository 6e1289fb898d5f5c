#![no_std]
//! mailguard's programs are the binary target (src/main.rs); this library target holds what
//! the test crate's reference programs use too (the Internet checksum), and exists so that
//! guard-userspace can name this crate as a build dependency.

pub mod checksum;
