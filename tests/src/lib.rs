//! Support for the privileged end-to-end tests: start the real `selfops`
//! binary, talk to its telemetry endpoint, and stop it as a user would.
//!
//! These tests load the real eBPF object into the running kernel. Without
//! root they skip, saying why — except under `CI=true`, where they fail.

pub mod audit;
pub mod fleet;
pub mod kube_api;
pub mod netns;
pub mod onnx;
pub mod python;
pub mod services;
pub mod spans;
pub mod traffic;
pub mod xdp;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// One agent per host (the agent enforces it), so tests in one binary take
/// turns.
static ONE_AGENT: Mutex<()> = Mutex::new(());

pub fn one_agent_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AGENT.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The agent under test: `SELFOPS_BIN`, else the release build.
pub fn selfops_bin() -> PathBuf {
    let path = std::env::var_os("SELFOPS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("release/selfops")
        });
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --release` (or `cargo xtask test`)",
        path.display()
    );
    path
}

pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// True when the test can load eBPF programs. Otherwise: under CI a panic,
/// elsewhere a message and `false` (the test returns early).
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = format!("{test}: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to load eBPF");
    if in_ci() {
        panic!("{why}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("SKIP {why}");
    false
}

/// Runs a program to completion and returns its stdout, or None if it
/// could not start or failed.
pub fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A unique scratch directory under the system temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("selfops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A running `selfops run`, stopped (SIGKILL) on drop if the test did not
/// stop it.
pub struct Agent {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
}

impl Agent {
    /// Starts the agent with `extra` YAML appended to a config that sets a
    /// private data directory and telemetry port; waits until it serves.
    pub fn start(name: &str, extra: &str) -> Self {
        Self::start_command(name, extra, |config| {
            let mut command = Command::new(selfops_bin());
            command.args(["run", "--config"]).arg(config);
            command
        })
    }

    /// `start` with the command line `command` builds from the config path
    /// (another binary, such as the tests' `selfops-fault`).
    pub fn start_command(name: &str, extra: &str, command: impl FnOnce(&Path) -> Command) -> Self {
        let mut agent = Self::spawn_command(name, extra, command);
        agent.wait_ready(Duration::from_secs(30));
        agent
    }

    /// Starts `selfops run` and returns at once, without waiting for it to
    /// serve.
    pub fn spawn(name: &str, extra: &str) -> Self {
        Self::spawn_command(name, extra, |config| {
            let mut command = Command::new(selfops_bin());
            command.args(["run", "--config"]).arg(config);
            command
        })
    }

    fn spawn_command(name: &str, extra: &str, command: impl FnOnce(&Path) -> Command) -> Self {
        let dir = scratch_dir(name);
        let port = free_port();
        let config = dir.join("selfops.yaml");
        std::fs::write(
            &config,
            format!(
                "data_dir: {}\ntelemetry:\n  listen: 127.0.0.1:{port}\n{receivers}{extra}",
                dir.join("data").display(),
                // The OTLP receiver runs as by default, on ports of its
                // own, so agents side by side never contend for 4317/4318.
                receivers = if extra.contains("receivers:") {
                    ""
                } else {
                    "receivers:\n  otlp:\n    grpc: { endpoint: '127.0.0.1:0' }\n    http: { endpoint: '127.0.0.1:0' }\n"
                },
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
        let child = command(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn selfops");
        Self {
            child: Some(child),
            port,
            dir,
        }
    }

    /// Starts `selfops run` again on the config and data directory of an
    /// agent that has stopped (its log continues); waits until it serves.
    pub fn start_again(dir: &Path, port: u16) -> Self {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("agent.log"))
            .expect("agent log");
        let child = Command::new(selfops_bin())
            .args(["run", "--config"])
            .arg(dir.join("selfops.yaml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn selfops");
        let mut agent = Self {
            child: Some(child),
            port,
            dir: dir.to_path_buf(),
        };
        agent.wait_ready(Duration::from_secs(30));
        agent
    }

    /// The exit status once the agent has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// A GET that also returns the status code: `None` when nothing answers.
    pub fn status_of(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        match ureq::get(&url).timeout(Duration::from_secs(5)).call() {
            Ok(response) => Some((
                response.status(),
                response.into_string().unwrap_or_default(),
            )),
            Err(ureq::Error::Status(code, response)) => {
                Some((code, response.into_string().unwrap_or_default()))
            }
            Err(_) => None,
        }
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.try_get("/metrics").is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("agent exited during start-up ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < timeout,
                "agent not serving after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("agent running")
    }

    pub fn try_get(&self, path: &str) -> Result<String, Box<ureq::Error>> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let response = ureq::get(&url)
            .timeout(Duration::from_secs(5))
            .call()
            .map_err(Box::new)?;
        Ok(response.into_string().unwrap_or_default())
    }

    pub fn get(&self, path: &str) -> String {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }

    pub fn processes(&self) -> Vec<serde_json::Value> {
        let body = self.get("/processes");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/processes is not JSON: {e}"))
    }

    pub fn process(&self, pid: u32) -> Option<serde_json::Value> {
        self.processes()
            .into_iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
    }

    /// Sum of a metric's samples whose line contains every `filters` text.
    pub fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        metric_value(&self.get("/metrics"), name, filters)
    }

    /// Sends `signal`, waits for the exit; returns the status and how long
    /// the agent took.
    pub fn stop(mut self, signal: i32) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("agent running");
        let start = Instant::now();
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = start + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status, start.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent ignored signal {signal} for 10 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sums the samples of `name` (Prometheus/OpenMetrics text) whose line
/// contains every filter.
pub fn metric_value(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Names of the BPF programs loaded in the kernel now (bpftool).
pub fn loaded_program_names() -> Vec<String> {
    bpftool_json(&["prog", "show"])
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// Whether any of the limiter's programs is loaded (by the agent, or left
/// pinned behind).
pub fn limiter_loaded() -> bool {
    loaded_program_names()
        .iter()
        .any(|p| p.starts_with("limiter"))
}

/// `bpftool -j ARGS` as a list of objects.
pub fn bpftool_json(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    assert!(out.status.success(), "bpftool {args:?} failed");
    match serde_json::from_slice(&out.stdout).expect("bpftool JSON") {
        serde_json::Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
