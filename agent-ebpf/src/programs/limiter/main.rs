//! Token-bucket limiter: XDP and tc programs over policy maps, loaded only when playbooks need them.
//!
//! Both programs parse the packet the same way ([`parse`]) and meter it
//! against the same buckets ([`meter`]); they differ only in their hook and
//! return codes.
#![no_std]
#![no_main]
// The BPF target has no stable atomic read-modify-write (`atomic-cas` is off
// in its spec); the intrinsics lower to BPF atomic instructions.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod allow;
mod maps;
mod meter;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
// The panic handler comes from the library.
use selfops_ebpf as _;
use selfops_ebpf::limiter::{STAT_NOT_IP, STAT_TRUNCATED};

use crate::{meter::Verdict, parse::Unkeyed};

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Bytes of headers the tc program wants in the linear part of the buffer:
/// Ethernet, two VLAN tags, IPv6 with a few extension headers, TCP.
const TC_HEADER_BYTES: u32 = 160;

/// Loaded, never attached: whether this kernel's verifier takes the
/// compare-and-exchange the meter is built on (BPF_CMPXCHG, Linux 5.12).
/// Without it the limiter is switched off as a whole, with one warning.
#[xdp]
pub fn limiter_probe_cmpxchg(_ctx: XdpContext) -> u32 {
    meter::probe_cmpxchg();
    xdp_action::XDP_PASS
}

#[xdp]
pub fn limiter_xdp(ctx: XdpContext) -> u32 {
    match try_limit(ctx.data(), ctx.data_end()) {
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Pass => xdp_action::XDP_PASS,
    }
}

#[classifier]
pub fn limiter_tc(ctx: TcContext) -> i32 {
    // Headers split over fragments are out of reach of direct packet
    // access; pulling them into the linear part is cheap when needed.
    let wanted = if ctx.len() < TC_HEADER_BYTES {
        ctx.len()
    } else {
        TC_HEADER_BYTES
    };
    if ctx.data_end() - ctx.data() < wanted as usize {
        let _ = ctx.pull_data(wanted);
    }
    match try_limit(ctx.data(), ctx.data_end()) {
        Verdict::Drop => TC_ACT_SHOT,
        // UNSPEC: pass on to the next program or filter, in TCX and clsact.
        Verdict::Pass => TC_ACT_UNSPEC,
    }
}

/// Parses and meters one packet; a packet the limiter cannot key passes
/// and is counted.
#[inline(always)]
fn try_limit(data: usize, data_end: usize) -> Verdict {
    match parse::parse(data, data_end) {
        Ok(packet) => meter::meter(&packet),
        Err(Unkeyed::NotIp) => {
            maps::count(STAT_NOT_IP);
            Verdict::Pass
        }
        Err(Unkeyed::Truncated) => {
            maps::count(STAT_TRUNCATED);
            Verdict::Pass
        }
    }
}
