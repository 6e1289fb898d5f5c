#![no_std]
//! The programs are the binary target (src/main.rs); this library target exists so that
//! guard-userspace can name this crate as a build dependency.
