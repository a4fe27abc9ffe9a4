//! A throwaway PostgreSQL cluster for tests: Debian's `postgresql` (initdb,
//! pg_ctl) run as the `postgres` user in a temporary directory, on a free
//! loopback port and a unix socket directory of its own, stopped and
//! removed on drop. Where it cannot run (no PostgreSQL, not root) a test
//! is skipped with the reason, except under CI=true, where it fails.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

/// The newest installed server's binaries.
fn binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `program args…` as the postgres user; `Err` with what it said.
fn as_postgres(program: &Path, args: &[&str], log: Option<&Path>) -> Result<(), String> {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    // pg_ctl leaves the server running: it must not hold our pipes.
    let output = if log.is_some() {
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command.status().map(|status| (status, String::new()))
    } else {
        command
            .output()
            .map(|o| (o.status, String::from_utf8_lossy(&o.stderr).into_owned()))
    };
    match output {
        Ok((status, _)) if status.success() => Ok(()),
        Ok((status, stderr)) => {
            let logged = log
                .and_then(|log| std::fs::read_to_string(log).ok())
                .unwrap_or_default();
            Err(format!("{} {status}: {stderr}{logged}", program.display()))
        }
        Err(err) => Err(format!("runuser: {err}")),
    }
}

/// Why PostgreSQL cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if binaries().is_none() {
        return Some("PostgreSQL is not installed (Debian's postgresql)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("starting PostgreSQL as the postgres user needs root".into());
    }
    let user = Command::new("id").args(["-u", "postgres"]).output();
    if !user.is_ok_and(|o| o.status.success()) {
        return Some("no postgres user".into());
    }
    None
}

impl Cluster {
    /// A running cluster, or `None` (said why) where none can run outside
    /// CI.
    pub fn start(name: &str) -> Option<Self> {
        if let Some(why) = unavailable() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL test under CI=true: {why}"
            );
            eprintln!("skipped: {why}");
            return None;
        }
        let bin = binaries()?;
        let dir = std::env::temp_dir().join(format!("selfops-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).expect("cluster directory");
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        assert!(chown.is_ok_and(|s| s.success()), "chown {}", dir.display());
        let data = dir.join("data");
        let data_arg = data.to_str().expect("UTF-8 temp dir");
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data_arg,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            None,
        )
        .expect("initdb");
        let sock = dir.join("sock");
        let log = dir.join("log");
        let mut cluster = Self { dir, bin, port: 0 };
        // The port may be taken between finding it free and binding it.
        let mut tries = Vec::new();
        for _ in 0..3 {
            cluster.port = free_port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                cluster.port,
                sock.display()
            );
            let started = as_postgres(
                &cluster.bin.join("pg_ctl"),
                &[
                    "-D",
                    data_arg,
                    "-l",
                    log.to_str().expect("UTF-8 temp dir"),
                    "-w",
                    "-t",
                    "120",
                    "-o",
                    &options,
                    "start",
                ],
                Some(&log),
            );
            match started {
                Ok(()) => return Some(cluster),
                Err(err) => tries.push(err),
            }
        }
        panic!("PostgreSQL did not start: {tries:#?}");
    }

    /// The URL of `database` (over TCP, as the user postgres).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A fresh database in the cluster; its URL.
    pub async fn database(&self, name: &str) -> String {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connecting to the throwaway cluster");
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        drop(client);
        let _ = driver.await;
        self.url(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if let Some(data) = data.to_str()
            && let Err(err) = as_postgres(
                &self.bin.join("pg_ctl"),
                &["-D", data, "-m", "immediate", "-w", "stop"],
                None,
            )
        {
            eprintln!("stopping the throwaway PostgreSQL: {err}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
