//! The agent's audit records as logs.jsonl holds them, and the
//! `selfops limits` command line, for the actuation tests.

use std::{process::Command, time::Duration};

use serde_json::{Map, Value};

use crate::{Agent, selfops_bin, wait_for};

/// Every log record in the agent's logs.jsonl: (eventName, attributes).
pub fn log_records(agent: &Agent) -> Vec<(String, Map<String, Value>)> {
    let text = std::fs::read_to_string(agent.dir.join("data/logs.jsonl")).unwrap_or_default();
    let mut records = Vec::new();
    for line in text.lines().filter(|l| l.ends_with('}')) {
        let Ok(request) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for resource in request["resourceLogs"].as_array().into_iter().flatten() {
            for scope in resource["scopeLogs"].as_array().into_iter().flatten() {
                for record in scope["logRecords"].as_array().into_iter().flatten() {
                    let mut attributes = Map::new();
                    for kv in record["attributes"].as_array().into_iter().flatten() {
                        let value = kv["value"]
                            .as_object()
                            .and_then(|v| v.values().next().cloned())
                            .unwrap_or(Value::Null);
                        attributes.insert(kv["key"].as_str().unwrap_or("").to_owned(), value);
                    }
                    let name = record["eventName"].as_str().unwrap_or("").to_owned();
                    records.push((name, attributes));
                }
            }
        }
    }
    records
}

/// The first record named `event` whose attributes pass `check`, waiting
/// up to `timeout`; panics with the agent's log otherwise.
pub fn wait_for_record(
    agent: &Agent,
    event: &str,
    timeout: Duration,
    check: impl Fn(&Map<String, Value>) -> bool,
) -> Map<String, Value> {
    wait_for(timeout, || {
        log_records(agent)
            .into_iter()
            .find(|(name, attributes)| name == event && check(attributes))
            .map(|(_, attributes)| attributes)
    })
    .unwrap_or_else(|| {
        panic!(
            "no {event} within {timeout:?}: {:?}\n{}",
            log_records(agent),
            agent.log()
        )
    })
}

/// A number attribute (OTLP JSON encodes integers as strings).
pub fn number(attributes: &Map<String, Value>, key: &str) -> f64 {
    match &attributes[key] {
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => s.parse().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

/// Runs `selfops limits ARGS`; panics unless it succeeds. Returns stdout.
pub fn limits(args: &[&str]) -> String {
    let out = Command::new(selfops_bin())
        .arg("limits")
        .args(args)
        .output()
        .expect("run selfops limits");
    assert!(
        out.status.success(),
        "selfops limits {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
