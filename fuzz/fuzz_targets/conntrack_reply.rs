//! Feeds arbitrary datagrams to the parser of the kernel's conntrack
//! netlink replies: it must return, never panic, and whatever entry it
//! finds must come from the bytes it was given.
//!
//! Input: four bytes of sequence number, then the datagram.

#![no_main]

use libfuzzer_sys::fuzz_target;
use selfops_agent::trace::conntrack::{Reply, parse_reply};

fuzz_target!(|data: &[u8]| {
    let Some((seq, datagram)) = data.split_first_chunk::<4>() else {
        return;
    };
    let seq = u32::from_ne_bytes(*seq);
    if let Ok(Reply::Entry { .. }) = parse_reply(datagram, seq) {
        // An entry needs at least a message header, the netfilter header
        // and two addresses with two ports.
        assert!(datagram.len() >= 16 + 4 + 2 * (4 + 4 + 4));
    }
});
