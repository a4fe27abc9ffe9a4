//! The CPU-clock sampler object: loaded only when profiling is on, one
//! perf_event per online CPU, every process but the agent's own.

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        PerfEvent, ProgramError,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
    },
    util::online_cpus,
};
use selfops_ebpf::profile::{PROFILE_COUNTER_COUNT, ProfileCounter, ProfilerSettings};

use crate::kernel::PROFILER_OBJECT;

const PROGRAM: &str = "profile_cpu_clock";

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("loading the profiler object: {0}")]
    Load(#[from] EbpfError),
    #[error("program {PROGRAM}: {0}")]
    Program(#[from] ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("{0} is missing from the profiler object")]
    Missing(&'static str),
    #[error("listing online CPUs: {0}")]
    Cpus(std::io::Error),
}

pub struct Sampler {
    ebpf: Ebpf,
    pub cpus: usize,
    online: Vec<u32>,
    /// One perf event per CPU while sampling; none while paused.
    links: Vec<PerfEventLinkId>,
}

impl Sampler {
    /// Loads the sampler and attaches it to every online CPU at
    /// `frequency_hz`.
    pub fn start(frequency_hz: u32, ring_bytes: u32) -> Result<Self, SamplerError> {
        let settings = ProfilerSettings {
            agent_tgid: std::process::id(),
            _pad: 0,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("PROFILER_SETTINGS", &settings, true)
            .map_max_entries("PROFILE_SAMPLES", ring_bytes)
            .load(PROFILER_OBJECT)?;
        let program: &mut PerfEvent = ebpf
            .program_mut(PROGRAM)
            .ok_or(SamplerError::Missing(PROGRAM))?
            .try_into()?;
        program.load()?;
        let online = online_cpus().map_err(|(_, e)| SamplerError::Cpus(e))?;
        let mut sampler = Self {
            ebpf,
            cpus: online.len(),
            online,
            links: Vec::new(),
        };
        sampler.set_rate(Some(frequency_hz))?;
        Ok(sampler)
    }

    /// Re-opens the perf events at `frequency_hz`, or closes them (`None`):
    /// the program, its maps and the ring stay loaded, so a live change
    /// costs only the perf events.
    pub fn set_rate(&mut self, frequency_hz: Option<u32>) -> Result<(), SamplerError> {
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(SamplerError::Missing(PROGRAM))?
            .try_into()?;
        for link in self.links.drain(..) {
            program.detach(link)?;
        }
        let Some(hz) = frequency_hz else {
            return Ok(());
        };
        for &cpu in &self.online {
            let link = program.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(u64::from(hz)),
                false,
            )?;
            self.links.push(link);
        }
        Ok(())
    }

    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, SamplerError> {
        let name = "PROFILE_SAMPLES";
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(SamplerError::Missing(name))?;
        RingBuf::try_from(map).map_err(|source| SamplerError::Map { name, source })
    }

    pub fn take_counters(&mut self) -> Result<KernelCounters, SamplerError> {
        let name = "PROFILE_COUNTERS";
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(SamplerError::Missing(name))?;
        let map =
            PerCpuArray::try_from(map).map_err(|source| SamplerError::Map { name, source })?;
        Ok(KernelCounters { map })
    }
}

/// The sampler's per-CPU counters.
pub struct KernelCounters {
    map: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    /// Totals over all CPUs, by counter.
    pub fn read(
        &self,
    ) -> Result<[(ProfileCounter, u64); PROFILE_COUNTER_COUNT as usize], MapError> {
        let mut totals = ProfileCounter::ALL.map(|c| (c, 0));
        for (counter, total) in &mut totals {
            *total = self.map.get(&(*counter as u32), 0)?.iter().sum();
        }
        Ok(totals)
    }
}
