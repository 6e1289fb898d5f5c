//! Builds the reference programs (tests/reference-ebpf) for bpfel-unknown-none, as
//! guard-userspace's build.rs builds mailguard's, and leaves one object per program in OUT_DIR
//! for `guard_tests::reference`. `cargo xtask setup` installs what this needs.
fn main() -> aya_build::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("reference-ebpf");
    let root = root.to_str().expect("workspace path is UTF-8");
    let package = aya_build::Package {
        name: "guard-reference-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
