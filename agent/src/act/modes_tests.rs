//! Dry-run and enforcing playbooks on the same key, every combination;
//! adoption of persisted keys; the bounds on TTLs and the allowlist.

use std::time::{Duration, Instant};

use super::{
    engine::{Adoption, Engine, Outcome, Pinned},
    limiter::{Key, Rate, Scope},
    tests::{Recorder, cpu, parse},
};

/// `block-dry` (dry-run) fires above 90 %, `block` (enforcing) above 95 %,
/// on the same source; `lift` above 99.5 %, in the given mode.
fn config(lift_mode: &str) -> String {
    format!(
        r#"
actuation:
  interfaces: [veth0]
  playbooks:
    - name: block-dry
      when: {{ signal: host.cpu.utilization, above: "90%" }}
      do: {{ block: {{ source: 10.9.9.9 }} }}
      ttl: 30s
      cooldown: 120s
      mode: dry-run
    - name: block
      when: {{ signal: host.cpu.utilization, above: "95%" }}
      do: {{ block: {{ source: 10.9.9.9 }} }}
      ttl: 60s
    - name: lift
      when: {{ signal: host.cpu.utilization, above: "99.5%" }}
      do: {{ lift: {{ source: 10.9.9.9 }} }}
      ttl: 1s
      mode: {lift_mode}
"#
    )
}

const KEY: &str = "source 10.9.9.9";

struct Run {
    engine: Engine,
    kernel: Recorder,
    t0: Instant,
}

impl Run {
    fn new(lift_mode: &str) -> Self {
        let config = parse(&config(lift_mode)).unwrap_or_else(|e| panic!("{e}"));
        let t0 = Instant::now();
        let engine = Engine::new(&config.actuation, t0).unwrap_or_else(|e| panic!("{e}"));
        Self {
            engine,
            kernel: Recorder::default(),
            t0,
        }
    }

    /// (playbook, outcome, dry_run) of one tick at `ms` with `value`.
    fn tick(&mut self, ms: u64, value: f64) -> Vec<(String, &'static str, bool)> {
        let sample = cpu(self.t0 + Duration::from_millis(ms), value);
        self.engine
            .step(&sample, &mut self.kernel)
            .into_iter()
            .map(|d| (d.playbook, d.outcome.label(), d.dry_run))
            .collect()
    }
}

fn d(playbook: &str, outcome: &'static str, dry_run: bool) -> (String, &'static str, bool) {
    (playbook.to_owned(), outcome, dry_run)
}

#[test]
fn a_dry_run_action_does_not_block_an_enforcing_one() {
    let mut run = Run::new("dry-run");
    // 92 %: only the dry-run playbook fires.
    assert_eq!(run.tick(0, 0.92), vec![d("block-dry", "applied", true)]);
    assert!(run.kernel.calls.is_empty());
    // 97 %: the enforcing one applies on the same key.
    assert_eq!(run.tick(100, 0.97), vec![d("block", "applied", false)]);
    assert_eq!(run.kernel.calls, vec![format!("limit {KEY} 0")]);
    assert_eq!(run.engine.enforced_keys().len(), 1);
    // The dry-run booking expires (30 s) without touching the kernel; the
    // enforced one stays until its own TTL (60 s).
    assert_eq!(run.tick(30_000, 0.5), vec![d("block-dry", "expired", true)]);
    assert_eq!(run.kernel.calls.len(), 1);
    assert_eq!(run.tick(60_100, 0.5), vec![d("block", "expired", false)]);
    assert_eq!(run.kernel.calls[1], format!("lift {KEY}"));
}

#[test]
fn an_enforced_limit_refuses_a_dry_run_one_on_the_same_key() {
    // The dry-run playbook fires only above 98 % here, after `block`.
    let yaml = config("dry-run").replacen("above: \"90%\"", "above: \"98%\"", 1);
    let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut run = Run::new("dry-run");
    run.engine = Engine::new(&config.actuation, run.t0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.tick(0, 0.97), vec![d("block", "applied", false)]);
    // What enforcing would do is refuse: the key is limited.
    assert_eq!(run.tick(100, 0.985), vec![d("block-dry", "refused", true)]);
    assert_eq!(run.kernel.calls.len(), 1);
}

#[test]
fn a_dry_run_lift_keeps_an_enforced_limit_on_the_books() {
    let mut run = Run::new("dry-run");
    run.tick(0, 0.97);
    assert_eq!(run.engine.active_len(), 2);
    // The dry-run lift removes the dry-run booking only; the enforced limit
    // stays, in the kernel and on the books.
    assert_eq!(run.tick(100, 0.999), vec![d("lift", "lifted", true)]);
    assert_eq!(run.engine.enforced_keys().len(), 1);
    assert_eq!(run.engine.active_len(), 1);
    // Lifting nothing more, it is audited once more, then not every tick.
    run.tick(200, 0.999);
    assert!(run.tick(300, 0.999).is_empty());
    assert_eq!(run.engine.enforced_keys().len(), 1);
    assert_eq!(run.kernel.calls, vec![format!("limit {KEY} 0")]);
    // And it is still lifted when its TTL passes.
    let expired = run.tick(60_100, 0.5);
    assert_eq!(expired, vec![d("block", "expired", false)]);
    assert_eq!(run.kernel.calls[1], format!("lift {KEY}"));
}

#[test]
fn an_enforcing_lift_lifts_both_and_calls_the_kernel_once() {
    let mut run = Run::new("enforce");
    run.tick(0, 0.97);
    assert_eq!(run.tick(100, 0.999), vec![d("lift", "lifted", false)]);
    assert_eq!(run.engine.active_len(), 0);
    assert_eq!(
        run.kernel.calls,
        vec![format!("limit {KEY} 0"), format!("lift {KEY}")]
    );
}

#[test]
fn an_enforcing_lift_of_a_dry_run_limit_does_not_call_the_kernel() {
    // `block` fires only above 99.9 %, so at 99.6 % the lift meets the
    // dry-run booking alone.
    let yaml = config("enforce").replacen("above: \"95%\"", "above: \"99.9%\"", 1);
    let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut run = Run::new("enforce");
    run.engine = Engine::new(&config.actuation, run.t0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.tick(0, 0.92), vec![d("block-dry", "applied", true)]);
    assert_eq!(run.tick(100, 0.996), vec![d("lift", "lifted", false)]);
    assert!(run.kernel.calls.is_empty(), "{:?}", run.kernel.calls);
    assert_eq!(run.engine.active_len(), 0);
}

#[test]
fn a_dry_run_lift_of_a_dry_run_limit_changes_the_books_only() {
    let yaml = config("dry-run").replacen("above: \"95%\"", "above: \"99.9%\"", 1);
    let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut run = Run::new("dry-run");
    run.engine = Engine::new(&config.actuation, run.t0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.tick(0, 0.92), vec![d("block-dry", "applied", true)]);
    assert_eq!(run.tick(100, 0.996), vec![d("lift", "lifted", true)]);
    assert_eq!(run.engine.active_len(), 0);
    assert!(run.kernel.calls.is_empty());
}

#[test]
fn persisted_keys_are_adopted_when_a_playbook_accounts_for_them() {
    let mut run = Run::new("dry-run");
    let source = Key::Source("10.9.9.9".parse().unwrap());
    let left = Duration::from_secs(20);
    let pinned = [
        Pinned {
            key: source,
            rate: Rate::BLOCK,
            scope: Scope::AllPackets,
            remaining: Some(left),
        },
        // Another rate than any playbook sets: not ours to keep.
        Pinned {
            key: Key::Port(8080),
            rate: Rate::BLOCK,
            scope: Scope::AllPackets,
            remaining: Some(left),
        },
        Pinned {
            key: Key::Port(8081),
            rate: Rate::BLOCK,
            scope: Scope::AllPackets,
            remaining: None,
        },
    ];
    let adoptions = run.engine.adopt(&pinned, run.t0);
    match &adoptions[0] {
        Adoption::Adopted(decision) => {
            assert_eq!(decision.playbook, "block");
            assert_eq!(decision.outcome, Outcome::Adopted(left));
            assert!(!decision.dry_run);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&adoptions[1], Adoption::Withdraw { key: Key::Port(8080), reason } if reason.contains("no configured playbook"))
    );
    assert!(matches!(&adoptions[2], Adoption::Withdraw { reason, .. } if reason == "expired"));
    // The adopted limit is on the books: the playbook does not apply again
    // (and the dry-run one sees it), and it expires when its time is up.
    assert_eq!(run.tick(0, 0.97), vec![d("block-dry", "refused", true)]);
    assert!(run.kernel.calls.is_empty());
    assert_eq!(run.tick(20_000, 0.5), vec![d("block", "expired", false)]);
    assert_eq!(run.kernel.calls, vec![format!("lift {KEY}")]);
}

#[test]
fn ttls_are_bounded_naming_the_key_and_the_allowlist_only_grows() {
    let yaml = config("dry-run").replacen("ttl: 60s", "ttl: 25h", 1);
    let Err(err) = parse(&yaml) else {
        panic!("25h accepted")
    };
    assert!(
        err.contains("actuation.playbooks[1].ttl") && err.contains("at most 24h"),
        "{err}"
    );
    let yaml = config("dry-run").replacen("ttl: 60s", "ttl: 18446744073709551615s", 1);
    assert!(parse(&yaml).is_err());
    let yaml = config("dry-run").replacen("ttl: 60s", "ttl: 24h", 1);
    assert!(parse(&yaml).is_ok());

    let with = |allowlist: &str| {
        parse(&format!("{}  allowlist: {allowlist}\n", config("dry-run")))
            .unwrap_or_else(|e| panic!("{e}"))
            .actuation
            .allowlist
    };
    let extended = with("{ ports: [443] }");
    assert_eq!(extended.ports(), vec![22, 443]);
    assert!(extended.protects(Key::Port(22)).is_some());
    let replaced = with("{ ports: [443], replace_defaults: true }");
    assert_eq!(replaced.ports(), vec![443]);
    assert!(replaced.protects(Key::Port(22)).is_none());
    let rules = with("{ sources: [192.168.7.1/16, fd00::/64] }").rules();
    assert_eq!(rules.ports, vec![22]);
    assert_eq!(
        rules
            .sources
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["192.168.0.0/16", "fd00::/64"]
    );
}
