//! The sensor object: the embedded eBPF object loaded with this kernel's
//! tracepoint layout, its process sensors attached, its maps handed out.
//! Dropping it detaches every program.

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint, UProbe,
        fentry::FEntryLink, fexit::FExitLink, kprobe::KProbeLink,
        raw_trace_point::RawTracePointLink, tp_btf::BtfTracePointLink, trace_point::TracePointLink,
        uprobe::UProbeLink, uprobe::UProbeScope,
    },
};
use selfops_ebpf::{
    KERNEL_DROP_COUNT, KERNEL_FILTER_COUNT, KernelDrop, KernelFilter, NetSettings, SENSOR_COUNT,
    Sensor, SocketOffsets, TracepointLayout,
};

use super::{
    EBPF_OBJECT,
    socket_hooks::{RawTracepoint, SocketHook},
};

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("{kind} {name} is missing from the eBPF object")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
}

/// The tracepoints of the process sensors: (program, category, tracepoint).
const PROCESS_TRACEPOINTS: [(&str, &str, &str); 3] = [
    ("process_exec", "sched", "sched_process_exec"),
    ("process_fork", "task", "task_newtask"),
    ("process_exit", "sched", "sched_process_exit"),
];

/// TLS uprobes: (program, OpenSSL symbol). uprobe and uretprobe programs
/// are told apart by their section, so each symbol appears twice.
/// SSL_connect and SSL_accept run SSL_do_handshake, so probing it covers
/// all three (each uprobe costs ~0.1 s to detach).
const TLS_UPROBES: [(&str, &str); 10] = [
    ("ssl_handshake", "SSL_do_handshake"),
    ("ssl_handshake_ret", "SSL_do_handshake"),
    ("ssl_read", "SSL_read"),
    ("ssl_read_ret", "SSL_read"),
    ("ssl_read_ex", "SSL_read_ex"),
    ("ssl_read_ex_ret", "SSL_read_ex"),
    ("ssl_write", "SSL_write"),
    ("ssl_write_ret", "SSL_write"),
    ("ssl_write_ex", "SSL_write_ex"),
    ("ssl_write_ex_ret", "SSL_write_ex"),
];

/// What the kernel programs are loaded with.
pub struct LoadOptions {
    pub layout: TracepointLayout,
    pub process_ring_bytes: u32,
    pub socket_offsets: SocketOffsets,
    pub net_settings: NetSettings,
    pub socket_ring_bytes: u32,
}

/// An attachment owned by the object; dropping it detaches the program.
#[expect(
    dead_code,
    reason = "each link is held only for its Drop, which detaches"
)]
enum Link {
    TracePoint(TracePointLink),
    RawTracePoint(RawTracePointLink),
    BtfTracePoint(BtfTracePointLink),
    FEntry(FEntryLink),
    FExit(FExitLink),
    KProbe(KProbeLink),
    UProbe(UProbeLink),
}

pub struct SensorObject {
    ebpf: Ebpf,
    links: Vec<Link>,
}

impl SensorObject {
    pub fn load(options: &LoadOptions) -> Result<Self, ObjectError> {
        let ebpf = EbpfLoader::new()
            .override_global("TRACEPOINT_LAYOUT", &options.layout, true)
            .override_global("SOCKET_OFFSETS", &options.socket_offsets, true)
            .override_global("NET_SETTINGS", &options.net_settings, true)
            .map_max_entries("PROCESS_EVENTS", options.process_ring_bytes)
            .map_max_entries("NET_EVENTS", options.socket_ring_bytes)
            .load(EBPF_OBJECT)?;
        Ok(Self {
            ebpf,
            links: Vec::new(),
        })
    }

    /// Detaches every program. Each detach waits for RCU grace periods in
    /// the kernel (a tracepoint about 40 ms here, a uprobe about 100 ms);
    /// detaching from parallel threads lets those waits overlap instead of
    /// adding up.
    pub fn detach(mut self) {
        let links = std::mem::take(&mut self.links);
        let start = std::time::Instant::now();
        std::thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
        });
        tracing::debug!(took = ?start.elapsed(), "programs detached");
        // Programs and maps go with the object.
    }

    /// The loaded programs' names and kernel ids, for their statistics.
    pub fn program_ids(&self) -> Vec<(String, u32)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| Some((name.to_owned(), program.info().ok()?.id())))
            .collect()
    }

    /// How many attachments the object holds, to undo those made after.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Detaches what was attached since `link_count` returned `mark`.
    pub fn detach_since(&mut self, mark: usize) {
        let later = self.links.split_off(mark.min(self.links.len()));
        drop(later);
    }

    /// A program of the object, as its kind.
    fn program<'p, T>(&'p mut self, name: &'static str) -> Result<&'p mut T, ObjectError>
    where
        &'p mut T: TryFrom<&'p mut aya::programs::Program, Error = ProgramError>,
    {
        self.ebpf
            .program_mut(name)
            .ok_or(ObjectError::Missing {
                kind: "program",
                name,
            })?
            .try_into()
            .map_err(|source| ObjectError::Program { name, source })
    }

    fn attach_tracepoint(
        &mut self,
        name: &'static str,
        category: &str,
        tracepoint: &str,
    ) -> Result<(), ObjectError> {
        let program: &mut TracePoint = self.program(name)?;
        // One program may serve several tracepoints.
        match program.load() {
            Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
            Err(source) => return Err(ObjectError::Program { name, source }),
        }
        let link = program
            .attach(category, tracepoint)
            .and_then(|id| program.take_link(id))
            .map_err(|source| ObjectError::Program { name, source })?;
        self.links.push(Link::TracePoint(link));
        Ok(())
    }

    /// Loads and attaches the socket sensor on the syscall tracepoints of
    /// `hook` (whose record layout the caller has checked).
    pub fn attach_syscall_tracepoints(&mut self, hook: SocketHook) -> Result<usize, ObjectError> {
        let (category, tracepoints) = hook.tracepoints();
        for &(name, tracepoint) in tracepoints {
            self.attach_tracepoint(name, category, tracepoint)?;
        }
        let raw = hook.raw_tracepoints();
        if !raw.is_empty() {
            // Parsed once for the typed programs, and dropped after.
            let btf = Btf::from_sys_fs()
                .inspect_err(
                    |e| tracing::info!(error = %e, "no kernel BTF: raw tracepoints untyped"),
                )
                .ok();
            for tracepoint in raw {
                self.attach_raw_tracepoint_typed_first(tracepoint, btf.as_ref())?;
            }
        }
        Ok(tracepoints.len() + raw.len())
    }

    /// Attaches the typed program of `raw` where the kernel has BTF and
    /// takes it, else the untyped one; logs which.
    fn attach_raw_tracepoint_typed_first(
        &mut self,
        raw: &RawTracepoint,
        btf: Option<&Btf>,
    ) -> Result<(), ObjectError> {
        if let Some(btf) = btf {
            match self.attach_btf_tracepoint(raw.typed, raw.tracepoint, btf) {
                Ok(()) => {
                    tracing::info!(
                        program = raw.typed,
                        "socket hook's raw tracepoint typed by BTF"
                    );
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "socket hook's typed raw tracepoint refused; untyped instead")
                }
            }
        }
        self.attach_raw_tracepoint(raw.untyped, raw.tracepoint)?;
        tracing::info!(
            program = raw.untyped,
            "socket hook's raw tracepoint untyped"
        );
        Ok(())
    }

    fn attach_btf_tracepoint(
        &mut self,
        name: &'static str,
        tracepoint: &str,
        btf: &Btf,
    ) -> Result<(), ObjectError> {
        let program: &mut BtfTracePoint = self.program(name)?;
        let link = program
            .load(tracepoint, btf)
            .and_then(|()| program.attach())
            .and_then(|id| program.take_link(id))
            .map_err(|source| ObjectError::Program { name, source })?;
        self.links.push(Link::BtfTracePoint(link));
        Ok(())
    }

    fn attach_raw_tracepoint(
        &mut self,
        name: &'static str,
        tracepoint: &str,
    ) -> Result<(), ObjectError> {
        let program: &mut RawTracePoint = self.program(name)?;
        let link = program
            .load()
            .and_then(|()| program.attach(tracepoint))
            .and_then(|id| program.take_link(id))
            .map_err(|source| ObjectError::Program { name, source })?;
        self.links.push(Link::RawTracePoint(link));
        Ok(())
    }

    /// Loads program `name` for kernel function `function` and attaches
    /// it at the function's entry.
    pub fn attach_fentry(
        &mut self,
        name: &'static str,
        function: &str,
        btf: &Btf,
    ) -> Result<(), ObjectError> {
        let program: &mut FEntry = self.program(name)?;
        let link = program
            .load(function, btf)
            .and_then(|()| program.attach())
            .and_then(|id| program.take_link(id))
            .map_err(|source| ObjectError::Program { name, source })?;
        self.links.push(Link::FEntry(link));
        Ok(())
    }

    /// As [`Self::attach_fentry`], at the function's return.
    pub fn attach_fexit(
        &mut self,
        name: &'static str,
        function: &str,
        btf: &Btf,
    ) -> Result<(), ObjectError> {
        let program: &mut FExit = self.program(name)?;
        let link = program
            .load(function, btf)
            .and_then(|()| program.attach())
            .and_then(|id| program.take_link(id))
            .map_err(|source| ObjectError::Program { name, source })?;
        self.links.push(Link::FExit(link));
        Ok(())
    }

    /// Loads kprobe or kretprobe `name` (its section says which) and
    /// attaches it to kernel function `function`.
    pub fn attach_kprobe(&mut self, name: &'static str, function: &str) -> Result<(), ObjectError> {
        let program: &mut KProbe = self.program(name)?;
        let link = program
            .load()
            .and_then(|()| program.attach(function, 0))
            .and_then(|id| program.take_link(id))
            .map_err(|source| ObjectError::Program { name, source })?;
        self.links.push(Link::KProbe(link));
        Ok(())
    }

    /// Attaches the TLS uprobes (OpenSSL 3 SSL_read/SSL_write and their _ex
    /// variants, entry and return) to the library at `library`.
    pub fn attach_tls(&mut self, library: &std::path::Path) -> Result<(), ObjectError> {
        for (name, symbol) in TLS_UPROBES {
            let program: &mut UProbe = self.program(name)?;
            match program.load() {
                Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
                Err(source) => return Err(ObjectError::Program { name, source }),
            }
            let link = program
                .attach(symbol, library, UProbeScope::AllProcesses)
                .and_then(|id| program.take_link(id))
                .map_err(|source| ObjectError::Program { name, source })?;
            self.links.push(Link::UProbe(link));
        }
        Ok(())
    }

    pub fn take_socket_ring(&mut self) -> Result<RingBuf<MapData>, ObjectError> {
        self.take_ring("NET_EVENTS")
    }

    /// Loads and attaches exec, fork and exit. The tracepoint tier is the
    /// only one these sensors need: the three tracepoints exist on every
    /// kernel the agent supports.
    pub fn attach_process_sensors(&mut self) -> Result<Vec<String>, ObjectError> {
        let mut attached = Vec::new();
        for (name, category, tracepoint) in PROCESS_TRACEPOINTS {
            self.attach_tracepoint(name, category, tracepoint)?;
            attached.push(format!("{category}:{tracepoint}"));
        }
        Ok(attached)
    }

    pub fn take_process_ring(&mut self) -> Result<RingBuf<MapData>, ObjectError> {
        self.take_ring("PROCESS_EVENTS")
    }

    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, ObjectError> {
        self.take_map_as(name)
    }

    pub fn take_lost_counters(&mut self) -> Result<LostCounters, ObjectError> {
        Ok(LostCounters {
            map: self.take_per_cpu_array("LOST_EVENTS")?,
            drops: self.take_per_cpu_array("KERNEL_DROPS")?,
            filtered: self.take_per_cpu_array("KERNEL_FILTERED")?,
        })
    }

    /// The socket sensor's map of tgids whose syscalls it skips, and the
    /// flag telling it whether to look there at all.
    pub fn take_exclusion_maps(&mut self) -> Result<ExclusionMaps, ObjectError> {
        Ok(ExclusionMaps {
            tgids: self.take_map_as("EXCLUDED_TGIDS")?,
            in_use: self.take_map_as("EXCLUSIONS_IN_USE")?,
        })
    }

    fn take_per_cpu_array(
        &mut self,
        name: &'static str,
    ) -> Result<PerCpuArray<MapData, u64>, ObjectError> {
        self.take_map_as(name)
    }

    /// A map of the object, owned from now on, as its kind.
    fn take_map_as<T>(&mut self, name: &'static str) -> Result<T, ObjectError>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ObjectError::Missing { kind: "map", name })?;
        T::try_from(map).map_err(|source| ObjectError::Map { name, source })
    }
}

/// `EXCLUDED_TGIDS` and `EXCLUSIONS_IN_USE` (non-zero while the first may
/// hold tgids).
pub struct ExclusionMaps {
    pub tgids: HashMap<MapData, u32, u8>,
    pub in_use: Array<MapData, u32>,
}

/// The kernel's per-CPU count of failed ring-buffer reservations per
/// sensor, and of events dropped for other reasons.
pub struct LostCounters {
    map: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    filtered: PerCpuArray<MapData, u64>,
}

impl LostCounters {
    /// Totals over all CPUs, per sensor.
    pub fn read(&self) -> Result<[(Sensor, u64); SENSOR_COUNT as usize], MapError> {
        let mut totals = Sensor::ALL.map(|s| (s, 0));
        for (sensor, total) in &mut totals {
            let per_cpu = self.map.get(&(*sensor as u32), 0)?;
            *total = per_cpu.iter().sum();
        }
        Ok(totals)
    }

    /// Totals over all CPUs of what the socket sensor skipped on purpose.
    pub fn read_filtered(
        &self,
    ) -> Result<[(KernelFilter, u64); KERNEL_FILTER_COUNT as usize], MapError> {
        let mut totals = KernelFilter::ALL.map(|r| (r, 0));
        for (reason, total) in &mut totals {
            let per_cpu = self.filtered.get(&(*reason as u32), 0)?;
            *total = per_cpu.iter().sum();
        }
        Ok(totals)
    }

    /// Totals over all CPUs, per drop reason.
    pub fn read_drops(&self) -> Result<[(KernelDrop, u64); KERNEL_DROP_COUNT as usize], MapError> {
        let mut totals = KernelDrop::ALL.map(|r| (r, 0));
        for (reason, total) in &mut totals {
            let per_cpu = self.drops.get(&(*reason as u32), 0)?;
            *total = per_cpu.iter().sum();
        }
        Ok(totals)
    }
}
