//! Embeds the kernel object built by `cargo xtask build-ebpf` into the agent binary.
//! Without it the agent still builds (for clippy and unit tests) and then needs
//! `--ebpf-object PATH` at run time.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=QSC_EBPF_OBJECT");
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let object = env::var_os("QSC_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest_dir.join("../target/ebpf/bpfel-unknown-none/release/guardian-alpha")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_default()).join("guardian-alpha.bpf.o");
    let bytes = fs::read(&object).unwrap_or_else(|_| {
        println!(
            "cargo:warning=no eBPF object at {} (run `cargo xtask build-ebpf`); the agent will need --ebpf-object",
            object.display()
        );
        Vec::new()
    });
    if let Err(err) = fs::write(&out, bytes) {
        panic!("cannot write {}: {err}", out.display());
    }
}
