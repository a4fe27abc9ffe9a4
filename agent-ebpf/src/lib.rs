//! Types shared by the kernel programs and the userspace agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, so its layout
//! is the same on both sides and no uninitialised byte crosses the ring buffer.
#![no_std]

// One panic handler for every kernel object built from this package
// (sensors, limiter, profiler). Unreachable in verified programs: the
// verifier rejects any reachable panic.
#[cfg(all(feature = "ebpf", target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

pub mod limiter;
pub mod net;
pub mod process;
pub mod profile;
pub mod ring;
pub mod sensor;
pub mod tracepoint_layout;

pub use net::*;
pub use process::*;
pub use sensor::*;
pub use tracepoint_layout::*;
