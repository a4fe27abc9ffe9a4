//! The real agent enforcing through the limiter, and what it leaves when it
//! is gone: the allowlist in the kernel, kernel-side expiry after a
//! SIGKILL (pinned links, clsact filters), adoption and clean-up at the
//! next start, `selfops limits`, and an interface another program's XDP
//! already holds. The server end of a veth pair sits in the host's
//! namespace (where the agent runs), the client in a namespace of its own.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use selfops_tests::{
    Agent,
    audit::{limits, log_records, number, wait_for_record},
    free_port, limiter_loaded,
    netns::{VethPair, spawn_in},
    one_agent_at_a_time, privileged,
    traffic::{TcpServer, connect_flood, server_end_to_host},
    wait_for,
    xdp::{ForeignXdp, xdp_program_on},
};

const PIN_DIR: &str = "/sys/fs/bpf/selfops/limiter";

struct Setup {
    pair: VethPair,
    allowed: SocketAddr,
    other: SocketAddr,
    _servers: [TcpServer; 2],
}

fn setup(tag: &str) -> Setup {
    let pair = VethPair::new(tag).unwrap_or_else(|e| panic!("veth pair: {e}"));
    server_end_to_host(&pair).unwrap_or_else(|e| panic!("{e}"));
    let allowed = SocketAddr::new(IpAddr::V4(pair.server_v4), free_port());
    let other = SocketAddr::new(IpAddr::V4(pair.server_v4), free_port());
    let servers = [
        TcpServer::start(None, allowed),
        TcpServer::start(None, other),
    ];
    Setup {
        pair,
        allowed,
        other,
        _servers: servers,
    }
}

/// A playbook that fires on the first sample (host CPU is always above
/// -1) and blocks the client's address for `ttl`; `allowed` is on the
/// allowlist (besides the default port 22).
fn config(s: &Setup, hook: &str, persist: bool, ttl: &str) -> String {
    format!(
        r#"
trace:
  enabled: false
profile:
  enabled: false
export:
  batch_timeout: 100ms
actuation:
  interval: 100ms
  interfaces: [{interface}]
  hook: {hook}
  persist: {persist}
  allowlist: {{ ports: [{allowed}] }}
  playbooks:
    - name: block-client
      when: {{ signal: host.cpu.utilization, above: -1 }}
      do: {{ block: {{ source: {client} }} }}
      ttl: {ttl}
      cooldown: 1h
"#,
        interface = s.pair.server_if,
        allowed = s.allowed.port(),
        client = s.pair.client_v4,
    )
}

/// One connection attempt from the client namespace.
fn connects(s: &Setup, to: SocketAddr, timeout: Duration) -> bool {
    spawn_in(&s.pair.client_ns, move || {
        TcpStream::connect_timeout(&to, timeout).is_ok()
    })
    .join()
    .expect("client thread")
}

/// Whether some of a few attempts connect (a busy machine may lose one).
fn reachable(s: &Setup, to: SocketAddr) -> bool {
    (0..5).any(|_| connects(s, to, Duration::from_millis(500)))
}

/// Nothing connects during a short flood.
fn blocked(s: &Setup, to: SocketAddr) -> bool {
    connect_flood(&s.pair.client_ns, to, Duration::from_millis(300)).completed == 0
}

/// Polls until a connection succeeds or `deadline`; when it did.
fn flows_again_by(s: &Setup, to: SocketAddr, deadline: Instant) -> Option<Instant> {
    loop {
        if connects(s, to, Duration::from_millis(100)) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn applied(agent: &Agent) -> Instant {
    wait_for_record(
        agent,
        "selfops.action.applied",
        Duration::from_secs(20),
        |a| a["selfops.playbook"] == "block-client",
    );
    Instant::now()
}

fn pins() -> Vec<String> {
    std::fs::read_dir(PIN_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Leaves the host as the test found it, also when it fails.
struct ClearOnDrop;

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(selfops_tests::selfops_bin())
            .args(["limits", "clear", "--all"])
            .output();
    }
}

/// The limiter's clsact filters on `interface` ingress: their program ids.
fn clsact_filters(interface: &str) -> Vec<String> {
    let out = Command::new("tc")
        .args(["filter", "show", "dev", interface, "ingress"])
        .output()
        .expect("tc (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains("limiter_tc"))
        .map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "id")
                .nth(1)
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

#[test]
fn a_blocked_source_still_reaches_an_allowlisted_port() {
    if !privileged("a_blocked_source_still_reaches_an_allowlisted_port") {
        return;
    }
    let _serial = super::serial();
    let _one = one_agent_at_a_time();
    let _clear = ClearOnDrop;
    let s = setup("allow");
    assert!(reachable(&s, s.allowed) && reachable(&s, s.other));
    let agent = Agent::start("limiter-allow", &config(&s, "xdp", false, "60s"));
    applied(&agent);
    assert!(blocked(&s, s.other), "the block did not hold");
    assert!(
        reachable(&s, s.allowed),
        "the allowlisted port was cut off:\n{}",
        agent.log()
    );
    let counted = wait_for(Duration::from_secs(5), || {
        let n = agent.metric(
            "selfops_limiter_unmetered_packets_total",
            &["reason=\"allowlisted\""],
        );
        (n > 0.0).then_some(n)
    });
    assert!(counted.is_some(), "{}", agent.get("/metrics"));
    let dropped = agent.metric(
        "selfops_limiter_packets",
        &["verdict=\"dropped\"", &s.pair.client_v4.to_string()],
    );
    assert!(dropped > 0.0, "{}", agent.get("/metrics"));
    let (status, _) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "agent exit {status}");
    assert!(reachable(&s, s.other), "the block outlived the agent");
}

#[test]
fn a_persisted_limit_expires_in_the_kernel_after_a_sigkill_and_is_cleaned_up() {
    if !privileged("a_persisted_limit_expires_in_the_kernel_after_a_sigkill_and_is_cleaned_up") {
        return;
    }
    let _serial = super::serial();
    let _one = one_agent_at_a_time();
    let _clear = ClearOnDrop;
    limits(&["clear", "--all"]);
    let s = setup("pexp");
    let ttl = Duration::from_secs(4);
    let yaml = config(&s, "xdp", true, "4s");
    let agent = Agent::start("limiter-persist", &yaml);
    let seen = applied(&agent);
    let (status, _) = agent.stop(libc::SIGKILL);
    assert!(!status.success());
    assert!(
        pins().iter().any(|p| p.starts_with("xdp_")),
        "nothing pinned: {:?}",
        pins()
    );
    // Nobody lifts it: the kernel program ignores the key from its deadline.
    let flowing = flows_again_by(&s, s.other, seen + ttl + Duration::from_secs(1));
    assert!(
        flowing.is_some(),
        "traffic still blocked {:?} after the limit was applied",
        seen.elapsed()
    );
    eprintln!(
        "flowing again {:?} after applied was seen",
        flowing.map(|f| f - seen)
    );
    assert!(limiter_loaded(), "the pinned limiter went with the agent");

    // The next start withdraws the expired key (and applies anew).
    let agent = Agent::start("limiter-persist-2", &yaml);
    let withdrawn = wait_for_record(
        &agent,
        "selfops.action.withdrawn",
        Duration::from_secs(10),
        |a| a["selfops.reason"] == "expired",
    );
    assert!(
        withdrawn["selfops.target"]
            .as_str()
            .is_some_and(|t| t.contains(&s.pair.client_v4.to_string())),
        "{withdrawn:?}"
    );
    applied(&agent);
    let (status, _) = agent.stop(libc::SIGTERM);
    assert!(status.success());
    // Persisted: still in the kernel (until its deadline or the escape
    // hatch, whichever comes first).
    assert!(pins().iter().any(|p| p.starts_with("xdp_")), "{:?}", pins());
    let listed = limits(&["list", "--json"]);
    assert!(listed.contains(&s.pair.client_v4.to_string()), "{listed}");
    eprintln!("{}", limits(&["clear", "--all"]));
    assert!(!Path::new(PIN_DIR).exists(), "still pinned: {:?}", pins());
    assert!(reachable(&s, s.other), "cleared, still blocked");
    assert!(
        wait_for(Duration::from_secs(5), || (!limiter_loaded()).then_some(())).is_some(),
        "the limiter is still loaded after clear --all"
    );
}

#[test]
fn a_persisted_limit_is_adopted_by_the_next_agent() {
    if !privileged("a_persisted_limit_is_adopted_by_the_next_agent") {
        return;
    }
    let _serial = super::serial();
    let _one = one_agent_at_a_time();
    let _clear = ClearOnDrop;
    limits(&["clear", "--all"]);
    let s = setup("padopt");
    let yaml = config(&s, "xdp", true, "120s");
    let agent = Agent::start("limiter-adopt", &yaml);
    applied(&agent);
    let (status, _) = agent.stop(libc::SIGKILL);
    assert!(!status.success());
    assert!(blocked(&s, s.other), "a pinned block ended with its agent");

    let agent = Agent::start("limiter-adopt-2", &yaml);
    let adopted = wait_for_record(
        &agent,
        "selfops.action.adopted",
        Duration::from_secs(10),
        |a| a["selfops.playbook"] == "block-client",
    );
    let left = number(&adopted, "selfops.remaining_ttl_seconds");
    assert!(left > 0.0 && left <= 120.0, "{adopted:?}");
    // Adopted, not applied again, and still in force.
    assert!(blocked(&s, s.other));
    assert!(reachable(&s, s.allowed));
    assert!(
        !log_records(&agent)
            .iter()
            .any(|(name, _)| name == "selfops.action.applied"),
        "applied again over an adopted limit"
    );
    drop(agent);
    limits(&["clear", "--all"]);
    assert!(pins().is_empty() && !Path::new(PIN_DIR).exists());
    assert!(reachable(&s, s.other));
}

#[test]
fn a_stale_clsact_filter_stops_enforcing_at_the_ttl_and_is_removed_at_the_next_start() {
    if !privileged(
        "a_stale_clsact_filter_stops_enforcing_at_the_ttl_and_is_removed_at_the_next_start",
    ) {
        return;
    }
    let _serial = super::serial();
    let _one = one_agent_at_a_time();
    let _clear = ClearOnDrop;
    let s = setup("clsact");
    let ttl = Duration::from_secs(4);
    let yaml = config(&s, "tc_clsact", false, "4s");
    let agent = Agent::start("limiter-clsact", &yaml);
    let seen = applied(&agent);
    let first = clsact_filters(&s.pair.server_if);
    assert_eq!(first.len(), 1, "{first:?}\n{}", agent.log());
    let (status, _) = agent.stop(libc::SIGKILL);
    assert!(!status.success());
    // A netlink filter has no descriptor: it outlives the agent...
    assert_eq!(clsact_filters(&s.pair.server_if), first);
    // ...but not the limit's deadline.
    let flowing = flows_again_by(&s, s.other, seen + ttl + Duration::from_secs(1));
    assert!(
        flowing.is_some(),
        "still blocked {:?} after applied",
        seen.elapsed()
    );

    let agent = Agent::start("limiter-clsact-2", &yaml);
    let now = clsact_filters(&s.pair.server_if);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, first, "the stale filter is still there");
    assert!(
        agent.log().contains("removed a limiter clsact filter"),
        "{}",
        agent.log()
    );
    let (status, _) = agent.stop(libc::SIGTERM);
    assert!(status.success());
    assert_eq!(clsact_filters(&s.pair.server_if), Vec::<String>::new());
}

#[test]
fn an_interface_with_foreign_xdp_keeps_it_and_the_limiter_uses_tc() {
    if !privileged("an_interface_with_foreign_xdp_keeps_it_and_the_limiter_uses_tc") {
        return;
    }
    let _serial = super::serial();
    let _one = one_agent_at_a_time();
    let _clear = ClearOnDrop;
    let s = setup("cni");
    let foreign = ForeignXdp::attach(&s.pair.server_if).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        xdp_program_on(&s.pair.server_if).as_deref(),
        Some(foreign.name)
    );
    let agent = Agent::start("limiter-cni", &config(&s, "xdp", false, "60s"));
    let hooked = wait_for_record(
        &agent,
        "selfops.limiter.hooked",
        Duration::from_secs(10),
        |_| true,
    );
    assert_eq!(hooked["selfops.outcome"], "fallback", "{hooked:?}");
    assert!(
        hooked["selfops.reason"]
            .as_str()
            .is_some_and(|r| r.contains("another XDP program")),
        "{hooked:?}"
    );
    applied(&agent);
    assert_eq!(
        xdp_program_on(&s.pair.server_if).as_deref(),
        Some(foreign.name),
        "the foreign XDP program was replaced"
    );
    assert!(blocked(&s, s.other), "tc did not enforce");
    assert!(reachable(&s, s.allowed));
    let (status, _) = agent.stop(libc::SIGTERM);
    assert!(status.success());
    assert_eq!(
        xdp_program_on(&s.pair.server_if).as_deref(),
        Some(foreign.name)
    );
    assert!(reachable(&s, s.other));
}
