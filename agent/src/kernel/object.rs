//! The sensor object: the embedded eBPF object loaded with this kernel's
//! tracepoint layout, its process sensors attached, its maps handed out.
//! Dropping it detaches every program.

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        ProgramError, TracePoint, UProbe,
        trace_point::TracePointLinkId,
        uprobe::{UProbeLinkId, UProbeScope},
    },
};
use selfops_ebpf::{
    KERNEL_DROP_COUNT, KERNEL_FILTER_COUNT, KernelDrop, KernelFilter, NetSettings, SENSOR_COUNT,
    Sensor, SocketOffsets, TracepointLayout,
};

use super::EBPF_OBJECT;

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

/// How the socket sensor follows syscalls.
///
/// raw_syscalls is the default, for the agent's exit deadline: detaching
/// a perf tracepoint waits for RCU grace periods under the kernel's
/// event_mutex, so the detaches of 23 per-syscall tracepoints run one
/// after another whatever threads drop them — here they made SIGTERM to
/// exit 1.87–2.06 s against 1.04–1.13 s with raw_syscalls, at the edge of
/// the 2 s within which a failed agent must be gone. At run time the
/// per-syscall programs ran 9 times per HTTP request instead of 23
/// (bpf_stats: about the same total program time, since the skipped runs
/// were cheap), and the benchmark's figures for each are in README.md.
/// `SELFOPS_SOCKET_HOOK=syscalls` chooses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallHook {
    /// One tracepoint per followed syscall (`syscalls:sys_enter_read`, …):
    /// the programs run only on those syscalls.
    PerSyscall,
    /// raw_syscalls:sys_enter and sys_exit, run on every syscall of every
    /// process and dispatching on its number.
    RawSyscalls,
}

/// Overrides the choice of [`SyscallHook`] (`syscalls` or `raw_syscalls`).
pub const SYSCALL_HOOK_ENV: &str = "SELFOPS_SOCKET_HOOK";

impl SyscallHook {
    /// raw_syscalls unless [`SYSCALL_HOOK_ENV`] asks for per-syscall
    /// tracepoints and this kernel has every one the sensor needs.
    pub fn chosen() -> Self {
        match std::env::var(SYSCALL_HOOK_ENV).as_deref() {
            Ok("syscalls") => {}
            Ok("raw_syscalls") | Err(_) => return Self::RawSyscalls,
            Ok(other) => {
                tracing::warn!(
                    value = other,
                    "{SYSCALL_HOOK_ENV} is neither `syscalls` nor `raw_syscalls`; ignored"
                );
                return Self::RawSyscalls;
            }
        }
        let present = PER_SYSCALL_TRACEPOINTS.iter().all(|(_, tracepoint)| {
            super::tracefs::tracepoint_exists(PER_SYSCALL_CATEGORY, tracepoint)
        });
        if present {
            Self::PerSyscall
        } else {
            tracing::warn!("per-syscall tracepoints missing; the socket sensor uses raw_syscalls");
            Self::RawSyscalls
        }
    }

    /// The tracefs category and (program, tracepoint) pairs of this hook.
    pub fn tracepoints(self) -> (&'static str, &'static [(&'static str, &'static str)]) {
        match self {
            Self::PerSyscall => (PER_SYSCALL_CATEGORY, &PER_SYSCALL_TRACEPOINTS),
            Self::RawSyscalls => ("raw_syscalls", &RAW_SYSCALL_TRACEPOINTS),
        }
    }
}

const RAW_SYSCALL_TRACEPOINTS: [(&str, &str); 2] =
    [("net_sys_enter", "sys_enter"), ("net_sys_exit", "sys_exit")];

pub const PER_SYSCALL_CATEGORY: &str = "syscalls";

/// (program, tracepoint in `syscalls`). Close needs only its entry, accept
/// only its exit. sendfile's tracepoint is named for the 64-bit call on
/// every 64-bit architecture.
pub const PER_SYSCALL_TRACEPOINTS: [(&str, &str); 23] = [
    ("net_enter_read", "sys_enter_read"),
    ("net_enter_readv", "sys_enter_readv"),
    ("net_enter_recvfrom", "sys_enter_recvfrom"),
    ("net_enter_recvmsg", "sys_enter_recvmsg"),
    ("net_enter_write", "sys_enter_write"),
    ("net_enter_writev", "sys_enter_writev"),
    ("net_enter_sendto", "sys_enter_sendto"),
    ("net_enter_sendmsg", "sys_enter_sendmsg"),
    ("net_enter_sendfile", "sys_enter_sendfile64"),
    ("net_enter_connect", "sys_enter_connect"),
    ("net_enter_close", "sys_enter_close"),
    ("net_exit_read", "sys_exit_read"),
    ("net_exit_readv", "sys_exit_readv"),
    ("net_exit_recvfrom", "sys_exit_recvfrom"),
    ("net_exit_recvmsg", "sys_exit_recvmsg"),
    ("net_exit_write", "sys_exit_write"),
    ("net_exit_writev", "sys_exit_writev"),
    ("net_exit_sendto", "sys_exit_sendto"),
    ("net_exit_sendmsg", "sys_exit_sendmsg"),
    ("net_exit_sendfile", "sys_exit_sendfile64"),
    ("net_exit_connect", "sys_exit_connect"),
    ("net_exit_accept", "sys_exit_accept"),
    ("net_exit_accept4", "sys_exit_accept4"),
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

pub struct SensorObject {
    ebpf: Ebpf,
    links: Vec<(&'static str, TracePointLinkId)>,
    uprobe_links: Vec<(&'static str, UProbeLinkId)>,
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
            uprobe_links: Vec::new(),
        })
    }

    /// Detaches every program. Each detach waits for RCU grace periods in
    /// the kernel (a tracepoint about 40 ms here, a uprobe about 100 ms);
    /// detaching from parallel threads lets those waits overlap instead of
    /// adding up.
    pub fn detach(mut self) {
        let mut tracepoints = Vec::new();
        for (name, id) in std::mem::take(&mut self.links) {
            if let Ok(program) = self.program::<TracePoint>(name)
                && let Ok(link) = program.take_link(id)
            {
                tracepoints.push(link);
            }
        }
        let mut uprobes = Vec::new();
        for (name, id) in std::mem::take(&mut self.uprobe_links) {
            if let Ok(program) = self.program::<UProbe>(name)
                && let Ok(link) = program.take_link(id)
            {
                uprobes.push(link);
            }
        }
        let start = std::time::Instant::now();
        std::thread::scope(|scope| {
            for link in tracepoints {
                scope.spawn(move || drop(link));
            }
            for link in uprobes {
                scope.spawn(move || drop(link));
            }
        });
        tracing::debug!(took = ?start.elapsed(), "programs detached");
        // Programs and maps go with the object.
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
        program
            .load()
            .map_err(|source| ObjectError::Program { name, source })?;
        let link = program
            .attach(category, tracepoint)
            .map_err(|source| ObjectError::Program { name, source })?;
        self.links.push((name, link));
        Ok(())
    }

    /// Loads and attaches the socket sensor on the syscall tracepoints of
    /// [`SyscallHook::chosen`].
    pub fn attach_socket_sensor(&mut self) -> Result<usize, ObjectError> {
        let hook = SyscallHook::chosen();
        let (category, tracepoints) = hook.tracepoints();
        for &(name, tracepoint) in tracepoints {
            self.attach_tracepoint(name, category, tracepoint)?;
        }
        tracing::info!(?hook, "socket sensor syscall hook");
        Ok(tracepoints.len())
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
                .map_err(|source| ObjectError::Program { name, source })?;
            self.uprobe_links.push((name, link));
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
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ObjectError::Missing { kind: "map", name })?;
        RingBuf::try_from(map).map_err(|source| ObjectError::Map { name, source })
    }

    pub fn take_lost_counters(&mut self) -> Result<LostCounters, ObjectError> {
        Ok(LostCounters {
            map: self.take_per_cpu_array("LOST_EVENTS")?,
            drops: self.take_per_cpu_array("KERNEL_DROPS")?,
            filtered: self.take_per_cpu_array("KERNEL_FILTERED")?,
        })
    }

    /// The socket sensor's map of tgids whose syscalls it skips.
    pub fn take_excluded_tgids(&mut self) -> Result<HashMap<MapData, u32, u8>, ObjectError> {
        let name = "EXCLUDED_TGIDS";
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ObjectError::Missing { kind: "map", name })?;
        HashMap::try_from(map).map_err(|source| ObjectError::Map { name, source })
    }

    fn take_per_cpu_array(
        &mut self,
        name: &'static str,
    ) -> Result<PerCpuArray<MapData, u64>, ObjectError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ObjectError::Missing { kind: "map", name })?;
        PerCpuArray::try_from(map).map_err(|source| ObjectError::Map { name, source })
    }
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
