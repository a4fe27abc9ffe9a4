//! `trace.include` / `trace.exclude` handed to the kernel: the processes
//! the rules leave out whatever their ports (by executable, cgroup or pod)
//! go into the sensor's map of excluded tgids, whose syscalls the kernel
//! then skips at entry. The tracer's own filter stays the authority; this
//! only spares the kernel and the agent the work. The kernel drops a tgid
//! by itself at fork and exec, so a new process or program under a known
//! pid is traced until decided again from the process table.

use std::sync::Arc;

use aya::maps::MapError;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{FastMap, FastSet, filter::TraceFilter};
use crate::{kernel::object::ExclusionMaps, process::Process, telemetry::metrics::ReasonLabel};

#[derive(Debug, thiserror::Error)]
pub enum KernelFilterError {
    #[error("the kernel's map of excluded processes is full")]
    Full,
    #[error("updating the kernel's map of excluded processes: {0}")]
    Map(#[from] MapError),
}

/// The kernel's set of excluded tgids (a trait so the bookkeeping is
/// tested without a kernel).
pub trait TgidMap: Send {
    fn insert(&mut self, tgid: u32) -> Result<(), KernelFilterError>;
    /// Removing a tgid that is not there is not an error.
    fn remove(&mut self, tgid: u32) -> Result<(), KernelFilterError>;
    /// Tells the kernel whether to look in the map at all: while it is
    /// empty, every followed call is spared the lookup.
    fn set_in_use(&mut self, in_use: bool) -> Result<(), KernelFilterError>;
}

impl TgidMap for ExclusionMaps {
    fn insert(&mut self, tgid: u32) -> Result<(), KernelFilterError> {
        self.tgids.insert(tgid, 1, 0).map_err(|err| match &err {
            MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                KernelFilterError::Full
            }
            _ => err.into(),
        })
    }

    fn remove(&mut self, tgid: u32) -> Result<(), KernelFilterError> {
        match self.tgids.remove(&tgid) {
            Ok(()) => Ok(()),
            Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }

    fn set_in_use(&mut self, in_use: bool) -> Result<(), KernelFilterError> {
        Ok(self.in_use.set(0, u32::from(in_use), 0)?)
    }
}

#[derive(Clone, Default)]
pub struct KernelFilterMetrics {
    /// Tgids in the kernel's map.
    pub processes: Gauge,
    /// Exclusions the kernel's map did not take, by reason: those
    /// processes are filtered in userspace only.
    pub refused: Family<ReasonLabel, Counter>,
}

impl KernelFilterMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "trace_kernel_excluded_processes",
            "Processes trace.include/exclude leave out whose syscalls the kernel skips",
            m.processes.clone(),
        );
        registry.register(
            "trace_kernel_exclusions_refused",
            "Excluded processes the kernel's map did not take (map_full, map_error); \
             they are filtered in userspace only",
            m.refused.clone(),
        );
        m
    }
}

/// Keeps the kernel's map equal to the processes the filter excludes.
pub struct KernelExclusions {
    map: Box<dyn TgidMap>,
    /// What the map holds, with the table entry each was decided on: an
    /// exec replaces the entry (and the kernel forgets the tgid), so a
    /// changed entry is decided and written again.
    present: FastMap<u32, Arc<Process>>,
    /// Refused once and counted: not counted again at every sync.
    refused: FastSet<u32>,
    /// What the kernel's in-use flag was last set to (`None`: unknown, set
    /// at the next sync). Set only after the inserts and cleared only after
    /// the removals, so the kernel never skips a tgid it should look up.
    in_use: Option<bool>,
    /// Never put in the map (the agent itself).
    own_pid: u32,
    metrics: KernelFilterMetrics,
}

impl KernelExclusions {
    pub fn new(map: Box<dyn TgidMap>, metrics: KernelFilterMetrics) -> Self {
        Self {
            map,
            present: FastMap::default(),
            refused: FastSet::default(),
            in_use: None,
            own_pid: std::process::id(),
            metrics,
        }
    }

    /// Whether the map holds no process.
    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    /// Whether the kernel skips `pid`'s syscalls.
    pub fn contains(&self, pid: u32) -> bool {
        self.present.contains_key(&pid)
    }

    /// Brings the map in line with `filter` over the live `processes`.
    pub fn sync(&mut self, processes: &[Arc<Process>], filter: &TraceFilter) {
        let wanted: FastMap<u32, &Arc<Process>> = processes
            .iter()
            .filter(|p| p.pid != 0 && p.pid != self.own_pid && filter.excludes_process(p))
            .map(|p| (p.pid, p))
            .collect();
        let gone: Vec<u32> = self
            .present
            .iter()
            .filter(|(pid, decided_on)| {
                wanted
                    .get(pid)
                    .is_none_or(|now| !Arc::ptr_eq(now, decided_on))
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            match self.map.remove(pid) {
                Ok(()) => {
                    self.present.remove(&pid);
                }
                // Kept as present, so the next sync tries again.
                Err(err) => {
                    tracing::warn!(pid, %err, "kernel trace filter: removal failed");
                    self.refuse(pid, "map_error");
                }
            }
        }
        self.refused.retain(|pid| wanted.contains_key(pid));
        for (pid, process) in wanted {
            if self.present.contains_key(&pid) {
                continue;
            }
            match self.map.insert(pid) {
                Ok(()) => {
                    self.present.insert(pid, process.clone());
                    self.refused.remove(&pid);
                }
                Err(KernelFilterError::Full) => self.refuse(pid, "map_full"),
                Err(err) => {
                    tracing::debug!(pid, %err, "kernel trace filter: insert failed");
                    self.refuse(pid, "map_error");
                }
            }
        }
        let in_use = !self.present.is_empty();
        if self.in_use != Some(in_use) {
            self.in_use = match self.map.set_in_use(in_use) {
                Ok(()) => Some(in_use),
                // Tried again at the next sync; until then the kernel
                // looks up too much or, with exclusions, none of them
                // (the tracer's own filter still applies).
                Err(err) => {
                    tracing::warn!(%err, in_use, "kernel trace filter: setting the in-use flag failed");
                    None
                }
            };
        }
        self.metrics.processes.set(self.present.len() as i64);
    }

    fn refuse(&mut self, pid: u32, reason: &'static str) {
        if self.refused.insert(pid) {
            self.metrics
                .refused
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::Selector;

    /// A map with a capacity, shared with the test to look inside.
    #[derive(Clone, Default)]
    struct FakeMap {
        tgids: Arc<Mutex<std::collections::BTreeSet<u32>>>,
        in_use: Arc<Mutex<bool>>,
        capacity: usize,
    }

    impl TgidMap for FakeMap {
        fn insert(&mut self, tgid: u32) -> Result<(), KernelFilterError> {
            let mut tgids = self.tgids.lock().unwrap();
            if !tgids.contains(&tgid) && tgids.len() >= self.capacity {
                return Err(KernelFilterError::Full);
            }
            tgids.insert(tgid);
            Ok(())
        }

        fn remove(&mut self, tgid: u32) -> Result<(), KernelFilterError> {
            self.tgids.lock().unwrap().remove(&tgid);
            Ok(())
        }

        fn set_in_use(&mut self, in_use: bool) -> Result<(), KernelFilterError> {
            *self.in_use.lock().unwrap() = in_use;
            Ok(())
        }
    }

    fn process(pid: u32, name: &str) -> Arc<Process> {
        Arc::new(Process {
            pid,
            ppid: 1,
            comm: name.into(),
            executable_path: Some(Arc::from(format!("/usr/bin/{name}"))),
            build_id: None,
            command_line: None,
            cgroup: Some(Arc::from("/user.slice")),
            container_id: None,
            start_time_unix_nano: 0,
        })
    }

    fn executable(glob: &str) -> Selector {
        Selector {
            executable: Some(glob.into()),
            ..Selector::default()
        }
    }

    fn in_map(map: &FakeMap) -> Vec<u32> {
        map.tgids.lock().unwrap().iter().copied().collect()
    }

    /// The kernel's verdict from a stream's first `n` bytes.
    fn verdict(stream: &[u8], n: usize) -> selfops_ebpf::HttpPrefix {
        let mut prefix = [0xff; selfops_ebpf::HTTP_SNIFF_BYTES];
        let n = n.min(prefix.len()).min(stream.len());
        prefix[..n].copy_from_slice(&stream[..n]);
        // Bytes past `n` (here 0xff) must not count.
        selfops_ebpf::classify_http_prefix(u64::from_le_bytes(prefix), n)
    }

    /// Messages the agent's parser finds in `stream` fed whole.
    fn parsed(role: super::super::http1::Role, stream: &[u8]) -> usize {
        let mut parser = super::super::http1::Http1Parser::new(role);
        let mut out = Vec::new();
        parser.feed(stream, stream.len() as u64, 1, &mut out);
        parser.finish(2, &mut out);
        out.len()
    }

    #[test]
    fn the_kernel_never_turns_away_what_the_parser_reads() {
        use super::super::http1::Role;
        use selfops_ebpf::HttpPrefix;
        let mut http: Vec<(Role, Vec<u8>)> = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ]
        .iter()
        .map(|m| {
            let target = if *m == "CONNECT" { "h:443" } else { "/x" };
            (
                Role::Request,
                format!("{m} {target} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes(),
            )
        })
        .collect();
        http.push((
            Role::Response,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ));
        http.push((Role::Response, b"HTTP/1.0 404 Not Found\r\n\r\n".to_vec()));
        for (role, stream) in &http {
            assert!(
                parsed(*role, stream) > 0,
                "{}",
                String::from_utf8_lossy(stream)
            );
            // However short the first reads, never "not HTTP".
            for n in 0..=selfops_ebpf::HTTP_SNIFF_BYTES {
                assert_ne!(
                    verdict(stream, n),
                    HttpPrefix::NotHttp,
                    "{n} bytes of {stream:?}"
                );
            }
            assert_eq!(verdict(stream, 8), HttpPrefix::Http);
        }
        let other: [&[u8]; 8] = [
            b"*1\r\n$4\r\nPING\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GETX / HTTP/1.1\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"220 mail.example ESMTP\r\n",
        ];
        for stream in other {
            assert_eq!(verdict(stream, 8), HttpPrefix::NotHttp, "{stream:?}");
            for role in [Role::Request, Role::Response] {
                assert_eq!(parsed(role, stream), 0, "{stream:?}");
            }
        }
        // Bytes that begin a start token wait for more.
        assert_eq!(verdict(b"G", 1), HttpPrefix::NeedMore);
        assert_eq!(verdict(b"HTTP/1", 6), HttpPrefix::NeedMore);
        assert_eq!(verdict(b"OPTIONS", 7), HttpPrefix::NeedMore);
    }

    #[test]
    fn follows_the_filter_and_exec() {
        let map = FakeMap {
            capacity: 16,
            ..FakeMap::default()
        };
        let metrics = KernelFilterMetrics::default();
        let mut k = KernelExclusions::new(Box::new(map.clone()), metrics.clone());
        let filter = TraceFilter::new(&[], &[executable("noisy")]).unwrap();
        let mut table = vec![process(10, "nginx"), process(11, "noisy")];
        let in_use = || *map.in_use.lock().unwrap();
        k.sync(&table[..1], &filter);
        assert!(!in_use(), "nothing excluded: the kernel skips the lookup");
        k.sync(&table, &filter);
        assert_eq!(in_map(&map), [11]);
        assert!(in_use());
        assert_eq!(metrics.processes.get(), 1);
        // The kernel forgets a tgid at exec; the table's new entry brings
        // the decision back, or not.
        map.tgids.lock().unwrap().remove(&11);
        table[1] = process(11, "noisy");
        k.sync(&table, &filter);
        assert_eq!(in_map(&map), [11], "exec'd into another excluded program");
        table[1] = process(11, "curl");
        k.sync(&table, &filter);
        assert!(in_map(&map).is_empty(), "exec'd into a traced program");
        table.push(process(12, "noisy"));
        k.sync(&table, &filter);
        table.pop();
        k.sync(&table, &filter);
        assert!(in_map(&map).is_empty(), "exited");
        assert!(!in_use());
        assert_eq!(metrics.processes.get(), 0);
    }

    #[test]
    fn port_rules_stay_in_userspace() {
        let map = FakeMap {
            capacity: 16,
            ..FakeMap::default()
        };
        let mut k = KernelExclusions::new(Box::new(map.clone()), KernelFilterMetrics::default());
        let port = Selector {
            port: Some(8080),
            ..Selector::default()
        };
        let table = vec![process(10, "nginx"), process(11, "curl")];
        // curl may still connect to 8080: not excluded by the include.
        let filter = TraceFilter::new(&[executable("nginx"), port.clone()], &[]).unwrap();
        k.sync(&table, &filter);
        assert!(in_map(&map).is_empty());
        // Without the port rule, only nginx is included.
        let filter = TraceFilter::new(&[executable("nginx")], &[port]).unwrap();
        k.sync(&table, &filter);
        assert_eq!(in_map(&map), [11]);
    }

    #[test]
    fn a_full_map_is_counted_once_per_process() {
        let map = FakeMap {
            capacity: 1,
            ..FakeMap::default()
        };
        let metrics = KernelFilterMetrics::default();
        let mut k = KernelExclusions::new(Box::new(map.clone()), metrics.clone());
        let filter = TraceFilter::new(&[], &[executable("noisy*")]).unwrap();
        let table = vec![process(10, "noisy1"), process(11, "noisy2")];
        k.sync(&table, &filter);
        k.sync(&table, &filter);
        assert_eq!(in_map(&map).len(), 1);
        let full = metrics
            .refused
            .get_or_create(&ReasonLabel { reason: "map_full" });
        assert_eq!(full.get(), 1);
        // The one inside exits: the refused one goes in.
        let inside = in_map(&map)[0];
        let rest: Vec<_> = table.iter().filter(|p| p.pid != inside).cloned().collect();
        k.sync(&rest, &filter);
        assert_eq!(in_map(&map), [rest[0].pid]);
        assert_eq!(full.get(), 1);
    }
}
