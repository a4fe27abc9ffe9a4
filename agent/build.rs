//! Builds the kernel programs (package selfops-ebpf) for the BPF target and
//! leaves the object in OUT_DIR, so `cargo build` alone yields an agent with
//! its eBPF object embedded.

use std::process::Command;

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // AYA_BUILD_SKIP=1 (fuzzing, docs) builds the agent without kernel
    // programs: empty objects that fails to load at run time, clearly.
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
        for object in ["selfops", "selfops-limiter", "selfops-profiler"] {
            std::fs::write(std::path::Path::new(&out_dir).join(object), b"")?;
        }
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    // bpf-linker is what a fresh machine lacks most often; say how to get it
    // instead of failing deep inside the nested build.
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(anyhow!(
            "bpf-linker not found on PATH: run `cargo xtask setup` to install the eBPF toolchain"
        ));
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../agent-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("locating {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // aya-build relays the nested cargo's stderr as build warnings; keep
    // that to real diagnostics, not a line per compiled crate.
    // SAFETY: build scripts are single-threaded here.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "selfops-ebpf",
            root_dir,
            features: &["ebpf"],
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
