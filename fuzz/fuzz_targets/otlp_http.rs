//! Feeds arbitrary bytes to the OTLP receiver's HTTP body decoding: the
//! first byte picks the signal, the content type and the encoding (a
//! mangled header, a gzip stream as sent, or the rest gzipped here so that
//! the protobuf and JSON decoders are reached through the inflate path
//! too); the rest is the body. Then what a request goes through after
//! decoding: unusable items removed and a process resource merged.
//! Nothing may panic, and no body past the limit may be accepted.

#![no_main]

use std::io::Write as _;

use libfuzzer_sys::fuzz_target;
use selfops_agent::receive::{
    Signal,
    decode::{self, DecodeError},
    decode_http,
    enrich::enrich,
};

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let signal = match selector & 0b11 {
        0 => Signal::Traces,
        1 => Signal::Metrics,
        _ => Signal::Logs,
    };
    let content_type = match (selector >> 2) & 0b11 {
        0 => "application/x-protobuf",
        1 => "application/json",
        2 => "application/json; charset=utf-8",
        _ => "text/plain",
    };
    let gzipped;
    let (encoding, body) = match (selector >> 4) & 0b11 {
        0 => (None, body),
        1 => (Some("gzip"), body),
        2 => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(body).expect("writing to a Vec");
            gzipped = encoder.finish().expect("writing to a Vec");
            (Some("gzip"), &gzipped[..])
        }
        _ => (Some("br"), body),
    };
    let limit = if selector & 0x40 != 0 { 64 } else { LIMIT };
    match decode_http(signal, content_type, encoding, body, limit) {
        Ok(mut batch) => {
            assert!(body.len() <= limit);
            decode::reject_invalid(&mut batch);
            enrich(&mut batch, &[Default::default()]);
        }
        Err(DecodeError::TooLarge { limit: reported }) => assert_eq!(reported, limit),
        Err(_) => {}
    }
});
