//! `selfops probe`: what the running kernel offers, each feature tried for
//! real — a map created, a tiny program loaded and attached — never guessed
//! from the kernel version.

use std::{error::Error, fmt::Write as _};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::MapType,
    programs::{
        BtfTracePoint, FEntry, KProbe, LinkOrder, PerfEvent, RawTracePoint, SchedClassifier,
        TcAttachType, TracePoint, UProbe, Xdp, XdpMode,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        tc::{NlOptions, TcAttachOptions, qdisc_add_clsact},
        uprobe::UProbeScope,
    },
};
use serde::Serialize;

use super::{EBPF_OBJECT, errno, mounts};

/// A kernel capability the agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    Btf,
    Tracefs,
    RingBuffer,
    Tracepoint,
    RawTracepoint,
    BtfTracepoint,
    Uprobe,
    Kprobe,
    Fentry,
    PerfEventCpuClock,
    XdpDriver,
    XdpGeneric,
    TcTcx,
    TcClsact,
    ProbeWriteUser,
    Lockdown,
    BpfMemcgAccounting,
}

impl Feature {
    pub const fn label(self) -> &'static str {
        match self {
            Feature::Btf => "btf",
            Feature::Tracefs => "tracefs",
            Feature::RingBuffer => "ring_buffer",
            Feature::Tracepoint => "tracepoint",
            Feature::RawTracepoint => "raw_tracepoint",
            Feature::BtfTracepoint => "btf_tracepoint",
            Feature::Uprobe => "uprobe",
            Feature::Kprobe => "kprobe",
            Feature::Fentry => "fentry",
            Feature::PerfEventCpuClock => "perf_event_cpu_clock",
            Feature::XdpDriver => "xdp_driver",
            Feature::XdpGeneric => "xdp_generic",
            Feature::TcTcx => "tc_tcx",
            Feature::TcClsact => "tc_clsact",
            Feature::ProbeWriteUser => "bpf_probe_write_user",
            Feature::Lockdown => "lockdown",
            Feature::BpfMemcgAccounting => "bpf_memcg_accounting",
        }
    }
}

impl Serialize for Feature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

/// One line of the probe table.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureResult {
    pub feature: Feature,
    pub available: bool,
    /// For `available: false`, why (with the errno); otherwise what was found.
    pub detail: String,
}

/// The probe table.
#[derive(Debug, Clone, Serialize)]
pub struct Features {
    pub kernel_release: String,
    pub features: Vec<FeatureResult>,
}

impl Features {
    pub fn has(&self, feature: Feature) -> bool {
        self.features
            .iter()
            .any(|r| r.feature == feature && r.available)
    }

    /// One line per feature: `name  yes|no  detail`.
    pub fn to_table(&self) -> String {
        let mut out = format!("kernel {}\n", self.kernel_release);
        for r in &self.features {
            let _ = writeln!(
                out,
                "{:<22} {:<3}  {}",
                r.feature.label(),
                if r.available { "yes" } else { "no" },
                r.detail
            );
        }
        out
    }

    /// Tries every feature. Needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN,
    /// CAP_SYS_ADMIN); without it most rows say EPERM, which is the truth.
    pub fn probe() -> Self {
        let mut rows = Vec::new();
        let mut push = |feature, result: Result<String, String>| {
            let (available, detail) = match result {
                Ok(detail) => (true, detail),
                Err(detail) => (false, detail),
            };
            rows.push(FeatureResult {
                feature,
                available,
                detail,
            });
        };

        // Before anything raises RLIMIT_MEMLOCK: does a map load with none?
        push(Feature::BpfMemcgAccounting, probe_memcg_accounting());
        raise_memlock_rlimit();

        let btf = Btf::from_sys_fs();
        push(
            Feature::Btf,
            btf.as_ref()
                .map(|_| "/sys/kernel/btf/vmlinux parsed".to_owned())
                .map_err(|e| errno::describe(e)),
        );
        push(
            Feature::Tracefs,
            mounts::ensure_tracefs()
                .map(|state| match state {
                    mounts::MountState::AlreadyMounted => format!("mounted at {}", mounts::TRACEFS),
                    mounts::MountState::MountedByAgent => {
                        format!("mounted at {} by selfops", mounts::TRACEFS)
                    }
                })
                .map_err(|e| format!("mount tracefs: {}", errno::describe(&e))),
        );
        push(
            Feature::RingBuffer,
            match aya::sys::is_map_supported(MapType::RingBuf) {
                Ok(true) => Ok("BPF_MAP_TYPE_RINGBUF created".to_owned()),
                Ok(false) => Err("map creation refused".to_owned()),
                Err(e) => Err(errno::describe(&e)),
            },
        );

        match EbpfLoader::new().load(EBPF_OBJECT) {
            Ok(mut ebpf) => probe_programs(&mut ebpf, btf.as_ref().ok(), &mut push),
            Err(e) => {
                let why = format!("eBPF object did not load: {}", errno::describe(&e));
                for feature in PROGRAM_FEATURES {
                    push(feature, Err(why.clone()));
                }
            }
        }
        push(Feature::Lockdown, probe_lockdown());
        rows.sort_by_key(|r| r.feature);

        Self {
            kernel_release: kernel_release(),
            features: rows,
        }
    }
}

const PROGRAM_FEATURES: [Feature; 12] = [
    Feature::Tracepoint,
    Feature::RawTracepoint,
    Feature::BtfTracepoint,
    Feature::Uprobe,
    Feature::Kprobe,
    Feature::Fentry,
    Feature::PerfEventCpuClock,
    Feature::ProbeWriteUser,
    Feature::XdpDriver,
    Feature::XdpGeneric,
    Feature::TcTcx,
    Feature::TcClsact,
];

type Push<'a> = dyn FnMut(Feature, Result<String, String>) + 'a;

fn why(e: &(dyn Error + 'static)) -> String {
    errno::describe(e)
}

/// Typed access to one of the probe programs in the object.
macro_rules! program {
    ($ebpf:expr, $name:literal, $ty:ty) => {
        $ebpf
            .program_mut($name)
            .ok_or_else(|| format!("program {} missing from the object", $name))
            .and_then(|p| <&mut $ty>::try_from(p).map_err(|e| why(&e)))
    };
}

fn probe_programs(ebpf: &mut Ebpf, btf: Option<&Btf>, push: &mut Push<'_>) {
    push(
        Feature::Tracepoint,
        program!(ebpf, "probe_tracepoint", TracePoint).and_then(|p| {
            p.load().map_err(|e| why(&e))?;
            p.attach("sched", "sched_switch").map_err(|e| why(&e))?;
            Ok("attached to sched:sched_switch".to_owned())
        }),
    );
    push(
        Feature::RawTracepoint,
        program!(ebpf, "probe_raw_tracepoint", RawTracePoint).and_then(|p| {
            p.load().map_err(|e| why(&e))?;
            p.attach("sched_switch").map_err(|e| why(&e))?;
            Ok("attached to sched_switch".to_owned())
        }),
    );
    push(
        Feature::BtfTracepoint,
        program!(ebpf, "probe_btf_tracepoint", BtfTracePoint).and_then(|p| {
            let btf = btf.ok_or("needs kernel BTF")?;
            p.load("sched_switch", btf).map_err(|e| why(&e))?;
            p.attach().map_err(|e| why(&e))?;
            Ok("attached to sched_switch".to_owned())
        }),
    );
    push(
        Feature::Uprobe,
        program!(ebpf, "probe_uprobe", UProbe).and_then(|p| {
            p.load().map_err(|e| why(&e))?;
            p.attach("getpid", "libc", UProbeScope::CallingProcess)
                .map_err(|e| why(&e))?;
            Ok("attached to libc getpid".to_owned())
        }),
    );
    push(
        Feature::Kprobe,
        program!(ebpf, "probe_kprobe", KProbe).and_then(|p| {
            p.load().map_err(|e| why(&e))?;
            p.attach("tcp_sendmsg", 0).map_err(|e| why(&e))?;
            Ok("attached to tcp_sendmsg".to_owned())
        }),
    );
    push(
        Feature::Fentry,
        program!(ebpf, "probe_fentry", FEntry).and_then(|p| {
            let btf = btf.ok_or("needs kernel BTF")?;
            p.load("tcp_sendmsg", btf).map_err(|e| why(&e))?;
            p.attach().map_err(|e| why(&e))?;
            Ok("attached to tcp_sendmsg".to_owned())
        }),
    );
    push(
        Feature::PerfEventCpuClock,
        program!(ebpf, "probe_perf_event", PerfEvent).and_then(|p| {
            p.load().map_err(|e| why(&e))?;
            let cpu = aya::util::online_cpus()
                .ok()
                .and_then(|cpus| cpus.first().copied())
                .unwrap_or(0);
            p.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(19),
                false,
            )
            .map_err(|e| why(&e))?;
            Ok(format!("software cpu-clock sampling on cpu {cpu}"))
        }),
    );
    push(
        Feature::ProbeWriteUser,
        program!(ebpf, "probe_write_user", TracePoint).and_then(|p| {
            p.load().map_err(|e| why(&e))?;
            Ok("helper accepted by the verifier".to_owned())
        }),
    );
    probe_network_programs(ebpf, push);
}

/// XDP and tc are tried on the loopback device of a private network
/// namespace, so probing never touches the host's interfaces.
fn probe_network_programs(ebpf: &mut Ebpf, push: &mut Push<'_>) {
    let results = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare affects only this thread, which ends with
                // the probe; the namespace dies with its last link.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    let e = std::io::Error::last_os_error();
                    let why = format!("private netns for the probe: {}", errno::describe(&e));
                    return [
                        Err(why.clone()),
                        Err(why.clone()),
                        Err(why.clone()),
                        Err(why),
                    ];
                }
                let xdp = program!(ebpf, "probe_xdp", Xdp).and_then(|p| {
                    p.load().map_err(|e| why(&e))?;
                    Ok(p)
                });
                let (driver, generic) = match xdp {
                    Ok(p) => (attach_xdp(p, XdpMode::Driver), attach_xdp(p, XdpMode::Skb)),
                    Err(e) => (Err(e.clone()), Err(e)),
                };
                let tc = program!(ebpf, "probe_tc", SchedClassifier).and_then(|p| {
                    p.load().map_err(|e| why(&e))?;
                    Ok(p)
                });
                let (tcx, clsact) = match tc {
                    Ok(p) => (attach_tcx(p), attach_clsact(p)),
                    Err(e) => (Err(e.clone()), Err(e)),
                };
                [driver, generic, tcx, clsact]
            })
            .join()
            .unwrap_or_else(|_| {
                let why = "probe thread panicked".to_owned();
                [
                    Err(why.clone()),
                    Err(why.clone()),
                    Err(why.clone()),
                    Err(why),
                ]
            })
    });
    let [driver, generic, tcx, clsact] = results;
    push(Feature::XdpDriver, driver);
    push(Feature::XdpGeneric, generic);
    push(Feature::TcTcx, tcx);
    push(Feature::TcClsact, clsact);
}

fn attach_xdp(p: &mut Xdp, mode: XdpMode) -> Result<String, String> {
    let link = p.attach("lo", mode).map_err(|e| why(&e))?;
    p.detach(link).map_err(|e| why(&e))?;
    Ok(format!("attached to lo in {mode:?} mode"))
}

fn attach_tcx(p: &mut SchedClassifier) -> Result<String, String> {
    let options = TcAttachOptions::TcxOrder(LinkOrder::default());
    let link = p
        .attach_with_options("lo", TcAttachType::Ingress, options)
        .map_err(|e| why(&e))?;
    p.detach(link).map_err(|e| why(&e))?;
    Ok("TCX link on lo ingress".to_owned())
}

fn attach_clsact(p: &mut SchedClassifier) -> Result<String, String> {
    qdisc_add_clsact("lo").map_err(|e| format!("add clsact qdisc: {}", why(&e)))?;
    let options = TcAttachOptions::Netlink(NlOptions::default());
    let link = p
        .attach_with_options("lo", TcAttachType::Ingress, options)
        .map_err(|e| why(&e))?;
    p.detach(link).map_err(|e| why(&e))?;
    Ok("clsact filter on lo ingress".to_owned())
}

/// With BPF memory charged to the memory cgroup (Linux ≥ 5.11) a map needs
/// no RLIMIT_MEMLOCK; with the old accounting it fails at limit 0.
fn probe_memcg_accounting() -> Result<String, String> {
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on valid structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut saved) != 0 {
            return Err(errno::describe(&std::io::Error::last_os_error()));
        }
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: saved.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &zero) != 0 {
            return Err(errno::describe(&std::io::Error::last_os_error()));
        }
    }
    let result = aya::sys::is_map_supported(MapType::Array);
    // SAFETY: restores the limit read above.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &saved) };
    match result {
        Ok(true) => Ok("map created with RLIMIT_MEMLOCK=0: memory cgroup accounting".to_owned()),
        Ok(false) => Err("map refused with RLIMIT_MEMLOCK=0: RLIMIT_MEMLOCK accounting".to_owned()),
        Err(e) => Err(errno::describe(&e)),
    }
}

/// Lets kernels with RLIMIT_MEMLOCK accounting load maps at all.
pub fn raise_memlock_rlimit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid struct; failure only matters on old kernels and is logged.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK"
        );
    }
}

/// `yes` when the kernel is locked down; the detail is the active mode.
fn probe_lockdown() -> Result<String, String> {
    if let Err(e) = mounts::ensure_securityfs() {
        return Err(format!("securityfs unavailable: {}", errno::describe(&e)));
    }
    let text = std::fs::read_to_string("/sys/kernel/security/lockdown")
        .map_err(|e| format!("no lockdown LSM: {}", errno::describe(&e)))?;
    // The active mode is the bracketed word: "none [integrity] confidentiality".
    let mode = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("unknown")
        .to_owned();
    if mode == "none" {
        Err("mode none".to_owned())
    } else {
        Ok(format!("mode {mode}"))
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
