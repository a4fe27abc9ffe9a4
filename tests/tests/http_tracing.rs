//! Zero-instrumentation HTTP tracing against real programs:
//! curl → python3 (ThreadingHTTPServer calling nginx with urllib) → nginx,
//! with and without a W3C traceparent from curl, must give one trace of four
//! correctly parented spans per request. And 1,000 keep-alive requests on
//! one connection give 1,000 nginx server spans with the right statuses.

use std::{collections::BTreeMap, process::Command, time::Duration};

use selfops_tests::{
    Agent, one_agent_at_a_time, privileged, scratch_dir,
    services::{frontend_with, nginx, nginx_with, self_signed_certificate},
    spans::{FlatSpan, KIND_CLIENT, KIND_SERVER, read_spans},
    wait_for,
};

const REQUESTS_EACH: usize = 50;

fn curl(args: &[&str]) {
    let status = Command::new("curl")
        .args(["-s", "-k", "-o", "/dev/null", "--max-time", "10"])
        .args(args)
        .status()
        .expect("curl");
    assert!(status.success(), "curl {args:?}: {status}");
}

fn spans_on_port(spans: &[FlatSpan], port: u16) -> impl Iterator<Item = &FlatSpan> {
    spans
        .iter()
        .filter(move |s| s.attr_int("server.port") == Some(i64::from(port)))
}

/// One line per span, grouped by trace: enough to tell a split trace from
/// a duplicated span or a stray request.
fn summary(by_trace: &BTreeMap<&str, Vec<&FlatSpan>>) -> String {
    let mut out = String::new();
    for (trace_id, spans) in by_trace {
        out.push_str(trace_id);
        out.push('\n');
        for s in spans {
            out.push_str(&format!(
                "  kind {} port {:?} {} {:?} span {} parent {} start {} pid {:?}\n",
                s.kind,
                s.attr_int("server.port"),
                s.name,
                s.attr_str("url.path"),
                s.span_id,
                s.parent_span_id,
                s.start,
                s.resource.get("process.pid"),
            ));
        }
    }
    out
}

fn tracer_metrics(agent: &Agent) -> String {
    agent
        .get("/metrics")
        .lines()
        .filter(|l| l.starts_with("selfops_trace_") || l.starts_with("selfops_sensor_"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn curl_python_nginx_is_one_trace_of_four_spans() {
    if !privileged("curl_python_nginx_is_one_trace_of_four_spans") {
        return;
    }
    topology(false);
}

/// The same over HTTPS: nginx with a self-signed certificate, python
/// serving TLS and calling nginx over TLS, curl -k. The plaintext comes from
/// the OpenSSL uprobes.
#[test]
fn https_curl_python_nginx_is_one_trace_of_four_spans() {
    if !privileged("https_curl_python_nginx_is_one_trace_of_four_spans") {
        return;
    }
    topology(true);
}

/// The socket sensor runs on the hook the agent chose for this kernel:
/// its programs loaded. A program the verifier refuses would otherwise go
/// unnoticed here, as the agent falls back to one that traces the same at
/// a higher cost (raw_syscalls, or the untyped sys_exit tracepoint).
fn assert_preferred_socket_hook(agent: &Agent) {
    let log = agent.log();
    for fallback in [
        "socket sensor falls back to syscall tracepoints",
        "raw sys_exit hook refused",
        "typed raw tracepoint refused",
    ] {
        assert!(!log.contains(fallback), "{fallback}:\n{log}");
    }
}

fn topology(tls: bool) {
    let _turn = one_agent_at_a_time();
    let dir = scratch_dir(if tls { "https-tracing" } else { "http-tracing" });
    let certificate = tls.then(|| self_signed_certificate(&dir));
    let agent = Agent::start(
        if tls {
            "https-tracing-agent"
        } else {
            "http-tracing-agent"
        },
        "export:\n  batch_timeout: 200ms\n",
    );
    assert_preferred_socket_hook(&agent);
    let backend = nginx_with(&dir, certificate.as_ref());
    let front = frontend_with(&dir, backend.port, certificate.as_ref());
    let scheme = if tls { "https" } else { "http" };
    let base = format!("{scheme}://127.0.0.1:{}", front.port);

    let mut traceparents = BTreeMap::new();
    for i in 0..REQUESTS_EACH {
        let trace_id = format!("{:032x}", (0xa11ce_u128 << 64) | (i as u128 + 1));
        let parent_id = format!("{:016x}", 0xb0b_0000 + i as u64 + 1);
        let header = format!("traceparent: 00-{trace_id}-{parent_id}-01");
        curl(&["-H", &header, &format!("{base}/with/{i}?token=secret")]);
        traceparents.insert(trace_id, parent_id);
    }
    for i in 0..REQUESTS_EACH {
        curl(&[&format!("{base}/without/{i}?token=secret")]);
    }

    let traces_file = agent.dir.join("data/traces.jsonl");
    let expected_spans = 4 * 2 * REQUESTS_EACH;
    let spans = wait_for(Duration::from_secs(20), || {
        let spans = read_spans(&traces_file);
        let ours = spans_on_port(&spans, front.port).count() + spans_on_port(&spans, backend.port).count();
        (ours >= expected_spans).then_some(spans)
    })
    .unwrap_or_else(|| {
        let spans = read_spans(&traces_file);
        panic!(
            "expected {expected_spans} spans on ports {} and {}; got {} and {}\nmetrics:\n{}\nlog:\n{}",
            front.port,
            backend.port,
            spans_on_port(&spans, front.port).count(),
            spans_on_port(&spans, backend.port).count(),
            agent.get("/metrics"),
            agent.log()
        )
    });

    let mut by_trace: BTreeMap<&str, Vec<&FlatSpan>> = BTreeMap::new();
    for span in spans_on_port(&spans, front.port).chain(spans_on_port(&spans, backend.port)) {
        by_trace.entry(&span.trace_id).or_default().push(span);
    }
    let broken: Vec<_> = by_trace.values().filter(|spans| spans.len() != 4).collect();
    assert_eq!(
        by_trace.len(),
        2 * REQUESTS_EACH,
        "one trace per curl request; traces without four spans: {broken:#?}\nevery trace:\n{}\ntracer metrics:\n{}",
        summary(&by_trace),
        tracer_metrics(&agent)
    );

    let (mut with, mut without) = (0, 0);
    for (trace_id, spans) in &by_trace {
        assert_eq!(spans.len(), 4, "trace {trace_id}: {spans:#?}");
        let find = |kind: i64, port: u16| {
            spans
                .iter()
                .copied()
                .find(|s| s.kind == kind && s.attr_int("server.port") == Some(i64::from(port)))
                .unwrap_or_else(|| {
                    panic!("trace {trace_id}: no kind {kind} span on port {port}: {spans:#?}")
                })
        };
        let curl_client = find(KIND_CLIENT, front.port);
        let py_server = find(KIND_SERVER, front.port);
        let py_client = find(KIND_CLIENT, backend.port);
        let nginx_server = find(KIND_SERVER, backend.port);

        assert_eq!(
            curl_client.resource_str("process.executable.name"),
            Some("curl")
        );
        assert!(
            py_server
                .resource_str("process.executable.name")
                .is_some_and(|n| n.starts_with("python3"))
        );
        assert_eq!(
            py_client.resource["process.pid"],
            py_server.resource["process.pid"]
        );
        assert_eq!(
            nginx_server.resource_str("process.executable.name"),
            Some("nginx")
        );

        // Parent links: curl → python server → python client → nginx.
        assert_eq!(
            py_server.parent_span_id, curl_client.span_id,
            "trace {trace_id}"
        );
        assert_eq!(
            py_client.parent_span_id, py_server.span_id,
            "trace {trace_id}"
        );
        assert_eq!(
            nginx_server.parent_span_id, py_client.span_id,
            "trace {trace_id}"
        );

        match traceparents.get(*trace_id) {
            Some(parent_id) => {
                with += 1;
                // The request sent with a traceparent is the CLIENT span
                // whose id is the header's parent-id.
                assert_eq!(&curl_client.span_id, parent_id);
                assert!(curl_client.parent_span_id.is_empty());
            }
            None => {
                without += 1;
                assert!(
                    curl_client.parent_span_id.is_empty(),
                    "curl span is the root"
                );
            }
        }

        // Attributes (current HTTP semantic conventions).
        for s in [curl_client, py_server, py_client, nginx_server] {
            assert_eq!(s.attr_str("http.request.method"), Some("GET"));
            assert_eq!(s.attr_int("http.response.status_code"), Some(200));
            assert_eq!(s.attr_str("network.protocol.version"), Some("1.1"));
            assert_eq!(s.name, "GET");
            assert!(s.start <= s.end && s.start > 0, "{s:#?}");
            assert_ne!(s.status_code, 2, "no error status on 200: {s:#?}");
        }
        let path = py_server.attr_str("url.path").unwrap_or_default();
        assert!(
            path.starts_with("/with/") || path.starts_with("/without/"),
            "{path}"
        );
        assert!(!path.contains('?'), "query strings are left out: {path}");
        assert_eq!(nginx_server.attr_str("url.path"), Some("/index.html"));
        assert_eq!(py_server.attr_str("client.address"), Some("127.0.0.1"));
        assert!(
            curl_client
                .attr_str("user_agent.original")
                .is_some_and(|ua| ua.starts_with("curl/"))
        );
        assert!(
            curl_client
                .attr_str("url.full")
                .is_some_and(|u| u.ends_with(path) && !u.contains('?'))
        );
        // Children happen within their parents.
        assert!(curl_client.start <= py_server.start && py_server.end <= curl_client.end);
        assert!(py_client.start <= nginx_server.start && nginx_server.end <= py_client.end);
    }
    assert_eq!((with, without), (REQUESTS_EACH, REQUESTS_EACH));
}

#[test]
fn keep_alive_thousand_requests_on_one_connection() {
    if !privileged("keep_alive_thousand_requests_on_one_connection") {
        return;
    }
    let _turn = one_agent_at_a_time();
    let dir = scratch_dir("http-keepalive");
    let agent = Agent::start("http-keepalive-agent", "export:\n  batch_timeout: 200ms\n");
    let backend = nginx(&dir);
    // One curl, 1,000 URLs: curl reuses one connection; every tenth is a 500.
    let urls: String = (0..1000)
        .map(|i| {
            let path = if i % 10 == 9 {
                "/status/500".to_owned()
            } else {
                format!("/index.html?n={i}")
            };
            format!(
                "url = \"http://127.0.0.1:{}{path}\"\noutput = \"/dev/null\"\n",
                backend.port
            )
        })
        .collect();
    let config = dir.join("curl.cfg");
    std::fs::write(&config, urls).expect("curl config");
    let out = Command::new("curl")
        .args(["-s", "-K"])
        .arg(&config)
        .args(["-w", "%{num_connects}\n"])
        .output()
        .expect("curl");
    assert!(out.status.success());
    let connects: usize = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<usize>().ok())
        .sum();
    assert_eq!(connects, 1, "curl used one connection");

    let traces_file = agent.dir.join("data/traces.jsonl");
    let servers = wait_for(Duration::from_secs(20), || {
        let spans = read_spans(&traces_file);
        let servers: Vec<FlatSpan> = spans_on_port(&spans, backend.port)
            .filter(|s| s.kind == KIND_SERVER)
            .cloned()
            .collect();
        (servers.len() >= 1000).then_some(servers)
    })
    .unwrap_or_else(|| panic!("fewer than 1000 server spans\n{}", agent.get("/metrics")));
    assert_eq!(servers.len(), 1000);
    let errors = servers
        .iter()
        .filter(|s| s.attr_int("http.response.status_code") == Some(500))
        .count();
    assert_eq!(errors, 100);
    for s in &servers {
        let status = s.attr_int("http.response.status_code").unwrap_or_default();
        let path = s.attr_str("url.path").unwrap_or_default();
        assert_eq!(status == 500, path == "/status/500", "{s:#?}");
        if status == 500 {
            assert_eq!(s.status_code, 2, "5xx server span has status Error");
            assert_eq!(s.attr_str("error.type"), Some("500"));
        }
        let micros = (s.end - s.start) / 1000;
        assert!(
            micros < 1_000_000,
            "implausible duration {micros} µs: {s:#?}"
        );
    }
}
