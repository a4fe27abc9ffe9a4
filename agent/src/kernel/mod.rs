//! Everything that touches the kernel: the embedded eBPF object, feature
//! probing, tracefs, hook choice and ring-buffer readers.

pub mod btf_offsets;
pub mod errno;
pub mod features;
pub mod hooks;
pub mod mounts;
pub mod object;
pub mod ring_reader;
pub mod tracefs;

/// The eBPF object built by agent/build.rs from agent-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/selfops"));
