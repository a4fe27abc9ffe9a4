//! The fleet server and simulated agents as separate processes, the way a
//! user runs them: `selfops fleet serve`, `selfops fleet simulate`, and
//! the server's JSON API.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use selfops_agent::{
    control::signed::SecretKey,
    fleet::api::{OfferRequest, OfferResponse, Summary},
};

use crate::{free_port, metric_value, selfops_bin};

/// A child process killed on drop, its stderr kept in a log file.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("process log");
        let child = command
            .stdout(file.try_clone().expect("process log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what} exited ({status}):\n{}", self.log());
        }
    }

    /// SIGTERM (or SIGINT), then up to 15 s before SIGKILL.
    fn stop(&mut self, signal: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `selfops fleet serve` on a loopback port of its own.
pub struct FleetServer {
    process: Process,
    pub port: u16,
}

impl FleetServer {
    /// Starts the server with `database` (a path or URL) and waits until its
    /// API answers.
    pub fn start(dir: &Path, database: &str, max_connections: usize) -> Self {
        let port = free_port();
        let mut command = Command::new(selfops_bin());
        command
            .args(["fleet", "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--database", database, "--max-connections"])
            .arg(max_connections.to_string())
            .env("RUST_LOG", "warn");
        let mut server = Self {
            process: Process::spawn(command, dir.join("fleet-server.log")),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.try_summary().is_none() {
            server.process.assert_running("selfops fleet serve");
            assert!(
                Instant::now() < deadline,
                "fleet server not answering:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The URL `selfops fleet rollout|status --server` takes.
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where agents connect over WebSocket.
    pub fn endpoint(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/opamp", self.port)
    }

    fn get(&self, path: &str) -> Option<String> {
        ureq::get(&format!("{}{path}", self.api()))
            .timeout(Duration::from_secs(30))
            .call()
            .ok()?
            .into_string()
            .ok()
    }

    fn try_summary(&self) -> Option<Summary> {
        serde_json::from_str(&self.get("/v1/summary")?).ok()
    }

    pub fn summary(&self) -> Summary {
        self.try_summary()
            .unwrap_or_else(|| panic!("GET /v1/summary failed:\n{}", self.log()))
    }

    /// The whole inventory, as `GET /v1/agents` gives it.
    pub fn agents(&self) -> Vec<serde_json::Value> {
        let body = self
            .get("/v1/agents")
            .unwrap_or_else(|| panic!("GET /v1/agents failed:\n{}", self.log()));
        serde_json::from_str(&body).expect("inventory JSON")
    }

    /// The current (or last) rollout, as `GET /v1/rollout` gives it.
    pub fn rollout(&self) -> serde_json::Value {
        let body = self
            .get("/v1/rollout")
            .unwrap_or_else(|| panic!("GET /v1/rollout failed:\n{}", self.log()));
        serde_json::from_str(&body).expect("rollout JSON")
    }

    /// Sum of a metric's samples at the server's /metrics whose line
    /// contains every `filters` text.
    pub fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        let text = self
            .get("/metrics")
            .unwrap_or_else(|| panic!("GET /metrics failed:\n{}", self.log()));
        metric_value(&text, name, filters)
    }

    /// Offers `yaml` (signed by `key`) to the agents matching `select`.
    pub fn offer(
        &self,
        yaml: &str,
        key: &SecretKey,
        select: BTreeMap<String, String>,
    ) -> OfferResponse {
        let request = OfferRequest {
            yaml: yaml.to_owned(),
            signature: Some(key.sign(yaml.as_bytes())),
            select,
            uids: vec![],
            step: None,
        };
        let body = ureq::post(&format!("{}/v1/config", self.api()))
            .timeout(Duration::from_secs(60))
            .set("content-type", "application/json")
            .send_string(&serde_json::to_string(&request).expect("offer JSON"))
            .unwrap_or_else(|e| panic!("POST /v1/config: {e}\n{}", self.log()))
            .into_string()
            .expect("offer answer");
        serde_json::from_str(&body).expect("offer answer JSON")
    }

    /// Polls the summary every `every` until `done` holds for it, or panics
    /// after `within`.
    pub fn wait_summary(
        &mut self,
        what: &str,
        within: Duration,
        every: Duration,
        done: impl Fn(&Summary) -> bool,
    ) -> Summary {
        let deadline = Instant::now() + within;
        loop {
            self.process.assert_running("selfops fleet serve");
            let summary = self.summary();
            if done(&summary) {
                return summary;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last summary {summary:?}"
            );
            std::thread::sleep(every);
        }
    }

    pub fn stop(mut self) {
        self.process.stop(libc::SIGINT);
    }
}

/// Agents with `hash` in `status`, from a summary.
pub fn count(summary: &Summary, hash: &str, status: &str) -> usize {
    summary
        .configs
        .iter()
        .filter(|c| c.hash == hash && c.status == status)
        .map(|c| c.agents)
        .sum()
}

/// A key pair for signing configs: the secret, and the `.pub` file the
/// simulated agents trust.
pub fn keygen(dir: &Path) -> (SecretKey, PathBuf) {
    let key = SecretKey::generate();
    let public = dir.join("fleet.pub");
    std::fs::write(&public, key.public().to_base64()).expect("write fleet.pub");
    let secret = dir.join("fleet.key");
    std::fs::write(&secret, key.to_base64()).expect("write fleet.key");
    (key, public)
}

/// `selfops fleet simulate`.
pub struct Simulator {
    process: Process,
}

pub struct SimulatorOptions<'a> {
    pub endpoint: &'a str,
    pub agents: usize,
    pub trusted_key: &'a Path,
    pub labels: &'a str,
    pub health_window: &'a str,
    pub data_dir: &'a Path,
}

impl Simulator {
    pub fn start(options: &SimulatorOptions<'_>, log: PathBuf) -> Self {
        let mut command = Command::new(selfops_bin());
        command
            .args([
                "fleet",
                "simulate",
                "--server",
                options.endpoint,
                "--agents",
            ])
            .arg(options.agents.to_string())
            .arg("--trusted-key")
            .arg(options.trusted_key)
            .args(["--labels", options.labels])
            .args(["--health-window", options.health_window])
            .arg("--data-dir")
            .arg(options.data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        Self {
            process: Process::spawn(command, log),
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn assert_running(&mut self) {
        self.process.assert_running("selfops fleet simulate");
    }

    /// SIGTERM: every agent says goodbye.
    pub fn stop(mut self) {
        self.process.stop(libc::SIGTERM);
    }
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// A directory on tmpfs (/dev/shm) when there is one: many simulated
/// agents each sync small files to their data directory, which on one
/// disk would serialise what a real fleet does on as many disks.
pub fn tmpfs_dir(name: &str) -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("selfops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
