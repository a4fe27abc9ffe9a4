//! Drives the HTTP/1.x parser with arbitrary syscall sequences and checks
//! the invariants the span builder relies on.
//!
//! Input: one byte picks the role, then operations of
//! `[length, flags, data...]`: `flags & 3` is 0 feed, 1 feed with the clock
//! stepping back, 2 push a request method, 3 finish. For feeds, `flags & 4`
//! marks the capture as cut and `flags >> 3` sizes the unseen bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use selfops_agent::trace::http1::{
    Detected, Http1Parser, MAX_HEADER_BYTES, MAX_HEADERS, Message, Role,
};

const METHODS: [&str; 4] = ["GET", "HEAD", "CONNECT", "POST"];
/// Line buffer (16 KiB), one message's target and headers (at most 16 and
/// 8 KiB of bytes, up to three times that once lossily decoded), the queue.
const MAX_RETAINED: usize = 128 * 1024;

fn unseen_bytes(flags: u8) -> u64 {
    match flags >> 3 {
        0 => 0,
        k @ 1..=15 => u64::from(k),
        k => 1 << k,
    }
}

struct Run {
    role: Role,
    parser: Http1Parser,
    fed: u64,
    ts: u64,
    out: Vec<Message>,
}

impl Run {
    fn check(&mut self) {
        for message in self.out.drain(..) {
            let (start, end, body, headers) = match (&message, self.role) {
                (Message::Request(r), Role::Request) => {
                    assert!(r.target.len() <= 3 * 16 * 1024);
                    (r.start_ns, r.end_ns, r.body_bytes, &r.headers)
                }
                (Message::Response(r), Role::Response) => {
                    assert!((100..600).contains(&r.status));
                    (r.start_ns, r.end_ns, r.body_bytes, &r.headers)
                }
                (m, role) => panic!("{role:?} parser produced {m:?}"),
            };
            assert!(start <= end, "start {start} after end {end}");
            assert!(body <= self.fed, "body {body} of {} fed", self.fed);
            assert!(headers.len() <= MAX_HEADERS);
            let header_bytes: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
            // Lossy decoding may widen a kept byte to a 3-byte U+FFFD.
            assert!(header_bytes <= 3 * MAX_HEADER_BYTES);
            assert!(
                headers
                    .iter()
                    .all(|h| h.name == h.name.to_ascii_lowercase())
            );
        }
        assert!(self.parser.retained_bytes() <= MAX_RETAINED);
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, mut rest)) = input.split_first() else {
        return;
    };
    let role = if first & 1 == 0 {
        Role::Request
    } else {
        Role::Response
    };
    let mut run = Run {
        role,
        parser: Http1Parser::new(role),
        fed: 0,
        ts: 1000,
        out: Vec::new(),
    };
    while let [len, flags, tail @ ..] = rest {
        let (data, tail) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = tail;
        let was_not_http = run.parser.detected() == Detected::NotHttp;
        match flags & 3 {
            op @ (0 | 1) => {
                run.ts = if op == 0 {
                    run.ts + 1
                } else {
                    run.ts.saturating_sub(3)
                };
                let unseen = if flags & 4 != 0 {
                    unseen_bytes(*flags)
                } else {
                    0
                };
                let total = data.len() as u64 + unseen;
                run.fed += total;
                run.parser.feed(data, total, run.ts, &mut run.out);
            }
            2 => run
                .parser
                .push_request_method(METHODS[usize::from(flags >> 2) % METHODS.len()]),
            _ => run.parser.finish(run.ts, &mut run.out),
        }
        if was_not_http {
            assert!(run.out.is_empty(), "messages after NotHttp");
            assert_eq!(run.parser.detected(), Detected::NotHttp);
        }
        run.check();
    }
    run.parser.finish(run.ts, &mut run.out);
    run.check();
});
