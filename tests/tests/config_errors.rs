//! Bad configuration: one clear error line naming the key, exit code 2, and
//! nothing attached — the config is judged before the agent takes its lock,
//! probes or loads anything.

use std::process::{Command, Output};

use selfops_tests::{Agent, one_agent_at_a_time, scratch_dir, selfops_bin};

fn run_with(config: &std::path::Path) -> Output {
    Command::new(selfops_bin())
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "debug")
        .output()
        .expect("spawn selfops")
}

fn assert_refused(config: &std::path::Path, needles: &[&str]) {
    let out = run_with(config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line, got: {stderr}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{needle:?} missing from: {}",
            lines[0]
        );
    }
    assert!(out.stdout.is_empty());
}

fn cases() -> Vec<(std::path::PathBuf, Vec<&'static str>)> {
    let dir = scratch_dir("config-errors");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write config");
        path
    };
    vec![
        (
            write("unknown.yaml", "process:\n  max_procs: 10\n"),
            vec!["process.max_procs", "unknown field", "max_processes"],
        ),
        (
            write("type.yaml", "process:\n  max_processes: lots\n"),
            vec!["process.max_processes", "invalid"],
        ),
        (
            write("range.yaml", "sensors:\n  process_ring_bytes: 1000\n"),
            vec!["sensors.process_ring_bytes", "power of two"],
        ),
        (
            write(
                "playbook.yaml",
                "actuation:\n  interfaces: [eth0]\n  playbooks:\n    - name: p\n      \
                 when: { signal: host.cpu.utilization, above: 0.9 }\n      \
                 do: { throttle: { port: 22, per_second: 10 } }\n      ttl: 10s\n",
            ),
            vec!["actuation.playbooks[0].do", "port 22 is allowlisted"],
        ),
        (
            dir.join("does-not-exist.yaml"),
            vec!["does-not-exist.yaml", "No such file"],
        ),
    ]
}

#[test]
fn bad_config_is_one_line_exit_2() {
    for (path, needles) in cases() {
        assert_refused(&path, &needles);
    }
}

/// While another agent holds the host lock, a bad config still gets the
/// config error (exit 2), not the lock error: nothing ran before the check.
#[test]
fn bad_config_is_refused_before_anything_else() {
    if !selfops_tests::privileged("bad_config_is_refused_before_anything_else") {
        return;
    }
    let _turn = one_agent_at_a_time();
    let agent = Agent::start("config-errors-running", "");
    for (path, needles) in cases() {
        assert_refused(&path, &needles);
    }
    assert!(
        agent.try_get("/metrics").is_ok(),
        "the running agent is unaffected"
    );
}
