//! Types shared by the kernel programs and the userspace agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, so its layout
//! is the same on both sides and no uninitialised byte crosses the ring buffer.
#![no_std]

pub mod limiter;
pub mod net;
pub mod process;
pub mod profile;
pub mod sensor;
pub mod tracepoint_layout;

pub use net::*;
pub use process::*;
pub use sensor::*;
pub use tracepoint_layout::*;
