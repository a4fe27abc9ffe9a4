//! The sensor object: the embedded eBPF object loaded with this kernel's
//! tracepoint layout, its process sensors attached, its maps handed out.
//! Dropping it detaches every program.

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
};
use selfops_ebpf::{SENSOR_COUNT, Sensor, TracepointLayout};

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

pub struct SensorObject {
    ebpf: Ebpf,
}

impl SensorObject {
    pub fn load(layout: &TracepointLayout, process_ring_bytes: u32) -> Result<Self, ObjectError> {
        let ebpf = EbpfLoader::new()
            .override_global("TRACEPOINT_LAYOUT", layout, true)
            .map_max_entries("PROCESS_EVENTS", process_ring_bytes)
            .load(EBPF_OBJECT)?;
        Ok(Self { ebpf })
    }

    /// Loads and attaches exec, fork and exit. The tracepoint tier is the
    /// only one these sensors need: the three tracepoints exist on every
    /// kernel the agent supports.
    pub fn attach_process_sensors(&mut self) -> Result<Vec<String>, ObjectError> {
        let mut attached = Vec::new();
        for (name, category, tracepoint) in PROCESS_TRACEPOINTS {
            let program: &mut TracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or(ObjectError::Missing {
                    kind: "program",
                    name,
                })?
                .try_into()
                .map_err(|source| ObjectError::Program { name, source })?;
            program
                .load()
                .map_err(|source| ObjectError::Program { name, source })?;
            program
                .attach(category, tracepoint)
                .map_err(|source| ObjectError::Program { name, source })?;
            attached.push(format!("{category}:{tracepoint}"));
        }
        Ok(attached)
    }

    pub fn take_process_ring(&mut self) -> Result<RingBuf<MapData>, ObjectError> {
        let name = "PROCESS_EVENTS";
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ObjectError::Missing { kind: "map", name })?;
        RingBuf::try_from(map).map_err(|source| ObjectError::Map { name, source })
    }

    pub fn take_lost_counters(&mut self) -> Result<LostCounters, ObjectError> {
        let name = "LOST_EVENTS";
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ObjectError::Missing { kind: "map", name })?;
        let map = PerCpuArray::try_from(map).map_err(|source| ObjectError::Map { name, source })?;
        Ok(LostCounters { map })
    }
}

/// The kernel's per-CPU count of failed ring-buffer reservations per sensor.
pub struct LostCounters {
    map: PerCpuArray<MapData, u64>,
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
}
