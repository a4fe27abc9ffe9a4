//! What a verified remote YAML may change. It is laid over the local file
//! (mappings merged key by key, anything else replaced), so a fleet need
//! not know each node's local settings, and the result goes through the
//! same parser and validator as the file. It may not touch `control.*`
//! (so not the trusted keys) nor narrow the local allowlist; and each key
//! it changes must be one the agent can apply live.

use std::path::Path;

use serde_yaml_ng::Value;

use crate::config::Config;

/// Keys applied without a restart; any other change is refused with its
/// key named.
pub const LIVE_KEYS: &[&str] = &[
    "trace.include",
    "trace.exclude",
    "profile.enabled",
    "profile.frequency_hz",
    "profile.include",
    "profile.exclude",
    "service",
    "export.file",
    "export.otlp",
    "export.batch_size",
    "export.batch_timeout",
    "actuation.interval",
    "actuation.mode",
    "actuation.allowlist",
    "actuation.max_concurrent",
    "actuation.playbooks",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("control.* can only be changed in the local config")]
    Control,
    #[error(
        "actuation.allowlist: a remote config may extend the local allowlist, not narrow it ({0})"
    )]
    Allowlist(String),
    #[error("{0}: changing it needs a restart")]
    NeedsRestart(String),
}

/// The config to run when `yaml` is laid over `local` (the local file's
/// text) in place of `current`, and the keys it changes, all live.
pub fn accept(
    yaml: &str,
    local: &str,
    current: &Config,
) -> Result<(Config, Vec<&'static str>), Refused> {
    let (config, changed) = lay_over(yaml, local, current)?;
    match needs_restart(&changed) {
        Some(key) => Err(Refused::NeedsRestart(key.to_owned())),
        None => Ok((config, changed)),
    }
}

/// As [`accept`], whether or not the keys changed can change live.
pub fn lay_over(
    yaml: &str,
    local: &str,
    current: &Config,
) -> Result<(Config, Vec<&'static str>), Refused> {
    let invalid =
        |e: &dyn std::fmt::Display| Refused::Invalid(super::state::one_line(&e.to_string()));
    let overlay: Value = serde_yaml_ng::from_str(yaml).map_err(|e| invalid(&e))?;
    if overlay
        .as_mapping()
        .is_some_and(|m| m.contains_key("control"))
    {
        return Err(Refused::Control);
    }
    let mut merged: Value = serde_yaml_ng::from_str(local).map_err(|e| invalid(&e))?;
    merge(&mut merged, overlay);
    let text = match merged {
        Value::Null => String::new(),
        merged => serde_yaml_ng::to_string(&merged).map_err(|e| invalid(&e))?,
    };
    let remote = Config::parse(&text, Path::new("remote config")).map_err(|e| invalid(&e))?;
    narrowed(current, &remote).map_or(Ok(()), |why| Err(Refused::Allowlist(why)))?;
    let changed = changed_keys(current, &remote);
    Ok((remote, changed))
}

/// The first of `keys` that cannot change live.
pub fn needs_restart(keys: &[&'static str]) -> Option<&'static str> {
    keys.iter().copied().find(|key| !LIVE_KEYS.contains(key))
}

/// The first key among `keys` (the change to `new`) that only a restart
/// applies in an agent started with `profiler` on or off: a key that is
/// never live, or profiling turned on where nothing of it was loaded.
pub fn restart_key(profiler: bool, new: &Config, keys: &[&'static str]) -> Option<&'static str> {
    needs_restart(keys).or_else(|| (new.profile.enabled && !profiler).then_some("profile.enabled"))
}

/// `overlay` over `base`: mappings key by key, anything else replaced.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (_, Value::Null) => {}
        (base, overlay) => *base = overlay,
    }
}

/// Why `remote` protects less than `local`, if it does.
fn narrowed(local: &Config, remote: &Config) -> Option<String> {
    let (local, remote) = (&local.actuation.allowlist, &remote.actuation.allowlist);
    let ports = remote.ports();
    if let Some(port) = local.ports().into_iter().find(|p| !ports.contains(p)) {
        return Some(format!("port {port} dropped"));
    }
    local
        .sources
        .iter()
        .find(|net| {
            !remote
                .sources
                .iter()
                .any(|r| r.contains(&net.network()) && r.prefix_len() <= net.prefix_len())
        })
        .map(|net| format!("source {net} dropped"))
}

/// Every key (at the granularity the agent applies or refuses) whose value
/// differs. Compared through `Debug`, which the config types all have and
/// which prints every field in a fixed order.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<&'static str> {
    let differ =
        |x: &dyn std::fmt::Debug, y: &dyn std::fmt::Debug| format!("{x:?}") != format!("{y:?}");
    let mut keys = Vec::new();
    let mut check = |key: &'static str, x: &dyn std::fmt::Debug, y: &dyn std::fmt::Debug| {
        if differ(x, y) {
            keys.push(key);
        }
    };
    check("data_dir", &a.data_dir, &b.data_dir);
    check("telemetry", &a.telemetry, &b.telemetry);
    check("sensors", &a.sensors, &b.sensors);
    check("process", &a.process, &b.process);
    check("service", &a.service, &b.service);
    let (e, f) = (&a.export, &b.export);
    check("export.file", &e.file, &f.file);
    check("export.otlp", &e.otlp, &f.otlp);
    check(
        "export.queue_capacity",
        &e.queue_capacity,
        &f.queue_capacity,
    );
    check("export.batch_size", &e.batch_size, &f.batch_size);
    check("export.batch_timeout", &e.batch_timeout, &f.batch_timeout);
    let (t, u) = (&a.trace, &b.trace);
    check("trace.enabled", &t.enabled, &u.enabled);
    check("trace.payload_bytes", &t.payload_bytes, &u.payload_bytes);
    check(
        "trace.max_connections",
        &t.max_connections,
        &u.max_connections,
    );
    check("trace.ring_bytes", &t.ring_bytes, &u.ring_bytes);
    check(
        "trace.max_routes_per_service",
        &t.max_routes_per_service,
        &u.max_routes_per_service,
    );
    check("trace.max_red_series", &t.max_red_series, &u.max_red_series);
    check(
        "trace.metrics_interval",
        &t.metrics_interval,
        &u.metrics_interval,
    );
    check("trace.include", &t.include, &u.include);
    check("trace.exclude", &t.exclude, &u.exclude);
    let (p, q) = (&a.profile, &b.profile);
    check("profile.enabled", &p.enabled, &q.enabled);
    check("profile.frequency_hz", &p.frequency_hz, &q.frequency_hz);
    check("profile.interval", &p.interval, &q.interval);
    check("profile.include", &p.include, &q.include);
    check("profile.exclude", &p.exclude, &q.exclude);
    check(
        "profile.unwind_table_bytes",
        &p.unwind_table_bytes,
        &q.unwind_table_bytes,
    );
    check("profile.ring_bytes", &p.ring_bytes, &q.ring_bytes);
    check("profile.max_stacks", &p.max_stacks, &q.max_stacks);
    let (c, d) = (&a.actuation, &b.actuation);
    check("actuation.interval", &c.interval, &d.interval);
    check("actuation.interfaces", &c.interfaces, &d.interfaces);
    check("actuation.hook", &c.hook, &d.hook);
    check("actuation.mode", &c.mode, &d.mode);
    check("actuation.allowlist", &c.allowlist, &d.allowlist);
    check(
        "actuation.max_concurrent",
        &c.max_concurrent,
        &d.max_concurrent,
    );
    check("actuation.max_keys", &c.max_keys, &d.max_keys);
    check("actuation.persist", &c.persist, &d.persist);
    check("actuation.playbooks", &c.playbooks, &d.playbooks);
    check("receivers", &a.receivers, &b.receivers);
    check("processors", &a.processors, &b.processors);
    check("exporters", &a.exporters, &b.exporters);
    check("pipelines", &a.pipelines, &b.pipelines);
    check("kubernetes", &a.kubernetes, &b.kubernetes);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(text: &str) -> Config {
        Config::parse(text, Path::new("local.yaml")).unwrap()
    }

    fn with_control() -> String {
        static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| {
            super::super::signed::SecretKey::generate()
                .public()
                .to_base64()
        });
        format!(
            "control:\n  opamp: {{ endpoint: 'ws://127.0.0.1:4320/v1/opamp' }}\n  trusted_keys: ['{key}']\n"
        )
    }

    /// `accept` over a local file's text.
    fn over(yaml: &str, local_text: &str) -> Result<(Config, Vec<&'static str>), Refused> {
        accept(yaml, local_text, &local(local_text))
    }

    #[test]
    fn live_keys_are_accepted_and_local_settings_kept() {
        let text = format!("data_dir: /tmp/x\n{}", with_control());
        let current = local(&text);
        let (config, changed) = accept(
            "trace:\n  exclude: [{ executable: curl }]\n",
            &text,
            &current,
        )
        .unwrap();
        assert_eq!(changed, ["trace.exclude"]);
        assert_eq!(config.control, current.control);
        assert_eq!(config.data_dir, current.data_dir);
        assert_eq!(config.trace.exclude.len(), 1);
        // The same as what runs: nothing changes.
        let (_, changed) = over("", "").unwrap();
        assert!(changed.is_empty());
        let (_, changed) = over("trace: { exclude: [] }\n", &text).unwrap();
        assert!(changed.is_empty());
    }

    #[test]
    fn control_cannot_change_remotely() {
        let text = with_control();
        assert_eq!(over("control: {}\n", &text).unwrap_err(), Refused::Control);
        assert_eq!(over(&text, &text).unwrap_err(), Refused::Control);
    }

    #[test]
    fn restart_keys_are_named() {
        let err = over("trace: { ring_bytes: 1048576 }\n", "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "trace.ring_bytes: changing it needs a restart"
        );
        let err = over("profile: { interval: 3s }\n", "").unwrap_err();
        assert_eq!(err, Refused::NeedsRestart("profile.interval".into()));
        let (_, changed) = over(
            "profile: { enabled: false, frequency_hz: 49, exclude: [{ executable: sshd }] }\n",
            "",
        )
        .unwrap();
        assert_eq!(
            changed,
            ["profile.enabled", "profile.frequency_hz", "profile.exclude"]
        );
        let err = over("telemetry: { listen: 127.0.0.1:1 }\n", "").unwrap_err();
        assert_eq!(err, Refused::NeedsRestart("telemetry".into()));
    }

    #[test]
    fn invalid_yaml_is_refused_by_the_same_validator() {
        let err = over("profile: { frequency_hz: 5000 }\n", "").unwrap_err();
        assert!(err.to_string().contains("profile.frequency_hz"), "{err}");
        assert!(!err.to_string().contains('\n'));
        let err = over("nonsense: 1\n", "").unwrap_err();
        assert!(matches!(err, Refused::Invalid(_)));
    }

    #[test]
    fn allowlist_may_grow_not_shrink() {
        let text = "actuation:\n  allowlist: { ports: [8080], sources: [10.0.0.0/24] }\n";
        let narrowed = over(
            "actuation:\n  allowlist: { ports: [8080], replace_defaults: true, sources: [10.0.0.0/24] }\n",
            text,
        )
        .unwrap_err();
        assert_eq!(narrowed, Refused::Allowlist("port 22 dropped".into()));
        let narrowed = over(
            "actuation:\n  allowlist: { ports: [8080], sources: [10.0.0.0/25] }\n",
            text,
        )
        .unwrap_err();
        assert!(matches!(narrowed, Refused::Allowlist(_)));
        let (_, changed) = over(
            "actuation:\n  allowlist: { ports: [8080, 9090], sources: [10.0.0.0/16] }\n",
            text,
        )
        .unwrap();
        assert_eq!(changed, ["actuation.allowlist"]);
    }
}
