//! Ethernet → IPv4/IPv6 → TCP/UDP, every read bounds-checked against the
//! end of the packet. Only what the limiter keys on is extracted.

use core::mem::size_of;

/// What the limiter keys a packet on.
pub struct Packet {
    /// Source address, IPv4 mapped into IPv6.
    pub addr: [u8; 16],
    /// TCP or UDP destination port, when the packet carries the header.
    pub port: Option<u16>,
    /// TCP SYN without ACK: a new connection.
    pub syn: bool,
}

/// Why a packet could not be keyed.
pub enum Unkeyed {
    NotIp,
    Truncated,
}

const ETH_HEADER: usize = 14;
const VLAN_HEADER: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;
/// IPv6 extension headers skipped before giving up on the port.
const IPV6_EXTENSIONS_MAX: usize = 4;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// `N` bytes at `offset`, or `Truncated` when the packet is shorter.
#[inline(always)]
fn bytes<const N: usize>(
    data: usize,
    data_end: usize,
    offset: usize,
) -> Result<&'static [u8; N], Unkeyed> {
    let start = data + offset;
    if start + size_of::<[u8; N]>() > data_end {
        return Err(Unkeyed::Truncated);
    }
    // SAFETY: [start, start + N) lies inside the packet (checked above) and
    // a byte array has no alignment requirement; the packet outlives the
    // program run, which is all 'static means here.
    Ok(unsafe { &*(start as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Result<Packet, Unkeyed> {
    let eth = bytes::<ETH_HEADER>(data, data_end, 0)?;
    let mut ether_type = be16([eth[12], eth[13]]);
    let mut offset = ETH_HEADER;
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner).
    for _ in 0..2 {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag = bytes::<VLAN_HEADER>(data, data_end, offset)?;
        ether_type = be16([tag[2], tag[3]]);
        offset += VLAN_HEADER;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(data, data_end, offset),
        ETH_P_IPV6 => parse_ipv6(data, data_end, offset),
        _ => Err(Unkeyed::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(data: usize, data_end: usize, offset: usize) -> Result<Packet, Unkeyed> {
    let ip = bytes::<20>(data, data_end, offset)?;
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(Unkeyed::Truncated);
    }
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12..16].copy_from_slice(&ip[12..16]);
    // Only the first fragment carries the transport header.
    let fragment_offset = be16([ip[6], ip[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return Ok(Packet {
            addr,
            port: None,
            syn: false,
        });
    }
    transport(data, data_end, offset + header_len, ip[9], addr)
}

#[inline(always)]
fn parse_ipv6(data: usize, data_end: usize, offset: usize) -> Result<Packet, Unkeyed> {
    let ip = bytes::<40>(data, data_end, offset)?;
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&ip[8..24]);
    let mut next = ip[6];
    let mut offset = offset + 40;
    for _ in 0..IPV6_EXTENSIONS_MAX {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                let ext = bytes::<2>(data, data_end, offset)?;
                next = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let ext = bytes::<8>(data, data_end, offset)?;
                if be16([ext[2], ext[3]]) >> 3 != 0 {
                    return Ok(Packet {
                        addr,
                        port: None,
                        syn: false,
                    });
                }
                next = ext[0];
                offset += 8;
            }
            _ => break,
        }
    }
    transport(data, data_end, offset, next, addr)
}

#[inline(always)]
fn transport(
    data: usize,
    data_end: usize,
    offset: usize,
    protocol: u8,
    addr: [u8; 16],
) -> Result<Packet, Unkeyed> {
    match protocol {
        IPPROTO_TCP => {
            let tcp = bytes::<14>(data, data_end, offset)?;
            let flags = tcp[13];
            Ok(Packet {
                addr,
                port: Some(be16([tcp[2], tcp[3]])),
                syn: flags & TCP_SYN != 0 && flags & TCP_ACK == 0,
            })
        }
        IPPROTO_UDP => {
            let udp = bytes::<4>(data, data_end, offset)?;
            Ok(Packet {
                addr,
                port: Some(be16([udp[2], udp[3]])),
                syn: false,
            })
        }
        _ => Ok(Packet {
            addr,
            port: None,
            syn: false,
        }),
    }
}
