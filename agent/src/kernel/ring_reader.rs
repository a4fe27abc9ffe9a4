//! Reading a kernel ring buffer from tokio: wait for readiness on the map's
//! fd, then drain a bounded batch of records.

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};

pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl RingReader {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring owns its map's fd (an OwnedFd inside MapData)
        // for its whole life and never swaps it, as registration requires.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// Waits until the kernel has committed records. Must run inside a
    /// tokio runtime, as must [`RingReader::new`].
    pub async fn ready(&mut self) -> std::io::Result<Ready<'_>> {
        Ok(Ready {
            guard: self.fd.readable_mut().await?,
        })
    }
}

impl RingReader {
    /// Hands up to `max` records already in the ring to `on_record`, without
    /// waiting: for sensors that wake the agent only when the ring fills and
    /// are otherwise drained on a timer.
    pub fn drain_pending(&mut self, max: usize, mut on_record: impl FnMut(&[u8])) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while n < max {
            let Some(record) = ring.next() else { break };
            on_record(&record);
            n += 1;
        }
        n
    }
}

pub struct Ready<'a> {
    guard: AsyncFdReadyMutGuard<'a, RingBuf<MapData>>,
}

impl Ready<'_> {
    /// Hands up to `max` records to `on_record`. Readiness is cleared only
    /// once the ring is empty, so a longer backlog is resumed at once.
    pub fn drain(mut self, max: usize, mut on_record: impl FnMut(&[u8])) -> usize {
        let ring = self.guard.get_inner_mut();
        let mut n = 0;
        while n < max {
            let Some(record) = ring.next() else {
                self.guard.clear_ready();
                return n;
            };
            on_record(&record);
            n += 1;
        }
        n
    }
}
