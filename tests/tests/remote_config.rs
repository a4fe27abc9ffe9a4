//! Remote configuration end to end: the real `selfops fleet serve` on
//! loopback, the real agent connected to it over WebSocket, keys from
//! `selfops fleet keygen`, configs offered with `POST /v1/config`, and
//! curl driving nginx all along so that every request must come out as a
//! server span.
//!
//! (a) a signed config adding a dry-run playbook and changing the profiling
//! frequency is APPLIED within 5 s plus the health window, with the same
//! eBPF programs and links before and after, the sensors still counting and
//! the playbook firing; (b) an unsigned config and one signed by an
//! untrusted key are FAILED and change nothing; (c) a config whose OTLP
//! endpoint is a closed port fails the health gate and is rolled back,
//! reported and audited; (d) restarted with the fleet server gone, the
//! agent runs the last-known-good config, (a). And an enforcing playbook
//! arriving live loads the kernel limiter then.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use selfops_agent::control::signed::SecretKey;
use selfops_tests::{
    Agent,
    audit::{log_records, wait_for_record},
    fleet::FleetServer,
    free_port, one_agent_at_a_time, privileged, scratch_dir, selfops_bin,
    services::nginx,
    spans::{KIND_SERVER, read_spans},
    wait_for,
};
use serde_json::Value;

const HEALTH_WINDOW: Duration = Duration::from_secs(3);
/// The issue's bound on applying, before the health window.
const APPLY_WITHIN: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(20);

/// The shared `selfops fleet serve`, with what these tests ask of it.
struct Fleet(FleetServer);

impl Fleet {
    fn start(dir: &Path) -> Self {
        Self(FleetServer::start(
            dir,
            &dir.join("fleet.db").display().to_string(),
            64,
        ))
    }

    fn ws(&self) -> String {
        self.0.endpoint()
    }

    /// `POST /v1/config`; returns the config's hash.
    fn offer(&self, yaml: &str, signature: Option<&str>) -> String {
        let body = serde_json::json!({ "yaml": yaml, "signature": signature });
        let answer = ureq::post(&format!("{}/v1/config", self.0.api()))
            .timeout(Duration::from_secs(5))
            .set("content-type", "application/json")
            .send_string(&body.to_string())
            .unwrap_or_else(|e| panic!("POST /v1/config: {e}"))
            .into_string()
            .expect("offer answer");
        let answer: Value = serde_json::from_str(&answer).expect("offer answer is JSON");
        assert_eq!(
            answer["agents"].as_array().map(Vec::len),
            Some(1),
            "{answer}"
        );
        answer["hash"].as_str().expect("hash").to_owned()
    }

    /// The only agent's row once `check` passes, from `selfops fleet status
    /// --json` (the command line a user has) every other poll.
    fn wait_row(&self, within: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let mut cli = false;
        wait_for(within, || {
            cli = !cli;
            let rows = if cli {
                self.status_json()
            } else {
                self.0.agents()
            };
            rows.into_iter().find(|row| check(row))
        })
        .unwrap_or_else(|| panic!("{what}: not within {within:?}: {:?}", self.0.agents()))
    }

    fn status_json(&self) -> Vec<Value> {
        let out = Command::new(selfops_bin())
            .args(["fleet", "status", "--json", "--server", &self.0.api()])
            .output()
            .expect("selfops fleet status");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }
}

/// `selfops fleet keygen --out DIR/NAME`: (secret key file, public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let status = Command::new(selfops_bin())
        .args(["fleet", "keygen", "--out"])
        .arg(dir.join(name))
        .stdout(Stdio::null())
        .status()
        .expect("selfops fleet keygen");
    assert!(status.success(), "keygen {name}: {status}");
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).expect("public key");
    (dir.join(format!("{name}.key")), public.trim().to_owned())
}

/// The signature `selfops fleet rollout` would send with `yaml`.
fn sign(key: &Path, yaml: &str) -> String {
    let text = std::fs::read_to_string(key).expect("secret key");
    SecretKey::parse(&text)
        .expect("a key from keygen")
        .sign(yaml.as_bytes())
}

/// curl against nginx, one new path per request, until stopped; returns the
/// paths of the requests that got an answer.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut made = Vec::new();
            let mut n = 0u32;
            while !stopping.load(Ordering::Relaxed) {
                let path = format!("/rc-{n}");
                n += 1;
                let answered = Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "--max-time", "5"])
                    .arg(format!("http://127.0.0.1:{port}{path}"))
                    .status()
                    .is_ok_and(|s| s.success());
                if answered {
                    made.push(path);
                }
                // Pacing only: about 25 requests a second.
                std::thread::sleep(Duration::from_millis(40));
            }
            made
        });
        Self { stop, thread }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("traffic thread")
    }
}

/// Paths of nginx's server spans in traces.jsonl.
fn traced_paths(agent: &Agent, port: u16) -> BTreeSet<String> {
    read_spans(&agent.dir.join("data/traces.jsonl"))
        .into_iter()
        .filter(|s| s.kind == KIND_SERVER && s.attr_int("server.port") == Some(i64::from(port)))
        .filter_map(|s| s.attr_str("url.path").map(str::to_owned))
        .collect()
}

/// Ids of the sensor programs loaded (tracepoints, uprobes, the sampler:
/// bpftool here does not say which process holds a program, and only one
/// agent runs at a time) and of their links. The sampler's perf events are
/// re-opened at a new frequency by design (its program stays), so links to
/// perf_event programs are left out.
fn attached() -> (BTreeSet<u64>, BTreeSet<u64>) {
    let programs: Vec<Value> = selfops_tests::bpftool_json(&["prog", "show"])
        .into_iter()
        .filter(|p| {
            matches!(
                p["type"].as_str(),
                Some("tracepoint" | "kprobe" | "perf_event")
            )
        })
        .collect();
    let id = |v: &Value| v["id"].as_u64();
    let sampler: BTreeSet<u64> = programs
        .iter()
        .filter(|p| p["type"] == "perf_event")
        .filter_map(id)
        .collect();
    let sensors: BTreeSet<u64> = programs.iter().filter_map(id).collect();
    let links = selfops_tests::bpftool_json(&["link", "show"])
        .iter()
        .filter(|l| {
            l["prog_id"]
                .as_u64()
                .is_some_and(|p| sensors.contains(&p) && !sampler.contains(&p))
        })
        .filter_map(id)
        .collect();
    (sensors, links)
}

fn events_received(agent: &Agent) -> f64 {
    agent.metric("selfops_sensor_events_received_total", &[])
}

fn frequency(agent: &Agent) -> f64 {
    agent.metric("selfops_profile_frequency_hz", &[])
}

fn dry_run_fired(agent: &Agent) -> usize {
    log_records(agent)
        .iter()
        .filter(|(name, a)| {
            name == "selfops.action.applied"
                && a["selfops.playbook"] == "nginx-busy"
                && a["selfops.dry_run"] == true
        })
        .count()
}

/// Adds a dry-run playbook on nginx's request rate and changes the
/// profiling frequency.
fn config_a(nginx_port: u16) -> String {
    format!(
        r#"profile:
  frequency_hz: 19
actuation:
  playbooks:
    - name: nginx-busy
      when: {{ signal: service.request.rate, service: nginx, above: 2 }}
      do: {{ throttle: {{ port: {nginx_port}, per_second: 1000 }} }}
      ttl: 5s
      mode: dry-run
"#
    )
}

#[test]
fn remote_config_is_applied_live_refused_rolled_back_and_kept() {
    if !privileged("remote_config_is_applied_live_refused_rolled_back_and_kept") {
        return;
    }
    let _one = one_agent_at_a_time();
    let dir = scratch_dir("remote-config-fleet");
    let fleet = Fleet::start(&dir);
    let (trusted, public) = keygen(&dir, "fleet");
    let (rogue, _) = keygen(&dir, "rogue");
    let web_dir = dir.join("nginx");
    std::fs::create_dir_all(&web_dir).expect("nginx dir");
    let web = nginx(&web_dir);
    let local = format!(
        "profile: {{ enabled: true, frequency_hz: 49, interval: 2s }}\n\
         export: {{ batch_timeout: 100ms }}\n\
         control:\n  opamp: {{ endpoint: '{}', heartbeat_interval: 1s }}\n  \
         trusted_keys: ['{public}']\n  health_window: {}s\n",
        fleet.ws(),
        HEALTH_WINDOW.as_secs()
    );
    let agent = Agent::start("remote-config", &local);
    let connected = fleet.wait_row(WAIT, "the agent connects", |row| {
        row["connected"] == true && !row["effective_hash"].as_str().unwrap_or("").is_empty()
    });
    let local_hash = connected["effective_hash"].clone();
    assert_eq!(frequency(&agent), 49.0, "{}", agent.log());

    let traffic = Traffic::start(web.port);
    assert!(
        wait_for(WAIT, || (!traced_paths(&agent, web.port).is_empty())
            .then_some(()))
        .is_some(),
        "no server span from nginx:\n{}",
        agent.log()
    );
    let before = attached();
    assert!(
        !before.0.is_empty() && !before.1.is_empty(),
        "bpftool shows no sensor program or link: {before:?}"
    );
    let events_before = events_received(&agent);
    let spans_before = traced_paths(&agent, web.port).len();

    // (a) Signed, live keys only: APPLIED after the health window.
    let yaml_a = config_a(web.port);
    let offered = Instant::now();
    let hash_a = fleet.offer(&yaml_a, Some(&sign(&trusted, &yaml_a)));
    // What the 5 s bound is about: from the offer to the config running
    // (on trial), read from the agent itself. The health window and the
    // next heartbeat after it are timed by the agent, not by this test.
    let accepted = wait_for(APPLY_WITHIN + WAIT, || {
        (agent.metric("selfops_remote_config_applies_total", &["accepted"]) >= 1.0)
            .then(|| offered.elapsed())
    })
    .unwrap_or_else(|| panic!("(a) not accepted:\n{}", agent.log()));
    assert!(
        accepted <= APPLY_WITHIN,
        "(a) running {accepted:?} after the offer, over {APPLY_WITHIN:?}"
    );
    let row = fleet.wait_row(HEALTH_WINDOW + WAIT, "(a) APPLIED", |row| {
        row["remote_hash"] == hash_a.as_str()
            && matches!(row["remote_status"].as_str(), Some("APPLIED" | "FAILED"))
    });
    let took = offered.elapsed();
    assert_eq!(row["remote_status"], "APPLIED", "{row}\n{}", agent.log());
    // The effective config (the YAML laid over the local file) changed.
    let effective_a = row["effective_hash"].clone();
    assert_ne!(effective_a, local_hash, "{row}");
    eprintln!("(a) running {accepted:?} and APPLIED {took:?} after the offer");
    assert!(
        wait_for(WAIT, || (frequency(&agent) == 19.0).then_some(())).is_some(),
        "not (a)'s frequency:\n{}",
        agent.log()
    );
    wait_for_record(&agent, "selfops.action.applied", WAIT, |a| {
        a["selfops.playbook"] == "nginx-busy" && a["selfops.dry_run"] == true
    });
    assert_eq!(attached(), before, "a sensor was detached or re-attached");
    let events_after = events_received(&agent);
    assert!(
        wait_for(WAIT, || (events_received(&agent) > events_after)
            .then_some(()))
        .is_some(),
        "the sensors stopped counting events"
    );
    assert!(events_after > events_before);
    let spans_after_a = traced_paths(&agent, web.port).len();
    assert!(spans_after_a > spans_before);
    eprintln!("(a) nginx server spans: {spans_before} before, {spans_after_a} once applied");

    // (b) Unsigned, then signed by a key the agent does not trust.
    let rogue_yaml = "profile: { frequency_hz: 31 }\n";
    for (what, yaml, signature, expected) in [
        (
            "unsigned",
            "profile: { frequency_hz: 29 }\n",
            None,
            "unsigned",
        ),
        (
            "untrusted",
            rogue_yaml,
            Some(sign(&rogue, rogue_yaml)),
            "does not verify against any trusted key",
        ),
    ] {
        let hash = fleet.offer(yaml, signature.as_deref());
        let row = fleet.wait_row(WAIT, what, |row| {
            row["remote_hash"] == hash.as_str() && row["remote_status"] == "FAILED"
        });
        let reason = row["remote_error"].as_str().unwrap_or("");
        assert!(reason.contains(expected), "{what}: {row}");
        assert_eq!(
            row["effective_hash"], effective_a,
            "{what} changed the config"
        );
        assert_eq!(frequency(&agent), 19.0, "{what} changed the frequency");
        eprintln!("(b) {what}: FAILED: {}", row["remote_error"]);
    }

    // (c) A dead OTLP endpoint fails the health gate: rolled back to (a).
    let dead = free_port();
    let yaml_c = format!(
        "{yaml_a}export:\n  otlp: {{ endpoint: 'http://127.0.0.1:{dead}', protocol: http_protobuf, retry_for: 2s }}\n"
    );
    let hash_c = fleet.offer(&yaml_c, Some(&sign(&trusted, &yaml_c)));
    let row = fleet.wait_row(HEALTH_WINDOW + WAIT, "(c) rolled back", |row| {
        row["remote_hash"] == hash_c.as_str() && row["remote_status"] == "FAILED"
    });
    let reason = row["remote_error"].as_str().unwrap_or("");
    assert!(reason.contains("rolled back"), "{row}");
    assert_eq!(row["effective_hash"], effective_a, "{row}");
    wait_for_record(&agent, "selfops.config.rolled_back", WAIT, |_| true);
    eprintln!("(c) FAILED: {reason}");

    // Every request made meanwhile is a server span.
    let made = traffic.stop();
    let missing = || -> Vec<String> {
        let traced = traced_paths(&agent, web.port);
        made.iter()
            .filter(|p| !traced.contains(*p))
            .cloned()
            .collect()
    };
    let complete = wait_for(WAIT, || missing().is_empty().then_some(()));
    assert!(
        complete.is_some(),
        "{} of {} requests have no server span: {:?}",
        missing().len(),
        made.len(),
        missing()
    );
    eprintln!("{} requests, every one a server span", made.len());
    assert_eq!(attached(), before, "a sensor was detached by the rollback");

    // (d) Restarted without the fleet server: the last-known-good config.
    let port = agent.port;
    let agent_dir = agent.dir.clone();
    let fired_before = dry_run_fired(&agent);
    let (status, _) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    drop(fleet);
    let agent = Agent::start_again(&agent_dir, port);
    // Taken live by each component as soon as the client has verified it.
    assert!(
        wait_for(WAIT, || (frequency(&agent) == 19.0).then_some(())).is_some(),
        "not (a)'s frequency:\n{}",
        agent.log()
    );
    let traffic = Traffic::start(web.port);
    let fired = wait_for(WAIT, || {
        (dry_run_fired(&agent) > fired_before).then_some(())
    });
    traffic.stop();
    assert!(
        fired.is_some(),
        "(a)'s playbook does not run after the restart"
    );
    let (status, _) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
}

/// A veth pair in the host's namespace, removed on drop.
struct HostVeth(String);

impl HostVeth {
    fn new() -> Self {
        let name = format!("rcl{:x}", std::process::id() % 0x10000);
        let _ = selfops_tests::netns::ip(&["link", "del", &name]);
        let peer = format!("{name}p");
        selfops_tests::netns::ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer])
            .expect("veth pair");
        for link in [&name, &peer] {
            selfops_tests::netns::ip(&["link", "set", link, "up"]).expect("link up");
        }
        Self(name)
    }
}

impl Drop for HostVeth {
    fn drop(&mut self) {
        let _ = selfops_tests::netns::ip(&["link", "del", &self.0]);
    }
}

/// An agent started without an enforcing playbook has no limiter loaded;
/// a remote config adding one loads and hooks it live, and stopping takes
/// it away as usual.
#[test]
fn an_enforcing_playbook_added_live_loads_the_limiter() {
    if !privileged("an_enforcing_playbook_added_live_loads_the_limiter") {
        return;
    }
    let _one = one_agent_at_a_time();
    let dir = scratch_dir("remote-config-limiter-fleet");
    let fleet = Fleet::start(&dir);
    let (trusted, public) = keygen(&dir, "fleet");
    let veth = HostVeth::new();
    let local = format!(
        "control:\n  opamp: {{ endpoint: '{}', heartbeat_interval: 1s }}\n  \
         trusted_keys: ['{public}']\n  health_window: 1s\n\
         actuation:\n  interfaces: [{}]\n",
        fleet.ws(),
        veth.0
    );
    let agent = Agent::start("remote-config-limiter", &local);
    fleet.wait_row(WAIT, "the agent connects", |row| row["connected"] == true);
    assert!(
        !selfops_tests::limiter_loaded(),
        "a limiter before any playbook"
    );

    let yaml = "actuation:\n  playbooks:\n    - name: guard\n      \
                when: { signal: service.request.rate, service: nobody, above: 100000 }\n      \
                do: { throttle: { port: 9, per_second: 10 } }\n      ttl: 10s\n";
    let hash = fleet.offer(yaml, Some(&sign(&trusted, yaml)));
    let row = fleet.wait_row(WAIT, "APPLIED", |row| {
        row["remote_hash"] == hash.as_str()
            && matches!(row["remote_status"].as_str(), Some("APPLIED" | "FAILED"))
    });
    assert_eq!(row["remote_status"], "APPLIED", "{row}\n{}", agent.log());
    // Loaded by the actuation loop once the config is published, which
    // APPLIED does not wait for.
    wait_for_record(&agent, "selfops.limiter.hooked", WAIT, |_| true);
    assert!(selfops_tests::limiter_loaded(), "{}", agent.log());
    let (status, _) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(
        !selfops_tests::limiter_loaded(),
        "the limiter outlived the agent"
    );
}
