//! CPU-clock sampler: stacks and register state per sample, loaded only when profiling is on.
#![no_std]
#![no_main]

// The panic handler comes from the library.
use selfops_ebpf as _;

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
