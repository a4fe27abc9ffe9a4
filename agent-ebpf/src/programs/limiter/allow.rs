//! The allowlist, consulted before any key: a destination port or a source
//! prefix the operator protects passes whatever the buckets hold.

use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    maps::{LIMITER_ALLOW_PORTS, LIMITER_ALLOW_SOURCES},
    parse::Packet,
};

/// Full-length prefix: the trie finds the longest stored prefix covering it.
const ADDRESS_BITS: u32 = 128;

#[inline(always)]
pub fn allowed(packet: &Packet) -> bool {
    if let Some(port) = packet.port
        && LIMITER_ALLOW_PORTS.get_ptr(port).is_some()
    {
        return true;
    }
    LIMITER_ALLOW_SOURCES
        .get(Key::new(ADDRESS_BITS, packet.addr))
        .is_some()
}
