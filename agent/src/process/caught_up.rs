//! How far the process model has read its ring. The socket and process
//! sensors write to different rings, so a span's events can be read before
//! the exec of the process that made them; a span waits until the table
//! holds every process event from before its first byte.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// Boot time (CLOCK_BOOTTIME ns) before which every process event is in
/// the table.
#[derive(Debug, Clone)]
pub struct CaughtUp(Arc<AtomicU64>);

impl CaughtUp {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self(Arc::new(AtomicU64::new(0)))
    }

    /// For a tracer without a process model to wait for.
    pub fn always() -> Self {
        Self(Arc::new(AtomicU64::new(u64::MAX)))
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// The ring was found empty after a drain that began at `boot_ns`.
    pub fn reached(&self, boot_ns: u64) {
        self.0.fetch_max(boot_ns, Ordering::AcqRel);
    }
}

impl Default for CaughtUp {
    fn default() -> Self {
        Self::new()
    }
}

/// CLOCK_BOOTTIME now, the clock of the kernel's event timestamps.
pub fn boot_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}
