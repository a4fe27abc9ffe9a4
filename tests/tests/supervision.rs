//! Supervision with the real agent: a task made to fail (the tests'
//! `selfops-fault` binary: the agent library with a fault hook) turns
//! `/readyz` unready first, the limits in force are withdrawn (audited),
//! and the agent exits non-zero within 2 s of the failure.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, ExitStatus},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use selfops_tests::{
    Agent, free_port, limiter_loaded,
    netns::VethPair,
    one_agent_at_a_time, privileged,
    traffic::{TcpServer, server_end_to_host},
    wait_for,
};

fn fault_command(task: &str, trigger: &Path) -> impl FnOnce(&Path) -> Command {
    let task = task.to_owned();
    let trigger = trigger.to_owned();
    move |config| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_selfops-fault"));
        command.arg(task).arg(trigger).arg(config);
        command
    }
}

fn logs(agent: &Agent) -> String {
    std::fs::read_to_string(agent.dir.join("data/logs.jsonl")).unwrap_or_default()
}

/// The log without its ANSI colour sequences.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What the test saw after pulling the trigger.
struct Aftermath {
    /// First unready `/readyz` answer: when (after the trigger), and its body.
    unready: Option<(Duration, String)>,
    /// `selfops_task_failures_total` lines, if a scrape made it in time.
    failures_metric: Option<String>,
    /// The exit status, and how long after the failure (the moment the
    /// hook fired) the agent was gone.
    exit: (ExitStatus, Duration),
}

/// When the hook fired, as the fault binary wrote it.
fn fired_at(trigger: &Path) -> SystemTime {
    let text = std::fs::read_to_string(trigger.with_extension("fired")).expect("fired time");
    let nanos: u64 = text.trim().parse().expect("fired time in ns");
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Pulls the trigger and watches `/readyz` until the agent exits.
fn fail_and_watch(agent: &mut Agent, trigger: &Path) -> Aftermath {
    std::fs::write(trigger, b"").expect("trigger");
    let pulled = Instant::now();
    let mut unready = None;
    let mut failures_metric = None;
    loop {
        if let Some(status) = agent.exited() {
            let gone = SystemTime::now();
            let took = gone.duration_since(fired_at(trigger)).unwrap_or_default();
            let _ = std::fs::remove_file(trigger.with_extension("fired"));
            return Aftermath {
                unready,
                failures_metric,
                exit: (status, took),
            };
        }
        assert!(
            pulled.elapsed() < Duration::from_secs(10),
            "agent still running 10 s after the fault:\n{}",
            agent.log()
        );
        if unready.is_none()
            && let Some((code, body)) = agent.status_of("/readyz")
            && code == 503
        {
            unready = Some((pulled.elapsed(), body));
            // Best effort: the agent may be gone before this answers.
            failures_metric = agent.status_of("/metrics").map(|(_, text)| {
                text.lines()
                    .filter(|l| l.starts_with("selfops_task_failures_total{"))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn check_aftermath(agent: &Agent, task: &str, after: &Aftermath) {
    let (status, took) = after.exit;
    eprintln!(
        "{task}: unready {:?} after the trigger; exit {status} {took:?} after the failure",
        after.unready.as_ref().map(|u| u.0)
    );
    let (_, body) = after.unready.as_ref().unwrap_or_else(|| {
        panic!(
            "/readyz never went unready before the exit:\n{}",
            agent.log()
        )
    });
    assert!(
        body.contains(&format!("the {task} task failed")) && body.contains("fault injected"),
        "{body}"
    );
    assert!(!status.success(), "exit {status}:\n{}", agent.log());
    assert_eq!(status.code(), Some(1), "{}", agent.log());
    assert!(
        took < Duration::from_secs(2),
        "exited {took:?} after the failure:\n{}",
        agent.log()
    );
    if let Some(metric) = &after.failures_metric {
        assert!(
            metric.contains(&format!("selfops_task_failures_total{{task=\"{task}\"}} 1")),
            "{metric}"
        );
    }
    let log = without_colours(&agent.log());
    assert!(
        log.contains("supervised task failed")
            && log.contains(&format!("task=\"{task}\""))
            && log.contains(&format!(
                "cause=panicked: fault injected into the {task} task"
            )),
        "{log}"
    );
}

/// Runs the agent with a limit in force, makes `task` fail, and checks the
/// aftermath; the limiter is gone once the agent is.
fn fail_with_a_limit_in_force(task: &str) -> Agent {
    let pair = VethPair::new("sup").unwrap_or_else(|e| panic!("veth pair: {e}"));
    server_end_to_host(&pair).unwrap_or_else(|e| panic!("{e}"));
    let server = SocketAddr::new(IpAddr::V4(pair.server_v4), free_port());
    let _listener = TcpServer::start(None, server);
    // Memory use is never zero: the playbook applies its limit at once.
    let config = format!(
        r#"
trace:
  enabled: false
export:
  batch_timeout: 100ms
actuation:
  interval: 100ms
  interfaces: [{}]
  playbooks:
    - name: always
      when: {{ signal: host.memory.utilization, above: 0.001 }}
      do: {{ throttle: {{ port: {}, per_second: 1000 }} }}
      ttl: 60s
"#,
        pair.server_if,
        server.port()
    );
    let trigger = std::env::temp_dir().join(format!("selfops-fault-{task}-{}", std::process::id()));
    let _ = std::fs::remove_file(&trigger);
    let mut agent = Agent::start_command(
        &format!("supervision-{task}"),
        &config,
        fault_command(task, &trigger),
    );
    wait_for(Duration::from_secs(20), || {
        logs(&agent)
            .contains("selfops.action.applied")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no applied record:\n{}", agent.log()));
    assert!(limiter_loaded(), "the limit is in force");
    assert_eq!(
        agent.status_of("/readyz"),
        Some((200, "ready\n".to_owned()))
    );
    assert_eq!(agent.status_of("/healthz"), Some((200, "ok\n".to_owned())));

    let after = fail_and_watch(&mut agent, &trigger);
    let _ = std::fs::remove_file(&trigger);
    check_aftermath(&agent, task, &after);
    assert!(
        wait_for(Duration::from_secs(5), || (!limiter_loaded()).then_some(())).is_some(),
        "the limiter outlived the failed agent"
    );
    agent
}

#[test]
fn a_failed_task_withdraws_the_limits_and_exits_non_zero_within_2s_unready_first() {
    if !privileged("a_failed_task_withdraws_the_limits_and_exits_non_zero_within_2s_unready_first")
    {
        return;
    }
    let _one = one_agent_at_a_time();
    let agent = fail_with_a_limit_in_force("process");
    // The actuation loop was stopped through its stop channel: audited.
    assert!(
        logs(&agent).contains("selfops.action.withdrawn"),
        "no withdrawn record:\n{}\n{}",
        logs(&agent),
        agent.log()
    );
}

#[test]
fn a_failed_actuation_loop_takes_its_limits_with_it() {
    if !privileged("a_failed_actuation_loop_takes_its_limits_with_it") {
        return;
    }
    let _one = one_agent_at_a_time();
    // The loop cannot audit its own end; its limiter goes with it.
    fail_with_a_limit_in_force("actuation");
}

#[test]
fn a_failed_tracer_stops_the_agent() {
    if !privileged("a_failed_tracer_stops_the_agent") {
        return;
    }
    let _one = one_agent_at_a_time();
    let trigger = std::env::temp_dir().join(format!("selfops-fault-tracer-{}", std::process::id()));
    let _ = std::fs::remove_file(&trigger);
    let mut agent =
        Agent::start_command("supervision-tracer", "", fault_command("tracer", &trigger));
    wait_for(Duration::from_secs(10), || {
        (agent.status_of("/readyz").map(|r| r.0) == Some(200)).then_some(())
    })
    .unwrap_or_else(|| panic!("never ready:\n{}", agent.log()));
    let after = fail_and_watch(&mut agent, &trigger);
    let _ = std::fs::remove_file(&trigger);
    check_aftermath(&agent, "tracer", &after);
}

#[test]
fn a_failed_export_pipeline_stops_the_agent() {
    if !privileged("a_failed_export_pipeline_stops_the_agent") {
        return;
    }
    let _one = one_agent_at_a_time();
    let trigger = std::env::temp_dir().join(format!("selfops-fault-export-{}", std::process::id()));
    let _ = std::fs::remove_file(&trigger);
    let mut agent = Agent::start_command(
        "supervision-export",
        "trace:\n  enabled: false\n",
        fault_command("export", &trigger),
    );
    wait_for(Duration::from_secs(10), || {
        (agent.status_of("/readyz").map(|r| r.0) == Some(200)).then_some(())
    })
    .unwrap_or_else(|| panic!("never ready:\n{}", agent.log()));
    let after = fail_and_watch(&mut agent, &trigger);
    let _ = std::fs::remove_file(&trigger);
    check_aftermath(&agent, "export", &after);
}
