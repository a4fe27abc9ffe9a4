//! Playbooks replaced while they hold limits: what stays, what is
//! withdrawn, and what the kernel is told.

use std::time::{Duration, Instant};

use super::{
    engine::Engine,
    tests::{Recorder, cpu, parse},
};

const TWO: &str = r#"
actuation:
  interfaces: [veth0]
  playbooks:
    - name: hot
      when: { signal: host.cpu.utilization, above: "90%" }
      do: { throttle: { port: 8080, per_second: 200 } }
      ttl: 30s
    - name: hotter
      when: { signal: host.cpu.utilization, above: "95%" }
      do: { block: { source: 10.9.9.9 } }
      ttl: 30s
"#;

/// An engine with both of `TWO`'s playbooks in force.
fn both_in_force(kernel: &mut Recorder) -> Engine {
    let config = parse(TWO).unwrap();
    let mut engine = Engine::new(&config.actuation, Instant::now()).unwrap();
    let decisions = engine.step(&cpu(Instant::now(), 0.99), kernel);
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    assert_eq!(engine.active_len(), 2);
    kernel.calls.clear();
    engine
}

fn reconfigure(engine: &mut Engine, kernel: &mut Recorder, yaml: &str) -> Vec<(String, String)> {
    let config = parse(yaml).unwrap_or_else(|e| panic!("{e}"));
    engine
        .reconfigure(&config.actuation, kernel)
        .unwrap()
        .into_iter()
        .map(|d| (d.playbook, d.outcome.label().to_owned()))
        .collect()
}

#[test]
fn unchanged_playbooks_keep_their_limits_and_removed_ones_are_withdrawn() {
    let mut kernel = Recorder::default();
    let mut engine = both_in_force(&mut kernel);
    // The same config: nothing happens.
    assert!(reconfigure(&mut engine, &mut kernel, TWO).is_empty());
    assert!(kernel.calls.is_empty());
    assert_eq!(engine.active_len(), 2);
    // `hotter` removed: its block is lifted, `hot`'s throttle stays.
    let only_hot = TWO.split("    - name: hotter").next().unwrap().to_owned();
    assert_eq!(
        reconfigure(&mut engine, &mut kernel, &only_hot),
        [("hotter".to_owned(), "withdrawn".to_owned())]
    );
    assert_eq!(kernel.calls, ["lift source 10.9.9.9"]);
    assert_eq!(engine.active_len(), 1);
    // The kept one still holds its key: it does not fire again.
    let at = Instant::now() + Duration::from_millis(200);
    assert!(engine.step(&cpu(at, 0.99), &mut kernel).is_empty());
}

#[test]
fn a_changed_playbook_is_withdrawn_and_acts_anew_under_its_new_terms() {
    let mut kernel = Recorder::default();
    let mut engine = both_in_force(&mut kernel);
    let changed = TWO.replacen("per_second: 200", "per_second: 50", 1);
    assert_eq!(
        reconfigure(&mut engine, &mut kernel, &changed),
        [("hot".to_owned(), "withdrawn".to_owned())]
    );
    assert_eq!(kernel.calls, ["lift port 8080"]);
    kernel.calls.clear();
    let at = Instant::now() + Duration::from_millis(200);
    let decisions = engine.step(&cpu(at, 0.99), &mut kernel);
    assert_eq!(decisions.len(), 1);
    assert_eq!(kernel.calls, ["limit port 8080 50"]);
}

#[test]
fn a_wider_allowlist_keeps_what_is_in_force() {
    let mut kernel = Recorder::default();
    let mut engine = both_in_force(&mut kernel);
    let wider = TWO.replacen(
        "  playbooks:",
        "  allowlist: { ports: [9090], sources: [10.8.0.0/16] }\n  playbooks:",
        1,
    );
    assert!(reconfigure(&mut engine, &mut kernel, &wider).is_empty());
    assert!(kernel.calls.is_empty());
    assert_eq!(engine.active_len(), 2);
    // One that would cover a playbook's key is refused whole, by the same
    // validator as the local file.
    let covering = TWO.replacen(
        "  playbooks:",
        "  allowlist: { sources: [10.9.0.0/16] }\n  playbooks:",
        1,
    );
    let err = parse(&covering).unwrap_err();
    assert!(err.contains("allowlisted"), "{err}");
}

#[test]
fn a_dry_run_playbook_turned_enforcing_is_a_change() {
    let mut kernel = Recorder::default();
    let config = parse(&TWO.replacen("ttl: 30s", "ttl: 30s\n      mode: dry-run", 1)).unwrap();
    let mut engine = Engine::new(&config.actuation, Instant::now()).unwrap();
    assert!(engine.enforces(), "hotter enforces");
    engine.step(&cpu(Instant::now(), 0.99), &mut kernel);
    kernel.calls.clear();
    // Same definition, other mode: the dry-run booking goes, no kernel call.
    assert_eq!(
        reconfigure(&mut engine, &mut kernel, TWO),
        [("hot".to_owned(), "withdrawn".to_owned())]
    );
    assert!(kernel.calls.is_empty());
}
