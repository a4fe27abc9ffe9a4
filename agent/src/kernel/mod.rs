//! Everything that touches the kernel: the embedded eBPF object, feature
//! probing, tracefs, hook choice and ring-buffer readers.

pub mod btf_offsets;
pub mod errno;
pub mod features;
pub mod hooks;
pub mod mounts;
pub mod object;
pub mod ring_reader;
pub mod socket_hooks;
pub mod tracefs;

// The eBPF objects built by agent/build.rs from agent-ebpf, one per concern,
// so a feature that is off costs no kernel memory.

/// Process and socket sensors.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/selfops"));
/// Token-bucket limiter (XDP and tc).
pub static LIMITER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/selfops-limiter"));
/// CPU-clock sampler.
pub static PROFILER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/selfops-profiler"));
