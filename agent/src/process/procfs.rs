//! Reading one process's facts from /proc. Every reader tolerates a process
//! that vanishes mid-read (an error, not a panic) and bounds what it reads.

use std::{
    fs::File,
    io::{self, Read},
};

/// Fields of /proc/<pid>/stat the model uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub ppid: u32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
    /// A kernel thread (PF_KTHREAD): no executable, no command line.
    pub kernel_thread: bool,
}

/// `task_struct.flags` bit of kernel threads.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Numeric entries of /proc: the thread-group ids of live processes.
pub fn list_pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        if let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Reads at most `max` bytes of a /proc file.
fn read_bounded(pid: u32, file: &str, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(format!("/proc/{pid}/{file}"))?
        .take(max as u64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

pub fn stat(pid: u32) -> io::Result<Stat> {
    let raw = read_bounded(pid, "stat", 4096)?;
    parse_stat(&String::from_utf8_lossy(&raw))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))
}

/// `pid (comm) state ppid …`; comm may itself hold spaces and parentheses,
/// so it ends at the last ')'.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, flags field 9,
    // starttime field 22.
    let flags: u64 = rest.get(6)?.parse().ok()?;
    Some(Stat {
        comm,
        ppid: rest.get(1)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
        kernel_thread: flags & PF_KTHREAD != 0,
    })
}

/// The command line, arguments joined by spaces, cut at `max` bytes.
pub fn cmdline(pid: u32, max: usize) -> io::Result<String> {
    let raw = read_bounded(pid, "cmdline", max)?;
    Ok(join_args(&raw))
}

pub fn join_args(raw: &[u8]) -> String {
    let trimmed = raw.strip_suffix(b"\0").unwrap_or(raw);
    let joined: Vec<u8> = trimmed
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    String::from_utf8_lossy(&joined).into_owned()
}

/// Path of the running executable. A deleted file keeps the kernel's
/// " (deleted)" suffix, which is the truth users want to see.
pub fn exe(pid: u32) -> io::Result<String> {
    let path = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    Ok(path.to_string_lossy().into_owned())
}

/// Every hierarchy's cgroup path from /proc/<pid>/cgroup.
pub fn cgroups(pid: u32) -> io::Result<Vec<Hierarchy>> {
    let raw = read_bounded(pid, "cgroup", 16 * 1024)?;
    Ok(parse_cgroups(&String::from_utf8_lossy(&raw)))
}

/// One line of /proc/<pid>/cgroup: `id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub id: u32,
    pub controllers: String,
    pub path: String,
}

pub fn parse_cgroups(text: &str) -> Vec<Hierarchy> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            Some(Hierarchy {
                id: parts.next()?.parse().ok()?,
                controllers: parts.next()?.to_owned(),
                path: parts.next()?.to_owned(),
            })
        })
        .collect()
}

/// The cgroup that names the process's place: the unified (v2) path; on a
/// hybrid host where that is the root, the systemd or memory v1 path.
pub fn primary_cgroup(hierarchies: &[Hierarchy]) -> Option<String> {
    let unified = hierarchies
        .iter()
        .find(|h| h.id == 0 && h.controllers.is_empty());
    if let Some(h) = unified.filter(|h| h.path != "/") {
        return Some(h.path.clone());
    }
    let v1 = |name: &str| {
        hierarchies
            .iter()
            .find(|h| h.controllers.split(',').any(|c| c == name) && h.path != "/")
    };
    v1("name=systemd")
        .or_else(|| v1("memory"))
        .or(unified)
        .or(hierarchies.first())
        .map(|h| h.path.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let text =
            "1234 (a) b (c)) S 77 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 5555 1000 10";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                comm: "a) b (c)".into(),
                ppid: 77,
                start_ticks: 5555,
                kernel_thread: false,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        let stat = stat(me).unwrap();
        assert!(stat.ppid > 0);
        assert!(!stat.kernel_thread);
        if let Ok(kthreadd) = self::stat(2) {
            assert!(kthreadd.kernel_thread, "{kthreadd:?}");
        }
        assert!(exe(me).unwrap().starts_with('/'));
        assert!(!cgroups(me).unwrap().is_empty());
        assert!(list_pids().unwrap().contains(&me));
    }

    #[test]
    fn args() {
        assert_eq!(join_args(b"sleep\x00100\x00"), "sleep 100");
        assert_eq!(join_args(b""), "");
    }

    #[test]
    fn cgroup_choice() {
        let hybrid = parse_cgroups("9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n");
        assert_eq!(primary_cgroup(&hybrid).as_deref(), Some("/process_api/abc"));
        let v2 = parse_cgroups("0::/system.slice/nginx.service\n");
        assert_eq!(
            primary_cgroup(&v2).as_deref(),
            Some("/system.slice/nginx.service")
        );
        let root = parse_cgroups("0::/\n");
        assert_eq!(primary_cgroup(&root).as_deref(), Some("/"));
        assert_eq!(primary_cgroup(&parse_cgroups("junk")), None);
    }
}
