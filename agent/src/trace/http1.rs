//! Streaming HTTP/1.x parser over captured socket syscalls.
//!
//! The kernel hands over, per syscall, the first bytes of its payload, the
//! total byte count and a timestamp. [`Http1Parser`] turns those fragments of
//! one direction of a connection into whole request or response messages,
//! stamped with the syscalls that carried their first and last bytes. It is
//! hand-written because existing HTTP parsers need every byte they frame,
//! while here bodies and even parts of header blocks are known only by count
//! and the stream must be re-synchronised on message starts after such gaps.
//!
//! What consumers of [`Message`] should know:
//! - `truncated` is set when the message is known only in part: headers beyond
//!   [`MAX_HEADERS`] or [`MAX_HEADER_BYTES`] were dropped, the header block
//!   (or start line) was cut by the capture limit, or the parser lost track of
//!   where the body ends and the message was ended by the next start line
//!   ("resync") or by the close. Then `end_ns` is the last syscall before the
//!   next message and `body_bytes` an upper bound. A body merely unseen
//!   because of the capture limit is not truncation: its length is exact.
//! - `body_bytes` counts the bytes after the header block as transferred,
//!   chunked framing and trailers included; trailers are not parsed into
//!   headers.
//! - Interim 1xx responses are consumed but not emitted, so responses pair
//!   one-to-one with requests in order. A 101, or a 2xx to CONNECT, is
//!   emitted and then the stream is no longer HTTP: `detected()` becomes
//!   [`Detected::NotHttp`] and later feeds are ignored.
//! - A stream is declared not HTTP only from its first syscall, and only when
//!   that is clearly something else (binary bytes, a line protocol's verb,
//!   Redis RESP): text may be the middle of a body on a connection older than
//!   the agent, so the parser then waits for a syscall that begins with a
//!   start line.
//! - After losing sync, the response side keeps only the newest queued
//!   request method, since responses to the others went by unparsed.
//! - Timestamps are taken as given, except that `end_ns` is never before
//!   `start_ns`.

use std::{borrow::Cow, collections::VecDeque};

/// Headers kept per message; more are dropped and the message is truncated.
pub const MAX_HEADERS: usize = 64;
/// Name and value bytes of the headers kept per message.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest start line or header line buffered. A longer start line loses
/// sync; a longer header line is skipped.
const MAX_LINE: usize = 16 * 1024;
/// Longest chunk-size line (size and extensions); longer loses sync.
const MAX_CHUNK_LINE: usize = 4096;
/// Request methods remembered for the response side (pipelining depth).
const MAX_PENDING_METHODS: usize = 64;
/// A line buffer grown beyond this is released between messages, so idle
/// connections hold little memory.
const KEEP_BUFFER: usize = 1024;
/// Leading bytes examined to classify a stream as clearly not HTTP.
const SNIFF_BYTES: usize = 16;

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// `#` is any digit, `$` the first digit of a status code (1-5).
const STATUS_TEMPLATE: &[u8] = b"HTTP/1.# $##";
const VERSION_TEMPLATE: &[u8] = b"HTTP/1.#";

/// Which side of the stream a parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// Nothing decisive seen yet.
    Unknown,
    /// A valid start line was parsed.
    Http,
    /// The stream is not (or no longer) HTTP/1.x; feeds are ignored.
    NotHttp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Lowercase; a name the parser was told to keep is that static name,
    /// not a copy.
    pub name: Cow<'static, str>,
    /// Lossily decoded, surrounding whitespace removed.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// One of the methods the parser knows.
    pub method: &'static str,
    /// As sent, query string included.
    pub target: String,
    pub version_minor: u8,
    pub headers: Vec<Header>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub body_bytes: u64,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub version_minor: u8,
    pub headers: Vec<Header>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub body_bytes: u64,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

impl Request {
    /// The first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The value of the first header called `name`, moved out (the header
    /// is left empty): for a span that keeps it, rather than a copy.
    pub fn take_header(&mut self, name: &str) -> Option<String> {
        self.headers
            .iter_mut()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::mem::take(&mut h.value))
    }
}

impl Response {
    /// The first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StartLine {
    Request {
        method: &'static str,
        target: String,
        version_minor: u8,
    },
    Response {
        status: u16,
        version_minor: u8,
    },
}

/// What the headers say about where the body ends.
#[derive(Debug, Default)]
struct Framing {
    content_length: Option<u64>,
    /// Length information that cannot be trusted: unparsable or conflicting
    /// Content-Length, or a framing header too long to read.
    unknown: bool,
    transfer_encoding: bool,
    /// The last transfer coding is chunked.
    chunked: bool,
}

impl Framing {
    fn note(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"content-length") {
            self.note_length(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            // Codings apply in order, across repeated headers too: only the
            // last one decides whether the body is chunked.
            if let Some(last) = value
                .rsplit(|&b| b == b',')
                .map(trim)
                .find(|c| !c.is_empty())
            {
                self.chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        }
    }

    /// Repeated or list-valued lengths are accepted only when all agree.
    fn note_length(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',').map(trim) {
            match (parse_decimal(part), self.content_length) {
                (Some(n), None) => self.content_length = Some(n),
                (Some(n), Some(seen)) if n == seen => {}
                _ => self.unknown = true,
            }
        }
    }

    /// A header line too long to keep: if it was a framing header, its
    /// information is lost.
    fn note_lost(&mut self, line_start: &[u8]) {
        let name = line_start.split(|&b| b == b':').next().unwrap_or_default();
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            self.unknown = true;
        }
    }
}

/// A message whose start line has been parsed.
#[derive(Debug)]
struct Pending {
    start: StartLine,
    headers: Vec<Header>,
    header_bytes: usize,
    framing: Framing,
    start_ns: u64,
    end_ns: u64,
    body_bytes: u64,
    truncated: bool,
}

impl Pending {
    fn new(start: StartLine, start_ns: u64) -> Self {
        Self {
            start,
            headers: Vec::new(),
            header_bytes: 0,
            framing: Framing::default(),
            start_ns,
            end_ns: start_ns,
            body_bytes: 0,
            truncated: false,
        }
    }

    /// `kept` is `name` lowercase, when it is one of the names kept.
    fn keep_header(&mut self, name: &[u8], kept: Option<&'static str>, value: &[u8]) {
        let bytes = name.len() + value.len();
        if self.headers.len() >= MAX_HEADERS || self.header_bytes + bytes > MAX_HEADER_BYTES {
            self.truncated = true;
            return;
        }
        self.header_bytes += bytes;
        self.headers.push(Header {
            name: kept.map_or_else(
                || Cow::Owned(String::from_utf8_lossy(name).to_ascii_lowercase()),
                Cow::Borrowed,
            ),
            value: String::from_utf8_lossy(value).into_owned(),
        });
    }

    fn into_message(self) -> Message {
        let Pending {
            start,
            headers,
            start_ns,
            end_ns,
            body_bytes,
            truncated,
            ..
        } = self;
        match start {
            StartLine::Request {
                method,
                target,
                version_minor,
            } => Message::Request(Request {
                method,
                target,
                version_minor,
                headers,
                start_ns,
                end_ns,
                body_bytes,
                truncated,
            }),
            StartLine::Response {
                status,
                version_minor,
            } => Message::Response(Response {
                status,
                version_minor,
                headers,
                start_ns,
                end_ns,
                body_bytes,
                truncated,
            }),
        }
    }
}

/// What the request a response answers implies for its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answers {
    Head,
    Connect,
    Other,
}

/// Progress through a chunk-size line: hex size, then anything (extensions,
/// whitespace, CR) up to LF.
#[derive(Debug, Default, Clone, Copy)]
struct ChunkLine {
    size: u64,
    has_digit: bool,
    in_extension: bool,
    len: usize,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Outside any known message: waiting for a syscall whose data begins
    /// with a start line.
    Seeking,
    /// Between messages: the next byte starts one.
    Idle,
    /// Buffering the start line; `start_ns` is its first byte's syscall.
    StartLine {
        start_ns: u64,
    },
    Headers,
    Body {
        remaining: u64,
    },
    ChunkSize(ChunkLine),
    ChunkData {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    ChunkEnd {
        cr: bool,
    },
    Trailers {
        line_len: usize,
        bytes: usize,
    },
    /// A response delimited by the connection's close.
    UntilClose,
    /// Lost track of the body's end: the next start line (or the close)
    /// ends the message.
    UntilResync,
}

/// How a message's body is delimited, decided at the end of its head.
enum Body {
    /// A 1xx other than 101: dropped, the real response follows.
    Interim,
    /// 101 or an accepted CONNECT: the stream stops being HTTP.
    Switch,
    Length(u64),
    Chunked,
    Close,
    Resync,
}

/// Parser for one direction of one connection. Memory is bounded: one line
/// buffer of at most 16 KiB, one pending message's target and kept headers
/// and a short queue of request methods; under 100 KiB at worst, and a few
/// hundred bytes between messages.
#[derive(Debug)]
pub struct Http1Parser {
    role: Role,
    state: State,
    detected: Detected,
    /// Whether a syscall with data was seen: only the first one may decide
    /// that the stream is not HTTP.
    classified: bool,
    /// After losing sync, the queue of request methods no longer lines up
    /// with the responses; see [`Http1Parser::begin_message`].
    lost_sync: bool,
    line: Vec<u8>,
    /// Discarding the rest of an overlong header line up to its LF.
    skipping_line: bool,
    msg: Option<Pending>,
    methods: VecDeque<Answers>,
    /// Headers kept in messages (lowercase names); `None` keeps them all.
    /// Framing headers are read either way.
    kept_headers: Option<&'static [&'static str]>,
}

impl Http1Parser {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            state: State::Seeking,
            detected: Detected::Unknown,
            classified: false,
            lost_sync: false,
            line: Vec::new(),
            skipping_line: false,
            msg: None,
            methods: VecDeque::new(),
            kept_headers: None,
        }
    }

    /// A parser whose messages keep only the headers named here (lowercase):
    /// the others cost two allocations each and nobody reads them.
    pub fn keeping_only(role: Role, headers: &'static [&'static str]) -> Self {
        Self {
            kept_headers: Some(headers),
            ..Self::new(role)
        }
    }

    pub fn detected(&self) -> Detected {
        self.detected
    }

    /// Heap bytes held for the message in progress, for memory accounting.
    pub fn retained_bytes(&self) -> usize {
        let headers = self.msg.as_ref().map_or(0, |m| {
            m.headers.capacity() * size_of::<Header>()
                + m.headers
                    .iter()
                    .map(|h| {
                        let name = match &h.name {
                            Cow::Owned(name) => name.capacity(),
                            Cow::Borrowed(_) => 0,
                        };
                        name + h.value.capacity()
                    })
                    .sum::<usize>()
                + match &m.start {
                    StartLine::Request { target, .. } => target.capacity(),
                    StartLine::Response { .. } => 0,
                }
        });
        self.line.capacity() + headers + self.methods.capacity() * size_of::<Answers>()
    }

    /// One syscall's data. `captured` is the first bytes of it
    /// (captured.len() <= total_len); bytes captured.len()..total_len
    /// happened but were not seen. `ts_ns` is that syscall's timestamp.
    /// Completed messages are appended to `out`.
    pub fn feed(&mut self, captured: &[u8], total_len: u64, ts_ns: u64, out: &mut Vec<Message>) {
        if self.detected == Detected::NotHttp || total_len == 0 {
            return;
        }
        // Only total_len bytes were transferred; anything captured beyond
        // that is not payload.
        let captured = usize::try_from(total_len)
            .ok()
            .and_then(|n| captured.get(..n))
            .unwrap_or(captured);
        let unseen = total_len.saturating_sub(captured.len() as u64);
        if self.begin_syscall(captured, unseen, ts_ns, out) {
            let mut data = captured;
            let mut stalled = 0;
            while !data.is_empty() && self.detected != Detected::NotHttp {
                let used = self.step(data, ts_ns, out);
                data = data.get(used..).unwrap_or_default();
                // A step consumes nothing only when it changes state, and
                // never twice in a row; guard the agent against a bug here.
                stalled = if used == 0 { stalled + 1 } else { 0 };
                debug_assert!(stalled <= 2, "http1 parser stalled in {:?}", self.state);
                if stalled > 2 {
                    break;
                }
            }
            if unseen > 0 && self.detected != Detected::NotHttp {
                self.skip_unseen(unseen, ts_ns, out);
            }
        }
        // Whatever message is still open received bytes from this syscall.
        if let Some(msg) = &mut self.msg {
            msg.end_ns = ts_ns.max(msg.start_ns);
        }
        if !matches!(self.state, State::StartLine { .. } | State::Headers)
            && self.line.capacity() > KEEP_BUFFER
        {
            self.line = Vec::new();
        }
    }

    /// For Role::Response: the method of the request the next response
    /// answers (HEAD means no body). Responses consume these in order; with
    /// none queued a response is assumed not to answer HEAD.
    pub fn push_request_method(&mut self, method: &str) {
        if self.methods.len() >= MAX_PENDING_METHODS {
            self.methods.pop_front();
        }
        self.methods.push_back(match method {
            "HEAD" => Answers::Head,
            "CONNECT" => Answers::Connect,
            _ => Answers::Other,
        });
    }

    /// The connection closed. A response delimited by the close completes;
    /// any other message still open is emitted as truncated. Its `end_ns` is
    /// that of the last syscall carrying its bytes, not the close's.
    pub fn finish(&mut self, _ts_ns: u64, out: &mut Vec<Message>) {
        match self.state {
            State::UntilClose => self.emit_open(false, out),
            State::Headers
            | State::Body { .. }
            | State::ChunkSize(_)
            | State::ChunkData { .. }
            | State::ChunkEnd { .. }
            | State::Trailers { .. }
            | State::UntilResync => self.emit_open(true, out),
            State::Seeking | State::Idle | State::StartLine { .. } => {}
        }
        self.state = State::Seeking;
        self.msg = None;
        self.line = Vec::new();
        self.skipping_line = false;
        self.methods.clear();
    }

    /// Decisions made only where a syscall's data begins: classifying the
    /// stream, and finding a message start after lost sync. Returns whether
    /// the syscall's bytes are to be parsed.
    fn begin_syscall(&mut self, data: &[u8], unseen: u64, ts: u64, out: &mut Vec<Message>) -> bool {
        let first = !self.classified && !data.is_empty();
        self.classified |= !data.is_empty();
        match self.state {
            State::Seeking => {
                if !data.is_empty() && start_prefix_ok(self.role, data) {
                    self.begin_message(ts);
                    true
                } else {
                    if first && clearly_not_http(data) {
                        self.detected = Detected::NotHttp;
                    }
                    false
                }
            }
            State::UntilResync => {
                if begins_with_start_line(self.role, data, unseen > 0) {
                    self.emit_open(true, out);
                    self.begin_message(ts);
                }
                true
            }
            // A start line left unfinished (by garbage that only looked like
            // one) yields to a syscall beginning with a whole start line,
            // unless that syscall's data completes it.
            State::StartLine { .. } => {
                if begins_with_start_line(self.role, data, false)
                    && !self.completes_start_line(data)
                {
                    self.begin_message(ts);
                }
                true
            }
            _ => true,
        }
    }

    fn completes_start_line(&self, data: &[u8]) -> bool {
        let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
        let mut line = self.line.clone();
        line.extend(data.iter().take(end.min(MAX_LINE)));
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        parse_start_line(self.role, &line).is_some()
    }

    fn begin_message(&mut self, ts: u64) {
        // Responses skipped while out of sync left their requests' methods
        // queued. Clients rarely pipeline, so the newest is the best guess.
        if self.lost_sync {
            while self.methods.len() > 1 {
                self.methods.pop_front();
            }
            self.lost_sync = false;
        }
        self.line.clear();
        self.skipping_line = false;
        self.state = State::StartLine { start_ns: ts };
    }

    /// Consumes a prefix of `data` in the current state; returns its length.
    /// Returns 0 only after a state change, so the caller's loop advances.
    fn step(&mut self, data: &[u8], ts: u64, out: &mut Vec<Message>) -> usize {
        match self.state {
            // The rest of this syscall cannot start a message.
            State::Seeking => data.len(),
            State::Idle => self.step_idle(data, ts),
            State::StartLine { .. } | State::Headers => self.step_head(data, ts, out),
            State::Body { remaining } => self.step_body(remaining, data, ts, out),
            State::ChunkSize(line) => self.step_chunk_size(line, data),
            State::ChunkData { remaining } => self.step_chunk_data(remaining, data),
            State::ChunkEnd { cr } => self.step_chunk_end(cr, data),
            State::Trailers { line_len, bytes } => {
                self.step_trailers(line_len, bytes, data, ts, out)
            }
            State::UntilClose | State::UntilResync => {
                self.add_body(data.len() as u64);
                data.len()
            }
        }
    }

    fn step_idle(&mut self, data: &[u8], ts: u64) -> usize {
        // Stray CRLFs between messages are tolerated, as servers do.
        let skipped = data
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if skipped < data.len() {
            self.begin_message(ts);
        }
        skipped
    }

    fn step_head(&mut self, data: &[u8], ts: u64, out: &mut Vec<Message>) -> usize {
        let (part, used, complete) = match memchr::memchr(b'\n', data) {
            Some(i) => (data.get(..i).unwrap_or_default(), i + 1, true),
            None => (data, data.len(), false),
        };
        if self.skipping_line {
            self.skipping_line = !complete;
            return used;
        }
        let in_start_line = matches!(self.state, State::StartLine { .. });
        if self.line.len() + part.len() > MAX_LINE {
            if in_start_line {
                self.state = State::Seeking;
                self.lost_sync = true;
                return data.len();
            }
            self.drop_long_header(part, complete);
            return used;
        }
        if complete && self.line.is_empty() {
            // The whole line is in this syscall (the usual case): read in
            // place rather than copied into the line buffer.
            if in_start_line && !(plausible_line_bytes(part) && start_prefix_ok(self.role, part)) {
                self.state = State::Seeking;
                self.lost_sync = true;
                return data.len();
            }
            self.head_line(part.strip_suffix(b"\r").unwrap_or(part), ts, out);
            return used;
        }
        self.reserve_line(part.len());
        self.line.extend_from_slice(part);
        if in_start_line && !(plausible_line_bytes(part) && start_prefix_ok(self.role, &self.line))
        {
            // Not a start line after all: give up on this syscall at once
            // rather than buffer garbage.
            self.state = State::Seeking;
            self.lost_sync = true;
            return data.len();
        }
        if complete {
            self.end_of_line(ts, out);
        }
        used
    }

    /// Grows the line buffer by doubling, but never past [`MAX_LINE`].
    fn reserve_line(&mut self, more: usize) {
        let need = self.line.len() + more;
        if need > self.line.capacity() {
            let want = need.next_power_of_two().clamp(64, MAX_LINE).max(need);
            self.line.reserve_exact(want - self.line.len());
        }
    }

    fn drop_long_header(&mut self, part: &[u8], complete: bool) {
        let start = self.line.get(..64).unwrap_or(&self.line);
        let start: Vec<u8> = start.iter().chain(part).take(64).copied().collect();
        if let Some(msg) = &mut self.msg {
            msg.framing.note_lost(&start);
            msg.truncated = true;
        }
        self.line.clear();
        self.skipping_line = !complete;
    }

    fn end_of_line(&mut self, ts: u64, out: &mut Vec<Message>) {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        self.head_line(&line, ts, out);
        line.clear();
        self.line = line;
    }

    /// A whole start or header line, without its CRLF.
    fn head_line(&mut self, line: &[u8], ts: u64, out: &mut Vec<Message>) {
        match self.state {
            State::StartLine { start_ns } => match parse_start_line(self.role, line) {
                Some(start) => self.open(start, start_ns),
                None => {
                    self.state = State::Seeking;
                    self.lost_sync = true;
                }
            },
            State::Headers if line.is_empty() => self.end_of_head(false, ts, out),
            State::Headers => self.header_line(line),
            _ => {}
        }
    }

    fn open(&mut self, start: StartLine, start_ns: u64) {
        self.detected = Detected::Http;
        self.msg = Some(Pending::new(start, start_ns));
        self.state = State::Headers;
    }

    fn header_line(&mut self, line: &[u8]) {
        let Some(msg) = &mut self.msg else { return };
        // A malformed line is ignored: the peer accepted the message, and
        // an observer gains nothing by rejecting it.
        let Some((name, value)) = split_header(line) else {
            return;
        };
        msg.framing.note(name, value);
        match self.kept_headers {
            None => msg.keep_header(name, None, value),
            Some(kept) => {
                if let Some(k) = kept
                    .iter()
                    .find(|k| name.eq_ignore_ascii_case(k.as_bytes()))
                {
                    msg.keep_header(name, Some(k), value);
                }
            }
        }
    }

    /// The header block ended, or (`cut`) is assumed to end with this
    /// syscall because the capture limit hid the rest.
    fn end_of_head(&mut self, cut: bool, ts: u64, out: &mut Vec<Message>) {
        let Some(msg) = &mut self.msg else {
            self.state = State::Idle;
            return;
        };
        msg.truncated |= cut;
        let body = match msg.start {
            StartLine::Request { .. } => request_body(&msg.framing),
            // Interim responses answer no request: the queue is left alone.
            StartLine::Response { status, .. } if is_interim(status) => Body::Interim,
            StartLine::Response { status, .. } => {
                let answers = self.methods.pop_front().unwrap_or(Answers::Other);
                response_body(status, answers, &msg.framing, cut)
            }
        };
        match body {
            Body::Interim => {
                self.msg = None;
                self.state = State::Idle;
            }
            Body::Switch => {
                self.emit(ts, out);
                self.detected = Detected::NotHttp;
                self.state = State::Seeking;
            }
            Body::Length(0) => self.emit(ts, out),
            Body::Length(remaining) => self.state = State::Body { remaining },
            Body::Chunked => self.state = State::ChunkSize(ChunkLine::default()),
            Body::Close => self.state = State::UntilClose,
            Body::Resync => self.lose_sync_in_message(),
        }
    }

    fn step_body(&mut self, remaining: u64, data: &[u8], ts: u64, out: &mut Vec<Message>) -> usize {
        let n = remaining.min(data.len() as u64);
        self.add_body(n);
        if n == remaining {
            self.emit(ts, out);
        } else {
            self.state = State::Body {
                remaining: remaining - n,
            };
        }
        usize::try_from(n).unwrap_or(data.len())
    }

    fn step_chunk_size(&mut self, mut line: ChunkLine, data: &[u8]) -> usize {
        for (i, &b) in data.iter().enumerate() {
            line.len += 1;
            let digit = (b as char).to_digit(16);
            let ok = match b {
                _ if line.len > MAX_CHUNK_LINE => false,
                b'\n' => {
                    self.add_body(i as u64 + 1);
                    self.end_of_chunk_line(line);
                    return i + 1;
                }
                _ if line.in_extension => true,
                b';' | b' ' | b'\t' | b'\r' => {
                    line.in_extension = true;
                    line.has_digit
                }
                _ => match digit.and_then(|d| line.size.checked_mul(16)?.checked_add(d.into())) {
                    Some(size) => {
                        line.size = size;
                        line.has_digit = true;
                        true
                    }
                    // Not hex, or a size beyond u64.
                    None => false,
                },
            };
            if !ok {
                self.add_body(i as u64);
                self.lose_sync_in_message();
                return i;
            }
        }
        self.add_body(data.len() as u64);
        self.state = State::ChunkSize(line);
        data.len()
    }

    fn end_of_chunk_line(&mut self, line: ChunkLine) {
        match line {
            ChunkLine {
                has_digit: false, ..
            } => self.lose_sync_in_message(),
            ChunkLine { size: 0, .. } => {
                self.state = State::Trailers {
                    line_len: 0,
                    bytes: 0,
                }
            }
            ChunkLine { size, .. } => self.state = State::ChunkData { remaining: size },
        }
    }

    fn step_chunk_data(&mut self, remaining: u64, data: &[u8]) -> usize {
        let n = remaining.min(data.len() as u64);
        self.add_body(n);
        self.state = if n == remaining {
            State::ChunkEnd { cr: false }
        } else {
            State::ChunkData {
                remaining: remaining - n,
            }
        };
        usize::try_from(n).unwrap_or(data.len())
    }

    fn step_chunk_end(&mut self, cr: bool, data: &[u8]) -> usize {
        match (cr, data.first()) {
            (false, Some(b'\r')) => self.state = State::ChunkEnd { cr: true },
            (_, Some(b'\n')) => self.state = State::ChunkSize(ChunkLine::default()),
            _ => {
                self.lose_sync_in_message();
                return 0;
            }
        }
        self.add_body(1);
        1
    }

    fn step_trailers(
        &mut self,
        mut line_len: usize,
        mut bytes: usize,
        data: &[u8],
        ts: u64,
        out: &mut Vec<Message>,
    ) -> usize {
        for (i, &b) in data.iter().enumerate() {
            bytes += 1;
            if bytes > MAX_HEADER_BYTES {
                self.add_body(i as u64);
                self.lose_sync_in_message();
                return i;
            }
            match b {
                b'\n' if line_len == 0 => {
                    self.add_body(i as u64 + 1);
                    self.emit(ts, out);
                    return i + 1;
                }
                b'\n' => line_len = 0,
                b'\r' => {}
                _ => line_len += 1,
            }
        }
        self.add_body(data.len() as u64);
        self.state = State::Trailers { line_len, bytes };
        data.len()
    }

    /// `n` bytes at the end of the syscall happened but were not captured.
    fn skip_unseen(&mut self, n: u64, ts: u64, out: &mut Vec<Message>) {
        match self.state {
            State::Seeking | State::UntilClose | State::UntilResync => self.add_body(n),
            // The next message starts in bytes never seen.
            State::Idle => {
                self.state = State::Seeking;
                self.lost_sync = true;
            }
            State::StartLine { start_ns } => self.cut_start_line(start_ns, ts, out),
            State::Headers => {
                self.line.clear();
                self.skipping_line = false;
                self.end_of_head(true, ts, out);
            }
            State::Body { remaining } => {
                let k = remaining.min(n);
                self.add_body(k);
                if k < remaining {
                    self.state = State::Body {
                        remaining: remaining - k,
                    };
                    return;
                }
                self.emit(ts, out);
                if n > k {
                    self.state = State::Seeking;
                    self.lost_sync = true;
                }
            }
            State::ChunkData { remaining } => {
                self.add_body(n);
                // The CRLF after the data is certain, and writers commonly
                // send size line, data and CRLF in one syscall.
                self.state = match n.checked_sub(remaining) {
                    None => State::ChunkData {
                        remaining: remaining - n,
                    },
                    Some(0) => State::ChunkEnd { cr: false },
                    Some(1) => State::ChunkEnd { cr: true },
                    Some(2) => State::ChunkSize(ChunkLine::default()),
                    Some(_) => return self.lose_sync_in_message(),
                };
            }
            State::ChunkEnd { cr } => {
                self.add_body(n);
                self.state = match (cr, n) {
                    (false, 1) => State::ChunkEnd { cr: true },
                    (false, 2) | (true, 1) => State::ChunkSize(ChunkLine::default()),
                    _ => return self.lose_sync_in_message(),
                };
            }
            // Chunk-size lines fell among the unseen bytes.
            State::ChunkSize(_) | State::Trailers { .. } => {
                self.add_body(n);
                self.lose_sync_in_message();
            }
        }
    }

    /// The capture limit cut the start line: keep it if enough was seen.
    fn cut_start_line(&mut self, start_ns: u64, ts: u64, out: &mut Vec<Message>) {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        match parse_partial_start_line(self.role, &line) {
            Some(start) => {
                self.open(start, start_ns);
                self.end_of_head(true, ts, out);
            }
            None => {
                self.state = State::Seeking;
                self.lost_sync = true;
            }
        }
        line.clear();
        self.line = line;
    }

    fn add_body(&mut self, n: u64) {
        if let Some(msg) = &mut self.msg {
            msg.body_bytes = msg.body_bytes.saturating_add(n);
        }
    }

    fn lose_sync_in_message(&mut self) {
        if let Some(msg) = &mut self.msg {
            msg.truncated = true;
        }
        self.lost_sync = true;
        self.state = State::UntilResync;
    }

    /// The message's last byte was in the syscall stamped `ts`.
    fn emit(&mut self, ts: u64, out: &mut Vec<Message>) {
        if let Some(mut msg) = self.msg.take() {
            msg.end_ns = ts.max(msg.start_ns);
            out.push(msg.into_message());
        }
        self.state = State::Idle;
    }

    /// Emits the open message as it stands, ended by its last syscall.
    fn emit_open(&mut self, truncated: bool, out: &mut Vec<Message>) {
        if let Some(mut msg) = self.msg.take() {
            msg.truncated |= truncated;
            out.push(msg.into_message());
        }
        self.state = State::Idle;
    }
}

/// The body a head's framing headers describe. `unchunked` is what a
/// transfer-encoding other than chunked means, `unframed` what a head with
/// neither header means: the two places requests and responses differ.
fn framed_body(framing: &Framing, unchunked: Body, unframed: Body) -> Body {
    match framing {
        Framing { unknown: true, .. } => Body::Resync,
        Framing {
            transfer_encoding: true,
            chunked: true,
            ..
        } => Body::Chunked,
        Framing {
            transfer_encoding: true,
            ..
        } => unchunked,
        Framing {
            content_length: Some(n),
            ..
        } => Body::Length(*n),
        _ => unframed,
    }
}

/// Requests cannot be delimited by close: no length means no body, even
/// when the head was cut.
fn request_body(framing: &Framing) -> Body {
    framed_body(framing, Body::Resync, Body::Length(0))
}

fn is_interim(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}

fn response_body(status: u16, answers: Answers, framing: &Framing, cut: bool) -> Body {
    match status {
        101 => return Body::Switch,
        200..=299 if answers == Answers::Connect => return Body::Switch,
        204 | 304 => return Body::Length(0),
        _ if answers == Answers::Head => return Body::Length(0),
        _ => {}
    }
    // A cut head may have hidden the length: only a later status line tells
    // where such a response ended.
    let unframed = if cut { Body::Resync } else { Body::Close };
    framed_body(framing, Body::Close, unframed)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ws(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ws(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(d.into())
    })
}

/// The bytes of an RFC 9110 token, as a table: header names are checked
/// byte by byte on every message.
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

fn is_token_byte(b: u8) -> bool {
    TOKEN_BYTES[usize::from(b)]
}

fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line.get(..colon)?;
    let value = line.get(colon + 1..)?;
    (!name.is_empty() && name.iter().all(|&b| is_token_byte(b))).then(|| (name, trim(value)))
}

/// Bytes that can appear in a start line (HT may appear in a reason phrase,
/// CR before LF); anything else means binary data, not HTTP.
fn plausible_line_bytes(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t' || b == b'\r')
}

/// Whether `data` matches `template` as far as both go.
fn matches_template(data: &[u8], template: &[u8]) -> bool {
    data.iter().zip(template).all(|(&b, &t)| match t {
        b'#' => b.is_ascii_digit(),
        b'$' => (b'1'..=b'5').contains(&b),
        _ => b == t,
    })
}

/// Whether `data` (non-empty) can be the beginning of a start line for
/// `role`, judged on its first bytes only.
fn start_prefix_ok(role: Role, data: &[u8]) -> bool {
    match role {
        Role::Request => METHODS.iter().any(|m| {
            data.iter()
                .zip(m.as_bytes().iter().chain(b" "))
                .all(|(a, b)| a == b)
        }),
        Role::Response => matches_template(data, STATUS_TEMPLATE),
    }
}

/// Whether a syscall's data begins with a whole valid start line, or, when
/// the capture limit cut the syscall, with as much of one as was captured.
fn begins_with_start_line(role: Role, data: &[u8], cut: bool) -> bool {
    let head = data.get(..MAX_LINE).unwrap_or(data);
    match head.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let line = head.get(..i).unwrap_or_default();
            parse_start_line(role, line.strip_suffix(b"\r").unwrap_or(line)).is_some()
        }
        None => cut && parse_partial_start_line(role, head).is_some(),
    }
}

fn parse_version(v: &[u8]) -> Option<u8> {
    if v.len() != VERSION_TEMPLATE.len() || !matches_template(v, VERSION_TEMPLATE) {
        return None;
    }
    v.last().and_then(|&d| digit(d))
}

fn digit(b: u8) -> Option<u8> {
    b.is_ascii_digit().then(|| b - b'0')
}

fn valid_target(target: &[u8]) -> bool {
    !target.is_empty() && target.iter().all(|&b| b > b' ' && b != 0x7f)
}

fn known_method(token: &[u8]) -> Option<&'static str> {
    METHODS.iter().copied().find(|m| m.as_bytes() == token)
}

fn parse_start_line(role: Role, line: &[u8]) -> Option<StartLine> {
    match role {
        Role::Request => {
            let mut parts = line.split(|&b| b == b' ');
            let method = known_method(parts.next()?)?;
            let target = parts.next()?;
            let version_minor = parse_version(parts.next()?)?;
            if parts.next().is_some() || !valid_target(target) {
                return None;
            }
            Some(StartLine::Request {
                method,
                target: String::from_utf8_lossy(target).into_owned(),
                version_minor,
            })
        }
        Role::Response => parse_status_line(line),
    }
}

/// A start line without its end: the request line needs its method and
/// some target, the status line its code.
fn parse_partial_start_line(role: Role, line: &[u8]) -> Option<StartLine> {
    match role {
        Role::Request => {
            let mut parts = line.split(|&b| b == b' ');
            let method = known_method(parts.next()?)?;
            let target = parts.next()?;
            let version = parts.next();
            if parts.next().is_some()
                || !valid_target(target)
                || !version.is_none_or(|v| matches_template(v, VERSION_TEMPLATE))
            {
                return None;
            }
            Some(StartLine::Request {
                method,
                target: String::from_utf8_lossy(target).into_owned(),
                version_minor: version.and_then(parse_version).unwrap_or(1),
            })
        }
        Role::Response => parse_status_line(line),
    }
}

fn parse_status_line(line: &[u8]) -> Option<StartLine> {
    let head = line.get(..STATUS_TEMPLATE.len())?;
    if !matches_template(head, STATUS_TEMPLATE) {
        return None;
    }
    if !matches!(line.get(STATUS_TEMPLATE.len()), None | Some(b' ')) {
        return None;
    }
    let version_minor = digit(*head.get(7)?)?;
    let status = head
        .get(9..12)?
        .iter()
        .try_fold(0u16, |n, &d| Some(n * 10 + u16::from(digit(d)?)))?;
    Some(StartLine::Response {
        status,
        version_minor,
    })
}

/// Whether the first syscall of a stream rules HTTP out. Deliberately
/// narrow, since a stream joined late may begin mid-body: binary bytes
/// (TLS records, length-prefixed protocols) or the shape of a line protocol
/// (an upper-case verb that is no HTTP method, Redis RESP).
fn clearly_not_http(data: &[u8]) -> bool {
    let head = data.get(..SNIFF_BYTES).unwrap_or(data);
    if !head
        .iter()
        .all(|&b| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    {
        return true;
    }
    let word_len = head
        .iter()
        .position(|&b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(0);
    let verb = head
        .get(..word_len)
        .is_some_and(|w| !w.is_empty() && w.iter().all(u8::is_ascii_uppercase));
    let resp = matches!(head.first(), Some(b'*' | b'$' | b'+' | b'-' | b':'))
        && head.windows(2).any(|w| w == b"\r\n");
    verb || resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds each chunk whole as one syscall stamped 1, 2, 3...
    fn parse(role: Role, chunks: &[&[u8]]) -> (Vec<Message>, Http1Parser) {
        let mut parser = Http1Parser::new(role);
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            parser.feed(chunk, chunk.len() as u64, i as u64 + 1, &mut out);
        }
        (out, parser)
    }

    fn request(m: &Message) -> &Request {
        match m {
            Message::Request(r) => r,
            Message::Response(r) => panic!("expected a request, got {r:?}"),
        }
    }

    fn response(m: &Message) -> &Response {
        match m {
            Message::Response(r) => r,
            Message::Request(r) => panic!("expected a response, got {r:?}"),
        }
    }

    fn times(m: &Message) -> (u64, u64) {
        match m {
            Message::Request(r) => (r.start_ns, r.end_ns),
            Message::Response(r) => (r.start_ns, r.end_ns),
        }
    }

    fn without_times(m: &Message) -> Message {
        let mut m = m.clone();
        match &mut m {
            Message::Request(r) => (r.start_ns, r.end_ns) = (0, 0),
            Message::Response(r) => (r.start_ns, r.end_ns) = (0, 0),
        }
        m
    }

    /// Small deterministic generator, so tests need no dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    const REQUESTS: &[u8] = b"POST /api/items?id=7&x=y HTTP/1.1\r\nHost: shop.example:8080\r\n\
        Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":\"xyz\"}\
        GET /health HTTP/1.0\r\nUser-Agent: probe\r\n\r\n";

    /// Answers POST, HEAD, GET: an interim 100, a chunked 200 with an
    /// extension and trailers, a HEAD answer with a length but no body, a 304.
    const RESPONSES: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=value\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n\
        HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n";

    fn response_parser() -> Http1Parser {
        let mut parser = Http1Parser::new(Role::Response);
        for method in ["POST", "HEAD", "GET"] {
            parser.push_request_method(method);
        }
        parser
    }

    fn feed_split(role: Role, data: &[u8], cuts: &[usize]) -> Vec<Message> {
        let mut parser = match role {
            Role::Request => Http1Parser::new(role),
            Role::Response => response_parser(),
        };
        let mut out = Vec::new();
        let mut from = 0;
        for (i, &to) in cuts.iter().chain([data.len()].iter()).enumerate() {
            let chunk = &data[from..to];
            parser.feed(chunk, chunk.len() as u64, i as u64 + 1, &mut out);
            from = to;
        }
        out
    }

    /// Expected timestamps of each message of `data` (whose messages begin
    /// at `starts` and end at `ends`, exclusive) for syscalls cut at `cuts`.
    fn expected_times(starts: &[usize], ends: &[usize], cuts: &[usize]) -> Vec<(u64, u64)> {
        let syscall_of = |byte: usize| cuts.iter().filter(|&&c| c <= byte).count() as u64 + 1;
        starts
            .iter()
            .zip(ends)
            .map(|(&s, &e)| (syscall_of(s), syscall_of(e - 1)))
            .collect()
    }

    fn check_every_split(role: Role, data: &[u8], starts: &[usize], ends: &[usize]) {
        let whole = feed_split(role, data, &[]);
        assert_eq!(whole.len(), starts.len(), "{whole:#?}");
        let expect: Vec<Message> = whole.iter().map(without_times).collect();
        let check = |cuts: &[usize]| {
            let got = feed_split(role, data, cuts);
            let got_plain: Vec<Message> = got.iter().map(without_times).collect();
            assert_eq!(got_plain, expect, "cuts {cuts:?}");
            let got_times: Vec<(u64, u64)> = got.iter().map(times).collect();
            assert_eq!(
                got_times,
                expected_times(starts, ends, cuts),
                "cuts {cuts:?}"
            );
        };
        for k in 1..data.len() {
            check(&[k]);
        }
        for i in 1..data.len() {
            for j in i + 1..data.len() {
                check(&[i, j]);
            }
        }
        check(&(1..data.len()).collect::<Vec<_>>());
    }

    #[test]
    fn token_bytes_are_rfc_9110_tchar() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_token_byte(b), tchar, "{b:#x}");
        }
    }

    #[test]
    fn keeping_only_drops_other_headers_but_still_frames() {
        let mut p = Http1Parser::keeping_only(Role::Response, &["host"]);
        let mut out = Vec::new();
        let data =
            b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No\r\n\r\n";
        p.feed(data, data.len() as u64, 1, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(response(&out[0]).headers.len(), 0);
        assert_eq!(response(&out[0]).body_bytes, 2);
    }

    #[test]
    fn keeping_only_reads_kept_and_framing_headers_in_any_case() {
        let mut p = Http1Parser::keeping_only(Role::Request, &["host", "user-agent"]);
        let mut out = Vec::new();
        let data = b"POST /a HTTP/1.1\r\nX-Skip: 1\r\nHOST: h\r\nuSer-Agent: u\r\n\
                     Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                     GET /b HTTP/1.1\r\nCONTENT-LENGTH: 1\r\n\r\nx";
        p.feed(data, data.len() as u64, 1, &mut out);
        assert_eq!(out.len(), 2);
        let first = request(&out[0]);
        assert_eq!(first.header("host"), Some("h"));
        assert_eq!(first.header("user-agent"), Some("u"));
        assert_eq!(first.headers.len(), 2);
        assert_eq!(request(&out[1]).target, "/b");
        // Framed as by a parser keeping every header.
        let (all, _) = parse(Role::Request, &[data]);
        let bodies = |m: &[Message]| m.iter().map(|m| request(m).body_bytes).collect::<Vec<_>>();
        assert_eq!(bodies(&out), bodies(&all));
        assert_eq!(bodies(&out), [13, 1]);
    }

    #[test]
    fn every_split_position_gives_the_same_requests() {
        let second = REQUESTS
            .windows(4)
            .position(|w| w == b"GET ")
            .expect("second request");
        check_every_split(
            Role::Request,
            REQUESTS,
            &[0, second],
            &[second, REQUESTS.len()],
        );
        let whole = feed_split(Role::Request, REQUESTS, &[]);
        let post = request(&whole[0]);
        assert_eq!(post.method, "POST");
        assert_eq!(post.target, "/api/items?id=7&x=y");
        assert_eq!(post.version_minor, 1);
        assert_eq!(post.body_bytes, 11);
        assert_eq!(post.header("HOST"), Some("shop.example:8080"));
        assert!(!post.truncated);
        let get = request(&whole[1]);
        assert_eq!((get.method, get.version_minor), ("GET", 0));
        assert_eq!(get.body_bytes, 0);
    }

    #[test]
    fn every_split_position_gives_the_same_responses() {
        let starts: Vec<usize> = RESPONSES
            .windows(8)
            .enumerate()
            .filter(|(_, w)| *w == b"HTTP/1.1")
            .map(|(i, _)| i)
            .skip(1) // the interim 100 is not emitted
            .collect();
        let ends: Vec<usize> = starts
            .iter()
            .skip(1)
            .copied()
            .chain([RESPONSES.len()])
            .collect();
        check_every_split(Role::Response, RESPONSES, &starts, &ends);
        let whole = feed_split(Role::Response, RESPONSES, &[]);
        let statuses: Vec<u16> = whole.iter().map(|m| response(m).status).collect();
        assert_eq!(statuses, [200, 200, 304]);
        let chunked = response(&whole[0]);
        assert_eq!(
            chunked.body_bytes,
            b"5;name=value\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n".len() as u64
        );
        assert!(!chunked.truncated);
        assert_eq!(response(&whole[1]).body_bytes, 0);
        assert_eq!(response(&whole[1]).header("content-length"), Some("10"));
    }

    #[test]
    fn keep_alive_thousand_requests() {
        let mut parser = Http1Parser::new(Role::Request);
        let mut out = Vec::new();
        for i in 0..1000u64 {
            let body = "b".repeat((i % 50) as usize);
            let req = format!(
                "PUT /items/{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            parser.feed(req.as_bytes(), req.len() as u64, 10 * i, &mut out);
        }
        assert_eq!(out.len(), 1000);
        for (i, m) in out.iter().enumerate() {
            let r = request(m);
            assert_eq!(r.target, format!("/items/{i}"));
            assert_eq!(r.body_bytes, i as u64 % 50);
            assert_eq!((r.start_ns, r.end_ns), (10 * i as u64, 10 * i as u64));
            assert!(!r.truncated);
        }
        assert_eq!(parser.detected(), Detected::Http);
    }

    #[test]
    fn pipelined_requests_in_one_syscall() {
        let data = b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 2\r\n\r\nokGET /d HTTP/1.1\r\n";
        let (out, _) = parse(Role::Request, &[data, b"\r\n"]);
        let targets: Vec<&str> = out.iter().map(|m| request(m).target.as_str()).collect();
        assert_eq!(targets, ["/a", "/b", "/c", "/d"]);
        assert_eq!(times(&out[2]), (1, 1));
        assert_eq!(times(&out[3]), (1, 2));
    }

    #[test]
    fn pipelined_responses_follow_the_method_queue() {
        let mut parser = Http1Parser::new(Role::Response);
        for method in ["GET", "HEAD", "GET"] {
            parser.push_request_method(method);
        }
        let data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
            HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let mut out = Vec::new();
        parser.feed(data, data.len() as u64, 5, &mut out);
        let bodies: Vec<u64> = out.iter().map(|m| response(m).body_bytes).collect();
        assert_eq!(bodies, [2, 0, 3]);
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let body: &[u8] = b"4;a=1;b=\"x y\"\r\nWiki\r\nA \r\n0123456789\r\n0;last\r\nExpires: never\r\nX-Sum: 9\r\n\r\n";
        let head: &[u8] = b"POST /upload HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        let (out, _) = parse(Role::Request, &[head, body, b"GET /next HTTP/1.1\r\n\r\n"]);
        assert_eq!(out.len(), 2);
        let r = request(&out[0]);
        assert_eq!(r.body_bytes, body.len() as u64);
        assert_eq!(times(&out[0]), (1, 2));
        assert!(!r.truncated);
        assert_eq!(r.header("expires"), None, "trailers are not headers");
        assert_eq!(request(&out[1]).target, "/next");
    }

    #[test]
    fn head_response_has_no_body() {
        let mut parser = Http1Parser::new(Role::Response);
        parser.push_request_method("HEAD");
        let mut out = Vec::new();
        let data = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx";
        parser.feed(data, data.len() as u64, 1, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(response(&out[0]).body_bytes, 0);
        assert_eq!(response(&out[1]).status, 404);
        assert_eq!(response(&out[1]).body_bytes, 1);
    }

    #[test]
    fn responses_204_and_304_have_no_body() {
        let (out, _) = parse(
            Role::Response,
            &[
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ],
        );
        let got: Vec<(u16, u64, (u64, u64))> = out
            .iter()
            .map(|m| (response(m).status, response(m).body_bytes, times(m)))
            .collect();
        assert_eq!(got, [(204, 0, (1, 1)), (304, 0, (2, 2)), (200, 0, (3, 3))]);
    }

    #[test]
    fn interim_responses_are_not_emitted_and_keep_the_queue() {
        let mut parser = Http1Parser::new(Role::Response);
        parser.push_request_method("GET");
        parser.push_request_method("HEAD");
        let mut out = Vec::new();
        for (i, data) in [
            &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
        ]
        .iter()
        .enumerate()
        {
            parser.feed(data, data.len() as u64, i as u64 + 1, &mut out);
        }
        assert_eq!(out.len(), 2);
        assert_eq!(response(&out[0]).body_bytes, 3);
        assert_eq!(
            times(&out[0]),
            (3, 3),
            "the interim responses are not part of it"
        );
        assert_eq!(response(&out[1]).body_bytes, 0, "the second answers HEAD");
    }

    #[test]
    fn switching_protocols_ends_http() {
        let upgrade: &[u8] =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        let (out, parser) = parse(Role::Response, &[upgrade, b"HTTP/1.1 200 OK\r\n\r\n"]);
        assert_eq!(out.len(), 1);
        assert_eq!(response(&out[0]).status, 101);
        assert_eq!(parser.detected(), Detected::NotHttp);
    }

    #[test]
    fn accepted_connect_ends_http() {
        let mut parser = Http1Parser::new(Role::Response);
        parser.push_request_method("CONNECT");
        let mut out = Vec::new();
        let data = b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x01";
        parser.feed(data, data.len() as u64, 1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(parser.detected(), Detected::NotHttp);
    }

    #[test]
    fn close_delimited_response_completes_on_finish() {
        let (mut out, mut parser) = parse(
            Role::Response,
            &[
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst",
                b"HTTP/1.1 200 OK\r\n\r\n", // body text, not a new response
                b"last",
            ],
        );
        assert!(out.is_empty());
        parser.finish(99, &mut out);
        assert_eq!(out.len(), 1);
        let r = response(&out[0]);
        assert_eq!(r.body_bytes, 5 + 19 + 4);
        assert_eq!((r.start_ns, r.end_ns), (1, 3));
        assert!(!r.truncated);
        assert_eq!(r.version_minor, 0);
    }

    #[test]
    fn finish_emits_an_unfinished_message_as_truncated() {
        let (mut out, mut parser) = parse(
            Role::Response,
            &[b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\npartial"],
        );
        parser.finish(5, &mut out);
        let r = response(&out[0]);
        assert!(r.truncated);
        assert_eq!((r.status, r.body_bytes, r.end_ns), (500, 7, 1));
        let mut again = Vec::new();
        parser.finish(6, &mut again);
        assert!(again.is_empty());
    }

    fn long_header_block(content_length: Option<u64>) -> Vec<u8> {
        let mut head = b"GET /big HTTP/1.1\r\nHost: h\r\n".to_vec();
        if let Some(n) = content_length {
            head.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
        }
        for i in 0..50 {
            head.extend_from_slice(format!("X-Filler-{i:02}: {}\r\n", "f".repeat(30)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert!(head.len() > 2000);
        head
    }

    #[test]
    fn header_block_cut_by_the_capture_limit() {
        let mut parser = Http1Parser::new(Role::Request);
        let mut out = Vec::new();
        let head = long_header_block(Some(300));
        parser.feed(&head[..512], head.len() as u64, 1, &mut out);
        parser.feed(&[b'x'; 300], 300, 2, &mut out);
        parser.feed(b"GET /after HTTP/1.1\r\n\r\n", 23, 3, &mut out);
        assert_eq!(out.len(), 2);
        let r = request(&out[0]);
        assert!(r.truncated);
        assert_eq!((r.body_bytes, r.start_ns, r.end_ns), (300, 1, 2));
        assert_eq!(r.header("host"), Some("h"));
        assert!(r.headers.len() < 40, "only the captured headers");
        // The header the capture cut in its middle is dropped, not kept short.
        assert!(
            r.headers
                .iter()
                .filter(|h| h.name.starts_with("x-filler"))
                .all(|h| h.value.len() == 30)
        );
        assert!(!request(&out[1]).truncated);

        // Without a length a cut request has no body.
        let head = long_header_block(None);
        let mut parser = Http1Parser::new(Role::Request);
        let mut out = Vec::new();
        parser.feed(&head[..512], head.len() as u64, 1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(times(&out[0]), (1, 1));
    }

    #[test]
    fn cut_response_head_without_length_lasts_until_resync() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        head.extend_from_slice(&long_header_block(None)[19..]);
        let mut parser = Http1Parser::new(Role::Response);
        let mut out = Vec::new();
        parser.feed(&head[..512], head.len() as u64, 1, &mut out);
        parser.feed(b"body bytes", 4000, 2, &mut out);
        parser.feed(b"more", 4, 3, &mut out);
        assert!(out.is_empty());
        let next = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        parser.feed(next, next.len() as u64, 4, &mut out);
        assert_eq!(out.len(), 2);
        let first = response(&out[0]);
        assert!(first.truncated);
        assert_eq!(
            (first.start_ns, first.end_ns, first.body_bytes),
            (1, 3, 4004)
        );
        assert_eq!(response(&out[1]).status, 404);
        assert!(!response(&out[1]).truncated);
    }

    #[test]
    fn start_line_cut_by_the_capture_limit() {
        let target = format!("/search?q={}", "a".repeat(1000));
        let line = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        let mut parser = Http1Parser::new(Role::Request);
        let mut out = Vec::new();
        parser.feed(&line.as_bytes()[..512], line.len() as u64, 1, &mut out);
        assert_eq!(out.len(), 1);
        let r = request(&out[0]);
        assert!(r.truncated);
        assert_eq!(r.target, target[..508]);
        assert_eq!(r.method, "GET");
    }

    #[test]
    fn hundred_megabyte_body_with_tiny_captures() {
        const SIZE: u64 = 100 * 1024 * 1024;
        let mut parser = Http1Parser::new(Role::Response);
        let mut out = Vec::new();
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
        parser.feed(head.as_bytes(), head.len() as u64, 1, &mut out);
        let mut left = SIZE;
        let mut ts = 1;
        while left > 0 {
            let n = left.min(64 * 1024 + 7);
            ts += 1;
            parser.feed(b"0123456789abcdef", n, ts, &mut out);
            left -= n;
        }
        parser.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            38,
            ts + 1,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        let r = response(&out[0]);
        assert_eq!(
            (r.body_bytes, r.start_ns, r.end_ns, r.truncated),
            (SIZE, 1, ts, false)
        );

        // The same in one syscall, head and body, 512 bytes captured.
        let mut parser = Http1Parser::new(Role::Response);
        let mut out = Vec::new();
        let head_len = head.len() as u64;
        let mut data = head.into_bytes();
        data.resize(512, b'z');
        parser.feed(&data, SIZE + head_len, 7, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(response(&out[0]).body_bytes, SIZE);
        assert_eq!(times(&out[0]), (7, 7));
    }

    #[test]
    fn unseen_bytes_past_the_body_lose_sync_until_a_start_line() {
        let data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut parser = Http1Parser::new(Role::Response);
        let mut out = Vec::new();
        parser.feed(data, data.len() as u64 + 30, 1, &mut out);
        parser.feed(b"tail of an unseen response", 26, 2, &mut out);
        parser.feed(b"HTTP/1.1 201 Created\r\n\r\n", 24, 3, &mut out);
        parser.finish(4, &mut out);
        let got: Vec<(u16, bool)> = out
            .iter()
            .map(|m| (response(m).status, response(m).truncated))
            .collect();
        assert_eq!(got, [(200, false), (201, false)]);
    }

    #[test]
    fn chunk_size_in_unseen_bytes_resyncs_on_the_next_start_line() {
        let mut parser = Http1Parser::new(Role::Response);
        let mut out = Vec::new();
        let data =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n";
        parser.feed(data, 5000, 1, &mut out);
        parser.feed(b"more body", 9, 2, &mut out);
        assert!(out.is_empty());
        parser.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            38,
            3,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        let r = response(&out[0]);
        assert!(r.truncated);
        assert_eq!((r.end_ns, r.body_bytes), (2, 5000 - 47 + 9));
        assert!(!response(&out[1]).truncated);
    }

    #[test]
    fn chunk_data_unseen_keeps_sync() {
        let mut parser = Http1Parser::new(Role::Response);
        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        parser.feed(head, head.len() as u64, 1, &mut out);
        // Size line, data and CRLF in one syscall; then data and CRLF apart.
        parser.feed(b"3e8\r\n0123", 5 + 1000 + 2, 2, &mut out);
        parser.feed(b"a\r\n01", 3 + 4, 3, &mut out);
        parser.feed(b"23", 6, 4, &mut out);
        parser.feed(b"\r", 2, 5, &mut out);
        parser.feed(b"0\r\n\r\n", 5, 6, &mut out);
        assert_eq!(out.len(), 1);
        assert!(!response(&out[0]).truncated);
        assert_eq!(times(&out[0]), (1, 6));
        assert_eq!(response(&out[0]).body_bytes, 1007 + 7 + 6 + 2 + 5);
    }

    #[test]
    fn resync_after_garbage() {
        let (out, parser) = parse(
            Role::Request,
            &[
                b"GET /one HTTP/1.1\r\n\r\n",
                b"\x00\x01\x02 garbage",
                b"GET /still-garbage-inside",
                b"GET /two HTTP/1.1\r\n\r\n",
                b"GETTER /nope HTTP/1.1\r\n\r\n",
                b"DELETE /three HTTP/1.1\r\n\r\n",
            ],
        );
        let targets: Vec<&str> = out.iter().map(|m| request(m).target.as_str()).collect();
        assert_eq!(targets, ["/one", "/two", "/three"]);
        assert_eq!(times(&out[1]), (4, 4));
        assert_eq!(parser.detected(), Detected::Http);
    }

    #[test]
    fn resync_trims_stale_methods() {
        let mut parser = Http1Parser::new(Role::Response);
        let mut out = Vec::new();
        for method in ["GET", "GET", "HEAD"] {
            parser.push_request_method(method);
        }
        // The first response's body end is lost; the responses to the two
        // queued GETs are never seen; the next one answers the HEAD.
        parser.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            5000,
            1,
            &mut out,
        );
        parser.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            39,
            2,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(response(&out[1]).body_bytes, 0);
    }

    #[test]
    fn late_start_waits_for_a_start_line() {
        let (out, parser) = parse(Role::Request, &[b"{\"json\": \"rest of a body\"}"]);
        assert!(out.is_empty());
        assert_eq!(parser.detected(), Detected::Unknown);
        let (out, parser) = parse(
            Role::Response,
            &[
                b"<html>tail</html>",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(times(&out[0]), (2, 2));
        assert_eq!(parser.detected(), Detected::Http);
    }

    #[test]
    fn non_http_is_detected_from_the_first_syscall() {
        let client_hello: &[u8] = &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5a, 0x1b, 0x2c,
        ];
        let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
        let binary = random.bytes(4096);
        let cases: [(Role, &[u8]); 8] = [
            (Role::Request, client_hello),
            (Role::Response, client_hello),
            (Role::Request, b"*1\r\n$4\r\nPING\r\n"),
            (Role::Request, b"PING\r\n"),
            (Role::Response, b"+PONG\r\n"),
            (Role::Response, b"$5\r\nhello\r\n"),
            (Role::Request, &binary),
            (Role::Response, &binary),
        ];
        for (role, data) in cases {
            let (out, parser) = parse(
                role,
                &[data, b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"],
            );
            assert_eq!(parser.detected(), Detected::NotHttp, "{role:?} {data:?}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn http_seen_is_never_overturned() {
        let (_, parser) = parse(
            Role::Request,
            &[b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello"],
        );
        assert_eq!(parser.detected(), Detected::Http);
    }

    #[test]
    fn header_limits_drop_the_excess() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            req.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"Content-Length: 4\r\n\r\nbody");
        let (out, _) = parse(Role::Request, &[&req]);
        let r = request(&out[0]);
        assert_eq!(r.headers.len(), MAX_HEADERS);
        assert!(r.truncated);
        assert_eq!(r.body_bytes, 4, "framing headers count even when dropped");

        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..10 {
            req.extend_from_slice(format!("X-Big{i}: {}\r\n", "v".repeat(1000)).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        let (out, _) = parse(Role::Request, &[&req]);
        let r = request(&out[0]);
        assert_eq!(r.headers.len(), 8);
        assert!(r.truncated);
    }

    #[test]
    fn header_names_are_lowercase_and_lookup_ignores_case() {
        let (out, _) = parse(
            Role::Request,
            &[b"OPTIONS * HTTP/1.1\r\nX-Trace-ID:  abc \t\r\ntraceparent: 00-x\r\nBad Line\r\n: empty\r\n\r\n"],
        );
        let r = request(&out[0]);
        assert_eq!(r.target, "*");
        assert_eq!(r.headers[0].name, "x-trace-id");
        assert_eq!(r.header("X-TRACE-ID"), Some("abc"));
        assert_eq!(r.header("TraceParent"), Some("00-x"));
        assert_eq!(r.headers.len(), 2, "malformed lines are skipped");
    }

    #[test]
    fn invalid_content_length_loses_sync() {
        for cl in [
            "-1",
            "18446744073709551616",
            "99999999999999999999999",
            "1, 2",
            "",
            "0x10",
            "+5",
        ] {
            let data = format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\nbody");
            let (mut out, mut parser) = parse(
                Role::Response,
                &[data.as_bytes(), b"HTTP/1.1 204 No Content\r\n\r\n"],
            );
            parser.finish(9, &mut out);
            assert_eq!(out.len(), 2, "{cl}");
            assert!(response(&out[0]).truncated, "{cl}");
            assert_eq!(response(&out[1]).status, 204);
        }
        // Agreeing repeats are one length.
        let (out, _) = parse(
            Role::Request,
            &[b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\ncontent-length: 3\r\n\r\nabc"],
        );
        assert_eq!(request(&out[0]).body_bytes, 3);
        assert!(!request(&out[0]).truncated);
    }

    #[test]
    fn timestamps_never_run_backwards_within_a_message() {
        let mut parser = Http1Parser::new(Role::Request);
        let mut out = Vec::new();
        parser.feed(b"GET / HTTP/1.1\r\n", 16, 100, &mut out);
        parser.feed(b"\r\n", 2, 50, &mut out);
        assert_eq!(times(&out[0]), (100, 100));
    }

    #[test]
    fn capture_beyond_total_is_not_payload() {
        let mut parser = Http1Parser::new(Role::Request);
        let mut out = Vec::new();
        parser.feed(b"GET / HTTP/1.1\r\n\r\nGARBAGE", 18, 1, &mut out);
        parser.feed(b"GET /b HTTP/1.1\r\n\r\n", 19, 2, &mut out);
        assert_eq!(out.len(), 2);
    }

    /// Feeds `data` in pieces of `size` and checks memory stays bounded.
    fn feed_hostile(role: Role, data: &[u8], size: usize) -> (Vec<Message>, Http1Parser) {
        let mut parser = Http1Parser::new(role);
        parser.push_request_method("GET");
        let mut out = Vec::new();
        let mut max_retained = 0;
        for (i, piece) in data.chunks(size).enumerate() {
            parser.feed(piece, piece.len() as u64, i as u64, &mut out);
            max_retained = max_retained.max(parser.retained_bytes());
        }
        parser.finish(u64::MAX, &mut out);
        assert!(max_retained <= 64 * 1024, "retained {max_retained} bytes");
        for m in &out {
            let (start, end) = times(m);
            assert!(start <= end);
        }
        (out, parser)
    }

    #[test]
    fn hostile_inputs_neither_panic_nor_grow() {
        let huge_value = format!(
            "GET / HTTP/1.1\r\nX-Huge: {}\r\nContent-Length: 2\r\n\r\nokGET /n HTTP/1.1\r\n\r\n",
            "a".repeat(1 << 20)
        );
        let huge_target = format!(
            "GET /{} HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\n",
            "a".repeat(1 << 20)
        );
        let huge_name = format!("GET / HTTP/1.1\r\n{}: x\r\n\r\n", "N".repeat(1 << 20));
        let long_cl = format!(
            "GET / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            "1".repeat(40_000)
        );
        let endless_size = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            "f".repeat(1 << 20)
        );
        let endless_ext = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}",
            "e".repeat(1 << 20)
        );
        let endless_trailer = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: {}",
            "t".repeat(1 << 20)
        );
        let many_headers = format!("HTTP/1.1 200 OK\r\n{}\r\n", "A: b\r\n".repeat(100_000));
        let mut random = XorShift(42);
        let mut mixed = b"GET / HTTP/1.1\r\n".to_vec();
        mixed.extend(random.bytes(100_000));
        let cases: Vec<(Role, Vec<u8>)> = vec![
            (Role::Request, huge_value.into_bytes()),
            (Role::Request, huge_target.into_bytes()),
            (Role::Request, huge_name.into_bytes()),
            (Role::Request, long_cl.into_bytes()),
            (Role::Response, endless_size.into_bytes()),
            (Role::Response, endless_ext.into_bytes()),
            (Role::Response, endless_trailer.into_bytes()),
            (Role::Response, many_headers.into_bytes()),
            (
                Role::Response,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n"
                    .to_vec(),
            ),
            (
                Role::Response,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc"
                    .to_vec(),
            ),
            (
                Role::Response,
                b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nabc".to_vec(),
            ),
            (
                Role::Request,
                b"GET /\0nul HTTP/1.1\r\nX-Nul: a\0b\r\n\r\n".to_vec(),
            ),
            (
                Role::Request,
                b"GET / HTTP/1.1\r\nX-Bad: \xff\xfe\xc3\x28\r\n\r\n".to_vec(),
            ),
            (Role::Request, mixed),
            (Role::Response, random.bytes(200_000)),
        ];
        for (role, data) in &cases {
            for size in [1, 7, 512, 1 << 20] {
                feed_hostile(*role, data, size);
            }
        }
        // The huge header is dropped, the message and its successor kept.
        let (out, _) = feed_hostile(Role::Request, &cases[0].1, 4096);
        assert_eq!(out.len(), 2);
        assert!(request(&out[0]).truncated);
        assert_eq!(request(&out[0]).body_bytes, 2);
        // Invalid UTF-8 is replaced, NUL kept as text.
        let (out, _) = feed_hostile(Role::Request, &cases[12].1, 3);
        assert_eq!(
            request(&out[0]).header("x-bad"),
            Some("\u{fffd}\u{fffd}\u{fffd}(")
        );
        // A size beyond u64 loses sync; the message ends as truncated.
        let (out, _) = feed_hostile(Role::Response, &cases[8].1, 5);
        assert!(response(&out[0]).truncated);
    }

    #[test]
    fn a_million_tiny_feeds() {
        let req: &[u8] = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut parser = Http1Parser::new(Role::Request);
        let mut out = Vec::new();
        let mut ts = 0;
        while ts < 1_000_000 {
            for byte in req.chunks(1) {
                parser.feed(byte, 1, ts, &mut out);
                ts += 1;
            }
        }
        assert_eq!(out.len(), 1_000_000usize.div_ceil(req.len()));
        assert!(parser.retained_bytes() <= KEEP_BUFFER * 2);

        let mut parser = Http1Parser::new(Role::Response);
        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        parser.feed(head, head.len() as u64, 0, &mut out);
        for i in 0..1_000_000u64 {
            parser.feed(b"1\r\nx\r\n", 6, i, &mut out);
            assert!(parser.retained_bytes() <= KEEP_BUFFER * 2);
        }
        parser.feed(b"0\r\n\r\n", 5, 1_000_000, &mut out);
        assert_eq!(response(&out[0]).body_bytes, 6_000_000 + 5);
    }
}
