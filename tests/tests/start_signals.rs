//! SIGTERM at any point of start-up: the handlers are installed before
//! anything is attached, so the agent detaches what it had attached so far
//! and exits 0, leaving no program or link in the kernel.

use std::time::{Duration, Instant};

use selfops_tests::{Agent, bpftool_json, one_agent_at_a_time, privileged, wait_for};

/// The programs `selfops run` loads with the default config (the kernel
/// keeps the first 15 bytes of a name).
fn is_agent_program(name: &str) -> bool {
    name.starts_with("process_") || name.starts_with("net_sys_") || name.starts_with("ssl_")
}

/// The agent's programs and the links to them still in the kernel.
fn leftovers() -> Vec<String> {
    let programs: Vec<(u64, String)> = bpftool_json(&["prog", "show"])
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .filter(|(_, name)| is_agent_program(name))
        .collect();
    let mut left: Vec<String> = programs
        .iter()
        .map(|(id, name)| format!("program {id} {name}"))
        .collect();
    for link in bpftool_json(&["link", "show"]) {
        if let Some(prog) = link["prog_id"].as_u64()
            && programs.iter().any(|(id, _)| *id == prog)
        {
            left.push(format!("link {} to program {prog}", link["id"]));
        }
    }
    left
}

/// Signals this process catches or blocks, from /proc/PID/status.
fn handles_sigterm(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let bit = 1u64 << (libc::SIGTERM - 1);
    status.lines().any(|line| {
        ["SigBlk:", "SigCgt:"].iter().any(|key| {
            line.strip_prefix(key)
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                .is_some_and(|mask| mask & bit != 0)
        })
    })
}

#[derive(Debug, Clone, Copy)]
enum Point {
    /// As soon as the process has SIGTERM blocked or handled.
    SignalsDeferred,
    /// This long after the spawn.
    After(Duration),
    /// Once the log shows this line.
    Logged(&'static str),
    /// Once `/readyz` says ready.
    Ready,
}

fn wait_for_point(agent: &mut Agent, point: Point) {
    let start = Instant::now();
    let deadline = Duration::from_secs(30);
    loop {
        let reached = match point {
            Point::SignalsDeferred => handles_sigterm(agent.pid()),
            Point::After(d) => start.elapsed() >= d,
            Point::Logged(line) => agent.log().contains(line),
            Point::Ready => agent
                .status_of("/readyz")
                .is_some_and(|(code, _)| code == 200),
        };
        if reached {
            return;
        }
        if let Some(status) = agent.exited() {
            panic!("agent exited before {point:?} ({status}):\n{}", agent.log());
        }
        assert!(
            start.elapsed() < deadline,
            "{point:?} not reached:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

#[test]
fn sigterm_during_start_up_detaches_what_was_attached_and_exits_0() {
    if !privileged("sigterm_during_start_up_detaches_what_was_attached_and_exits_0") {
        return;
    }
    let _one = one_agent_at_a_time();
    assert_eq!(
        leftovers(),
        Vec::<String>::new(),
        "agent programs before the test"
    );
    let points = [
        Point::SignalsDeferred,
        Point::After(Duration::from_millis(20)),
        Point::After(Duration::from_millis(100)),
        Point::After(Duration::from_millis(300)),
        Point::Logged("process sensors attached"),
        Point::Logged("socket sensor attached"),
        Point::Logged("process table seeded"),
        Point::Ready,
    ];
    for (i, point) in points.into_iter().enumerate() {
        let mut agent = Agent::spawn(&format!("start-signals-{i}"), "");
        wait_for_point(&mut agent, point);
        let (status, took) = agent_stop(agent, point);
        eprintln!("SIGTERM at {point:?}: exit {status} after {took:?}");
        // The kernel frees a detached program after a grace period.
        let clean = wait_for(Duration::from_secs(5), || {
            leftovers().is_empty().then_some(())
        });
        assert!(
            clean.is_some(),
            "after SIGTERM at {point:?}: {:?}",
            leftovers()
        );
    }
}

fn agent_stop(agent: Agent, point: Point) -> (std::process::ExitStatus, Duration) {
    let log_path = agent.dir.join("agent.log");
    let (status, took) = agent.stop(libc::SIGTERM);
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM at {point:?}: {status}\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    (status, took)
}
