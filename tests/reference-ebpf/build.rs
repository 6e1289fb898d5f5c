/// The eBPF object is linked by `bpf-linker`; rebuild when it changes. (`cargo xtask setup`
/// installs it.)
fn main() {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let linker = dir.join("bpf-linker");
            if linker.is_file() {
                println!("cargo:rerun-if-changed={}", linker.display());
                return;
            }
        }
    }
}
