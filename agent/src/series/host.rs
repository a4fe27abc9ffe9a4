//! Host CPU, memory and PSI pressure from procfs. Counters are cumulative
//! in the kernel; each reader keeps the previous reading and reports the
//! share over the interval between two samples.

use std::time::Instant;

/// Busy and total jiffies of all CPUs, from the first line of /proc/stat.
fn parse_cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already counted in user, so only the first eight add up.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// 1 − MemAvailable/MemTotal from /proc/meminfo.
fn parse_memory_utilization(meminfo: &str) -> Option<f64> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0.0).then(|| (1.0 - available / total).clamp(0.0, 1.0))
}

/// The cumulative "some" stall time in microseconds from a PSI file.
fn parse_pressure_total(psi: &str) -> Option<u64> {
    psi.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

#[derive(Default)]
pub struct CpuReader {
    last: Option<(u64, u64)>,
}

impl CpuReader {
    /// Busy share since the previous call; `None` on the first call or when
    /// /proc/stat is unreadable.
    pub fn read(&mut self) -> Option<f64> {
        let now = parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let last = self.last.replace(now)?;
        let total = now.1.checked_sub(last.1).filter(|t| *t > 0)?;
        Some((now.0.saturating_sub(last.0) as f64 / total as f64).clamp(0.0, 1.0))
    }
}

pub fn memory_utilization() -> Option<f64> {
    parse_memory_utilization(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// One PSI resource. Kernels without PSI (or booted with psi=0) have no
/// file: the series is then absent, not zero.
pub struct PressureReader {
    path: &'static str,
    last: Option<(u64, Instant)>,
}

impl PressureReader {
    pub fn new(path: &'static str) -> Self {
        Self { path, last: None }
    }

    /// Share of wall time some task stalled since the previous call.
    pub fn read(&mut self) -> Option<f64> {
        let total = parse_pressure_total(&std::fs::read_to_string(self.path).ok()?)?;
        let now = Instant::now();
        let (last_total, last_at) = self.last.replace((total, now))?;
        let wall = now.duration_since(last_at).as_micros() as f64;
        (wall > 0.0).then(|| (total.saturating_sub(last_total) as f64 / wall).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_leave_out_idle_iowait_and_guest() {
        let stat = "cpu  100 0 50 800 50 0 0 0 30 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_cpu_times(stat), Some((150, 1000)));
        assert_eq!(parse_cpu_times("cpu  x y"), None);
        assert_eq!(parse_cpu_times(""), None);
    }

    #[test]
    fn memory_and_pressure_parse() {
        let meminfo = "MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_memory_utilization(meminfo), Some(0.75));
        assert_eq!(
            parse_memory_utilization("MemTotal: 0 kB\nMemAvailable: 0 kB"),
            None
        );
        let psi = "some avg10=1.00 avg60=0.50 avg300=0.10 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n";
        assert_eq!(parse_pressure_total(psi), Some(123456));
        assert_eq!(parse_pressure_total("full total=1"), None);
    }

    #[test]
    fn live_readers_give_shares_from_the_second_reading() {
        let mut cpu = CpuReader::default();
        assert_eq!(cpu.read(), None);
        std::thread::sleep(std::time::Duration::from_millis(30));
        if let Some(share) = cpu.read() {
            assert!((0.0..=1.0).contains(&share));
        }
        assert!(memory_utilization().is_some_and(|m| (0.0..=1.0).contains(&m)));
    }
}
