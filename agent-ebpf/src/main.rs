//! selfops kernel sensors (process and socket). Each program is a thin attribute wrapper over one
//! `try_…` function that returns `Result`, so no error path can panic.
#![no_std]
#![no_main]

mod programs;

// The panic handler comes from the library.
use selfops_ebpf as _;

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
