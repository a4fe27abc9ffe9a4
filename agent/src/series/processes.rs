//! CPU used by the processes of one executable, from /proc/<pid>/stat,
//! only for the executables playbooks name (reading every process each
//! tick would cost more than it tells).

use std::{collections::HashMap, time::Instant};

use crate::process::SharedTable;

/// utime + stime in clock ticks, from a /proc/<pid>/stat line. The command
/// name may hold spaces and parentheses, so fields count from the last ')'.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after) = stat.rsplit_once(')')?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

pub struct ProcessCpuReader {
    executable: String,
    /// Ticks per pid at the previous reading.
    last: HashMap<u32, u64>,
    last_at: Option<Instant>,
    ticks_per_second: f64,
}

impl ProcessCpuReader {
    pub fn new(executable: String) -> Self {
        Self {
            executable,
            last: HashMap::new(),
            last_at: None,
            ticks_per_second: clock_ticks_per_second(),
        }
    }

    /// Cores used since the previous call by live processes of the
    /// executable (a process that started in between counts from its
    /// first reading).
    pub fn read(&mut self, table: &SharedTable) -> Option<f64> {
        let pids: Vec<u32> = table
            .read()
            .snapshot()
            .iter()
            .filter(|p| p.executable_name() == self.executable)
            .map(|p| p.pid)
            .collect();
        let now = Instant::now();
        let mut current = HashMap::with_capacity(pids.len());
        let mut used = 0u64;
        for pid in pids {
            let Some(ticks) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_cpu_ticks(&s))
            else {
                continue;
            };
            if let Some(before) = self.last.get(&pid) {
                used += ticks.saturating_sub(*before);
            }
            current.insert(pid, ticks);
        }
        self.last = current;
        let last_at = self.last_at.replace(now)?;
        let seconds = now.duration_since(last_at).as_secs_f64();
        (seconds > 0.0).then(|| used as f64 / self.ticks_per_second / seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_count_from_the_last_parenthesis() {
        let stat = "42 (a (b) c) R 1 1 1 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("42 (x) R 1"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }
}
