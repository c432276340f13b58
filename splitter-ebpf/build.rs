use which::which;

/// Relink the object when bpf-linker changes (e.g. `cargo xtask setup` installed a new one): cargo
/// cannot see the linker as an input otherwise.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
