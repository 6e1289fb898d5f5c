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
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
