//! The live process table: bounded, with a short memory of exited
//! processes so signals that arrive just after an exit still find their
//! resource.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

use serde::Serialize;

/// What the agent knows of one process.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub executable_path: Option<Arc<str>>,
    /// GNU build-id of the executable, lowercase hex.
    pub build_id: Option<Arc<str>>,
    pub command_line: Option<Arc<str>>,
    pub cgroup: Option<Arc<str>>,
    pub container_id: Option<Arc<str>>,
    pub start_time_unix_nano: u64,
}

impl Process {
    /// The executable's file name, or the comm when the path is unknown.
    pub fn executable_name(&self) -> &str {
        self.executable_path
            .as_deref()
            .map(|p| p.strip_suffix(" (deleted)").unwrap_or(p))
            .and_then(|p| p.rsplit('/').next())
            .filter(|name| !name.is_empty())
            .unwrap_or(&self.comm)
    }
}

struct Entry {
    process: Arc<Process>,
    /// Insertion sequence number, so a /proc scan only removes entries it
    /// could have seen.
    seq: u64,
}

/// Outcome of [`ProcessTable::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Replaced,
    /// The table is full; the process is not stored.
    Rejected,
}

pub struct ProcessTable {
    live: HashMap<u32, Entry>,
    exited: VecDeque<(Instant, Arc<Process>)>,
    max: usize,
    retention: Duration,
    seq: u64,
}

impl ProcessTable {
    pub fn new(max: usize, retention: Duration) -> Self {
        Self {
            live: HashMap::new(),
            exited: VecDeque::new(),
            max,
            retention,
            seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn exited_len(&self) -> usize {
        self.exited.len()
    }

    /// Sequence number of the latest insertion.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    pub fn insert(&mut self, process: Process) -> Inserted {
        let pid = process.pid;
        let replaced = self.live.contains_key(&pid);
        if !replaced && self.live.len() >= self.max {
            return Inserted::Rejected;
        }
        self.seq += 1;
        self.live.insert(
            pid,
            Entry {
                process: Arc::new(process),
                seq: self.seq,
            },
        );
        if replaced {
            Inserted::Replaced
        } else {
            Inserted::New
        }
    }

    /// Moves `pid` to the exited list; it stays resolvable for the retention.
    pub fn remove(&mut self, pid: u32, now: Instant) -> Option<Arc<Process>> {
        let entry = self.live.remove(&pid)?;
        if self.exited.len() >= self.max {
            self.exited.pop_front();
        }
        self.exited.push_back((now, entry.process.clone()));
        Some(entry.process)
    }

    /// A live process, else one that exited within the retention.
    pub fn get(&self, pid: u32) -> Option<Arc<Process>> {
        self.live.get(&pid).map(|e| e.process.clone()).or_else(|| {
            self.exited
                .iter()
                .rev()
                .find(|(_, p)| p.pid == pid)
                .map(|(_, p)| p.clone())
        })
    }

    pub fn contains_live(&self, pid: u32) -> bool {
        self.live.contains_key(&pid)
    }

    /// Forgets exited processes older than the retention.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.exited.front() {
            if now.duration_since(*at) < self.retention {
                break;
            }
            self.exited.pop_front();
        }
    }

    /// Removes live entries inserted before `scan_seq` whose pid is not in
    /// `present` (their exit event was lost). Returns the pids removed.
    pub fn remove_absent(
        &mut self,
        present: &HashSet<u32>,
        scan_seq: u64,
        now: Instant,
    ) -> Vec<u32> {
        let gone: Vec<u32> = self
            .live
            .iter()
            .filter(|(pid, e)| e.seq <= scan_seq && !present.contains(pid))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in &gone {
            self.remove(*pid, now);
        }
        gone
    }

    /// Live processes, ordered by pid.
    pub fn snapshot(&self) -> Vec<Arc<Process>> {
        let mut all: Vec<_> = self.live.values().map(|e| e.process.clone()).collect();
        all.sort_by_key(|p| p.pid);
        all
    }
}

/// The table shared by the sensor task (writer) and readers such as the
/// telemetry endpoint. Writers hold the lock only to swap entries in.
#[derive(Clone)]
pub struct SharedTable(Arc<RwLock<ProcessTable>>);

impl SharedTable {
    pub fn new(table: ProcessTable) -> Self {
        Self(Arc::new(RwLock::new(table)))
    }

    // A panic while holding the lock cannot leave the table half-updated
    // (each method is one map operation), so a poisoned lock is still usable.
    pub fn read(&self) -> RwLockReadGuard<'_, ProcessTable> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, ProcessTable> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32) -> Process {
        Process {
            pid,
            ppid: 1,
            comm: format!("p{pid}"),
            executable_path: Some(Arc::from(format!("/usr/bin/p{pid}"))),
            build_id: None,
            command_line: None,
            cgroup: None,
            container_id: None,
            start_time_unix_nano: 0,
        }
    }

    #[test]
    fn bounded_and_replacing() {
        let mut table = ProcessTable::new(2, Duration::from_secs(1));
        assert_eq!(table.insert(process(1)), Inserted::New);
        assert_eq!(table.insert(process(2)), Inserted::New);
        assert_eq!(table.insert(process(3)), Inserted::Rejected);
        assert_eq!(table.insert(process(2)), Inserted::Replaced);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn exited_stay_resolvable_for_retention() {
        let mut table = ProcessTable::new(8, Duration::from_secs(5));
        let t0 = Instant::now();
        table.insert(process(7));
        assert!(table.remove(7, t0).is_some());
        assert!(!table.contains_live(7));
        assert_eq!(table.get(7).map(|p| p.pid), Some(7));
        table.expire(t0 + Duration::from_secs(6));
        assert!(table.get(7).is_none());
        assert_eq!(table.exited_len(), 0);
    }

    #[test]
    fn scan_removes_only_what_it_could_see() {
        let mut table = ProcessTable::new(8, Duration::from_secs(5));
        table.insert(process(1));
        table.insert(process(2));
        let scan_seq = table.last_seq();
        table.insert(process(3)); // arrived after the scan listed /proc
        let present: HashSet<u32> = [1].into();
        let mut gone = table.remove_absent(&present, scan_seq, Instant::now());
        gone.sort();
        assert_eq!(gone, vec![2]);
        assert!(table.contains_live(3));
    }

    #[test]
    fn executable_name() {
        let mut p = process(1);
        assert_eq!(p.executable_name(), "p1");
        p.executable_path = Some(Arc::from("/tmp/x (deleted)"));
        assert_eq!(p.executable_name(), "x");
        p.executable_path = None;
        p.comm = "kworker/0:1".into();
        assert_eq!(p.executable_name(), "kworker/0:1");
    }
}
