//! The socket sensor's in-kernel HTTP/1 verdict against the agent's parser:
//! whatever a stream holds, if the parser finds a message in it, the kernel
//! must not call the stream "not HTTP" from any of its first bytes (it
//! would withhold the connection's events).
//!
//! Input: one byte picks the role, the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use selfops_agent::trace::http1::{Http1Parser, Role};
use selfops_ebpf::{HTTP_SNIFF_BYTES, HttpPrefix, classify_http_prefix};

/// The verdict from the stream's first `n` bytes; bytes past them are set
/// to `fill`, which must not count.
fn verdict(stream: &[u8], n: usize, fill: u8) -> HttpPrefix {
    let mut prefix = [fill; HTTP_SNIFF_BYTES];
    let n = n.min(stream.len());
    prefix[..n].copy_from_slice(&stream[..n]);
    classify_http_prefix(u64::from_le_bytes(prefix), n)
}

fuzz_target!(|data: &[u8]| {
    let Some((&role, stream)) = data.split_first() else {
        return;
    };
    let role = if role & 1 == 0 {
        Role::Request
    } else {
        Role::Response
    };
    for n in 0..=HTTP_SNIFF_BYTES {
        // Only the first n bytes may decide, whatever follows them.
        let verdicts = [verdict(stream, n, 0), verdict(stream, n, 0xff)];
        assert_eq!(verdicts[0], verdicts[1], "{n} bytes of {stream:?}");
    }
    let mut parser = Http1Parser::new(role);
    let mut out = Vec::new();
    parser.feed(stream, stream.len() as u64, 1, &mut out);
    parser.finish(2, &mut out);
    if out.is_empty() {
        return;
    }
    for n in 0..=HTTP_SNIFF_BYTES {
        assert_ne!(
            verdict(stream, n, 0),
            HttpPrefix::NotHttp,
            "the parser read {} message(s) from {stream:?}, the kernel refuses {n} bytes",
            out.len()
        );
    }
});
