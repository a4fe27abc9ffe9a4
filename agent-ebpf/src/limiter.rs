//! Limiter policy: map keys and values shared with the XDP and tc programs.
//!
//! One LRU hash (`LIMITER_BUCKETS`) maps a [`LimiterKey`] to a
//! [`LimiterBucket`]. A packet is checked against at most three keys, most
//! specific first, and the first key that exists and whose scope covers the
//! packet decides alone:
//!
//! 1. destination port and source address ([`KEY_PORT_SOURCE`]),
//! 2. destination port ([`KEY_PORT`]),
//! 3. source address ([`KEY_SOURCE`]).
//!
//! Ports are the TCP or UDP destination port; packets without one (other
//! protocols, non-first IPv4 fragments) are checked against the source key
//! only. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so one map
//! serves both families.
//!
//! Before any key, the allowlist: a packet to a port in `LIMITER_ALLOW_PORTS`
//! or from a source in the LPM trie `LIMITER_ALLOW_SOURCES` (IPv4-mapped
//! too, so an IPv4 prefix is stored with 96 added to its length) passes,
//! whatever the buckets say. A bucket past its `expires_ns` is treated as
//! absent, so no limit outlives its deadline even when the agent is gone.

/// `LimiterKey::kind`: the key names a destination port only.
pub const KEY_PORT: u8 = 1;
/// `LimiterKey::kind`: the key names a source address only.
pub const KEY_SOURCE: u8 = 2;
/// `LimiterKey::kind`: the key names a destination port from one source.
pub const KEY_PORT_SOURCE: u8 = 3;

/// `LimiterBucket::scope`: only TCP SYN without ACK (new connections) is
/// metered; other packets pass the key untouched.
pub const SCOPE_SYN: u32 = 1;
/// `LimiterBucket::scope`: every packet the key matches is metered.
pub const SCOPE_ALL: u32 = 2;

/// `LimiterBucket::interval_ns` of a key that drops everything (rate 0).
pub const INTERVAL_BLOCK: u64 = u64::MAX;

/// Highest rate the limiter accepts, per second: above it the 1 ns clock
/// resolution of the interval costs more than 0.1 % precision.
pub const RATE_MAX: u64 = 1_000_000;

/// Indexes of `LIMITER_STATS`, a per-CPU array of packet counts that no key
/// owns.
pub const STAT_UNMATCHED: u32 = 0;
/// Not IPv4 or IPv6 (ARP, …): passed unexamined.
pub const STAT_NOT_IP: u32 = 1;
/// Headers shorter than they claim or cut by the linear part of the buffer:
/// passed, since the limiter cannot key them.
pub const STAT_TRUNCATED: u32 = 2;
/// The bucket's state changed under the program more often than it retries
/// (other CPUs metering the same key): dropped, since admitting it could
/// exceed the rate.
pub const STAT_CONTENDED: u32 = 3;
/// A key matched but its deadline had passed: treated as absent (the next
/// key, if any, decided).
pub const STAT_EXPIRED: u32 = 4;
/// Passed by the allowlist before any key was consulted.
pub const STAT_ALLOWLISTED: u32 = 5;
pub const STAT_COUNT: u32 = 6;

/// Most ports and most source prefixes the allowlist holds.
pub const ALLOW_PORTS_MAX: u32 = 1024;
pub const ALLOW_SOURCES_MAX: u32 = 1024;

/// Prefix length added to an IPv4 prefix stored IPv4-mapped.
pub const IPV4_MAPPED_PREFIX: u32 = 96;

/// Which traffic a bucket meters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LimiterKey {
    /// Source address (IPv6, or IPv4-mapped IPv6); zero unless `kind` names
    /// a source.
    pub addr: [u8; 16],
    /// Destination port in host byte order; zero unless `kind` names a port.
    pub port: u16,
    /// [`KEY_PORT`], [`KEY_SOURCE`] or [`KEY_PORT_SOURCE`].
    pub kind: u8,
    pub _pad: u8,
}

impl LimiterKey {
    pub const fn port(port: u16) -> Self {
        Self {
            addr: [0; 16],
            port,
            kind: KEY_PORT,
            _pad: 0,
        }
    }

    pub const fn source(addr: [u8; 16]) -> Self {
        Self {
            addr,
            port: 0,
            kind: KEY_SOURCE,
            _pad: 0,
        }
    }

    pub const fn port_source(port: u16, addr: [u8; 16]) -> Self {
        Self {
            addr,
            port,
            kind: KEY_PORT_SOURCE,
            _pad: 0,
        }
    }
}

/// A token bucket kept as GCRA state: one 64-bit word (`tat_ns`, the
/// theoretical arrival time of the next admissible packet) holds what a
/// classic bucket keeps in two (tokens and last refill), so CPUs sharing a
/// bucket update it with one compare-and-swap and no lock. The bucket holds
/// `(now + burst_ns - tat_ns) / interval_ns` tokens at time `now`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterBucket {
    /// Nanoseconds one token takes to refill (10^9 / rate), or
    /// [`INTERVAL_BLOCK`] for rate 0.
    pub interval_ns: u64,
    /// How far `tat_ns` may run ahead of now: (burst - 1) × interval.
    pub burst_ns: u64,
    /// Theoretical arrival time, CLOCK_BOOTTIME ns; updated atomically by
    /// the programs, 0 for a full bucket.
    pub tat_ns: u64,
    /// Absolute deadline, CLOCK_BOOTTIME ns (bpf_ktime_get_boot_ns, which
    /// keeps counting through suspend): from then on the programs ignore
    /// the key.
    pub expires_ns: u64,
    /// Packets metered and admitted (atomic adds).
    pub passed: u64,
    /// Packets metered and dropped (atomic adds).
    pub dropped: u64,
    /// The configured rate per second, for reading back.
    pub rate_per_second: u64,
    /// The configured burst, for reading back.
    pub burst: u32,
    /// [`SCOPE_SYN`] or [`SCOPE_ALL`].
    pub scope: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays, no implicit padding.
    unsafe impl aya::Pod for super::LimiterKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LimiterBucket {}
}

// No implicit padding: the sizes are the sums of the fields.
const _: () = assert!(core::mem::size_of::<LimiterKey>() == 20);
const _: () = assert!(core::mem::size_of::<LimiterBucket>() == 64);
