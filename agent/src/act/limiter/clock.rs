//! The clock the kernel programs judge deadlines by: CLOCK_BOOTTIME, which
//! `bpf_ktime_get_boot_ns` reads and which keeps counting through suspend.

use std::time::Duration;

/// Nanoseconds since boot, as the programs see them.
pub fn boot_ns() -> u64 {
    // SAFETY: zeroed timespec is a valid out-parameter.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // CLOCK_BOOTTIME exists on every kernel the limiter loads on; a
        // failure would make every deadline look past, which fails safe.
        return u64::MAX;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The deadline `ttl` from now, or `None` when it does not fit in u64
/// nanoseconds.
pub fn deadline_after(ttl: Duration) -> Option<u64> {
    let ttl = u64::try_from(ttl.as_nanos()).ok()?;
    boot_ns().checked_add(ttl)
}

/// Time left until `deadline_ns`, `None` when it has passed.
pub fn remaining(deadline_ns: u64, now_ns: u64) -> Option<Duration> {
    deadline_ns
        .checked_sub(now_ns)
        .filter(|left| *left > 0)
        .map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_checked() {
        let now = boot_ns();
        assert!(now > 0 && now < u64::MAX);
        let d = deadline_after(Duration::from_secs(5)).expect("fits");
        assert!(d >= now + 5_000_000_000);
        assert_eq!(deadline_after(Duration::MAX), None);
        assert_eq!(remaining(10, 4), Some(Duration::from_nanos(6)));
        assert_eq!(remaining(10, 10), None);
        assert_eq!(remaining(10, 11), None);
    }
}
