//! Filtering in the kernel, against real processes and the real eBPF
//! object: a non-HTTP TCP exchange is withheld by the socket sensor
//! (counted, no spans) while HTTP in the same process, written and read
//! one byte at a time at first, still gives its spans; and a process that
//! `trace.exclude` names is skipped by the kernel (counted, in the kernel's
//! map while it runs, gone from it after) while an included one is traced.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use selfops_tests::{
    Agent, bpftool_json, one_agent_at_a_time, privileged, python, scratch_dir,
    services::nginx,
    spans::{FlatSpan, KIND_CLIENT, KIND_SERVER, read_spans},
    wait_for, workspace_root,
};

const FILTERED: &str = "selfops_socket_events_filtered_total";

fn peers() -> PathBuf {
    workspace_root().join("tests/assets/kernel_filter_peers.py")
}

fn on_port(spans: &[FlatSpan], port: u16, kind: i64) -> usize {
    spans
        .iter()
        .filter(|s| s.kind == kind && s.attr_int("server.port") == Some(i64::from(port)))
        .count()
}

fn pid_of(span: &FlatSpan) -> Option<u64> {
    let v = span.resource.get("process.pid")?;
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

#[test]
fn non_http_connections_are_withheld_in_the_kernel() {
    const MESSAGES: usize = 300;
    const HTTP_EXCHANGES: usize = 5;
    let test = "non_http_connections_are_withheld_in_the_kernel";
    if !privileged(test) {
        return;
    }
    let Some(python) = python::with(test, "socket") else {
        return;
    };
    let _turn = one_agent_at_a_time();
    let agent = Agent::start(
        "kernel-filter-protocol",
        "export:\n  batch_timeout: 200ms\n",
    );
    let before = agent.metric(FILTERED, &["reason=\"not_http\""]);
    let out = Command::new(&python)
        .arg(peers())
        .args(["echo", &MESSAGES.to_string(), &HTTP_EXCHANGES.to_string()])
        .output()
        .expect("python peers");
    assert!(
        out.status.success(),
        "peers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let [echo_port, http_port] = ports[..] else {
        panic!("peers printed {:?}", String::from_utf8_lossy(&out.stdout));
    };

    // Each message is at least a write and a read at each end.
    let least = (4 * MESSAGES) as f64;
    let withheld = wait_for(Duration::from_secs(20), || {
        let n = agent.metric(FILTERED, &["reason=\"not_http\""]) - before;
        (n >= least).then_some(n)
    })
    .unwrap_or_else(|| {
        panic!(
            "fewer than {least} not_http events withheld\n{}",
            agent.get("/metrics")
        )
    });
    let traces = agent.dir.join("data/traces.jsonl");
    let spans = wait_for(Duration::from_secs(20), || {
        let spans = read_spans(&traces);
        (on_port(&spans, http_port, KIND_SERVER) >= HTTP_EXCHANGES
            && on_port(&spans, http_port, KIND_CLIENT) >= HTTP_EXCHANGES)
            .then_some(spans)
    })
    .unwrap_or_else(|| {
        panic!(
            "HTTP beside the withheld connection lost its spans\n{}",
            agent.get("/metrics")
        )
    });
    assert_eq!(on_port(&spans, http_port, KIND_SERVER), HTTP_EXCHANGES);
    assert_eq!(on_port(&spans, http_port, KIND_CLIENT), HTTP_EXCHANGES);
    let paths: Vec<&str> = spans
        .iter()
        .filter(|s| s.attr_int("server.port") == Some(i64::from(http_port)))
        .filter_map(|s| s.attr_str("url.path"))
        .collect();
    assert!(paths.iter().all(|p| p.starts_with("/tiny/")), "{paths:?}");
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.attr_int("server.port") == Some(i64::from(echo_port)))
            .count(),
        0
    );
    eprintln!("withheld {withheld} not_http events for {MESSAGES} echo messages");
}

/// `python` copied under a name of its own, so an executable rule picks
/// this process and no other.
fn renamed_python(python: &Path, dir: &Path, name: &str) -> PathBuf {
    let real = std::fs::canonicalize(python).expect("python path");
    let copy = dir.join(name);
    std::fs::copy(&real, &copy).expect("copy python");
    copy
}

fn excluded_tgids() -> Vec<u64> {
    bpftool_json(&["map", "dump", "name", "EXCLUDED_TGIDS"])
        .iter()
        .filter_map(|entry| {
            // Without BTF for the map, keys come as byte strings.
            let key = entry.get("key")?;
            if let Some(n) = key.as_u64() {
                return Some(n);
            }
            let bytes: Vec<u8> = key
                .as_array()?
                .iter()
                .filter_map(|b| {
                    let s = b.as_str()?;
                    u8::from_str_radix(s.trim_start_matches("0x"), 16).ok()
                })
                .collect();
            Some(u64::from(u32::from_le_bytes(bytes.try_into().ok()?)))
        })
        .collect()
}

#[test]
fn excluded_executable_is_skipped_in_the_kernel() {
    const REQUESTS: usize = 20;
    let test = "excluded_executable_is_skipped_in_the_kernel";
    if !privileged(test) {
        return;
    }
    let Some(python) = python::with(test, "urllib.request") else {
        return;
    };
    let _turn = one_agent_at_a_time();
    let dir = scratch_dir("kernel-filter-exclude");
    let excluded = renamed_python(&python, &dir, "kfilter-excluded");
    let agent = Agent::start(
        "kernel-filter-exclude-agent",
        "export:\n  batch_timeout: 200ms\ntrace:\n  exclude: [{ executable: kfilter-excluded }]\n",
    );
    let backend = nginx(&dir);
    let url = format!("http://127.0.0.1:{}/index.html", backend.port);
    let mut client = Command::new(&excluded)
        .arg(peers())
        .args(["client", &url, &REQUESTS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("excluded client");
    let pid = u64::from(client.id());
    let mut lines = BufReader::new(client.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    // The agent learns the process and hands it to the kernel.
    wait_for(Duration::from_secs(10), || {
        excluded_tgids().contains(&pid).then_some(())
    })
    .unwrap_or_else(|| panic!("pid {pid} never reached the kernel's map\n{}", agent.log()));
    let before = agent.metric(FILTERED, &["reason=\"excluded_process\""]);
    let mut stdin = client.stdin.take().expect("stdin");
    writeln!(stdin, "go").expect("go");
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("done"));
    assert!(client.wait().expect("client").success());
    // An included client of the same server is traced.
    for _ in 0..REQUESTS {
        let ok = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "10", &url])
            .status()
            .expect("curl")
            .success();
        assert!(ok);
    }

    // connect, write and read at least, per request.
    let least = (3 * REQUESTS) as f64;
    wait_for(Duration::from_secs(10), || {
        (agent.metric(FILTERED, &["reason=\"excluded_process\""]) - before >= least).then_some(())
    })
    .unwrap_or_else(|| panic!("excluded syscalls not counted\n{}", agent.get("/metrics")));
    let traces = agent.dir.join("data/traces.jsonl");
    let spans = wait_for(Duration::from_secs(20), || {
        let spans = read_spans(&traces);
        (on_port(&spans, backend.port, KIND_SERVER) >= 2 * REQUESTS
            && on_port(&spans, backend.port, KIND_CLIENT) >= REQUESTS)
            .then_some(spans)
    })
    .unwrap_or_else(|| panic!("spans missing\n{}", agent.get("/metrics")));
    // nginx (included) served both clients; only curl's client spans exist.
    assert_eq!(on_port(&spans, backend.port, KIND_SERVER), 2 * REQUESTS);
    let clients: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| {
            s.kind == KIND_CLIENT && s.attr_int("server.port") == Some(i64::from(backend.port))
        })
        .collect();
    assert_eq!(clients.len(), REQUESTS);
    assert!(clients.iter().all(|s| pid_of(s) != Some(pid)));
    // Gone from the kernel's map once the process has exited.
    wait_for(Duration::from_secs(10), || {
        (!excluded_tgids().contains(&pid)).then_some(())
    })
    .unwrap_or_else(|| panic!("pid {pid} left in the kernel's map after its exit"));
}
