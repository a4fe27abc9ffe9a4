//! `selfops probe`, `selfops version`, and one agent per host.

use std::{process::Command, time::Duration};

use selfops_tests::{Agent, one_agent_at_a_time, privileged, selfops_bin};

const FEATURES: [&str; 17] = [
    "btf",
    "tracefs",
    "ring_buffer",
    "tracepoint",
    "raw_tracepoint",
    "btf_tracepoint",
    "uprobe",
    "kprobe",
    "fentry",
    "perf_event_cpu_clock",
    "xdp_driver",
    "xdp_generic",
    "tc_tcx",
    "tc_clsact",
    "bpf_probe_write_user",
    "lockdown",
    "bpf_memcg_accounting",
];

#[test]
fn version_prints_the_version() {
    let out = Command::new(selfops_bin())
        .arg("version")
        .output()
        .expect("spawn");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("selfops {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn probe_reports_every_feature_with_reasons() {
    if !privileged("probe_reports_every_feature_with_reasons") {
        return;
    }
    let out = Command::new(selfops_bin())
        .args(["probe", "--json"])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    let rows = report["features"].as_array().expect("features array");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["feature"].as_str()).collect();
    assert_eq!(names, FEATURES, "one row per feature, in order");
    for row in rows {
        let detail = row["detail"].as_str().unwrap_or_default();
        assert!(!detail.is_empty(), "row without a reason: {row}");
        if row["available"] == false && row["feature"] != "lockdown" {
            // A refusal names its cause: an errno or a stated reason.
            assert!(detail.len() > 3, "{row}");
        }
    }
    // The agent cannot run without these, and the tests run it.
    for required in ["tracepoint", "ring_buffer", "tracefs"] {
        let row = rows.iter().find(|r| r["feature"] == required).unwrap();
        assert_eq!(row["available"], true, "{row}");
    }
    // The table form has one line per feature plus the kernel line.
    let table = Command::new(selfops_bin())
        .arg("probe")
        .output()
        .expect("spawn");
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(text.lines().count(), FEATURES.len() + 1, "{text}");
}

#[test]
fn second_agent_is_refused_and_sigint_stops_the_first() {
    if !privileged("second_agent_is_refused_and_sigint_stops_the_first") {
        return;
    }
    let _turn = one_agent_at_a_time();
    let agent = Agent::start("single-instance", "");
    let second = Command::new(selfops_bin())
        .arg("run")
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another selfops agent is already running")
            && stderr.contains(&format!("pid {}", agent.pid())),
        "{stderr}"
    );
    assert!(agent.try_get("/metrics").is_ok(), "first agent unaffected");
    let (status, took) = agent.stop(libc::SIGINT);
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}
