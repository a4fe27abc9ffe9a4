//! Bad input on traced connections: garbage and truncated HTTP give no span
//! and no panic; a 100 MB response gives one span with the right duration
//! while the agent's memory stays flat.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use selfops_tests::{
    Agent, one_agent_at_a_time, privileged, scratch_dir,
    services::nginx,
    spans::{KIND_CLIENT, KIND_SERVER, read_spans},
    wait_for,
};

/// A server that answers whatever it reads with `reply`, once per
/// connection, for `connections` connections.
fn answering_server(
    reply: &'static [u8],
    connections: usize,
) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(reply);
        }
    });
    (port, handle)
}

fn exchange(port: u16, request: &[u8]) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(request).expect("write");
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.read_to_end(&mut sink);
}

#[test]
fn garbage_and_truncated_http_give_no_span() {
    if !privileged("garbage_and_truncated_http_give_no_span") {
        return;
    }
    let _turn = one_agent_at_a_time();
    let agent = Agent::start("http-bad-input", "export:\n  batch_timeout: 200ms\n");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (port, server) = answering_server(b"\x16\x03\x01\x00\xff garbage \x00\x01 not http", 4);
    exchange(port, &garbage);
    exchange(port, b"GET /truncated HTTP/1.1\r\nHost: exa");
    exchange(
        port,
        b"GET /ok HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    );
    exchange(port, b"\r\n\r\nHTTP/1.1 200\r\n\r\nGET / HTTP/9.9\r\n\r\n");
    server.join().expect("server thread");

    // A real request afterwards still traces: the agent is alive and sane.
    let dir = scratch_dir("http-bad-input");
    let backend = nginx(&dir);
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null"])
        .arg(format!("http://127.0.0.1:{}/index.html", backend.port))
        .status()
        .expect("curl");
    assert!(status.success());
    let traces = agent.dir.join("data/traces.jsonl");
    let seen = wait_for(Duration::from_secs(10), || {
        let spans = read_spans(&traces);
        spans
            .iter()
            .any(|s| s.attr_int("server.port") == Some(i64::from(backend.port)))
            .then_some(spans)
    })
    .expect("the nginx request after the garbage is traced");
    let on_garbage_port: Vec<_> = seen
        .iter()
        .filter(|s| s.attr_int("server.port") == Some(i64::from(port)))
        .collect();
    assert!(
        on_garbage_port.is_empty(),
        "spans from garbage: {on_garbage_port:#?}"
    );
    assert_eq!(
        agent.metric("selfops_sensor_events_malformed_total", &["socket"]),
        0.0
    );
}

#[test]
fn hundred_megabyte_response_is_one_span_with_flat_memory() {
    if !privileged("hundred_megabyte_response_is_one_span_with_flat_memory") {
        return;
    }
    let _turn = one_agent_at_a_time();
    let dir = scratch_dir("http-large");
    // Profiling off: its unwind tables (bounded by profile.unwind_table_bytes)
    // are built when a busy process, the agent itself included, is first
    // sampled, which may fall inside the download and would be counted as
    // growth with the body.
    let agent = Agent::start(
        "http-large-agent",
        "export:\n  batch_timeout: 200ms\nprofile:\n  enabled: false\n",
    );
    let backend = nginx(&dir);
    let size: u64 = 100 * 1024 * 1024;
    let file = std::fs::File::create(dir.join("www/large.bin")).expect("large file");
    file.set_len(size).expect("sparse 100 MB");
    let rss_before = agent.metric("selfops_agent_resident_memory_bytes", &[]);

    let start = Instant::now();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--limit-rate",
            "200M",
            "-w",
            "%{size_download}",
        ])
        .arg(format!("http://127.0.0.1:{}/large.bin", backend.port))
        .output()
        .expect("curl");
    let took = start.elapsed();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        size.to_string()
    );

    let traces = agent.dir.join("data/traces.jsonl");
    let spans = wait_for(Duration::from_secs(10), || {
        let spans: Vec<_> = read_spans(&traces)
            .into_iter()
            .filter(|s| {
                s.attr_str("url.path") == Some("/large.bin")
                    || s.attr_str("url.full")
                        .is_some_and(|u| u.ends_with("/large.bin"))
            })
            .collect();
        (spans.len() >= 2).then_some(spans)
    })
    .expect("server and client spans of the large download");
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let rss_after = agent.metric("selfops_agent_resident_memory_bytes", &[]);
    for span in &spans {
        assert!(span.kind == KIND_SERVER || span.kind == KIND_CLIENT);
        assert_eq!(span.attr_int("http.response.status_code"), Some(200));
        let duration =
            Duration::from_nanos(u64::try_from(span.end - span.start).unwrap_or(u64::MAX));
        // The body took time to move: the span covers most of the download.
        assert!(
            duration <= took && duration * 2 >= took,
            "span {duration:?} vs download {took:?}: {span:#?}"
        );
    }
    println!(
        "100 MB response: download {took:?}; agent RSS {:.1} -> {:.1} MiB",
        rss_before / 1048576.0,
        rss_after / 1048576.0
    );
    assert!(
        rss_after - rss_before < 16.0 * 1048576.0,
        "agent memory grew with the body"
    );
}
