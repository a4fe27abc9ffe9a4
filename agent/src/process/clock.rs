//! Kernel events carry CLOCK_BOOTTIME; signals carry Unix time.

/// Converts CLOCK_BOOTTIME nanoseconds to Unix nanoseconds with an offset
/// measured when made; its users measure again periodically, so a step of
/// the Unix clock (NTP, an operator) is followed.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    unix_minus_boot_ns: i128,
}

impl BootClock {
    pub fn measure() -> Self {
        let boot = now_ns(libc::CLOCK_BOOTTIME);
        let unix = now_ns(libc::CLOCK_REALTIME);
        Self {
            unix_minus_boot_ns: unix - boot,
        }
    }

    pub fn to_unix_ns(self, boot_ns: u64) -> u64 {
        u64::try_from(i128::from(boot_ns) + self.unix_minus_boot_ns).unwrap_or(0)
    }
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Clock ticks per second, for /proc/<pid>/stat start times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}
