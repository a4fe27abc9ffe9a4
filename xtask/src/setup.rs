//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing
//! else. Every step checks first, so a second run changes nothing.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::shell;

/// Debian packages the tests and benchmarks drive.
const PACKAGES: &[&str] = &[
    "nginx",
    "curl",
    "openssl",
    "wrk",
    "hey",
    "golang-go",
    "linux-perf",
    "bpftool",
    "iproute2",
    // Service (DNAT) rules in the network-namespace tracing test.
    "nftables",
    "python3",
    // `python3 -m venv` for the tests' ONNX packages.
    "python3-venv",
    "binutils",
    "gcc",
    "faketime",
    // The fleet server's PostgreSQL store: the tests start a throwaway
    // cluster of their own with initdb and pg_ctl.
    "postgresql",
    // The kernel matrix (`cargo xtask test --kernel`): VMs booting Debian
    // kernels from an initramfs of busybox and the agent.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// PyPI packages the tests use, installed in a virtual environment under
/// the target directory (the system Python stays untouched): the ONNX
/// detector's tests make their models and compute reference scores with
/// the first three; the OTLP receiver's tests send from the OpenTelemetry
/// SDK with its gRPC and HTTP exporters; the manifests under
/// `deploy/kubernetes` are checked against the Kubernetes API schemas that
/// `kubernetes-validate` carries.
const PYTHON_PACKAGES: &[&str] = &[
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "numpy==2.4.6",
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-exporter-otlp-proto-grpc==1.45.2",
    "opentelemetry-exporter-otlp-proto-http==1.45.2",
    "kubernetes-validate==1.37.0",
];

pub fn run() -> anyhow::Result<()> {
    let mut did = Vec::new();
    if ensure_nightly()? {
        did.push("installed the nightly toolchain".to_owned());
    }
    if ensure_rust_src()? {
        did.push("added rust-src to the nightly toolchain".to_owned());
    }
    if let Some(what) = ensure_bpf_linker()? {
        did.push(what);
    }
    if ensure_cargo_fuzz()? {
        did.push(format!("installed cargo-fuzz {CARGO_FUZZ_VERSION}"));
    }
    let missing = missing_packages();
    if !missing.is_empty() {
        install_packages(&missing)?;
        did.push(format!("installed Debian packages: {}", missing.join(" ")));
    }
    if let Some(what) = ensure_python_packages()? {
        did.push(what);
    }
    if did.is_empty() {
        eprintln!("xtask setup: nothing to do, everything is present");
    } else {
        for line in did {
            eprintln!("xtask setup: {line}");
        }
    }
    Ok(())
}

fn ensure_nightly() -> anyhow::Result<bool> {
    let installed = shell::output("rustup", &["toolchain", "list"])
        .context("rustup is required (https://rustup.rs)")?;
    if installed.lines().any(|l| l.starts_with("nightly")) {
        return Ok(false);
    }
    let mut command = Command::new("rustup");
    command.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
    shell::run(command)?;
    Ok(true)
}

fn ensure_rust_src() -> anyhow::Result<bool> {
    let installed = shell::output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(false);
    }
    let mut command = Command::new("rustup");
    command.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    shell::run(command)?;
    Ok(true)
}

/// bpf-linker built against the nightly toolchain's own libLLVM, the only
/// LLVM of the right version on the machine.
fn ensure_bpf_linker() -> anyhow::Result<Option<String>> {
    if shell::output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(None);
    }
    let sysroot = shell::output("rustc", &["+nightly", "--print", "sysroot"])
        .context("rustc +nightly --print sysroot")?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let verbose = shell::output("rustc", &["+nightly", "-vV"]).context("rustc +nightly -vV")?;
    let major = llvm_major(&verbose).context("no LLVM version in `rustc +nightly -vV`")?;

    // The linker finds libLLVM.so at build time and the loader finds the
    // versioned name through the rpath, so both names live in one prefix
    // that must outlive the build.
    let prefix = llvm_prefix()?;
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let versioned = lib.join(libllvm.file_name().context("libLLVM file name")?);
    for link in [lib.join("libLLVM.so"), versioned] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let mut command = Command::new("cargo");
    command
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix);
    shell::run(command)?;
    Ok(Some(format!(
        "installed bpf-linker {BPF_LINKER_VERSION} (LLVM {major} from the nightly toolchain)"
    )))
}

/// cargo-fuzz drives the fuzz targets (`cargo xtask fuzz`, and briefly in
/// `cargo xtask test`).
fn ensure_cargo_fuzz() -> anyhow::Result<bool> {
    if shell::output("cargo", &["fuzz", "--version"])
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION))
    {
        return Ok(false);
    }
    let mut command = Command::new("cargo");
    command.args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]);
    shell::run(command)?;
    Ok(true)
}

/// Where the tests look for their Python: `<target>/python`.
fn python_venv() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shell::workspace_root().join("target"))
        .join("python")
}

/// A virtual environment with [`PYTHON_PACKAGES`], made or completed.
/// Runs after the Debian packages, which bring `python3 -m venv`.
fn ensure_python_packages() -> anyhow::Result<Option<String>> {
    let venv = python_venv();
    let python = venv.join("bin/python3");
    let (names, wanted): (Vec<&str>, Vec<&str>) = PYTHON_PACKAGES
        .iter()
        .filter_map(|p| p.split_once("=="))
        .unzip();
    // The installed version of each distribution, or an error if one is
    // missing.
    let import =
        format!("import importlib.metadata as m; print(*(m.version(p) for p in {names:?}))");
    let installed = shell::output(&python.to_string_lossy(), &["-c", &import]);
    if installed.is_some_and(|v| v.split_whitespace().eq(wanted.iter().copied())) {
        return Ok(None);
    }
    let mut made = false;
    if !python.exists() {
        let mut command = Command::new("python3");
        command.args(["-m", "venv"]).arg(&venv);
        shell::run(command)?;
        made = true;
    }
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(PYTHON_PACKAGES);
    shell::run(pip)?;
    Ok(Some(format!(
        "{} a Python environment at {} and installed {}",
        if made { "made" } else { "completed" },
        venv.display(),
        PYTHON_PACKAGES.join(" ")
    )))
}

fn llvm_major(rustc_verbose: &str) -> Option<u32> {
    rustc_verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

fn llvm_prefix() -> anyhow::Result<PathBuf> {
    let data = match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".local/share")
        }
    };
    Ok(data.join("selfops/llvm"))
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !shell::output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

fn install_packages(packages: &[&str]) -> anyhow::Result<()> {
    if shell::output("apt-get", &["--version"]).is_none() {
        bail!(
            "missing packages {} and no apt-get: install them by hand",
            packages.join(" ")
        );
    }
    // Installing nginx must not start a system nginx: a policy-rc.d that
    // refuses service starts, only for this install.
    let policy = PathBuf::from("/usr/sbin/policy-rc.d");
    let own_policy = shell::is_root() && !policy.exists();
    if own_policy {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(&policy, "#!/bin/sh\nexit 101\n").context("writing policy-rc.d")?;
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = shell::run(apt_get(&["update", "-q"])).and_then(|()| {
        let mut install = apt_get(&["install", "-y", "-q", "--no-install-recommends"]);
        install
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive");
        shell::run(install)
    });
    if own_policy {
        let _ = std::fs::remove_file(&policy);
    }
    result
}

/// apt-get, through `sudo -n` when not root.
fn apt_get(args: &[&str]) -> Command {
    let mut command = if shell::is_root() {
        Command::new("apt-get")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", "apt-get"]);
        sudo
    };
    command.args(args);
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc() {
        let text = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(text), Some(22));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }
}
