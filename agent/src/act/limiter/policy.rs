//! Limiter policy in the agent's terms (keys by port and address, rates per
//! second) and its translation to the kernel's bucket layout.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use selfops_ebpf::limiter::{
    INTERVAL_BLOCK, KEY_PORT, KEY_PORT_SOURCE, KEY_SOURCE, LimiterBucket, LimiterKey, RATE_MAX,
    SCOPE_ALL, SCOPE_SYN, STAT_ALLOWLISTED, STAT_CONTENDED, STAT_EXPIRED, STAT_NOT_IP,
    STAT_TRUNCATED, STAT_UNMATCHED,
};

use super::{BUCKETS, LimiterError, STATS};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Which traffic a bucket meters. For a packet, the first of
/// (port, source), port, source that is set and whose scope covers it
/// decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// TCP or UDP destination port.
    Port(u16),
    /// Source address (IPv4 or IPv6).
    Source(IpAddr),
    /// A destination port, from one source address.
    PortSource(u16, IpAddr),
}

impl Key {
    pub fn to_kernel(self) -> LimiterKey {
        match self {
            Key::Port(port) => LimiterKey::port(port),
            Key::Source(addr) => LimiterKey::source(address_bytes(addr)),
            Key::PortSource(port, addr) => LimiterKey::port_source(port, address_bytes(addr)),
        }
    }

    pub fn from_kernel(key: &LimiterKey) -> Option<Self> {
        let addr = || {
            let v6 = Ipv6Addr::from(key.addr);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        };
        match key.kind {
            KEY_PORT => Some(Key::Port(key.port)),
            KEY_SOURCE => Some(Key::Source(addr())),
            KEY_PORT_SOURCE => Some(Key::PortSource(key.port, addr())),
            _ => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Port(port) => write!(f, "port {port}"),
            Key::Source(addr) => write!(f, "source {addr}"),
            Key::PortSource(port, addr) => write!(f, "port {port} from {addr}"),
        }
    }
}

/// IPv4 is stored IPv4-mapped, as the kernel programs build their keys.
fn address_bytes(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Packets admitted per second, and how many may pass back to back. A rate
/// of 0 drops everything the key meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u64,
    pub burst: u32,
}

impl Rate {
    pub const BLOCK: Rate = Rate {
        per_second: 0,
        burst: 0,
    };
}

/// What a key meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// TCP SYN without ACK: new connections. Other packets are not metered
    /// by this key.
    NewConnections,
    /// Every packet the key matches.
    AllPackets,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub passed: u64,
    pub dropped: u64,
}

/// One key as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    pub rate: Rate,
    pub scope: Scope,
    pub counters: Counters,
    /// CLOCK_BOOTTIME ns from which the programs ignore the key.
    pub deadline_ns: u64,
}

impl Entry {
    /// Time the key has left at `now_ns` (see [`super::clock::boot_ns`]),
    /// `None` once it has expired.
    pub fn remaining(&self, now_ns: u64) -> Option<std::time::Duration> {
        super::clock::remaining(self.deadline_ns, now_ns)
    }

    pub fn from_kernel(key: &LimiterKey, bucket: &LimiterBucket) -> Option<Self> {
        Some(Self {
            key: Key::from_kernel(key)?,
            rate: Rate {
                per_second: bucket.rate_per_second,
                burst: bucket.burst,
            },
            scope: if bucket.scope == SCOPE_SYN {
                Scope::NewConnections
            } else {
                Scope::AllPackets
            },
            counters: Counters {
                passed: bucket.passed,
                dropped: bucket.dropped,
            },
            deadline_ns: bucket.expires_ns,
        })
    }
}

/// Every key of a bucket map, skipping keys that vanish during the walk.
pub fn entries(
    buckets: &HashMap<MapData, LimiterKey, LimiterBucket>,
) -> Result<Vec<Entry>, LimiterError> {
    let mut entries = Vec::new();
    for item in buckets.iter() {
        match item {
            Ok((key, bucket)) => {
                if let Some(entry) = Entry::from_kernel(&key, &bucket) {
                    entries.push(entry);
                }
            }
            // A key evicted or lifted during the walk: skip it.
            Err(e) if is_not_found(&e) => {}
            Err(source) => {
                return Err(LimiterError::Map {
                    name: BUCKETS,
                    source,
                });
            }
        }
    }
    Ok(entries)
}

/// The stats map summed over CPUs; slots an older, smaller map lacks read 0.
pub fn stats(map: &PerCpuArray<MapData, u64>) -> Result<UnmeteredStats, LimiterError> {
    let read = |index: u32| -> Result<u64, LimiterError> {
        match map.get(&index, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().sum()),
            Err(MapError::OutOfBounds { .. }) => Ok(0),
            Err(source) => Err(LimiterError::Map {
                name: STATS,
                source,
            }),
        }
    };
    Ok(UnmeteredStats {
        unmatched: read(STAT_UNMATCHED)?,
        not_ip: read(STAT_NOT_IP)?,
        truncated: read(STAT_TRUNCATED)?,
        contended: read(STAT_CONTENDED)?,
        expired: read(STAT_EXPIRED)?,
        allowlisted: read(STAT_ALLOWLISTED)?,
    })
}

/// Packets the programs saw but no key metered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnmeteredStats {
    /// Keyed, but no key set for them.
    pub unmatched: u64,
    /// Not IPv4 or IPv6.
    pub not_ip: u64,
    /// Headers cut short: passed unkeyed.
    pub truncated: u64,
    /// Dropped because the bucket changed under the program too often.
    pub contended: u64,
    /// Matched a key past its deadline (treated as absent).
    pub expired: u64,
    /// Passed by the allowlist.
    pub allowlisted: u64,
}

impl UnmeteredStats {
    /// (reason, count), as /metrics labels them.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("unmatched", self.unmatched),
            ("not_ip", self.not_ip),
            ("truncated", self.truncated),
            ("contended", self.contended),
            ("expired", self.expired),
            ("allowlisted", self.allowlisted),
        ]
    }
}

/// A fresh bucket (full, counters zero) for `rate` and `scope`.
pub fn bucket(rate: Rate, scope: Scope) -> Result<LimiterBucket, LimiterError> {
    let scope = match scope {
        Scope::NewConnections => SCOPE_SYN,
        Scope::AllPackets => SCOPE_ALL,
    };
    if rate.per_second == 0 {
        return Ok(LimiterBucket {
            interval_ns: INTERVAL_BLOCK,
            scope,
            ..LimiterBucket::default()
        });
    }
    if rate.per_second > RATE_MAX {
        return Err(LimiterError::Invalid(format!(
            "rate {}/s is above the limiter's maximum of {RATE_MAX}/s",
            rate.per_second
        )));
    }
    if rate.burst == 0 {
        return Err(LimiterError::Invalid(
            "burst must be at least 1 for a rate above 0".into(),
        ));
    }
    // Rounded to the nearest nanosecond: at most 0.05 % off at RATE_MAX.
    let interval_ns = (NANOS_PER_SECOND + rate.per_second / 2) / rate.per_second;
    Ok(LimiterBucket {
        interval_ns,
        burst_ns: interval_ns * (u64::from(rate.burst) - 1),
        scope,
        rate_per_second: rate.per_second,
        burst: rate.burst,
        ..LimiterBucket::default()
    })
}

pub fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_kernel_layout() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let v6: IpAddr = "fd00::7".parse().unwrap();
        for key in [
            Key::Port(8080),
            Key::Source(v4),
            Key::Source(v6),
            Key::PortSource(443, v4),
            Key::PortSource(443, v6),
        ] {
            assert_eq!(Key::from_kernel(&key.to_kernel()), Some(key));
        }
        // IPv4 as the programs see it: ::ffff:10.1.2.3.
        let k = Key::Source(v4).to_kernel();
        assert_eq!(&k.addr[10..], &[0xff, 0xff, 10, 1, 2, 3]);
    }

    #[test]
    fn bucket_intervals_and_bursts() {
        let b = bucket(
            Rate {
                per_second: 200,
                burst: 10,
            },
            Scope::NewConnections,
        )
        .unwrap();
        assert_eq!(b.interval_ns, 5_000_000);
        assert_eq!(b.burst_ns, 45_000_000);
        assert_eq!(b.scope, SCOPE_SYN);
        let b = bucket(Rate::BLOCK, Scope::AllPackets).unwrap();
        assert_eq!(b.interval_ns, INTERVAL_BLOCK);
        assert!(
            bucket(
                Rate {
                    per_second: 5,
                    burst: 0
                },
                Scope::AllPackets
            )
            .is_err()
        );
        assert!(
            bucket(
                Rate {
                    per_second: RATE_MAX + 1,
                    burst: 1
                },
                Scope::AllPackets
            )
            .is_err()
        );
    }
}
