//! Real programs the tracing tests drive: Debian's nginx and a CPython
//! service from `tests/assets`, each on a loopback port of its own.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{free_port, wait_for, workspace_root};

/// A child process killed on drop.
pub struct Service {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_listening(mut self, name: &str) -> Self {
        let port = self.port;
        let up = wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        if up.is_none() {
            let status = self.child.try_wait();
            panic!("{name} is not listening on {port} ({status:?})");
        }
        self
    }
}

impl Drop for Service {
    /// SIGTERM first: an nginx master killed outright leaves its workers.
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let exited = wait_for(Duration::from_secs(3), || {
            self.child.try_wait().ok().flatten()
        });
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn assets() -> PathBuf {
    workspace_root().join("tests/assets")
}

/// A self-signed certificate and key for 127.0.0.1 in `dir` (openssl).
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

/// nginx serving `www/index.html` (and `/status/500`) from `dir`, over
/// HTTPS when `tls` gives a certificate and key.
pub fn nginx(dir: &Path) -> Service {
    nginx_with(dir, None)
}

pub fn nginx_with(dir: &Path, tls: Option<&(PathBuf, PathBuf)>) -> Service {
    let port = free_port();
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("index.html"), "hello from nginx\n").expect("index.html");
    let template = std::fs::read_to_string(assets().join("nginx.conf.in")).expect("nginx template");
    let config = template
        .replace("@DIR@", &dir.display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@LISTEN_OPTIONS@", if tls.is_some() { " ssl" } else { "" })
        .replace(
            "@TLS_CONFIG@",
            &tls.map(|(cert, key)| {
                format!(
                    "ssl_certificate {};\n        ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                )
            })
            .unwrap_or_default(),
        );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).expect("nginx.conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (installed by `cargo xtask setup`)");
    Service {
        child,
        port,
        dir: dir.to_path_buf(),
    }
    .wait_listening("nginx")
}

/// The thread-per-request Python service that calls `backend_port`.
pub fn frontend(dir: &Path, backend_port: u16) -> Service {
    frontend_with(dir, backend_port, None)
}

/// With `tls`, the service and its backend both speak HTTPS.
pub fn frontend_with(dir: &Path, backend_port: u16, tls: Option<&(PathBuf, PathBuf)>) -> Service {
    let port = free_port();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut command = Command::new("python3");
    command
        .arg(assets().join("frontend.py"))
        .arg(port.to_string())
        .arg(format!("{scheme}://127.0.0.1:{backend_port}"));
    if let Some((cert, key)) = tls {
        command.arg(cert).arg(key);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    Service {
        child,
        port,
        dir: dir.to_path_buf(),
    }
    .wait_listening("frontend.py")
}
