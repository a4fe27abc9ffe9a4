//! Playbooks as configured: when (a signal over a level, or a detector's
//! verdict on it), do (throttle, block, lift), for how long, how often, and
//! the safety rails around them (allowlist, dry-run, concurrency). Checked
//! whole at load, before anything touches the kernel.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

use super::limiter::{AllowRules, Key, Rate, Scope, TTL_MAX};
use crate::{
    detect::DetectorConfig,
    series::{SeriesKey, SeriesName},
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActuationConfig {
    /// How often the signals are sampled and the playbooks evaluated.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Interfaces the limiter attaches to (ingress).
    pub interfaces: Vec<String>,
    /// Which kernel hook enforces: `xdp` (generic mode where the driver has
    /// none; tc on an interface another program's XDP holds), `tc` (TCX,
    /// else clsact) or `tc_clsact` (a clsact filter even where TCX exists).
    pub hook: Hook,
    /// `enforce`, or `dry-run`: decide and audit, change nothing.
    pub mode: Mode,
    /// Never throttled or blocked, whatever a playbook says.
    pub allowlist: Allowlist,
    /// Actions in force at once; further ones are refused and audited.
    pub max_concurrent: usize,
    /// Keys the kernel limiter holds (an LRU: the least recent goes first).
    pub max_keys: u32,
    /// Keep enforcement in the kernel after the agent stops (pinned under
    /// /sys/fs/bpf/selfops/limiter), each key until its TTL. Off: everything
    /// goes with the agent.
    pub persist: bool,
    pub playbooks: Vec<Playbook>,
}

impl Default for ActuationConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(200),
            interfaces: Vec::new(),
            hook: Hook::Xdp,
            mode: Mode::Enforce,
            allowlist: Allowlist::default(),
            max_concurrent: 16,
            max_keys: 65_536,
            persist: false,
            playbooks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    #[default]
    Xdp,
    Tc,
    TcClsact,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

/// Ports that stay reachable unless a local configuration says otherwise.
pub const DEFAULT_ALLOWED_PORTS: [u16; 1] = [22];

/// Traffic never throttled or blocked: the kernel programs pass it before
/// looking at any key, and playbooks naming it are refused at load. The
/// entries extend the defaults (port 22); only `replace_defaults: true` in
/// the local configuration drops them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Allowlist {
    pub ports: Vec<u16>,
    /// Addresses or CIDR blocks.
    pub sources: Vec<IpNet>,
    /// The entries replace the default ports instead of extending them.
    pub replace_defaults: bool,
}

impl Allowlist {
    /// Destination ports protected: the defaults (unless replaced) and the
    /// configured ones.
    pub fn ports(&self) -> Vec<u16> {
        let defaults = if self.replace_defaults {
            &[][..]
        } else {
            &DEFAULT_ALLOWED_PORTS[..]
        };
        let mut ports: Vec<u16> = defaults.iter().chain(&self.ports).copied().collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// What the kernel programs pass.
    pub fn rules(&self) -> AllowRules {
        let mut sources: Vec<IpNet> = self.sources.iter().map(IpNet::trunc).collect();
        sources.sort_unstable();
        sources.dedup();
        AllowRules {
            ports: self.ports(),
            sources,
        }
    }

    /// Why `key` may not be limited, if it may not.
    pub fn protects(&self, key: Key) -> Option<String> {
        let ports = self.ports();
        let port = |p: u16| {
            ports
                .contains(&p)
                .then(|| format!("port {p} is allowlisted"))
        };
        let source = |a: IpAddr| {
            self.sources
                .iter()
                .find(|net| net.contains(&a))
                .map(|net| format!("source {a} is allowlisted ({net})"))
        };
        match key {
            Key::Port(p) => port(p),
            Key::Source(a) => source(a),
            Key::PortSource(p, a) => port(p).or_else(|| source(a)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub name: String,
    pub when: When,
    /// `{ throttle: {...} }`: a one-key map, not a YAML tag.
    #[serde(rename = "do", with = "serde_yaml_ng::with::singleton_map")]
    pub action: Action,
    /// Every action expires by itself after this long (at most 24 h), in
    /// the kernel too.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// After an action ends, the playbook waits this long before acting again.
    #[serde(default, with = "humantime_serde")]
    pub cooldown: Duration,
    /// Overrides `actuation.mode` for this playbook.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// A signal and the condition on it. Either a level (`above` or `below`,
/// optionally on an EWMA-smoothed value, released at `clear`), or an
/// `anomaly` detector whose score reaches `score_above`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    pub signal: SeriesName,
    /// The service, for `service.*` signals.
    #[serde(default)]
    pub service: Option<String>,
    /// The executable name, for `process.cpu.utilization`.
    #[serde(default)]
    pub executable: Option<String>,
    /// Smooth the signal with an EWMA of this weight (0, 1] first.
    #[serde(default)]
    pub ewma: Option<f64>,
    #[serde(default)]
    pub above: Option<Level>,
    #[serde(default)]
    pub below: Option<Level>,
    /// Where the condition is released (default: where it was entered).
    #[serde(default)]
    pub clear: Option<Level>,
    #[serde(default)]
    pub anomaly: Option<DetectorConfig>,
    /// Anomaly score that enters the verdict (default 0.9).
    #[serde(default)]
    pub score_above: Option<f64>,
    /// How long the condition must hold before the playbook acts.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub hold: Duration,
}

impl When {
    /// The level and whether the condition is "above" it.
    pub fn level(&self) -> Option<(f64, bool)> {
        match (self.above, self.below) {
            (Some(a), _) => Some((a.0, true)),
            (None, Some(b)) => Some((b.0, false)),
            (None, None) => None,
        }
    }

    pub fn series(&self) -> SeriesKey {
        SeriesKey {
            name: self.signal,
            subject: self.service.clone().or_else(|| self.executable.clone()),
        }
    }
}

/// A level: a number, or a percentage such as `"90%"` (0.9).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "LevelText")]
pub struct Level(pub f64);

#[derive(Deserialize)]
#[serde(untagged)]
enum LevelText {
    Number(f64),
    Text(String),
}

impl TryFrom<LevelText> for Level {
    type Error = String;

    fn try_from(text: LevelText) -> Result<Self, Self::Error> {
        let value = match text {
            LevelText::Number(n) => n,
            LevelText::Text(t) => t
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<f64>().ok())
                .map(|p| p / 100.0)
                .ok_or_else(|| format!("{t:?} is not a number or a percentage like \"90%\""))?,
        };
        if value.is_finite() {
            Ok(Level(value))
        } else {
            Err(format!("{value} is not a finite number"))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Action {
    /// Admit at most `per_second` (new connections or packets) to a port,
    /// from a source, or both.
    Throttle(Target),
    /// Drop everything from a source (optionally only to one port).
    Block(Target),
    /// Remove a limit in force on the target.
    Lift(Target),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub source: Option<IpAddr>,
    /// Admitted per second (throttle only).
    #[serde(default)]
    pub per_second: Option<i64>,
    /// Admitted back to back (throttle only; default: a tenth of a second's worth, at least 1).
    #[serde(default)]
    pub burst: Option<i64>,
    #[serde(default)]
    pub scope: TargetScope,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetScope {
    /// TCP SYNs: new connections.
    #[default]
    NewConnections,
    AllPackets,
}

impl Target {
    pub fn key(&self) -> Option<Key> {
        match (self.port, self.source) {
            (Some(p), Some(a)) => Some(Key::PortSource(p, a)),
            (Some(p), None) => Some(Key::Port(p)),
            (None, Some(a)) => Some(Key::Source(a)),
            (None, None) => None,
        }
    }

    pub fn scope(&self) -> Scope {
        match self.scope {
            TargetScope::NewConnections => Scope::NewConnections,
            TargetScope::AllPackets => Scope::AllPackets,
        }
    }
}

/// What a validated playbook does to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Limit { key: Key, rate: Rate, scope: Scope },
    Lift { key: Key },
}

impl Action {
    /// The effect, or why the action is not valid (`field` relative to `do`).
    pub fn effect(&self) -> Result<Effect, (String, String)> {
        let (verb, target) = match self {
            Action::Throttle(t) => ("throttle", t),
            Action::Block(t) => ("block", t),
            Action::Lift(t) => ("lift", t),
        };
        let key = target
            .key()
            .ok_or_else(|| (verb.to_owned(), "give `port`, `source` or both".to_owned()))?;
        let field = |f: &str| format!("{verb}.{f}");
        match self {
            Action::Throttle(t) => {
                let per_second = t.per_second.ok_or_else(|| {
                    (
                        field("per_second"),
                        "required: new connections or packets admitted per second".to_owned(),
                    )
                })?;
                if per_second < 1 {
                    return Err((
                        field("per_second"),
                        format!(
                            "{per_second} is not allowed: use a rate of at least 1 (`block` drops everything)"
                        ),
                    ));
                }
                let burst = match t.burst {
                    None => (per_second / 10).clamp(1, u32::MAX as i64),
                    Some(b) if b >= 1 && b <= u32::MAX as i64 => b,
                    Some(b) => {
                        return Err((
                            field("burst"),
                            format!("{b} is not allowed: use at least 1"),
                        ));
                    }
                };
                Ok(Effect::Limit {
                    key,
                    rate: Rate {
                        per_second: per_second as u64,
                        burst: burst as u32,
                    },
                    scope: t.scope(),
                })
            }
            Action::Block(t) | Action::Lift(t) => {
                if t.per_second.is_some() || t.burst.is_some() {
                    return Err((field("per_second"), format!("`{verb}` takes no rate")));
                }
                Ok(match self {
                    Action::Lift(_) => Effect::Lift { key },
                    _ => Effect::Limit {
                        key,
                        rate: Rate::BLOCK,
                        scope: Scope::AllPackets,
                    },
                })
            }
        }
    }
}

impl ActuationConfig {
    /// Every problem found, as (key, message), the first one only.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: String, message: String| Err((key, message));
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(1) {
            return err(
                "actuation.interval".into(),
                format!("{:?} is not allowed: use 100ms to 1s", self.interval),
            );
        }
        if self.max_concurrent == 0 {
            return err(
                "actuation.max_concurrent".into(),
                "must be at least 1".into(),
            );
        }
        if !(16..=1 << 24).contains(&self.max_keys) {
            return err(
                "actuation.max_keys".into(),
                format!("{} is not allowed: use 16 to 16777216", self.max_keys),
            );
        }
        let mut enforcing = false;
        for (i, p) in self.playbooks.iter().enumerate() {
            let key = |f: &str| format!("actuation.playbooks[{i}].{f}");
            if p.name.trim().is_empty() {
                return err(key("name"), "must not be empty".into());
            }
            if self.playbooks[..i].iter().any(|q| q.name == p.name) {
                return err(
                    key("name"),
                    format!("{:?} is used by an earlier playbook", p.name),
                );
            }
            if p.ttl.is_zero() {
                return err(
                    key("ttl"),
                    "must be more than 0: every action expires by itself".into(),
                );
            }
            if p.ttl > TTL_MAX {
                return err(
                    key("ttl"),
                    format!("{:?} is not allowed: at most 24h", p.ttl),
                );
            }
            if p.cooldown > TTL_MAX {
                return err(
                    key("cooldown"),
                    format!("{:?} is not allowed: at most 24h", p.cooldown),
                );
            }
            self.validate_when(&p.when)
                .map_err(|(f, m)| (key(&format!("when.{f}")), m))?;
            let effect = p
                .action
                .effect()
                .map_err(|(f, m)| (key(&format!("do.{f}")), m))?;
            if let Effect::Limit { key: target, .. } = effect
                && let Some(why) = self.allowlist.protects(target)
            {
                return err(key("do"), format!("refused: {why}"));
            }
            enforcing |= p.mode.unwrap_or(self.mode) == Mode::Enforce;
        }
        if self.allowlist.ports().len() > selfops_ebpf::limiter::ALLOW_PORTS_MAX as usize {
            return err(
                "actuation.allowlist.ports".into(),
                format!("at most {} ports", selfops_ebpf::limiter::ALLOW_PORTS_MAX),
            );
        }
        if self.allowlist.sources.len() > selfops_ebpf::limiter::ALLOW_SOURCES_MAX as usize {
            return err(
                "actuation.allowlist.sources".into(),
                format!(
                    "at most {} sources",
                    selfops_ebpf::limiter::ALLOW_SOURCES_MAX
                ),
            );
        }
        if enforcing && self.interfaces.is_empty() {
            return err(
                "actuation.interfaces".into(),
                "name at least one interface for the limiter: a playbook enforces".into(),
            );
        }
        Ok(())
    }

    fn validate_when(&self, w: &When) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_owned(), m));
        match (w.signal.subject(), &w.service, &w.executable) {
            (Some("service"), Some(s), None) | (Some("executable"), None, Some(s))
                if !s.trim().is_empty() => {}
            (Some(subject), ..) => {
                return err(
                    subject,
                    format!("{} needs `{subject}:` (and nothing else)", w.signal),
                );
            }
            (None, None, None) => {}
            (None, ..) => {
                return err(
                    "signal",
                    format!("{} is host-wide: remove `service`/`executable`", w.signal),
                );
            }
        }
        if let Some(alpha) = w.ewma
            && !(alpha > 0.0 && alpha <= 1.0)
        {
            return err(
                "ewma",
                format!("{alpha} is not allowed: use a weight in (0, 1]"),
            );
        }
        match (&w.above, &w.below, &w.anomaly) {
            (Some(_), None, None) | (None, Some(_), None) => {
                if w.score_above.is_some() {
                    return err("score_above", "only with `anomaly`".into());
                }
                let (enter, up) = w.level().unwrap_or((0.0, true));
                if let Some(clear) = w.clear
                    && ((up && clear.0 > enter) || (!up && clear.0 < enter))
                {
                    return err(
                        "clear",
                        format!(
                            "{} would release before the condition enters ({enter})",
                            clear.0
                        ),
                    );
                }
            }
            (None, None, Some(detector)) => {
                if w.ewma.is_some() || w.clear.is_some() {
                    return err(
                        "anomaly",
                        "`ewma` and `clear` apply to `above`/`below` only".into(),
                    );
                }
                detector
                    .validate()
                    .map_err(|e| ("anomaly".to_owned(), e.to_string()))?;
                if let Some(s) = w.score_above
                    && !(0.0..=1.0).contains(&s)
                {
                    return err("score_above", format!("{s} is not allowed: use 0 to 1"));
                }
            }
            _ => {
                return err(
                    "above",
                    "give exactly one of `above`, `below` or `anomaly`".into(),
                );
            }
        }
        Ok(())
    }
}
