//! Token-bucket limiter: XDP and tc programs over policy maps, loaded only when playbooks need them.
#![no_std]
#![no_main]

// The panic handler comes from the library.
use selfops_ebpf as _;

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
