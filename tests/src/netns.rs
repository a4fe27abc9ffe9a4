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

/// One network namespace of its own (a "pod"), loopback up, removed on
/// drop.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn new(tag: &str) -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("selfops-{tag}-{:x}-{n:x}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `program ARGS` to run inside the namespace (`ip netns exec` execs
    /// it: the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A namespace wired to the host netns like a pod to its node: a veth
/// pair on a /30 (host end `host_v4`, namespace end `pod_v4`), the
/// namespace's default route via the host, and forwarding on for the host
/// end only (per interface, so the host's own forwarding setting is left
/// alone).
pub struct Pod {
    pub ns: Namespace,
    pub host_if: String,
    pub host_v4: Ipv4Addr,
    pub pod_v4: Ipv4Addr,
}

impl Pod {
    /// `subnet` and `index` pick 10.214.SUBNET.(4*INDEX)/30.
    pub fn new(tag: &str, subnet: u8, index: u8) -> Result<Self, String> {
        let ns = Namespace::new(tag)?;
        let base = index.checked_mul(4).ok_or("pod index too large")?;
        let host_if = format!(
            "sop{:x}{index}",
            (std::process::id() % 0x10000) ^ u32::from(subnet)
        );
        let pod = Self {
            host_v4: Ipv4Addr::new(10, 214, subnet, base + 1),
            pod_v4: Ipv4Addr::new(10, 214, subnet, base + 2),
            host_if,
            ns,
        };
        ip(&[
            "link",
            "add",
            &pod.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.ns.name,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", pod.host_v4),
            "dev",
            &pod.host_if,
        ])?;
        ip(&["link", "set", &pod.host_if, "up"])?;
        let n = pod.ns.name.as_str();
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{}/30", pod.pod_v4),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", n, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "default",
            "via",
            &pod.host_v4.to_string(),
        ])?;
        let key = format!("net.ipv4.conf.{}.forwarding", pod.host_if);
        std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), "1")
            .map_err(|e| format!("setting {key}: {e}"))?;
        Ok(pod)
    }
}

/// A kube-proxy-style Service rule in the host netns: TCP to `virtual_ip`
/// :`port` is DNATed to `target`, in an nftables table of its own that is
/// deleted on drop.
pub struct ServiceDnat {
    table: String,
}

impl ServiceDnat {
    pub fn new(
        virtual_ip: Ipv4Addr,
        port: u16,
        target: std::net::SocketAddrV4,
    ) -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let table = format!("selfops_svc_{}_{n}", std::process::id());
        let rules = format!(
            "table ip {table} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n    \
             ip daddr {virtual_ip} tcp dport {port} dnat to {target}\n  }}\n}}\n"
        );
        nft(&["-f", "-"], Some(&rules))?;
        Ok(Self { table })
    }
}

impl Drop for ServiceDnat {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", "ip", &self.table], None) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Runs `nft ARGS` (nftables) with `input` on its stdin.
pub fn nft(args: &[&str], input: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft (nftables): {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
