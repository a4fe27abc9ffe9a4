//! The allowlist as the kernel programs consult it: destination ports in a
//! hash, source prefixes in an LPM trie (IPv4 stored IPv4-mapped, its
//! prefix length + 96, as the programs build their lookup keys).

use std::net::IpAddr;

use aya::maps::{
    HashMap, MapData,
    lpm_trie::{Key as PrefixKey, LpmTrie},
};
use ipnet::IpNet;
use selfops_ebpf::limiter::{ALLOW_PORTS_MAX, ALLOW_SOURCES_MAX, IPV4_MAPPED_PREFIX};

use super::{LimiterError, policy};

pub(super) const PORTS: &str = "LIMITER_ALLOW_PORTS";
pub(super) const SOURCES: &str = "LIMITER_ALLOW_SOURCES";

/// What the programs pass before looking at any key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowRules {
    pub ports: Vec<u16>,
    pub sources: Vec<IpNet>,
}

pub(super) type PortMap = HashMap<MapData, u16, u8>;
pub(super) type SourceMap = LpmTrie<MapData, [u8; 16], u8>;

/// The trie key of `net`: IPv6 as is, IPv4 mapped.
pub fn prefix_key(net: &IpNet) -> PrefixKey<[u8; 16]> {
    match net.trunc() {
        IpNet::V4(v4) => PrefixKey::new(
            u32::from(v4.prefix_len()) + IPV4_MAPPED_PREFIX,
            v4.addr().to_ipv6_mapped().octets(),
        ),
        IpNet::V6(v6) => PrefixKey::new(u32::from(v6.prefix_len()), v6.addr().octets()),
    }
}

/// The prefix a trie key stands for, or `None` for a malformed one.
pub fn prefix_of(key: &PrefixKey<[u8; 16]>) -> Option<IpNet> {
    let v6 = std::net::Ipv6Addr::from(key.data());
    let len = u8::try_from(key.prefix_len()).ok()?;
    match v6.to_ipv4_mapped() {
        Some(v4) if key.prefix_len() >= IPV4_MAPPED_PREFIX => {
            IpNet::new(IpAddr::V4(v4), len - IPV4_MAPPED_PREFIX as u8).ok()
        }
        _ => IpNet::new(IpAddr::V6(v6), len).ok(),
    }
}

/// Makes the maps hold exactly `rules`: new entries first, stale ones
/// removed after, so protection never dips below either set meanwhile.
pub(super) fn write(
    ports: &mut PortMap,
    sources: &mut SourceMap,
    rules: &AllowRules,
) -> Result<(), LimiterError> {
    if rules.ports.len() > ALLOW_PORTS_MAX as usize
        || rules.sources.len() > ALLOW_SOURCES_MAX as usize
    {
        return Err(LimiterError::Invalid(format!(
            "the allowlist holds at most {ALLOW_PORTS_MAX} ports and {ALLOW_SOURCES_MAX} sources"
        )));
    }
    let map_error = |name: &'static str| move |source| LimiterError::Map { name, source };
    for port in &rules.ports {
        ports.insert(port, 1, 0).map_err(map_error(PORTS))?;
    }
    let wanted: Vec<_> = rules.sources.iter().map(prefix_key).collect();
    for key in &wanted {
        sources.insert(key, 1, 0).map_err(map_error(SOURCES))?;
    }
    let stale_ports: Vec<u16> = ports
        .keys()
        .filter_map(Result::ok)
        .filter(|p| !rules.ports.contains(p))
        .collect();
    for port in stale_ports {
        remove(ports.remove(&port), PORTS)?;
    }
    let stale_sources: Vec<_> = sources
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            !wanted
                .iter()
                .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
        })
        .collect();
    for key in stale_sources {
        remove(sources.remove(&key), SOURCES)?;
    }
    Ok(())
}

/// What the maps hold now.
pub(super) fn read(ports: &PortMap, sources: &SourceMap) -> AllowRules {
    let mut rules = AllowRules {
        ports: ports.keys().filter_map(Result::ok).collect(),
        sources: sources
            .keys()
            .filter_map(Result::ok)
            .filter_map(|k| prefix_of(&k))
            .collect(),
    };
    rules.ports.sort_unstable();
    rules.sources.sort_unstable();
    rules
}

fn remove(result: Result<(), aya::maps::MapError>, name: &'static str) -> Result<(), LimiterError> {
    match result {
        Err(e) if !policy::is_not_found(&e) => Err(LimiterError::Map { name, source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_round_trip_ipv4_mapped() {
        for text in [
            "10.0.0.0/8",
            "192.168.1.7/32",
            "fd00::/64",
            "::/0",
            "0.0.0.0/0",
        ] {
            let net: IpNet = text.parse().unwrap();
            let key = prefix_key(&net);
            assert_eq!(prefix_of(&key), Some(net), "{text}");
        }
        let key = prefix_key(&"10.1.2.3/8".parse().unwrap());
        assert_eq!(key.prefix_len(), 104);
        assert_eq!(&key.data()[10..], &[0xff, 0xff, 10, 0, 0, 0]);
    }
}
