//! `cargo xtask test --kernel NAME` / `--kernels`: the agent's checks on
//! other kernels. Each kernel is a Debian package fetched with apt, booted
//! under qemu from an initramfs that carries busybox, the release `selfops`
//! (its eBPF object embedded) and the libraries `ldd` names; `vm_init.sh`
//! runs the checks inside and reports on the serial console, and the host
//! judges what it reports.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    shell,
    vm_tiers::{self, TierRun},
};

/// A Debian kernel the matrix can boot.
struct Kernel {
    /// The name `--kernel` takes.
    name: &'static str,
    /// Package names start with this and end with `-cloud-amd64`.
    package_prefix: &'static str,
    /// Probe rows that must say `yes` there.
    expect: &'static [&'static str],
    /// YAML appended to the agent's config in the VM.
    agent_config: &'static str,
    /// Lines the agent must log there (a capability switched off, say).
    agent_log: &'static [&'static str],
    /// The hook the socket sensor must run on by default.
    socket_hook: &'static str,
}

/// The cloud flavour: a small kernel whose virtio and 9p are modules, so an
/// initramfs is the simplest root. Both have kprobes and BTF trampolines.
const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.1",
        package_prefix: "linux-image-6.1.0-",
        expect: &[
            "btf",
            "ring_buffer",
            "tracepoint",
            "uprobe",
            "kprobe",
            "fentry",
        ],
        agent_config: "",
        agent_log: &["limiter loaded hooked=1"],
        socket_hook: "Fentry",
    },
    Kernel {
        name: "6.12",
        package_prefix: "linux-image-6.12.",
        expect: &[
            "btf",
            "ring_buffer",
            "tracepoint",
            "uprobe",
            "kprobe",
            "fentry",
            "tc_tcx",
        ],
        agent_config: "",
        agent_log: &["limiter loaded hooked=1"],
        socket_hook: "Fentry",
    },
    // Bullseye's 5.10 LTS, the oldest line the archive still serves.
    Kernel {
        name: "5.10",
        package_prefix: "linux-image-5.10.0-",
        expect: &[
            "btf",
            "ring_buffer",
            "tracepoint",
            "uprobe",
            "kprobe",
            "fentry",
        ],
        agent_config: "",
        // The profiler's program calls bpf_get_current_task_btf (5.11) and
        // bpf_task_pt_regs (5.15), which the verifier refuses here.
        // The limiter's meter needs BPF compare-and-exchange (5.12).
        agent_log: &[
            "CPU profiler off: the kernel lacks a BPF helper it needs",
            "limiter off: the kernel's verifier refuses the BPF compare-and-exchange",
        ],
        socket_hook: "Fentry",
    },
];

/// What `--kernels` runs.
pub const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12", "5.10"];

/// Where the kernels come from: bookworm's point releases and security
/// updates carry the newest 6.1 (and now 6.12) builds, backports the 6.12
/// ones, bullseye the 5.10 ones.
const SOURCES: &[&str] = &[
    "http://deb.debian.org/debian bookworm main",
    "http://deb.debian.org/debian bookworm-updates main",
    "http://deb.debian.org/debian-security bookworm-security main",
    "http://deb.debian.org/debian bookworm-backports main",
    "http://deb.debian.org/debian bullseye main",
    "http://deb.debian.org/debian-security bullseye-security main",
];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Modules the checks need where the cloud kernels build them as modules:
/// the probe's clsact qdisc and BPF classifier, and veth for tests that
/// span network namespaces.
const MODULES: &[&str] = &["sch_ingress", "cls_bpf", "act_bpf", "veth"];

/// Boots that die before /init (a TCG oddity, see `boot_until_init`) are
/// tried again up to this many times in all.
const BOOT_ATTEMPTS: u32 = 3;
/// From qemu's start to /init: TCG takes 3–5 s here.
const INIT_DEADLINE: Duration = Duration::from_secs(90);
/// KVM, when asked for with `auto`, must reach /init this fast or TCG is used.
const KVM_INIT_DEADLINE: Duration = Duration::from_secs(20);
/// The whole boot, checks included: about 15 s under TCG here.
const RUN_DEADLINE: Duration = Duration::from_secs(360);

/// The path the VM's HTTP check requests.
const CHECK_PATH: &str = "/kmatrix.html";
const CHECK_PORT: i64 = 8080;
const TLS_PORT: i64 = 8443;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Emulation: slow but works everywhere.
    Tcg,
    /// Hardware virtualisation.
    Kvm,
    /// KVM when it reaches /init promptly, TCG otherwise.
    Auto,
}

pub fn run(names: &[String], accel: Accel) -> anyhow::Result<()> {
    let kernels = names
        .iter()
        .map(|name| {
            KERNELS
                .iter()
                .find(|k| k.name == name)
                .with_context(|| format!("unknown kernel {name}; known: {}", known_kernels()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    shell::cargo(&["build", "--release", "--package", "selfops-agent"])?;
    let work = work_dir();
    let mut reports = Vec::new();
    for kernel in kernels {
        let started = Instant::now();
        let mut report =
            run_kernel(kernel, accel, &work).with_context(|| format!("kernel {}", kernel.name))?;
        report.seconds = started.elapsed().as_secs_f64();
        print_report(&report);
        reports.push(report);
    }
    eprintln!("\nkmatrix summary");
    let mut failed = Vec::new();
    for report in &reports {
        let bad: Vec<_> = report.checks.iter().filter(|c| !c.pass).collect();
        eprintln!(
            "kmatrix {} {}: {} ({} of {} checks passed; {:.1} s in all, /init after {:.1} s, {})",
            report.name,
            report.release,
            if bad.is_empty() { "PASS" } else { "FAIL" },
            report.checks.len() - bad.len(),
            report.checks.len(),
            report.seconds,
            report.init_seconds,
            report.accel,
        );
        if !bad.is_empty() {
            failed.push(report.name);
        }
    }
    if !failed.is_empty() {
        bail!("kernel matrix failed on {}", failed.join(", "));
    }
    Ok(())
}

fn known_kernels() -> String {
    KERNELS
        .iter()
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything the matrix keeps: `<target>/kmatrix`.
fn work_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shell::workspace_root().join("target"))
        .join("kmatrix")
}

struct Report {
    name: &'static str,
    release: String,
    accel: &'static str,
    init_seconds: f64,
    seconds: f64,
    checks: Vec<Check>,
    probe_table: Vec<String>,
    /// Where the files the VM sent (agent log, spans, probe output) are kept.
    files: PathBuf,
    agent_config: &'static str,
}

struct Check {
    name: &'static str,
    pass: bool,
    detail: String,
}

impl Check {
    fn new(name: &'static str, pass: bool, detail: impl Into<String>) -> Self {
        Self {
            name,
            pass,
            detail: detail.into(),
        }
    }
}

fn print_report(report: &Report) {
    eprintln!("\nkmatrix {} probe table:", report.name);
    for row in &report.probe_table {
        eprintln!("  {row}");
    }
    for check in &report.checks {
        eprintln!(
            "kmatrix {} {} {} {}",
            report.name,
            check.name,
            if check.pass { "PASS" } else { "FAIL" },
            check.detail
        );
    }
    if !report.agent_config.is_empty() {
        eprintln!(
            "kmatrix {} agent config for this kernel adds: {}",
            report.name,
            report.agent_config.trim_end().replace('\n', " ")
        );
    }
    eprintln!(
        "kmatrix {} files from the VM: {}",
        report.name,
        report.files.display()
    );
}

fn run_kernel(kernel: &Kernel, accel: Accel, work: &Path) -> anyhow::Result<Report> {
    let deb = fetch_kernel(kernel, work)?;
    let unpacked = unpack(&deb, work)?;
    let vmlinuz = find_vmlinuz(&unpacked)?;
    let dir = work.join(kernel.name);
    let initramfs = build_initramfs(kernel, &unpacked, &dir)?;
    let boot = boot_until_init(&vmlinuz, &initramfs, accel, &dir)?;
    let output = Output::parse(&boot.serial);
    let files = dir.join("files");
    fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    for (name, content) in &output.files {
        let path = files.join(name);
        fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut report = Report {
        name: kernel.name,
        release: output.release.clone().unwrap_or_else(|| "?".to_owned()),
        accel: boot.accel,
        init_seconds: boot.init_seconds.unwrap_or(f64::NAN),
        seconds: 0.0,
        checks: Vec::new(),
        probe_table: Vec::new(),
        files,
        agent_config: kernel.agent_config,
    };
    match boot.init_seconds {
        Some(seconds) => report.checks.push(Check::new(
            "boot",
            true,
            format!(
                "/init reached after {seconds:.1} s ({}, attempt {})",
                boot.accel, boot.attempt
            ),
        )),
        None => {
            report.checks.push(Check::new(
                "boot",
                false,
                format!(
                    "/init not reached in {BOOT_ATTEMPTS} attempts; last serial lines:\n{}",
                    tail(&boot.serial, 30)
                ),
            ));
            return Ok(report);
        }
    }
    let (probe, table) = check_probe(&output, kernel.expect);
    report.checks.push(probe);
    report.probe_table = table;
    report
        .checks
        .push(check_agent(&output, kernel.agent_log, kernel.socket_hook));
    report.checks.push(check_spans(&output));
    report.checks.push(check_tls_spans(&output));
    report.checks.push(check_hooks(&output));
    let finished = output.done && boot.exited;
    report.checks.push(Check::new(
        "finished",
        finished,
        if finished {
            "every check ran and the VM powered off".to_owned()
        } else {
            format!(
                "the run stopped before its end (qemu {}); last serial lines:\n{}",
                if boot.exited {
                    "exited"
                } else {
                    "killed at the deadline"
                },
                tail(&boot.serial, 30)
            )
        },
    ));
    Ok(report)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- fetching and unpacking -------------------------------------------------

/// The kernel's package, from the cache under `work/debs` or else the newest
/// the archive offers. apt runs on a private sources list and state
/// directory, so the machine's apt configuration is never changed.
fn fetch_kernel(kernel: &Kernel, work: &Path) -> anyhow::Result<PathBuf> {
    let debs = work.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    if let Some(cached) = newest_cached(&debs, kernel.package_prefix)? {
        eprintln!("xtask: kernel {}: cached {}", kernel.name, cached.display());
        return Ok(cached);
    }
    let apt = PrivateApt::new(&work.join("apt"))?;
    apt.update()?;
    let names = apt.package_names(kernel.package_prefix)?;
    let package = newest_package(&names, kernel.package_prefix).with_context(|| {
        format!(
            "no {}*-cloud-amd64 in {}",
            kernel.package_prefix,
            SOURCES.join(", ")
        )
    })?;
    apt.download(&package, &debs)?;
    newest_cached(&debs, kernel.package_prefix)?.with_context(|| {
        format!(
            "apt-get download {package} left no .deb in {}",
            debs.display()
        )
    })
}

/// The newest `PREFIX*-cloud-amd64_*.deb` in `dir`.
fn newest_cached(dir: &Path, prefix: &str) -> anyhow::Result<Option<PathBuf>> {
    let mut names = Vec::new();
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some((package, _)) = file.split_once('_')
            && file.ends_with(".deb")
        {
            names.push(package.to_owned());
            paths.push(path);
        }
    }
    Ok(newest_package(&names, prefix)
        .and_then(|newest| names.iter().position(|n| *n == newest))
        .map(|at| paths.swap_remove(at)))
}

/// Of the cloud kernel images among `names` that start with `prefix`, the
/// newest by the numbers in their names (`6.12.95+deb12` after `6.12.90+deb12.1`).
fn newest_package(names: &[String], prefix: &str) -> Option<String> {
    names
        .iter()
        .filter(|n| n.starts_with(prefix) && n.ends_with("-cloud-amd64"))
        .filter(|n| !n.contains("unsigned") && !n.contains("dbg"))
        .max_by_key(|n| numbers(&n[prefix.len()..]))
        .cloned()
}

fn numbers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// apt with its own sources, lists and caches under one directory.
struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let sources = dir.join("sources.list");
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for d in [lists.join("partial"), cache.join("archives/partial")] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let text: String = SOURCES
            .iter()
            .map(|source| format!("deb [signed-by={KEYRING}] {source}\n"))
            .collect();
        fs::write(&sources, text).with_context(|| format!("writing {}", sources.display()))?;
        let mut options = vec![
            format!("Dir::Etc::SourceList={}", sources.display()),
            // No sources.list.d: only the private list.
            format!("Dir::Etc::SourceParts={}", dir.join("none").display()),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", cache.display()),
        ];
        // As root, apt drops to `_apt`, who cannot write under the target
        // directory; the files here are ours anyway.
        if shell::is_root() {
            options.push("APT::Sandbox::User=root".to_owned());
        }
        Ok(Self { options })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        for option in &self.options {
            command.args(["-o", option]);
        }
        command
    }

    fn update(&self) -> anyhow::Result<()> {
        let mut command = self.command("apt-get");
        command.args(["update", "-q"]);
        shell::run(command)
    }

    fn package_names(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut command = self.command("apt-cache");
        command.args(["pkgnames", prefix]);
        let output = command
            .output()
            .with_context(|| format!("running {}", shell::describe(&command)))?;
        if !output.status.success() {
            bail!(
                "{} failed: {}",
                shell::describe(&command),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    fn download(&self, package: &str, into: &Path) -> anyhow::Result<()> {
        let mut command = self.command("apt-get");
        command.args(["download", "-q", package]).current_dir(into);
        shell::run(command)
    }
}

/// `dpkg-deb -x` once per package file.
fn unpack(deb: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let stem = deb
        .file_stem()
        .and_then(|s| s.to_str())
        .context("kernel package file name")?;
    let dir = work.join("unpacked").join(stem);
    if dir.join("boot").is_dir() {
        return Ok(dir);
    }
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut command = Command::new("dpkg-deb");
    command.arg("-x").arg(deb).arg(&partial);
    shell::run(command)?;
    fs::rename(&partial, &dir).with_context(|| format!("renaming to {}", dir.display()))?;
    Ok(dir)
}

fn find_vmlinuz(unpacked: &Path) -> anyhow::Result<PathBuf> {
    let boot = unpacked.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
}

// ---- the initramfs ----------------------------------------------------------

/// A gzip'd cpio (newc) of busybox, the agent, its libraries, the modules in
/// [`MODULES`] and `vm_init.sh` as /init.
fn build_initramfs(kernel: &Kernel, unpacked: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    for sub in ["bin", "dev", "proc", "sys", "tmp", "lib/modules"] {
        fs::create_dir_all(root.join(sub))
            .with_context(|| format!("creating {}", root.join(sub).display()))?;
    }
    let busybox = which("busybox")?;
    copy(&busybox, &root.join("bin/busybox"))?;
    let agent = shell::workspace_root().join("target/release/selfops");
    copy(&agent, &root.join("bin/selfops"))?;
    // OpenSSL's own server and client, for the TLS check (the uprobes).
    let openssl = which("openssl")?;
    copy(&openssl, &root.join("bin/openssl"))?;
    let mut needed = libraries(&agent)?;
    needed.extend(libraries(&openssl)?);
    needed.sort();
    needed.dedup();
    for library in needed {
        let inside = root.join(library.strip_prefix("/").unwrap_or(&library));
        copy(&library, &inside)?;
    }
    self_signed_certificate(&root.join("etc/kmatrix-tls"))?;
    for module in MODULES {
        if let Some(path) = find_module(unpacked, module)? {
            add_module(
                &path,
                &root.join("lib/modules").join(format!("{module}.ko")),
            )?;
        }
    }
    copy_text(&root.join("etc/kmatrix-agent.yaml"), kernel.agent_config)?;
    let init = root.join("init");
    fs::write(&init, include_str!("vm_init.sh"))
        .with_context(|| format!("writing {}", init.display()))?;
    set_executable(&init)?;

    let image = dir.join("initramfs.gz");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(&image)
        .current_dir(&root);
    shell::run(command)?;
    Ok(image)
}

/// `cert.pem` and `key.pem` in `dir`, made by the host's openssl.
fn self_signed_certificate(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = Command::new("openssl");
    command
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=kmatrix", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    shell::run(command)
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = shell::output("sh", &["-c", &format!("command -v {program}")])
        .with_context(|| format!("{program} not found (cargo xtask setup installs it)"))?;
    Ok(PathBuf::from(path.trim()))
}

/// Copies following symlinks, making the parent directories.
fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn copy_text(to: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))
}

fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The shared libraries `ldd` names for `binary`, the loader included.
fn libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = shell::output("ldd", &[&binary.to_string_lossy()])
        .with_context(|| format!("ldd {}", binary.display()))?;
    Ok(ldd_paths(&text))
}

fn ldd_paths(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/…/libc.so.6 (0x…)` or `/lib64/ld-….so.2 (0x…)`.
            let after = line.split_once("=>").map_or(line, |(_, path)| path);
            after
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

/// `NAME.ko`, `.ko.xz` or `.ko.zst` anywhere under the package's modules.
fn find_module(unpacked: &Path, name: &str) -> anyhow::Result<Option<PathBuf>> {
    let modules = unpacked.join("lib/modules");
    if !modules.is_dir() {
        return Ok(None);
    }
    let wanted = [".ko", ".ko.xz", ".ko.zst"].map(|ext| format!("{name}{ext}"));
    let mut stack = vec![modules];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| wanted.iter().any(|w| w == n))
            {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

/// Busybox's insmod may not read compressed modules: they go in plain.
fn add_module(from: &Path, to: &Path) -> anyhow::Result<()> {
    let name = from.to_string_lossy();
    let decompressor = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return copy(from, to);
    };
    let output = Command::new(decompressor)
        .arg("-dc")
        .arg(from)
        .output()
        .with_context(|| format!("{decompressor} -dc {}", from.display()))?;
    if !output.status.success() {
        bail!(
            "{decompressor} -dc {}: {}",
            from.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::write(to, output.stdout).with_context(|| format!("writing {}", to.display()))
}

// ---- booting ----------------------------------------------------------------

struct Boot {
    serial: String,
    accel: &'static str,
    attempt: u32,
    /// Seconds from qemu's start to /init's first line; `None`: never.
    init_seconds: Option<f64>,
    /// qemu ended by itself (powered off or panicked) rather than being killed.
    exited: bool,
}

/// Boots until a boot reaches /init: one 6.12 build (6.12.95) died early
/// in about half of its TCG boots here (a general protection fault or a
/// NULL dereference in a different place each time, before any of our code
/// runs), so such boots are repeated; a failure after /init never is.
fn boot_until_init(
    vmlinuz: &Path,
    initramfs: &Path,
    accel: Accel,
    dir: &Path,
) -> anyhow::Result<Boot> {
    if accel != Accel::Tcg {
        let deadline = if accel == Accel::Auto {
            KVM_INIT_DEADLINE
        } else {
            INIT_DEADLINE
        };
        let boot = boot(
            vmlinuz,
            initramfs,
            "kvm",
            deadline,
            &dir.join("serial-kvm.log"),
        )?;
        if boot.init_seconds.is_some() || accel == Accel::Kvm {
            return Ok(boot);
        }
        eprintln!(
            "xtask: KVM did not reach /init in {} s; using TCG. Last serial lines:\n{}",
            deadline.as_secs(),
            tail(&boot.serial, 8)
        );
    }
    let mut last = None;
    for attempt in 1..=BOOT_ATTEMPTS {
        let log = dir.join(format!("serial-tcg-{attempt}.log"));
        let mut boot = boot(vmlinuz, initramfs, "tcg", INIT_DEADLINE, &log)?;
        boot.attempt = attempt;
        if boot.init_seconds.is_some() {
            return Ok(boot);
        }
        eprintln!(
            "xtask: boot {attempt} of {BOOT_ATTEMPTS} did not reach /init ({}):\n{}",
            log.display(),
            tail(&boot.serial, 8)
        );
        last = Some(boot);
    }
    last.context("no boot attempted")
}

/// One qemu run, its serial console written to `log`. Killed when /init is
/// not reached within `init_deadline` or the run exceeds [`RUN_DEADLINE`].
fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    accel: &'static str,
    init_deadline: Duration,
    log: &Path,
) -> anyhow::Result<Boot> {
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new("qemu-system-x86_64");
    command.args(["-accel", accel]);
    if accel == "kvm" {
        command.args(["-cpu", "host"]);
    }
    command
        .args(["-m", "1024", "-smp", "1", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // panic=-1 turns a panic into a reboot, which -no-reboot turns into an exit.
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().context("serial log handle")?)
        .stderr(file);
    eprintln!("xtask: {}", shell::describe(&command));
    let started = Instant::now();
    let mut child = command
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let mut init_seconds = None;
    let exited = loop {
        if child.try_wait().context("waiting for qemu")?.is_some() {
            break true;
        }
        let elapsed = started.elapsed();
        if init_seconds.is_none() {
            if read_serial(log)?.contains("KMATRIX init ") {
                init_seconds = Some(elapsed.as_secs_f64());
            } else if elapsed > init_deadline {
                break false;
            }
        }
        if elapsed > RUN_DEADLINE {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let serial = read_serial(log)?;
    if init_seconds.is_none() && serial.contains("KMATRIX init ") {
        // Reached between the last poll and qemu's exit.
        init_seconds = Some(started.elapsed().as_secs_f64());
    }
    Ok(Boot {
        serial,
        accel,
        attempt: 1,
        init_seconds,
        exited,
    })
}

fn read_serial(log: &Path) -> anyhow::Result<String> {
    let bytes = fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

// ---- what /init reported ----------------------------------------------------

#[derive(Default, Debug)]
struct Output {
    release: Option<String>,
    exits: BTreeMap<String, i32>,
    pids: BTreeMap<String, i64>,
    files: BTreeMap<String, String>,
    tiers: Vec<TierRun>,
    done: bool,
}

impl Output {
    /// Reads the `KMATRIX` protocol of `vm_init.sh` from the serial text.
    fn parse(serial: &str) -> Self {
        let mut out = Output::default();
        let mut file: Option<(String, String)> = None;
        for raw in serial.lines() {
            let line = strip_ansi(raw.trim_end_matches('\r'));
            if let Some((name, content)) = file.as_mut() {
                if line.strip_prefix("KMATRIX end ") == Some(name.as_str()) {
                    out.files
                        .insert(std::mem::take(name), std::mem::take(content));
                    file = None;
                } else {
                    content.push_str(&line);
                    content.push('\n');
                }
                continue;
            }
            // The first line of /init follows the firmware's screen-clearing
            // output on the same serial line.
            let Some(rest) = line
                .find("KMATRIX ")
                .map(|at| &line[at + "KMATRIX ".len()..])
            else {
                continue;
            };
            let mut words = rest.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("init"), Some(release), _) => out.release = Some(release.to_owned()),
                (Some("exit"), Some(name), Some(code)) => {
                    if let Ok(code) = code.trim().parse() {
                        out.exits.insert(name.to_owned(), code);
                    }
                }
                (Some("pid"), Some(name), Some(pid)) => {
                    if let Ok(pid) = pid.trim().parse() {
                        out.pids.insert(name.to_owned(), pid);
                    }
                }
                (Some("begin"), Some(name), _) => file = Some((name.to_owned(), String::new())),
                (Some("tier"), Some(hook), Some(rest)) => {
                    out.tiers.extend(TierRun::parse(hook, rest));
                }
                (Some("done"), _, _) => out.done = true,
                _ => {}
            }
        }
        out
    }

    fn exit(&self, name: &str) -> String {
        self.exits
            .get(name)
            .map_or_else(|| "not run".to_owned(), |code| format!("exit {code}"))
    }

    fn succeeded(&self, name: &str) -> bool {
        self.exits.get(name) == Some(&0)
    }

    /// The content of a file the VM sent; empty when it sent none.
    fn file(&self, name: &str) -> &str {
        self.files.get(name).map_or("", String::as_str)
    }
}

/// Drops terminal colour sequences (`ESC [ … letter`), which the agent's log
/// carries even into a file.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `selfops probe --json` ran, and says yes to each row the kernel must have.
fn check_probe(output: &Output, expect: &[&str]) -> (Check, Vec<String>) {
    let json = output.files.get("probe.json").map(String::as_str);
    let parsed: Option<Value> = json.and_then(|t| serde_json::from_str(t.trim()).ok());
    let Some(parsed) = parsed.filter(|_| output.succeeded("probe")) else {
        let log = output.file("probe.log");
        return (
            Check::new(
                "probe",
                false,
                format!(
                    "selfops probe: {}; output {:?}; log:\n{log}",
                    output.exit("probe"),
                    json.unwrap_or("none")
                ),
            ),
            Vec::new(),
        );
    };
    let rows: Vec<(String, bool, String)> = parsed["features"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            (
                row["feature"].as_str().unwrap_or("?").to_owned(),
                row["available"].as_bool().unwrap_or(false),
                row["detail"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let table = rows
        .iter()
        .map(|(feature, yes, detail)| {
            format!(
                "{feature:<22} {:<3}  {detail}",
                if *yes { "yes" } else { "no" }
            )
        })
        .collect();
    let missing: Vec<&str> = expect
        .iter()
        .copied()
        .filter(|want| !rows.iter().any(|(f, yes, _)| f == want && *yes))
        .collect();
    let check = if missing.is_empty() {
        Check::new("probe", true, format!("present: {}", expect.join(" ")))
    } else {
        Check::new(
            "probe",
            false,
            format!("expected but absent: {}", missing.join(" ")),
        )
    };
    (check, table)
}

/// The agent served, logged the hook each sensor runs on (and what this
/// kernel must make it log), and stopped cleanly on SIGTERM.
fn check_agent(output: &Output, expect_log: &[&str], socket_hook: &str) -> Check {
    let log = output.file("agent.log");
    let hooks = chosen_hooks(log);
    let attached = attached_socket_hook(log);
    let choice = hooks
        .iter()
        .map(|(sensor, hook)| format!("{sensor}={hook}"))
        .collect::<Vec<_>>()
        .join(" ");
    let unlogged: Vec<&str> = expect_log
        .iter()
        .copied()
        .filter(|want| !log.contains(want))
        .collect();
    let pass = output.succeeded("agent-ready")
        && output.succeeded("agent")
        && !hooks.is_empty()
        && attached == Some(socket_hook)
        && unlogged.is_empty();
    let mut detail = format!(
        "served: {}; after SIGTERM: {}; hooks chosen: {}; socket sensor attached on {} (want {socket_hook})",
        output.exit("agent-ready"),
        output.exit("agent"),
        if choice.is_empty() {
            "none logged"
        } else {
            &choice
        },
        attached.unwrap_or("nothing logged"),
    );
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();
    if !errors.is_empty() {
        detail.push_str("\n  warnings and errors in the agent's log:\n  ");
        detail.push_str(&errors.join("\n  "));
    }
    if !unlogged.is_empty() {
        detail.push_str(&format!("\n  not logged: {unlogged:?}"));
    }
    if !pass {
        detail.push_str(&format!("\n  the agent's log ends:\n{}", log_excerpt(log)));
    }
    Check::new("agent", pass, detail)
}

/// The agent's fatal error line (its head: a verifier log can follow for
/// thousands of lines) and the log's last lines, which hold the verifier's
/// verdict.
fn log_excerpt(log: &str) -> String {
    const WIDTH: usize = 600;
    let short = |line: &str| -> String {
        match line.char_indices().nth(WIDTH) {
            Some((at, _)) => format!("{} …", &line[..at]),
            None => line.to_owned(),
        }
    };
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("selfops: "))
        .map(|l| short(l))
        .collect();
    out.push("  …".to_owned());
    out.extend(
        lines[lines.len().saturating_sub(12)..]
            .iter()
            .map(|l| short(l)),
    );
    out.join("\n")
}

/// The hook of the agent's `socket sensor attached` line: the one it runs
/// on, after any fallback.
fn attached_socket_hook(log: &str) -> Option<&str> {
    log.lines()
        .find(|l| l.contains("socket sensor attached"))?
        .split(" hook=")
        .nth(1)?
        .split_whitespace()
        .next()
}

/// Every socket-sensor hook ran on this kernel: the agent served, traced
/// the requests and stopped cleanly on each; their cost side by side.
fn check_hooks(output: &Output) -> Check {
    const HOOKS: [&str; 5] = ["fentry", "kprobe", "syscalls", "raw_syscalls", "raw_exit"];
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for hook in HOOKS {
        let steps = ["ready", "spans", "stop"].map(|step| format!("tier-{hook}-{step}"));
        for step in &steps {
            if !output.succeeded(step) {
                failed.push(format!("{step}: {}", output.exit(step)));
            }
        }
        let log = output.file(&format!("tier-{hook}.log"));
        // Each of these kernels has BTF: a refused typed program is a
        // verifier regression, not a kernel's limit.
        if log.contains("typed raw tracepoint refused") {
            failed.push(format!("{hook}: typed raw tracepoint refused"));
        }
        let attached = attached_socket_hook(log);
        let want = match hook {
            "fentry" => "Fentry",
            "kprobe" => "Kprobe",
            "syscalls" => "PerSyscall",
            "raw_exit" => "RawExit",
            _ => "RawSyscalls",
        };
        if attached != Some(want) {
            failed.push(format!("{hook}: attached on {attached:?}, want {want}"));
        }
        match output.tiers.iter().find(|t| t.hook == hook) {
            Some(run) => {
                let cost =
                    vm_tiers::socket_program_cost(output.file(&format!("tier-{hook}.metrics")));
                if cost.runs == 0.0 {
                    failed.push(format!("{hook}: no program runs counted"));
                }
                rows.push(vm_tiers::figures(run, cost));
            }
            None => failed.push(format!("{hook}: no tier line")),
        }
    }
    let mut detail = format!(
        "the socket sensor on each hook, bpf_stats per request (emulated: compare, do not quote):\n{}",
        vm_tiers::table(&rows)
    );
    if !failed.is_empty() {
        detail.push_str(&format!("  failed: {}", failed.join("; ")));
    }
    Check::new("hooks", failed.is_empty(), detail)
}

/// `(sensor, hook)` from the agent's `hook chosen` log lines.
fn chosen_hooks(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|l| l.contains("hook chosen"))
        .filter_map(|l| {
            let sensor = l.split("sensor=\"").nth(1)?.split('"').next()?;
            let hook = l.split(" hook=").nth(1)?.split_whitespace().next()?;
            Some((sensor.to_owned(), hook.to_owned()))
        })
        .collect()
}

/// The request from busybox wget to busybox httpd is a SERVER span of the
/// httpd process or the child it forked for the connection (path, port,
/// status 200) and a CLIENT span of the wget process: the sockets and the
/// process model (exec, fork) both worked on this kernel.
fn check_spans(output: &Output) -> Check {
    let spans = spans(output.file("traces.jsonl"));
    // busybox httpd serves each connection in a child it forks.
    let server = server_span(&spans, CHECK_PORT, output.pids.get("httpd"), true);
    let client = client_span(&spans, CHECK_PORT, output.pids.get("wget"));
    match (server, client) {
        (Some(server), Some(client)) => Check::new(
            "http-trace",
            true,
            format!(
                "SERVER span \"{}\" of httpd's child (pid {}, parent {}, {}; status 200, port {CHECK_PORT}) and CLIENT span \"{}\" of wget (pid {}); {} spans in all",
                server.name,
                server.pid.unwrap_or(0),
                server.parent_pid.unwrap_or(0),
                server.executable,
                client.name,
                client.pid.unwrap_or(0),
                spans.len()
            ),
        ),
        _ => Check::new(
            "http-trace",
            false,
            format!(
                "want a SERVER span of httpd (pid {:?}) or its child for GET {CHECK_PATH} with status 200 on port {CHECK_PORT}: {}, and a CLIENT span of wget (pid {:?}): {} (wget: {}, spans written: {}); spans seen: {:?}",
                output.pids.get("httpd"),
                found(server),
                output.pids.get("wget"),
                found(client),
                output.exit("wget"),
                output.exit("spans-written"),
                spans
            ),
        ),
    }
}

/// The same request over TLS from `openssl s_client` to `openssl s_server
/// -WWW`: the client's span, read through the OpenSSL uprobes, must be
/// there with status 200. The server's span is reported, not required:
/// s_server -WWW goes through OpenSSL's SSL BIO, which calls libssl's
/// internal read and write rather than the functions the uprobes are on.
fn check_tls_spans(output: &Output) -> Check {
    let spans = spans(output.file("traces.jsonl"));
    let server_pid = output.pids.get("tls-server");
    let client_pid = output.pids.get("tls-client");
    let server = server_span(&spans, TLS_PORT, server_pid, false);
    let client = client_span(&spans, TLS_PORT, client_pid);
    match (server, client) {
        (_, Some(client)) if client.status == Some(200) => Check::new(
            "https-trace",
            true,
            format!(
                "CLIENT span \"{}\" of openssl s_client (pid {}; status 200, port {TLS_PORT}); SERVER span of openssl s_server: {}",
                client.name,
                client.pid.unwrap_or(0),
                server.map_or_else(
                    || "not seen".to_owned(),
                    |s| format!("\"{}\" (pid {}, status 200)", s.name, s.pid.unwrap_or(0))
                ),
            ),
        ),
        _ => Check::new(
            "https-trace",
            false,
            format!(
                "want a SERVER span of s_server (pid {server_pid:?}) for GET {CHECK_PATH} with status 200 on port {TLS_PORT}: {}, and a CLIENT span of s_client (pid {client_pid:?}): {} (s_client: {}, spans written: {}); s_client's log: {:?}; spans seen: {:?}",
                found(server),
                found(client),
                output.exit("tls-client"),
                output.exit("tls-spans-written"),
                output.files.get("tls-client.log").map(|l| l.trim()),
                spans
            ),
        ),
    }
}

/// OTLP span kinds.
const SERVER: i64 = 2;
const CLIENT: i64 = 3;

/// The SERVER span for GET [`CHECK_PATH`] with status 200 on `port` of the
/// process `pid` (or, when `or_child`, of a child it forked).
fn server_span<'a>(
    spans: &'a [Span],
    port: i64,
    pid: Option<&i64>,
    or_child: bool,
) -> Option<&'a Span> {
    let pid = Some(*pid?);
    spans.iter().find(|s| {
        s.kind == SERVER
            && s.path.as_deref() == Some(CHECK_PATH)
            && s.port == Some(port)
            && s.status == Some(200)
            && (s.pid == pid || (or_child && s.parent_pid == pid))
    })
}

/// A CLIENT span on `port` of the process `pid`.
fn client_span<'a>(spans: &'a [Span], port: i64, pid: Option<&i64>) -> Option<&'a Span> {
    let pid = Some(*pid?);
    spans
        .iter()
        .find(|s| s.kind == CLIENT && s.port == Some(port) && s.pid == pid)
}

fn found(span: Option<&Span>) -> &'static str {
    if span.is_some() { "found" } else { "missing" }
}

#[derive(Debug)]
struct Span {
    name: String,
    kind: i64,
    path: Option<String>,
    port: Option<i64>,
    status: Option<i64>,
    executable: String,
    pid: Option<i64>,
    parent_pid: Option<i64>,
}

/// Spans of the OTLP/JSON export requests in `traces.jsonl`, one per line.
fn spans(text: &str) -> Vec<Span> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(request) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for rs in request["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attributes(&rs["resource"]["attributes"]);
            let pid = resource.get("process.pid").and_then(as_int);
            let parent_pid = resource.get("process.parent_pid").and_then(as_int);
            let executable = resource
                .get("process.executable.name")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let attrs = attributes(&span["attributes"]);
                    out.push(Span {
                        name: span["name"].as_str().unwrap_or("").to_owned(),
                        kind: span["kind"].as_i64().unwrap_or(0),
                        path: attrs
                            .get("url.path")
                            .and_then(|v| v.as_str())
                            .map(str::to_owned),
                        port: attrs.get("server.port").and_then(as_int),
                        status: attrs.get("http.response.status_code").and_then(as_int),
                        executable: executable.clone(),
                        pid,
                        parent_pid,
                    });
                }
            }
        }
    }
    out
}

/// OTLP/JSON `[{key, value: {stringValue|intValue|…}}]` as plain values.
fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?;
            let value = ["stringValue", "intValue", "doubleValue", "boolValue"]
                .iter()
                .find_map(|k| kv["value"].get(*k).cloned())?;
            Some((key.to_owned(), value))
        })
        .collect()
}

/// OTLP/JSON carries 64-bit integers as strings.
fn as_int(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_package_by_the_numbers_in_its_name() {
        let names: Vec<String> = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.1.0-57-cloud-amd64-dbg",
            "linux-image-6.1.0-60-amd64",
            "linux-image-6.12.90+deb12.1-cloud-amd64",
            "linux-image-6.12.95+deb12-cloud-amd64",
            "linux-image-6.12.95+deb12-cloud-amd64-unsigned",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            newest_package(&names, "linux-image-6.1.0-").as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            newest_package(&names, "linux-image-6.12.").as_deref(),
            Some("linux-image-6.12.95+deb12-cloud-amd64")
        );
        assert_eq!(newest_package(&names, "linux-image-5.10."), None);
    }

    #[test]
    fn ldd_output_gives_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn serial_protocol_with_files_and_colour() {
        let serial = "SeaBIOS\r\nBooting from ROM..c\u{1b}[?7l\u{1b}[2JKMATRIX init 6.1.0-57-cloud-amd64\r\n\
            KMATRIX exit probe 0\r\nKMATRIX begin agent.log\r\n\
            \u{1b}[2mtime\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m hook chosen \u{1b}[3msensor\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"socket\" \u{1b}[3mhook\u{1b}[0m\u{1b}[2m=\u{1b}[0mTracepoint \u{1b}[3munavailable\u{1b}[0m\u{1b}[2m=\u{1b}[0m[]\r\n\
            KMATRIX end agent.log\r\nKMATRIX done\r\n";
        let out = Output::parse(serial);
        assert_eq!(out.release.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert!(out.succeeded("probe"));
        assert!(!out.succeeded("agent"));
        assert!(out.done);
        let log = &out.files["agent.log"];
        assert_eq!(
            chosen_hooks(log),
            [("socket".to_owned(), "Tracepoint".to_owned())]
        );
    }

    #[test]
    fn spans_of_the_right_processes_pass_and_others_fail() {
        let span = |pid: u32, kind: u8, status: u16| {
            let parent = if pid == 12 { 10 } else { 1 };
            format!(
                r#"{{"resource":{{"attributes":[{{"key":"process.pid","value":{{"intValue":"{pid}"}}}},{{"key":"process.parent_pid","value":{{"intValue":"{parent}"}}}},{{"key":"process.executable.name","value":{{"stringValue":"busybox"}}}}]}},"scopeSpans":[{{"spans":[{{"name":"GET","kind":{kind},"attributes":[{{"key":"url.path","value":{{"stringValue":"/kmatrix.html"}}}},{{"key":"server.port","value":{{"intValue":"8080"}}}},{{"key":"http.response.status_code","value":{{"intValue":"{status}"}}}}]}}]}}]}}"#
            )
        };
        let request = |spans: &[String]| format!("{{\"resourceSpans\":[{}]}}\n", spans.join(","));
        let mut output = Output::default();
        output.pids.insert("httpd".into(), 10);
        output.pids.insert("wget".into(), 11);
        for good in [
            request(&[span(10, 2, 200), span(11, 3, 200)]),
            // Served by a child of httpd.
            request(&[span(12, 2, 200), span(11, 3, 200)]),
        ] {
            output.files.insert("traces.jsonl".into(), good);
            assert!(check_spans(&output).pass);
        }
        for bad in [
            request(&[span(10, 2, 404), span(11, 3, 404)]),
            request(&[span(13, 2, 200), span(11, 3, 200)]),
            request(&[span(10, 2, 200), span(13, 3, 200)]),
            request(&[span(10, 2, 200)]),
        ] {
            output.files.insert("traces.jsonl".into(), bad);
            assert!(!check_spans(&output).pass);
        }
        output.files.clear();
        assert!(!check_spans(&output).pass);
    }

    #[test]
    fn tls_check_needs_the_client_span_only() {
        let span = |pid: u32, kind: u8| {
            format!(
                r#"{{"resource":{{"attributes":[{{"key":"process.pid","value":{{"intValue":"{pid}"}}}}]}},"scopeSpans":[{{"spans":[{{"name":"GET","kind":{kind},"attributes":[{{"key":"url.path","value":{{"stringValue":"/kmatrix.html"}}}},{{"key":"server.port","value":{{"intValue":"8443"}}}},{{"key":"http.response.status_code","value":{{"intValue":"200"}}}}]}}]}}]}}"#
            )
        };
        let mut output = Output::default();
        output.pids.insert("tls-server".into(), 20);
        output.pids.insert("tls-client".into(), 21);
        for (spans, pass) in [
            (vec![span(20, 2), span(21, 3)], true),
            (vec![span(21, 3)], true),
            (vec![span(20, 2)], false),
            (vec![span(20, 2), span(22, 3)], false),
        ] {
            let request = format!("{{\"resourceSpans\":[{}]}}\n", spans.join(","));
            output.files.insert("traces.jsonl".into(), request);
            assert_eq!(check_tls_spans(&output).pass, pass);
        }
        output.pids.clear();
        assert!(!check_tls_spans(&output).pass);
    }
}
