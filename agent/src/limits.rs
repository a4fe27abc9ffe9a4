//! `selfops limits list|clear`: the operator's view of and escape hatch for
//! the kernel limiter. Works from the kernel alone (maps found by name and
//! by pin), so with or without a running agent, and after one was killed.

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    act::limiter::{
        DEFAULT_PIN_DIR, Key, Scope, clock,
        found::{self, FoundBuckets},
        remove_pinned, remove_stale_filters,
    },
    cli::LimitsCommand,
};

pub fn run(command: LimitsCommand) -> anyhow::Result<()> {
    let dir = Path::new(DEFAULT_PIN_DIR);
    match command {
        LimitsCommand::List { json } => list(dir, json),
        LimitsCommand::Clear { all: true, .. } => clear_all(dir),
        LimitsCommand::Clear { target, .. } => clear_targets(dir, &target),
    }
}

/// `port=N`, `source=ADDR` or both, comma-separated.
pub fn parse_target(text: &str) -> Result<Key, String> {
    let (mut port, mut source) = (None, None);
    for part in text.split(',') {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: use port=N, source=ADDR or both"))?;
        match name.trim() {
            "port" => {
                port = Some(
                    value
                        .trim()
                        .parse::<u16>()
                        .map_err(|e| format!("port {value:?}: {e}"))?,
                )
            }
            "source" => {
                source = Some(
                    value
                        .trim()
                        .parse::<IpAddr>()
                        .map_err(|e| format!("source {value:?}: {e}"))?,
                )
            }
            other => return Err(format!("{other:?}: use port=N, source=ADDR or both")),
        }
    }
    match (port, source) {
        (Some(p), Some(a)) => Ok(Key::PortSource(p, a)),
        (Some(p), None) => Ok(Key::Port(p)),
        (None, Some(a)) => Ok(Key::Source(a)),
        (None, None) => Err("give port=N, source=ADDR or both".into()),
    }
}

#[derive(Debug, Serialize)]
struct Row {
    map_id: u32,
    pinned: bool,
    target: String,
    rate_per_second: u64,
    burst: u32,
    scope: &'static str,
    passed: u64,
    dropped: u64,
    /// `None` once expired (the programs ignore the key).
    expires_in_seconds: Option<f64>,
}

fn rows(maps: &[FoundBuckets]) -> anyhow::Result<Vec<Row>> {
    let now = clock::boot_ns();
    let mut rows = Vec::new();
    for map in maps {
        for entry in map.entries()? {
            rows.push(Row {
                map_id: map.id,
                pinned: map.pinned,
                target: entry.key.to_string(),
                rate_per_second: entry.rate.per_second,
                burst: entry.rate.burst,
                scope: match entry.scope {
                    Scope::NewConnections => "new_connections",
                    Scope::AllPackets => "all_packets",
                },
                passed: entry.counters.passed,
                dropped: entry.counters.dropped,
                expires_in_seconds: entry.remaining(now).map(|d| d.as_secs_f64()),
            });
        }
    }
    Ok(rows)
}

fn list(dir: &Path, json: bool) -> anyhow::Result<()> {
    let maps = found::bucket_maps(dir).context("finding the limiter's maps")?;
    let rows = rows(&maps)?;
    if json {
        let stats = found::stats();
        let unmetered: serde_json::Map<String, serde_json::Value> = stats
            .by_reason()
            .into_iter()
            .map(|(reason, count)| (reason.to_owned(), count.into()))
            .collect();
        let out = serde_json::json!({
            "maps": maps.iter().map(|m| serde_json::json!({"id": m.id, "pinned": m.pinned})).collect::<Vec<_>>(),
            "keys": rows,
            "unmetered_packets": unmetered,
            "pinned_state": dir.exists(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if maps.is_empty() {
        println!("no limiter is loaded");
        return Ok(());
    }
    println!(
        "{:<32} {:>9} {:>7} {:<16} {:>10} {:>10} {:>10}  map",
        "target", "rate/s", "burst", "scope", "passed", "dropped", "expires"
    );
    for r in &rows {
        let expires = r
            .expires_in_seconds
            .map_or_else(|| "expired".to_owned(), |s| format!("{s:.1}s"));
        let rate = if r.rate_per_second == 0 {
            "block".to_owned()
        } else {
            r.rate_per_second.to_string()
        };
        println!(
            "{:<32} {:>9} {:>7} {:<16} {:>10} {:>10} {:>10}  {}{}",
            r.target,
            rate,
            r.burst,
            r.scope,
            r.passed,
            r.dropped,
            expires,
            r.map_id,
            if r.pinned { " (pinned)" } else { "" }
        );
    }
    if rows.is_empty() {
        println!("(no keys in {} limiter map(s))", maps.len());
    }
    Ok(())
}

fn clear_targets(dir: &Path, targets: &[Key]) -> anyhow::Result<()> {
    let mut maps = found::bucket_maps(dir).context("finding the limiter's maps")?;
    for target in targets {
        let mut removed = 0;
        for map in &mut maps {
            removed += usize::from(map.remove(*target)?);
        }
        println!("{target}: removed from {removed} limiter map(s)");
    }
    Ok(())
}

/// Every key of every limiter map, the pinned state (its links detach),
/// and limiter clsact filters on every interface of this network
/// namespace.
fn clear_all(dir: &Path) -> anyhow::Result<()> {
    let mut maps = found::bucket_maps(dir).context("finding the limiter's maps")?;
    let mut keys = 0;
    for map in &mut maps {
        keys += map.clear()?;
    }
    let pinned = dir.exists();
    remove_pinned(dir).context("removing the pinned limiter state")?;
    let mut filters = 0;
    for interface in interfaces() {
        match remove_stale_filters(&interface) {
            Ok(true) => filters += 1,
            Ok(false) => {}
            Err(e) => eprintln!("selfops: {interface}: {e}"),
        }
    }
    println!(
        "removed {keys} key(s) from {} limiter map(s){}, {filters} clsact filter(s)",
        maps.len(),
        if pinned {
            format!(", and {}", dir.display())
        } else {
            String::new()
        }
    );
    Ok(())
}

fn interfaces() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(parse_target("port=8080"), Ok(Key::Port(8080)));
        assert_eq!(parse_target("source=10.1.2.3"), Ok(Key::Source(v4)));
        assert_eq!(
            parse_target("source=10.1.2.3,port=443"),
            Ok(Key::PortSource(443, v4))
        );
        assert_eq!(
            parse_target("source=fd00::7"),
            Ok(Key::Source("fd00::7".parse().unwrap()))
        );
        assert!(parse_target("port=99999").is_err());
        assert!(parse_target("host=x").is_err());
        assert!(parse_target("").is_err());
    }
}
