//! Two network namespaces joined by a veth pair, for tests and benchmarks
//! that send real traffic through a real interface without touching the
//! host's. Removed on drop, also when the test panics.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `server` and `client` namespaces; `server_if` lives in `server`.
pub struct VethPair {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
    pub server_v4: Ipv4Addr,
    pub client_v4: Ipv4Addr,
    pub server_v6: Ipv6Addr,
    pub client_v6: Ipv6Addr,
}

/// Runs `ip ARGS` (iproute2), with its stderr as the error.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl VethPair {
    /// Creates the namespaces, the veth pair and addresses
    /// (10.213.N.1|2/24, fd00:213:N::1|2/64), all links up. Names carry the
    /// process id and a counter so concurrent tests never collide.
    pub fn new(tag: &str) -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are at most 15 bytes.
        let id = format!("{:x}{n:x}", pid % 0x10000);
        let subnet = (pid.wrapping_add(n) % 250) as u8 + 1;
        let pair = Self {
            server_ns: format!("selfops-{tag}-{id}-s"),
            client_ns: format!("selfops-{tag}-{id}-c"),
            server_if: format!("sos{id}"),
            client_if: format!("soc{id}"),
            server_v4: Ipv4Addr::new(10, 213, subnet, 1),
            client_v4: Ipv4Addr::new(10, 213, subnet, 2),
            server_v6: Ipv6Addr::new(0xfd00, 0x213, u16::from(subnet), 0, 0, 0, 0, 1),
            client_v6: Ipv6Addr::new(0xfd00, 0x213, u16::from(subnet), 0, 0, 0, 0, 2),
        };
        // From here on, drop cleans up whatever was created.
        ip(&["netns", "add", &pair.server_ns])?;
        ip(&["netns", "add", &pair.client_ns])?;
        ip(&[
            "link",
            "add",
            &pair.server_if,
            "netns",
            &pair.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &pair.client_if,
            "netns",
            &pair.client_ns,
        ])?;
        for (ns, dev, v4, v6) in [
            (
                &pair.server_ns,
                &pair.server_if,
                pair.server_v4,
                pair.server_v6,
            ),
            (
                &pair.client_ns,
                &pair.client_if,
                pair.client_v4,
                pair.client_v6,
            ),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    pub fn server_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.server_v6)
        } else {
            IpAddr::V4(self.server_v4)
        }
    }

    pub fn client_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.client_v6)
        } else {
            IpAddr::V4(self.client_v4)
        }
    }

    /// Runs `f` on a new thread inside the server namespace.
    pub fn in_server<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in(&self.server_ns, f)
    }

    /// Runs `f` on a new thread inside the client namespace.
    pub fn in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in(&self.client_ns, f)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and so its peer.
        for ns in [&self.server_ns, &self.client_ns] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Moves the calling thread into the named namespace (`ip netns` mounts it
/// under /run/netns). Affects only this thread.
pub fn enter(ns: &str) -> Result<(), String> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: a valid namespace file descriptor; setns only changes the
    // calling thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a new thread inside the named namespace; panics in the
/// thread (the test's assertions) reach the caller through `join`.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns).unwrap_or_else(|e| panic!("entering network namespace {ns}: {e}"));
        f()
    })
}
