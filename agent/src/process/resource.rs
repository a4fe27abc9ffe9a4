//! The OpenTelemetry resource of a process: host attributes, process
//! attributes and the service name chosen by the configured rules.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicU64, Ordering},
};

use globset::{Glob, GlobMatcher};

use super::table::Process;
use crate::{
    config::ServiceConfig,
    k8s::{PodContainer, PodDirectory},
    signal::{AttrValue, Attributes, Resource},
};

enum Target {
    Executable(GlobMatcher),
    Cgroup(GlobMatcher),
}

type Rules = Vec<(Target, String)>;

pub struct ResourceBuilder {
    host_name: String,
    host_arch: &'static str,
    /// Replaced whole when a remote config changes `service`.
    rules: RwLock<Rules>,
    /// Counts rule changes, so caches of built resources know to go.
    generation: AtomicU64,
    /// Whether signals carry `process.command_line`: off by default, since
    /// command lines often hold secrets (`--token=…`).
    command_line_on_signals: bool,
    /// Pod metadata by container id, when the agent knows its cluster.
    pods: Option<Arc<PodDirectory>>,
}

impl ResourceBuilder {
    /// Globs were validated with the config, so an error here is a bug
    /// surfaced as an error rather than a panic.
    pub fn new(config: &ServiceConfig) -> Result<Self, globset::Error> {
        Ok(Self {
            host_name: host_name(),
            host_arch: host_arch(),
            rules: RwLock::new(compile(config)?),
            generation: AtomicU64::new(0),
            command_line_on_signals: false,
            pods: None,
        })
    }

    /// Adds the `k8s.*` attributes of a process's pod and container.
    pub fn with_pods(mut self, pods: Arc<PodDirectory>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// The pod and container a process runs in, if known.
    pub fn pod_of(&self, process: &Process) -> Option<PodContainer> {
        self.pods
            .as_ref()?
            .container(process.container_id.as_deref()?)
    }

    /// Puts the command line on every signal's resource too, not only in
    /// `/processes` (`process.command_line_on_signals`).
    pub fn with_command_line_on_signals(mut self, on: bool) -> Self {
        self.command_line_on_signals = on;
        self
    }

    /// Takes `config`'s rules for every resource built from now on.
    pub fn set_rules(&self, config: &ServiceConfig) -> Result<(), globset::Error> {
        let rules = compile(config)?;
        // A poisoned lock only means a reader panicked; the rules are whole.
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = rules;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Takes each new `service` section a remote config brings; never ends
    /// (run beside the process model, whose resources these are).
    pub async fn follow(
        self: Arc<Self>,
        updates: tokio::sync::watch::Receiver<ServiceConfig>,
    ) -> std::convert::Infallible {
        let mut updates = Some(updates);
        loop {
            if let Some(config) = crate::control::next_update(&mut updates).await {
                match self.set_rules(&config) {
                    Ok(()) => tracing::info!(rules = config.rules.len(), "service rules replaced"),
                    Err(err) => tracing::error!(%err, "service rules not replaced"),
                }
            }
        }
    }

    /// Changes with every `set_rules` and every change of pod metadata: a
    /// resource built under another generation may carry an old
    /// service.name or pod.
    pub fn generation(&self) -> u64 {
        let pods = self.pods.as_ref().map_or(0, |p| p.generation());
        // Both only grow, so their sum changes whenever either does.
        self.generation.load(Ordering::Acquire).wrapping_add(pods)
    }

    /// First matching rule's name, else the pod's service name, else the
    /// executable name.
    pub fn service_name(&self, process: &Process) -> String {
        self.service_name_with(process, self.pod_of(process).as_ref())
    }

    fn service_name_with(&self, process: &Process, pod: Option<&PodContainer>) -> String {
        let name = process.executable_name();
        let path = process.executable_path.as_deref().unwrap_or("");
        let cgroup = process.cgroup.as_deref().unwrap_or("");
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        let by_rule = rules
            .iter()
            .find(|(target, _)| match target {
                Target::Executable(m) => m.is_match(name) || m.is_match(path),
                Target::Cgroup(m) => m.is_match(cgroup),
            })
            .map(|(_, service)| service.as_str());
        by_rule
            .or_else(|| pod.and_then(|p| p.pod.service_name.as_deref()))
            .unwrap_or(name)
            .to_owned()
    }

    /// Only the `k8s.*` attributes of `process` (for signals that build
    /// their resource from labels, such as profiles).
    pub fn k8s_attributes(&self, process: &Process) -> Vec<(&'static str, String)> {
        let (Some(pod), Some(pods)) = (self.pod_of(process), &self.pods) else {
            return Vec::new();
        };
        let mut attrs = Vec::new();
        k8s_attributes(&mut attrs, &pod, pods);
        attrs
            .into_iter()
            .filter_map(|(k, v)| match v {
                AttrValue::Str(s) => Some((k, s.into_owned())),
                _ => None,
            })
            .collect()
    }

    /// Resource attributes with OTel semantic-convention keys, the command
    /// line included (for the local `/processes` view).
    pub fn attributes(&self, process: &Process) -> Attributes {
        self.attributes_with(process, true)
    }

    fn attributes_with(&self, process: &Process, command_line: bool) -> Attributes {
        let pod = self.pod_of(process);
        let mut attrs = vec![
            (
                "service.name",
                AttrValue::from(self.service_name_with(process, pod.as_ref())),
            ),
            ("process.pid", AttrValue::Int(i64::from(process.pid))),
            (
                "process.parent_pid",
                AttrValue::Int(i64::from(process.ppid)),
            ),
            (
                "process.executable.name",
                AttrValue::from(process.executable_name().to_owned()),
            ),
        ];
        let no_command_line = None;
        let optional = [
            ("process.executable.path", &process.executable_path),
            (
                "process.command_line",
                match command_line {
                    true => &process.command_line,
                    false => &no_command_line,
                },
            ),
            ("container.id", &process.container_id),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                attrs.push((key, AttrValue::from(value.to_string())));
            }
        }
        if let (Some(pod), Some(pods)) = (&pod, &self.pods) {
            k8s_attributes(&mut attrs, pod, pods);
        }
        attrs.extend([
            ("host.name", AttrValue::from(self.host_name.clone())),
            ("host.arch", AttrValue::from(self.host_arch.to_owned())),
            ("os.type", AttrValue::from_static("linux")),
        ]);
        attrs
    }

    /// The resource of a service's aggregated metrics: its name and host.
    pub fn service_resource(&self, service: &str) -> Resource {
        Resource {
            attributes: vec![
                ("service.name", AttrValue::from(service.to_owned())),
                ("host.name", AttrValue::from(self.host_name.clone())),
                ("host.arch", AttrValue::from(self.host_arch.to_owned())),
                ("os.type", AttrValue::from_static("linux")),
            ],
        }
    }

    /// The resource signals carry.
    pub fn resource(&self, process: &Process) -> Resource {
        Resource {
            attributes: self.attributes_with(process, self.command_line_on_signals),
        }
    }
}

/// The resource of what the agent emits as itself (audit records): the
/// agent as a service, its host and, in a pod, that pod.
pub fn own_resource(cluster_name: Option<&str>) -> Resource {
    let mut attributes = vec![
        ("service.name", AttrValue::from("selfops")),
        (
            "service.version",
            AttrValue::from(env!("CARGO_PKG_VERSION")),
        ),
        ("host.name", AttrValue::from(host_name())),
    ];
    attributes.extend(
        crate::k8s::own_pod::attributes(cluster_name)
            .into_iter()
            .map(|(k, v)| (k, AttrValue::from(v))),
    );
    Resource { attributes }
}

/// The k8s.* resource attributes of the OpenTelemetry semantic conventions.
fn k8s_attributes(attrs: &mut Attributes, container: &PodContainer, pods: &PodDirectory) {
    let pod = &container.pod;
    let text = |s: &str| AttrValue::from(s.to_owned());
    attrs.extend([
        ("k8s.namespace.name", text(&pod.namespace)),
        ("k8s.pod.name", text(&pod.name)),
        ("k8s.pod.uid", text(&pod.uid)),
        ("k8s.container.name", text(container.container_name())),
        ("k8s.node.name", text(pods.node_name())),
    ]);
    if let Some(owner) = &pod.owner {
        attrs.extend(owner.attributes().map(|(k, v)| (k, text(v))));
    }
    if let Some(cluster) = pods.cluster_name() {
        attrs.push(("k8s.cluster.name", text(cluster)));
    }
}

fn compile(config: &ServiceConfig) -> Result<Rules, globset::Error> {
    let mut rules = Vec::new();
    for rule in &config.rules {
        let target = match (&rule.executable, &rule.cgroup) {
            (Some(glob), _) => Target::Executable(Glob::new(glob)?.compile_matcher()),
            (None, Some(glob)) => Target::Cgroup(Glob::new(glob)?.compile_matcher()),
            (None, None) => continue,
        };
        rules.push((target, rule.name.clone()));
    }
    Ok(rules)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `host.arch` values from the OTel semantic conventions.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        "arm" => "arm32",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceRule;

    fn nginx() -> Process {
        Process {
            pid: 10,
            ppid: 1,
            comm: "nginx".into(),
            executable_path: Some(Arc::from("/usr/sbin/nginx")),
            build_id: None,
            command_line: Some(Arc::from("nginx: worker process")),
            cgroup: Some(Arc::from("/system.slice/nginx.service")),
            container_id: None,
            start_time_unix_nano: 0,
        }
    }

    fn rule(executable: Option<&str>, cgroup: Option<&str>, name: &str) -> ServiceRule {
        ServiceRule {
            executable: executable.map(Into::into),
            cgroup: cgroup.map(Into::into),
            name: name.into(),
        }
    }

    #[test]
    fn default_service_is_executable_name() {
        let builder = ResourceBuilder::new(&ServiceConfig::default()).unwrap();
        assert_eq!(builder.service_name(&nginx()), "nginx");
        let attrs = builder.attributes(&nginx());
        let get = |k| {
            attrs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("process.pid"), Some(AttrValue::Int(10)));
        assert_eq!(get("os.type"), Some(AttrValue::Str("linux".into())));
        assert_eq!(get("container.id"), None);
        assert!(get("host.name").is_some());
        assert!(get("process.command_line").is_some(), "kept for /processes");
    }

    #[test]
    fn command_line_leaves_signals_unless_asked() {
        let has_command_line = |builder: &ResourceBuilder| {
            builder
                .resource(&nginx())
                .attributes
                .iter()
                .any(|(key, _)| *key == "process.command_line")
        };
        let builder = ResourceBuilder::new(&ServiceConfig::default()).unwrap();
        assert!(!has_command_line(&builder));
        let builder = builder.with_command_line_on_signals(true);
        assert!(has_command_line(&builder));
    }

    #[test]
    fn rules_first_match_wins() {
        let config = ServiceConfig {
            rules: vec![
                rule(None, Some("/system.slice/*"), "systemd-unit"),
                rule(Some("nginx"), None, "web"),
            ],
        };
        let builder = ResourceBuilder::new(&config).unwrap();
        assert_eq!(builder.service_name(&nginx()), "systemd-unit");
        let config = ServiceConfig {
            rules: vec![rule(Some("/usr/sbin/*"), None, "sbin")],
        };
        let builder = ResourceBuilder::new(&config).unwrap();
        assert_eq!(builder.service_name(&nginx()), "sbin");
    }

    #[test]
    fn rules_change_live_and_the_generation_says_so() {
        let builder = ResourceBuilder::new(&ServiceConfig::default()).unwrap();
        let before = builder.generation();
        builder
            .set_rules(&ServiceConfig {
                rules: vec![rule(Some("nginx"), None, "web")],
            })
            .unwrap();
        assert_ne!(builder.generation(), before);
        assert_eq!(builder.service_name(&nginx()), "web");
        let name = |b: &ResourceBuilder| {
            b.resource(&nginx())
                .attributes
                .into_iter()
                .find(|(k, _)| *k == "service.name")
                .map(|(_, v)| v)
        };
        assert_eq!(name(&builder), Some(AttrValue::Str("web".into())));
        builder.set_rules(&ServiceConfig::default()).unwrap();
        assert_eq!(name(&builder), Some(AttrValue::Str("nginx".into())));
    }

    #[test]
    fn pod_metadata_on_the_resource_and_rules_still_win() {
        use crate::k8s::{metrics::KubeMetrics, owner::Owner, pod::PodMeta};
        const ID: &str = "4d1f3e9b2c7a8f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a291807f6e";
        let pods = Arc::new(PodDirectory::new(
            "node-a",
            Some("prod"),
            16,
            KubeMetrics::default(),
        ));
        let builder = ResourceBuilder::new(&ServiceConfig::default())
            .unwrap()
            .with_pods(pods.clone());
        let mut p = nginx();
        p.container_id = Some(Arc::from(ID));
        let get = |b: &ResourceBuilder, k: &str| {
            b.resource(&p)
                .attributes
                .into_iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v)
        };
        assert_eq!(get(&builder, "k8s.pod.name"), None, "pod not known yet");
        let before = builder.generation();
        pods.upsert(PodMeta {
            uid: "u-1".into(),
            namespace: "shop".into(),
            name: "web-6b8f9d7c4-abcde".into(),
            owner: Some(Owner::ReplicaSet {
                name: "web-6b8f9d7c4".into(),
                deployment: Some("web".into()),
            }),
            service_name: Some("storefront".into()),
            labels: Box::new([]),
            containers: vec![(
                crate::k8s::pod::ContainerId::parse(ID).unwrap(),
                "nginx".into(),
            )]
            .into_boxed_slice(),
        });
        assert_ne!(builder.generation(), before, "cached resources must go");
        let s = |v: &str| Some(AttrValue::from(v));
        assert_eq!(get(&builder, "k8s.namespace.name"), s("shop"));
        assert_eq!(get(&builder, "k8s.pod.name"), s("web-6b8f9d7c4-abcde"));
        assert_eq!(get(&builder, "k8s.pod.uid"), s("u-1"));
        assert_eq!(get(&builder, "k8s.container.name"), s("nginx"));
        assert_eq!(get(&builder, "k8s.node.name"), s("node-a"));
        assert_eq!(get(&builder, "k8s.deployment.name"), s("web"));
        assert_eq!(get(&builder, "k8s.cluster.name"), s("prod"));
        assert_eq!(get(&builder, "service.name"), s("storefront"));
        builder
            .set_rules(&ServiceConfig {
                rules: vec![rule(Some("nginx"), None, "edge")],
            })
            .unwrap();
        assert_eq!(get(&builder, "service.name"), s("edge"), "rules win");
    }
}
