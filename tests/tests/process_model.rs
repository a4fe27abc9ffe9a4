//! The process model against real processes: a process started before the
//! agent is seeded from /proc; one started after is seen through the exec
//! sensor with its executable path, GNU build-id (checked with readelf),
//! cgroup and container id (from a cgroup the test creates), and leaves the
//! table when killed. Then SIGTERM detaches everything within 2 s.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use selfops_tests::{Agent, loaded_program_names, one_agent_at_a_time, privileged, wait_for};

const PROCESS_PROGRAMS: [&str; 3] = ["process_exec", "process_fork", "process_exit"];

/// The GNU build-id of `path` as readelf (binutils) prints it.
fn readelf_build_id(path: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .expect("readelf");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
        .expect("the test binary has a build-id")
}

/// Mount point of the unified (v2) cgroup hierarchy.
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("a cgroup2 hierarchy is mounted")
}

/// A cgroup named like a Docker container's scope; removed on drop.
struct ContainerCgroup {
    dir: PathBuf,
    id: String,
}

impl ContainerCgroup {
    fn create() -> Self {
        let id = format!("{:0>64x}", 0x05e1_f0b5_u64 * u64::from(std::process::id()));
        let dir = cgroup2_mount().join(format!("docker-{id}.scope"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { dir, id }
    }

    fn path(&self) -> String {
        format!("/{}", self.dir.file_name().unwrap().to_string_lossy())
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Copies /bin/sleep under a name no other process has.
fn sleeper(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy("/bin/sleep", &path).expect("copy /bin/sleep");
    path
}

fn kill(mut child: Child) {
    child.kill().expect("kill");
    child.wait().expect("wait");
}

#[test]
fn processes_are_tracked_from_exec_to_exit() {
    if !privileged("processes_are_tracked_from_exec_to_exit") {
        return;
    }
    let _turn = one_agent_at_a_time();
    let bin_dir = selfops_tests::scratch_dir("process-model-bin");
    let old = sleeper(&bin_dir, "selfops-old-sleeper");
    let old_child = Command::new(&old).arg("300").spawn().expect("old sleeper");

    let agent = Agent::start("process-model", "");

    // Seeded from /proc: started before the agent.
    let seeded = agent
        .process(old_child.id())
        .unwrap_or_else(|| panic!("pre-existing process {} not seeded", old_child.id()));
    assert_eq!(seeded["executable_path"], old.to_str().unwrap());
    assert_eq!(seeded["build_id"], readelf_build_id(&old));

    // Seen through the exec sensor: started after, in a container cgroup.
    let cgroup = ContainerCgroup::create();
    let new = sleeper(&bin_dir, "selfops-new-sleeper");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} 300",
        cgroup.dir.display(),
        new.display()
    );
    let child = Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .expect("spawn sleeper");
    let pid = child.id();
    let seen = wait_for(Duration::from_secs(5), || {
        agent
            .process(pid)
            .filter(|p| p["executable_path"] == new.to_str().unwrap())
    })
    .unwrap_or_else(|| {
        panic!(
            "pid {pid} never appeared with its new executable; table entry: {:?}\n{}",
            agent.process(pid),
            agent.log()
        )
    });
    assert_eq!(seen["build_id"], readelf_build_id(&new), "{seen:#}");
    assert_eq!(seen["cgroup"], cgroup.path().as_str(), "{seen:#}");
    assert_eq!(seen["container_id"], cgroup.id.as_str(), "{seen:#}");
    assert_eq!(seen["ppid"], std::process::id(), "{seen:#}");
    assert_eq!(
        seen["command_line"],
        format!("{} 300", new.display()).as_str(),
        "{seen:#}"
    );
    let resource = &seen["resource"];
    assert_eq!(resource["service.name"], "selfops-new-sleeper");
    assert_eq!(resource["process.executable.name"], "selfops-new-sleeper");
    assert_eq!(resource["process.pid"], pid);
    assert_eq!(resource["container.id"], cgroup.id.as_str());
    assert_eq!(resource["os.type"], "linux");

    // Killed: it leaves the live table.
    kill(child);
    let gone = wait_for(Duration::from_secs(5), || {
        agent.process(pid).is_none().then_some(())
    });
    assert!(gone.is_some(), "pid {pid} still in /processes after exit");
    assert!(agent.metric("selfops_sensor_events_received_total", &["process_exit"]) >= 1.0);
    kill(old_child);

    // SIGTERM: exit 0 within 2 s, nothing left attached.
    assert!(
        PROCESS_PROGRAMS
            .iter()
            .all(|p| loaded_program_names().iter().any(|n| n == p))
    );
    let log_dir = agent.dir.clone();
    let (status, took) = agent.stop(libc::SIGTERM);
    let log = std::fs::read_to_string(log_dir.join("agent.log")).unwrap_or_default();
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(took < Duration::from_secs(2), "took {took:?} to stop");
    let left: Vec<String> = loaded_program_names()
        .into_iter()
        .filter(|n| PROCESS_PROGRAMS.contains(&n.as_str()))
        .collect();
    assert!(
        left.is_empty(),
        "programs still loaded after stop: {left:?}"
    );
    let _ = std::fs::remove_dir_all(&bin_dir);
}
