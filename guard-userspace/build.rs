//! Builds the eBPF programs (guard-ebpf) for bpfel-unknown-none with nightly and bpf-linker,
//! and leaves the object in OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs
//! what this needs.
fn main() -> aya_build::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guard-ebpf");
    let root = root.to_str().expect("workspace path is UTF-8");
    let package = aya_build::Package {
        name: "guard-ebpf",
        root_dir: root,
        ..Default::default()
    };
    // aya-build passes on every line the inner cargo writes to stderr as a cargo warning, its
    // progress ("Compiling ...") included: quiet, it writes only what is wrong (compiler
    // messages come apart from it, and are passed on as before).
    // SAFETY: the build script is single-threaded here; the variable is read by the child.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
