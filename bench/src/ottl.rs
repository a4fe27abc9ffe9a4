//! `selfops-bench ottl`: what OTTL statements cost per span. 1,000,000
//! HTTP server spans, in requests of 512 spans, go through (a) a pass-through
//! that clones and walks each request as the processed run does, and (b) a
//! realistic set of 10 transform statements, in the same run, alternating,
//! on one thread. The difference between the two is the statements' cost.
//! Times are the thread's CPU time, so that other load on a shared machine
//! (waiting for a core) does not count; cache pressure from it still does.
//!
//! This file only uses `selfops-ottl` and the OTLP types, so that the OTTL
//! crate can run it too (`cargo run --release -p selfops-ottl --example
//! bench`) without building the agent.

use std::hint::black_box;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use selfops_ottl::{Context, ContextStatements, Transform, TransformConfig};

const SPANS: usize = 1_000_000;
const BATCH: usize = 512;
/// Distinct requests built; each run clones them in turn.
const TEMPLATES: usize = 16;
const ROUNDS: usize = 5;

/// Ten statements of the kind a redaction and normalisation pipeline has:
/// most spans match a few of them, a minority carries a card number.
pub const STATEMENTS: [&str; 10] = [
    r#"set(attributes["card"], SHA256(attributes["card"])) where attributes["card"] != nil"#,
    r#"delete_key(attributes, "password")"#,
    r#"replace_pattern(attributes["url.path"], "/users/[0-9]+", "/users/{id}")"#,
    r#"set(status.code, STATUS_CODE_ERROR) where attributes["http.response.status_code"] >= 500"#,
    r#"set(attributes["api"], true) where IsMatch(attributes["url.path"], "^/api/")"#,
    r#"delete_matching_keys(attributes, "^internal\\.")"#,
    r#"set(name, Concat([attributes["http.request.method"], attributes["http.route"]], " ")) where kind == SPAN_KIND_SERVER and attributes["http.route"] != nil"#,
    r#"set(attributes["deployment.environment"], resource.attributes["deployment.environment"]) where attributes["deployment.environment"] == nil"#,
    r#"keep_keys(attributes, ["http.request.method", "url.path", "url.scheme", "http.response.status_code", "http.route", "server.address", "server.port", "user_agent.original", "client.address", "network.peer.address", "card", "api", "deployment.environment"])"#,
    r#"truncate_all(attributes, 128)"#,
];

fn s(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(v.to_owned())),
    })
}

fn i(v: i64) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::IntValue(v)),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value,
        ..Default::default()
    }
}

/// A deterministic generator, so that every run processes the same spans.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const ROUTES: [(&str, &str); 5] = [
    ("/api/users/{id}", "/api/users/"),
    ("/api/orders", "/api/orders"),
    ("/static/app.js", "/static/app.js"),
    ("/checkout", "/checkout"),
    ("/healthz", "/healthz"),
];

fn http_span(rng: &mut Rng, n: u64) -> Span {
    let (route, path) = ROUTES[rng.below(ROUTES.len() as u64) as usize];
    let path = if path.ends_with('/') {
        format!("{path}{}", rng.below(100_000))
    } else {
        path.to_owned()
    };
    let status = match rng.below(100) {
        0..=1 => 503,
        2..=6 => 404,
        _ => 200,
    };
    let method = if rng.below(4) == 0 { "POST" } else { "GET" };
    let mut attributes = vec![
        kv("http.request.method", s(method)),
        kv("url.path", s(&path)),
        kv("url.scheme", s("https")),
        kv("http.response.status_code", i(status)),
        kv("http.route", s(route)),
        kv("server.address", s("shop.example.com")),
        kv("server.port", i(443)),
        kv(
            "user_agent.original",
            s(
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
            ),
        ),
        kv(
            "client.address",
            s(&format!("10.0.{}.{}", rng.below(256), rng.below(256))),
        ),
        kv("network.peer.address", s("10.1.0.7")),
    ];
    // A minority carries data to redact or internal debugging keys.
    if rng.below(20) == 0 {
        attributes.push(kv("card", s("4111111111111111")));
    }
    if rng.below(30) == 0 {
        attributes.push(kv("password", s("hunter2")));
    }
    if rng.below(10) == 0 {
        attributes.push(kv("internal.debug", s("trace-dump")));
    }
    Span {
        trace_id: rng.next().to_le_bytes().repeat(2),
        span_id: n.to_le_bytes().to_vec(),
        name: format!("{method} {route}"),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000 + n * 1_000,
        end_time_unix_nano: 1_700_000_000_000_000_000 + n * 1_000 + rng.below(5_000_000),
        attributes,
        ..Default::default()
    }
}

fn batch(rng: &mut Rng, first: u64) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("shop")),
                    kv("deployment.environment", s("prod")),
                    kv("host.name", s("node-1")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "selfops".into(),
                    ..Default::default()
                }),
                spans: (0..BATCH as u64)
                    .map(|k| http_span(rng, first + k))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// What a processed request is walked for, so both runs read the result.
fn digest(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|span| span.attributes.len() + span.name.len())
        .sum()
}

/// CPU time consumed by the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One pass over 1,000,000 spans: clone each request, apply `process`,
/// walk the result.
fn pass(
    templates: &[ExportTraceServiceRequest],
    mut process: impl FnMut(&mut ExportTraceServiceRequest),
) -> Duration {
    let batches = SPANS.div_ceil(BATCH);
    let start = thread_cpu();
    let mut total = 0;
    for b in 0..batches {
        let mut request = templates[b % templates.len()].clone();
        process(&mut request);
        total += digest(&request);
    }
    black_box(total);
    thread_cpu().saturating_sub(start)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = TransformConfig {
        trace_statements: vec![ContextStatements {
            context: Context::Span,
            conditions: vec![],
            statements: STATEMENTS.iter().map(|s| s.to_string()).collect(),
        }],
        ..Default::default()
    };
    let transform = Transform::new(&config)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let templates: Vec<_> = (0..TEMPLATES)
        .map(|t| batch(&mut rng, (t * BATCH) as u64))
        .collect();
    let spans = (SPANS.div_ceil(BATCH) * BATCH) as f64;

    // Check the statements do what they say once, and warm up.
    let mut errors = 0;
    let mut check = templates[0].clone();
    errors += transform.traces(&mut check)?.errors;
    let _ = pass(&templates, |_| {});

    let mut plain = Vec::new();
    let mut ottl = Vec::new();
    for _ in 0..ROUNDS {
        plain.push(pass(&templates, |r| {
            black_box(r);
        }));
        ottl.push(pass(&templates, |r| match transform.traces(r) {
            Ok(out) => errors += out.errors,
            Err(_) => errors += 1,
        }));
    }
    let plain = median(plain);
    let ottl = median(ottl);
    let per_span = |d: Duration| d.as_secs_f64() * 1e9 / spans;
    let statements_ns = (per_span(ottl) - per_span(plain)).max(0.0);
    println!(
        "ottl: {} spans ({BATCH} per request, {} attributes each on average), 1 thread, CPU time, median of {ROUNDS} rounds",
        spans as u64,
        digest_attributes(&templates)
    );
    println!(
        "  pass-through (clone + walk):      {:>10.0} spans/s per core  ({:.0} ns/span)",
        spans / plain.as_secs_f64(),
        per_span(plain)
    );
    println!(
        "  {} statements:                    {:>10.0} spans/s per core  ({:.0} ns/span)",
        STATEMENTS.len(),
        spans / ottl.as_secs_f64(),
        per_span(ottl)
    );
    println!(
        "  statements alone:                 {:>10.0} spans/s per core  ({statements_ns:.0} ns/span, {:.1} ns per statement per span)",
        if statements_ns > 0.0 {
            1e9 / statements_ns
        } else {
            f64::INFINITY
        },
        statements_ns / STATEMENTS.len() as f64
    );
    println!(
        "  throughput ratio (statements / pass-through): {:.2}",
        plain.as_secs_f64() / ottl.as_secs_f64()
    );
    println!("  run-time errors: {errors}");
    Ok(())
}

fn digest_attributes(templates: &[ExportTraceServiceRequest]) -> String {
    let (spans, attributes) = templates
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .fold((0usize, 0usize), |(n, a), s| {
            (n + 1, a + s.attributes.len())
        });
    format!("{:.1}", attributes as f64 / spans.max(1) as f64)
}
