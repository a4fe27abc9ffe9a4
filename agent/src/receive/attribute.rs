//! Which process is at the other end of a connection: the peer's socket is
//! found by its 4-tuple in `/proc/net/tcp` and `/proc/net/tcp6` (its
//! inode), then the process holding that inode among its file descriptors.
//! Done once per connection, off the async threads, bounded in time and in
//! concurrency.

use std::{
    fs,
    io::{self, BufRead as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use tokio::sync::Semaphore;

use super::{
    ResourceLookup,
    metrics::{Attribution, ReceiverMetrics},
};

/// How long one lookup may take before the connection goes unattributed.
pub const LOOKUP_BUDGET: Duration = Duration::from_millis(500);
/// Lookups running at once (each walks `/proc`).
pub const CONCURRENT_LOOKUPS: usize = 2;

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The peer socket belongs to this process.
    Process(u32),
    /// No socket on this host (in this network namespace) has the peer's
    /// 4-tuple: the peer is remote.
    Remote,
    /// The socket is here but no process holding it was found (it may have
    /// exited or passed the socket on; or the walk ran out of time).
    Unowned,
}

/// Looks the peer of the connection `local` ← `peer` up under `proc_root`
/// (normally `/proc`), giving up after `deadline`.
pub fn lookup(
    proc_root: &Path,
    peer: SocketAddr,
    local: SocketAddr,
    deadline: Instant,
) -> io::Result<Peer> {
    let Some(inode) = socket_inode(proc_root, peer, local)? else {
        return Ok(Peer::Remote);
    };
    Ok(match owner_of(proc_root, inode, deadline)? {
        Some(pid) => Peer::Process(pid),
        None => Peer::Unowned,
    })
}

/// The inode of the socket whose own address is `peer` and whose remote
/// address is `local`.
fn socket_inode(proc_root: &Path, peer: SocketAddr, local: SocketAddr) -> io::Result<Option<u64>> {
    let peer = canonical(peer);
    let local = canonical(local);
    for table in ["net/tcp", "net/tcp6"] {
        let file = match fs::File::open(proc_root.join(table)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in io::BufReader::new(file).lines().skip(1) {
            let line = line?;
            if let Some((own, remote, inode)) = parse_line(&line)
                && inode != 0
                && canonical(own) == peer
                && canonical(remote) == local
            {
                return Ok(Some(inode));
            }
        }
    }
    Ok(None)
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they map.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Local address, remote address and inode of one `/proc/net/tcp*` line.
fn parse_line(line: &str) -> Option<(SocketAddr, SocketAddr, u64)> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let own = parse_addr(fields.next()?)?;
    let remote = parse_addr(fields.next()?)?;
    // st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    let inode = fields.nth(6)?.parse().ok()?;
    Some((own, remote, inode))
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit
/// word printed as the host reads it from network-order memory.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The first process found with `socket:[inode]` among its descriptors.
fn owner_of(proc_root: &Path, inode: u64, deadline: Instant) -> io::Result<Option<u32>> {
    let wanted = format!("socket:[{inode}]");
    for entry in fs::read_dir(proc_root)? {
        if Instant::now() > deadline {
            return Ok(None);
        }
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go, and some are not ours to read: skip them.
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && target.as_os_str() == wanted.as_str()
            {
                return Ok(Some(pid));
            }
        }
    }
    Ok(None)
}

/// Attributes a connection: the peer's process and that process's resource
/// attributes, or `None` (counted by why).
pub struct Attributor {
    resource_of: ResourceLookup,
    metrics: ReceiverMetrics,
    permits: Arc<Semaphore>,
}

impl Attributor {
    pub fn new(resource_of: ResourceLookup, metrics: ReceiverMetrics) -> Self {
        Self {
            resource_of,
            metrics,
            permits: Arc::new(Semaphore::new(CONCURRENT_LOOKUPS)),
        }
    }

    pub async fn attribute(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<Arc<Vec<KeyValue>>> {
        let outcome = self.lookup(peer, local).await;
        let (counted, attributes) = match outcome {
            Some(Peer::Process(pid)) => (Attribution::Attributed, self.resource(pid).await),
            Some(Peer::Remote) => (Attribution::Remote, None),
            Some(Peer::Unowned) | None => (Attribution::Failed, None),
        };
        self.metrics.attribution(counted);
        attributes.map(Arc::new)
    }

    async fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<Peer> {
        let work = async {
            let _permit = self.permits.acquire().await.ok()?;
            let deadline = Instant::now() + LOOKUP_BUDGET;
            let found = tokio::task::spawn_blocking(move || {
                lookup(Path::new("/proc"), peer, local, deadline)
            })
            .await;
            match found {
                Ok(Ok(peer)) => Some(peer),
                Ok(Err(err)) => {
                    tracing::debug!(%err, %peer, "receiver: peer process lookup failed");
                    None
                }
                Err(_) => None,
            }
        };
        // Waiting for a permit counts against the budget too.
        tokio::time::timeout(LOOKUP_BUDGET * 2, work)
            .await
            .ok()
            .flatten()
    }

    /// The caller's lookup, bounded like the search: a slow one leaves the
    /// connection unattributed rather than held up.
    async fn resource(&self, pid: u32) -> Option<Vec<KeyValue>> {
        let resource_of = self.resource_of.clone();
        let lookup = tokio::task::spawn_blocking(move || resource_of(pid));
        tokio::time::timeout(LOOKUP_BUDGET, lookup)
            .await
            .ok()?
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_attribute_parses_proc_net_lines() {
        let v4 = "   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 \
                  00000000  1000        0 123456 1 0000000000000000 20 4 30 10 -1";
        let (own, remote, inode) = parse_line(v4).unwrap();
        assert_eq!(own, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(remote, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(inode, 123456);
        let v6 = "   1: 00000000000000000000000001000000:10E1 \
                  0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 \
                  00000000  0        0 42 1 0000000000000000 20 4 30 10 -1";
        let (own, remote, inode) = parse_line(v6).unwrap();
        assert_eq!(own, "[::1]:4321".parse().unwrap());
        assert_eq!(canonical(remote), "127.0.0.1:50000".parse().unwrap());
        assert_eq!(inode, 42);
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn receive_attribute_finds_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let local = listener.local_addr().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = lookup(Path::new("/proc"), peer, local, deadline).unwrap();
        assert_eq!(found, Peer::Process(std::process::id()));
        // No socket has this tuple: a remote peer.
        let nowhere: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert_eq!(
            lookup(Path::new("/proc"), nowhere, local, deadline).unwrap(),
            Peer::Remote
        );
    }
}
