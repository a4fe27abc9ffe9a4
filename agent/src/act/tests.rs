//! Playbook validation through the config loader, and the engine's
//! decisions on scripted samples.

use std::time::{Duration, Instant};

use super::{
    engine::{Enforcer, Engine, Outcome},
    limiter::{Key, Rate, Scope},
};
use crate::{
    config::Config,
    series::{Sample, SeriesKey, SeriesName},
};

pub(super) fn parse(yaml: &str) -> Result<Config, String> {
    Config::parse(yaml, std::path::Path::new("test.yaml")).map_err(|e| e.to_string())
}

const CPU_PLAYBOOK: &str = r#"
actuation:
  interfaces: [veth0]
  playbooks:
    - name: cpu-hot
      when: { signal: host.cpu.utilization, ewma: 0.5, above: "90%", clear: "80%" }
      do: { throttle: { port: 8080, per_second: 200 } }
      ttl: 30s
      cooldown: 5s
"#;

#[test]
fn a_valid_playbook_loads_with_percent_levels() {
    let config = parse(CPU_PLAYBOOK).unwrap_or_else(|e| panic!("{e}"));
    let p = &config.actuation.playbooks[0];
    assert_eq!(p.when.above.map(|l| l.0), Some(0.9));
    assert_eq!(p.when.clear.map(|l| l.0), Some(0.8));
}

#[test]
fn bad_playbooks_are_rejected_naming_the_key() {
    let cases = [
        ("host.cpu.utilization", "host.cpu", "unknown signal"),
        (
            "per_second: 200",
            "per_second: -5",
            "per_second: -5 is not allowed",
        ),
        ("ttl: 30s", "ttl: 0s", "ttl: must be more than 0"),
        ("port: 8080", "port: 22", "refused: port 22 is allowlisted"),
        ("\"90%\"", "\"ninety\"", "not a number or a percentage"),
        ("  interfaces: [veth0]\n", "", "actuation.interfaces"),
    ];
    for (from, to, expected) in cases {
        let yaml = CPU_PLAYBOOK.replacen(from, to, 1);
        let err = parse(&yaml)
            .err()
            .unwrap_or_else(|| panic!("accepted: {yaml}"));
        assert!(err.contains(expected), "{to:?}: {err}");
        assert!(err.contains("actuation"), "{to:?}: key not named: {err}");
    }
    let service_without_name = CPU_PLAYBOOK.replace("host.cpu.utilization", "service.latency.p99");
    assert!(parse(&service_without_name).is_err_and(|e| e.contains("needs `service:`")));
    let source_allowlisted = format!("{CPU_PLAYBOOK}  allowlist: {{ sources: [10.0.0.0/8] }}\n")
        .replace(
            "port: 8080, per_second: 200",
            "source: 10.1.2.3, per_second: 1",
        );
    assert!(parse(&source_allowlisted).is_err_and(|e| e.contains("10.1.2.3 is allowlisted")));
}

/// Records what the engine asks of the kernel; can be told to fail.
#[derive(Default)]
pub(super) struct Recorder {
    pub(super) calls: Vec<String>,
    pub(super) fail: bool,
}

impl Enforcer for Recorder {
    fn limit(&mut self, key: Key, rate: Rate, _: Scope, _: Duration) -> Result<(), String> {
        self.calls.push(format!("limit {key} {}", rate.per_second));
        if self.fail {
            Err("map full".into())
        } else {
            Ok(())
        }
    }
    fn lift(&mut self, key: Key) -> Result<(), String> {
        self.calls.push(format!("lift {key}"));
        Ok(())
    }
}

pub(super) fn cpu(at: Instant, value: f64) -> Sample {
    Sample {
        at,
        values: vec![(
            SeriesKey {
                name: SeriesName::HostCpu,
                subject: None,
            },
            value,
        )],
    }
}

#[test]
fn applies_once_expires_after_ttl_then_cools_down() {
    let config = parse(CPU_PLAYBOOK).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let mut engine = Engine::new(&config.actuation, t0).unwrap_or_else(|e| panic!("{e}"));
    let mut kernel = Recorder::default();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut outcomes = Vec::new();
    // Hot for 40 s, sampled every 100 ms.
    for tick in 0..400 {
        for d in engine.step(&cpu(at(tick * 100), 0.99), &mut kernel) {
            outcomes.push((tick, d.outcome.label(), d.latency.is_some()));
        }
    }
    // Applied on the first hot tick (EWMA 0.5 of 0.99 from the first point
    // is above 0.9), expired at 30 s, refused during the 5 s cool-down
    // (audited once), applied again at 35 s.
    assert_eq!(
        outcomes,
        vec![
            (0, "applied", true),
            (300, "expired", false),
            (300, "refused", false),
            (350, "applied", true)
        ]
    );
    assert_eq!(
        kernel.calls,
        vec![
            "limit port 8080 200",
            "lift port 8080",
            "limit port 8080 200"
        ]
    );
    let withdrawn = engine.withdraw_all(&mut kernel);
    assert_eq!(withdrawn.len(), 1);
    assert_eq!(withdrawn[0].outcome, Outcome::Withdrawn);
}

#[test]
fn a_flapping_signal_does_not_flap_actions_and_dry_run_touches_nothing() {
    let yaml = CPU_PLAYBOOK.replace("cooldown: 5s", "cooldown: 5s\n      mode: dry-run");
    let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let mut engine = Engine::new(&config.actuation, t0).unwrap_or_else(|e| panic!("{e}"));
    let mut kernel = Recorder::default();
    let mut applied = 0;
    for tick in 0..100u64 {
        let value = if tick % 2 == 0 { 0.99 } else { 0.85 };
        for d in engine.step(
            &cpu(t0 + Duration::from_millis(tick * 100), value),
            &mut kernel,
        ) {
            assert!(d.dry_run);
            applied += usize::from(d.outcome == Outcome::Applied);
        }
    }
    // Between 0.85 and 0.99 the smoothed value never falls to the 0.8
    // clear level: one action for the whole episode.
    assert_eq!(applied, 1);
    assert!(
        kernel.calls.is_empty(),
        "dry-run called the kernel: {:?}",
        kernel.calls
    );
}

#[test]
fn a_failed_map_update_is_audited_and_nothing_is_booked() {
    let config = parse(CPU_PLAYBOOK).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let mut engine = Engine::new(&config.actuation, t0).unwrap_or_else(|e| panic!("{e}"));
    let mut kernel = Recorder {
        fail: true,
        ..Recorder::default()
    };
    let d = engine.step(&cpu(t0, 0.99), &mut kernel);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].outcome, Outcome::Failed("map full".into()));
    assert_eq!(engine.active_len(), 0);
    // It tries again on the next tick, and succeeds once the kernel does.
    kernel.fail = false;
    let d = engine.step(&cpu(t0 + Duration::from_millis(100), 0.99), &mut kernel);
    assert_eq!(d[0].outcome, Outcome::Applied);
}
