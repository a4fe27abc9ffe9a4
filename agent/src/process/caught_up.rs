//! How far the process model has read its ring. The socket and process
//! sensors write to different rings, so a span's events can be read before
//! the exec of the process that made them; a span waits until the table
//! holds every process event from before its first byte.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How often the process ring is read when it did not wake its reader,
/// and the socket ring likewise: see [`CaughtUp::ticks`].
pub const TICK: Duration = Duration::from_millis(10);

/// Boot time (CLOCK_BOOTTIME ns) before which every process event is in
/// the table.
#[derive(Debug, Clone)]
pub struct CaughtUp {
    reached: Arc<AtomicU64>,
    /// Where the tick grid of the process model and the tracer begins.
    epoch: Instant,
}

impl CaughtUp {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self::at(0)
    }

    /// For a tracer without a process model to wait for.
    pub fn always() -> Self {
        Self::at(u64::MAX)
    }

    fn at(boot_ns: u64) -> Self {
        Self {
            reached: Arc::new(AtomicU64::new(boot_ns)),
            epoch: Instant::now(),
        }
    }

    pub fn get(&self) -> u64 {
        self.reached.load(Ordering::Acquire)
    }

    /// The ring was found empty after a drain that began at `boot_ns`.
    pub fn reached(&self, boot_ns: u64) {
        self.reached.fetch_max(boot_ns, Ordering::AcqRel);
    }

    /// Ticks every [`TICK`], `lag` after the points of a grid every clone
    /// shares. The process model reads its ring on the grid and the tracer
    /// drains the socket ring `lag` later: the spans of a drain then find
    /// the table caught up with all but their last `lag`, instead of up to
    /// a whole tick behind (two unrelated intervals made nearly every span
    /// wait for the table). Missed ticks are skipped, keeping the grid.
    pub fn ticks(&self, lag: Duration) -> Interval {
        let now = Instant::now();
        let tick_ns = TICK.as_nanos().max(1);
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        let next = u64::try_from((since / tick_ns + 1) * tick_ns).unwrap_or(0);
        let start = self.epoch + Duration::from_nanos(next) + lag;
        let mut ticks = tokio::time::interval_at(start, TICK);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        ticks
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
