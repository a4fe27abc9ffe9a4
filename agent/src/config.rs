//! Typed agent configuration (YAML), its defaults and its validation.
//!
//! Every key is known: an unknown key, a wrong type or a value out of range is
//! an error that names the key, found before anything touches the kernel.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// Why a configuration was refused. Each message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {key}: {message}")]
    Parse {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// What the exporters would refuse; the error names the key.
    #[error("{path}: {source}")]
    Export {
        path: PathBuf,
        source: crate::export::ExportError,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where traces.jsonl, metrics.jsonl, logs.jsonl and profiles/ go.
    pub data_dir: PathBuf,
    pub telemetry: TelemetryConfig,
    pub sensors: SensorsConfig,
    pub process: ProcessConfig,
    pub service: ServiceConfig,
    pub export: ExportConfig,
    pub trace: TraceConfig,
    pub profile: ProfileConfig,
    /// Signals, playbooks and the kernel limiter (the self-healing loop).
    pub actuation: crate::act::ActuationConfig,
    /// Remote configuration over OpAMP; local only (a remote config can
    /// never change it).
    pub control: crate::control::ControlConfig,
    /// OTLP received from instrumented applications on the node.
    pub receivers: ReceiversConfig,
    /// Named processors (`transform/NAME`, `filter/NAME`,
    /// `probabilistic_sampler`, `rate_limit/NAME`, `routing/NAME`).
    pub processors: crate::pipeline::ProcessorsConfig,
    /// OTLP exporters besides `export.otlp`, named `otlp/NAME`.
    pub exporters: crate::pipeline::ExportersConfig,
    /// The processors and exporters of each signal.
    pub pipelines: crate::pipeline::PipelinesConfig,
    /// Pod metadata from the Kubernetes API server (local only).
    pub kubernetes: KubernetesConfig,
    /// The YAML this was parsed from (reported as the effective config).
    #[serde(skip)]
    pub source: Option<std::sync::Arc<str>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiversConfig {
    /// OTLP/gRPC and OTLP/HTTP, on loopback by default.
    pub otlp: crate::receive::ReceiverConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// Continuous CPU profiling of every process (pprof files, flame
    /// graphs, OTLP profiles).
    pub enabled: bool,
    /// Samples per second per CPU (1 to 999).
    pub frequency_hz: u32,
    /// Length of one aggregated profile.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Profile only what matches one of these (empty: everything); only
    /// `executable` and `cgroup` apply.
    pub include: Vec<Selector>,
    /// Never profile what matches one of these.
    pub exclude: Vec<Selector>,
    /// Memory for unwind tables (shared per executable build-id); the least
    /// recently used are evicted beyond it.
    pub unwind_table_bytes: usize,
    /// Size of the sample ring buffer in bytes (power of two).
    pub ring_bytes: u32,
    /// Distinct stacks per interval; samples of further stacks are counted
    /// as dropped.
    pub max_stacks: usize,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            frequency_hz: 19,
            interval: Duration::from_secs(10),
            include: Vec::new(),
            exclude: Vec::new(),
            unwind_table_bytes: 16 << 20,
            ring_bytes: 4 << 20,
            max_stacks: 65_536,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceConfig {
    /// HTTP tracing of every process's TCP connections.
    pub enabled: bool,
    /// Payload bytes captured per socket syscall (1 to 512).
    pub payload_bytes: u32,
    /// Connections traced at once; beyond it new ones are counted and skipped.
    pub max_connections: usize,
    /// Size of the socket-event ring buffer in bytes (power of two).
    pub ring_bytes: u32,
    /// Distinct route templates per service in the RED metrics; beyond it
    /// requests count under one overflow route.
    pub max_routes_per_service: usize,
    /// RED series the agent keeps in all (every service together); beyond
    /// it requests are counted under overflow series.
    pub max_red_series: usize,
    /// How often RED metrics are exported.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// Trace only what matches one of these (empty: everything).
    pub include: Vec<Selector>,
    /// Never trace what matches one of these.
    pub exclude: Vec<Selector>,
}

/// Picks processes or connections: exactly one of `executable: GLOB`
/// (name or path), `cgroup: GLOB` or `port: N` (listening or destination
/// port), or a pod selector: `namespace: GLOB` and/or `labels: {KEY: VALUE}`
/// (every label must match).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub executable: Option<String>,
    pub cgroup: Option<String>,
    pub port: Option<u16>,
    pub namespace: Option<String>,
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

impl Selector {
    /// Whether this picks by pod (namespace or labels).
    pub fn is_pod(&self) -> bool {
        self.namespace.is_some() || self.labels.is_some()
    }
}

/// Pod metadata: on when `kubeconfig` is given or the agent runs in a pod.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    pub enabled: bool,
    /// A kubeconfig (its current context), for an agent outside a pod.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name; else the `NODE_NAME` environment variable.
    pub node_name: Option<String>,
    /// `k8s.cluster.name` on every signal.
    pub cluster_name: Option<String>,
    /// Pods held at most; more are refused and counted.
    pub max_pods: usize,
    /// Largest pod object (watch line) read; larger ones are skipped and
    /// counted.
    pub max_object_bytes: usize,
    /// Pods per list page.
    pub page_size: u32,
    /// Longest wait between retries while the API server is away.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long one watch request lasts before it is renewed.
    #[serde(with = "humantime_serde")]
    pub watch_timeout: Duration,
    /// How long a deleted pod's metadata stays, for the late signals of
    /// its last moments.
    #[serde(with = "humantime_serde")]
    pub deleted_pod_grace: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kubeconfig: None,
            node_name: None,
            cluster_name: None,
            max_pods: 10_000,
            max_object_bytes: 1 << 20,
            page_size: 100,
            max_backoff: Duration::from_secs(30),
            watch_timeout: Duration::from_secs(300),
            deleted_pod_grace: crate::k8s::DEFAULT_DELETED_GRACE,
        }
    }
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            payload_bytes: 512,
            max_connections: 16_384,
            ring_bytes: 8 << 20,
            max_routes_per_service: 100,
            max_red_series: 4096,
            metrics_interval: Duration::from_secs(10),
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Write traces.jsonl / metrics.jsonl / logs.jsonl in `data_dir`.
    pub file: bool,
    /// Export to an OpenTelemetry Collector (off when absent).
    pub otlp: Option<OtlpConfig>,
    /// Signals waiting for export; beyond it new signals are dropped and
    /// counted.
    pub queue_capacity: usize,
    /// Most signals per export request.
    pub batch_size: usize,
    /// Longest a signal waits for its batch to fill.
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// `http://host:4317` for gRPC, `http://host:4318` for HTTP/protobuf
    /// (the `/v1/traces`… paths are added); `https://` for TLS.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    #[serde(default = "default_true")]
    pub gzip: bool,
    #[serde(default = "default_otlp_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra request headers (e.g. authorization).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Retryable failures are retried with exponential backoff for at most
    /// this long, then the batch is dropped and counted.
    #[serde(default = "default_retry_for", with = "humantime_serde")]
    pub retry_for: Duration,
    /// TLS settings of an `https://` endpoint (system roots when absent);
    /// refused with `http://`, which is never encrypted.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    #[default]
    Grpc,
    HttpProtobuf,
}

fn default_true() -> bool {
    true
}

fn default_otlp_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_retry_for() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Address of the self-telemetry HTTP endpoint (/metrics, /processes).
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorsConfig {
    /// Size of the process-event ring buffer in bytes: a power of two, at
    /// least one page.
    pub process_ring_bytes: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// Most processes the table holds; beyond it new processes are counted
    /// as rejected rather than stored.
    pub max_processes: usize,
    /// Bytes of a command line kept per process.
    pub max_cmdline_bytes: usize,
    /// How long an exited process stays resolvable for late signals.
    #[serde(with = "humantime_serde")]
    pub exited_retention: Duration,
    /// How often the table is reconciled with /proc, repairing any lost event.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// Executables whose build-ids are cached (one ELF read per file).
    pub build_id_cache_entries: usize,
    /// Put `process.command_line` on signal resources too (it is always in
    /// `/processes`). Off: command lines often carry secrets.
    pub command_line_on_signals: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Rules naming a process's service; the first match wins, and without a
    /// match the service is the executable's name.
    pub rules: Vec<ServiceRule>,
}

/// `service.name` for processes whose executable or cgroup matches a glob.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRule {
    /// Glob on the executable name (`nginx`) or path (`/usr/sbin/*`).
    pub executable: Option<String>,
    /// Glob on the cgroup path (`/system.slice/nginx.service`).
    pub cgroup: Option<String>,
    pub name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("selfops-data"),
            telemetry: TelemetryConfig::default(),
            sensors: SensorsConfig::default(),
            process: ProcessConfig::default(),
            service: ServiceConfig::default(),
            export: ExportConfig::default(),
            trace: TraceConfig::default(),
            profile: ProfileConfig::default(),
            actuation: crate::act::ActuationConfig::default(),
            control: crate::control::ControlConfig::default(),
            receivers: ReceiversConfig::default(),
            processors: Default::default(),
            exporters: Default::default(),
            pipelines: Default::default(),
            kubernetes: KubernetesConfig::default(),
            source: None,
        }
    }
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            file: true,
            otlp: None,
            queue_capacity: 8192,
            batch_size: 512,
            batch_timeout: Duration::from_secs(1),
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl Default for SensorsConfig {
    fn default() -> Self {
        Self {
            process_ring_bytes: 1 << 20,
        }
    }
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            max_processes: 32_768,
            max_cmdline_bytes: 1024,
            exited_retention: Duration::from_secs(5),
            rescan_interval: Duration::from_secs(30),
            build_id_cache_entries: 4096,
            command_line_on_signals: false,
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text; `path` only labels errors.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        // An empty file is the default configuration, not an error.
        let mut config = if text.trim().is_empty() {
            Config::default()
        } else {
            let deserializer = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(deserializer).map_err(|err| {
                let key = match err.path().to_string() {
                    key if key == "." => "(top level)".to_owned(),
                    key => key,
                };
                ConfigError::Parse {
                    path: path.to_owned(),
                    key,
                    message: err.into_inner().to_string(),
                }
            })?
        };
        config.validate(path)?;
        config.source = Some(text.into());
        Ok(config)
    }

    fn validate(&self, path: &std::path::Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let ring = self.sensors.process_ring_bytes;
        if ring < 4096 || !ring.is_power_of_two() {
            return Err(invalid(
                "sensors.process_ring_bytes",
                format!("{ring} is not allowed: use a power of two of at least 4096"),
            ));
        }
        let p = &self.process;
        if !(16..=4_194_304).contains(&p.max_processes) {
            return Err(invalid(
                "process.max_processes",
                format!("{} is not allowed: use 16 to 4194304", p.max_processes),
            ));
        }
        if !(16..=65_536).contains(&p.max_cmdline_bytes) {
            return Err(invalid(
                "process.max_cmdline_bytes",
                format!("{} is not allowed: use 16 to 65536", p.max_cmdline_bytes),
            ));
        }
        if p.rescan_interval < Duration::from_secs(1) {
            return Err(invalid(
                "process.rescan_interval",
                "must be at least 1s".to_owned(),
            ));
        }
        if p.build_id_cache_entries == 0 {
            return Err(invalid(
                "process.build_id_cache_entries",
                "must be at least 1".to_owned(),
            ));
        }
        let t = &self.trace;
        if !(1..=selfops_ebpf::PAYLOAD_MAX as u32).contains(&t.payload_bytes) {
            return Err(invalid(
                "trace.payload_bytes",
                format!(
                    "{} is not allowed: use 1 to {}",
                    t.payload_bytes,
                    selfops_ebpf::PAYLOAD_MAX
                ),
            ));
        }
        if t.ring_bytes < 4096 || !t.ring_bytes.is_power_of_two() {
            return Err(invalid(
                "trace.ring_bytes",
                format!(
                    "{} is not allowed: use a power of two of at least 4096",
                    t.ring_bytes
                ),
            ));
        }
        if !(1..=1_048_576).contains(&t.max_connections) {
            return Err(invalid(
                "trace.max_connections",
                format!("{} is not allowed: use 1 to 1048576", t.max_connections),
            ));
        }
        if t.max_routes_per_service == 0 {
            return Err(invalid(
                "trace.max_routes_per_service",
                "must be at least 1".to_owned(),
            ));
        }
        if !(1..=1_048_576).contains(&t.max_red_series) {
            return Err(invalid(
                "trace.max_red_series",
                format!("{} is not allowed: use 1 to 1048576", t.max_red_series),
            ));
        }
        if t.metrics_interval < Duration::from_millis(100) {
            return Err(invalid(
                "trace.metrics_interval",
                "must be at least 100ms".to_owned(),
            ));
        }
        for (list, selectors) in [("include", &t.include), ("exclude", &t.exclude)] {
            for (i, selector) in selectors.iter().enumerate() {
                let key = format!("trace.{list}[{i}]");
                if selector.is_pod() {
                    check_pod_selector(selector).map_err(|m| invalid(&key, m))?;
                    continue;
                }
                match (&selector.executable, &selector.cgroup, selector.port) {
                    (Some(glob), None, None) | (None, Some(glob), None) => {
                        check_glob(glob).map_err(|m| invalid(&key, m))?;
                    }
                    (None, None, Some(0)) => {
                        return Err(invalid(
                            &key,
                            "port 0 is not allowed: use 1 to 65535".into(),
                        ));
                    }
                    (None, None, Some(_)) => {}
                    _ => {
                        return Err(invalid(
                            &key,
                            "give exactly one of `executable`, `cgroup` or `port`, or a pod's `namespace` and/or `labels`".into(),
                        ));
                    }
                }
            }
        }
        self.validate_profile(&invalid)?;
        self.validate_control(&invalid)?;
        let k = &self.kubernetes;
        for (key, ok, range) in [
            (
                "max_pods",
                (1..=1_000_000).contains(&k.max_pods),
                "1 to 1000000",
            ),
            (
                "max_object_bytes",
                (1024..=64 << 20).contains(&k.max_object_bytes),
                "1024 to 67108864",
            ),
            (
                "page_size",
                (1..=10_000).contains(&k.page_size),
                "1 to 10000",
            ),
            (
                "max_backoff",
                (Duration::from_millis(100)..=Duration::from_secs(600)).contains(&k.max_backoff),
                "100ms to 10m",
            ),
            (
                "watch_timeout",
                (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&k.watch_timeout),
                "1s to 1h",
            ),
        ] {
            if !ok {
                return Err(invalid(
                    &format!("kubernetes.{key}"),
                    format!("out of range: use {range}"),
                ));
            }
        }
        let e = &self.export;
        if !(1..=1_048_576).contains(&e.queue_capacity) {
            return Err(invalid(
                "export.queue_capacity",
                format!("{} is not allowed: use 1 to 1048576", e.queue_capacity),
            ));
        }
        if !(1..=65_536).contains(&e.batch_size) {
            return Err(invalid(
                "export.batch_size",
                format!("{} is not allowed: use 1 to 65536", e.batch_size),
            ));
        }
        if let Some(otlp) = &e.otlp
            && !(otlp.endpoint.starts_with("http://") || otlp.endpoint.starts_with("https://"))
        {
            return Err(invalid(
                "export.otlp.endpoint",
                format!(
                    "{:?} is not allowed: use http://host:port or https://host:port",
                    otlp.endpoint
                ),
            ));
        }
        // What starting (or rebuilding) the exporters would refuse, found
        // here for a local file and a remote config alike.
        crate::export::check(e).map_err(|source| ConfigError::Export {
            path: path.to_owned(),
            source,
        })?;
        for (name, otlp) in &self.exporters {
            crate::export::check_otlp(otlp).map_err(|err| {
                let err = err.to_string();
                let message = err.strip_prefix("export.otlp.").unwrap_or(&err);
                invalid(&format!("exporters.{name}"), message.to_owned())
            })?;
        }
        crate::pipeline::Pipelines::check(&self.processors, &self.exporters, &self.pipelines)
            .map_err(|e| invalid(&e.key, e.message))?;
        let exporters = e
            .otlp
            .iter()
            .map(|otlp| ("export.otlp.endpoint".to_owned(), otlp))
            .chain(
                self.exporters
                    .iter()
                    .map(|(name, otlp)| (format!("exporters.{name}.endpoint"), otlp)),
            );
        for (key, otlp) in exporters {
            if let Some(listener) = own_listener(&otlp.endpoint, &self.receivers.otlp) {
                return Err(invalid(
                    &key,
                    format!(
                        "{:?} is this agent's own OTLP receiver ({listener}): it would export \
                         to itself; point it at a Collector, or move or disable \
                         receivers.otlp",
                        otlp.endpoint
                    ),
                ));
            }
        }
        self.actuation
            .validate()
            .map_err(|(key, message)| invalid(&key, message))?;
        for (i, rule) in self.service.rules.iter().enumerate() {
            let key = |field: &str| format!("service.rules[{i}].{field}");
            match (&rule.executable, &rule.cgroup) {
                (None, None) | (Some(_), Some(_)) => {
                    return Err(invalid(
                        &format!("service.rules[{i}]"),
                        "give exactly one of `executable` or `cgroup`".to_owned(),
                    ));
                }
                (Some(glob), None) => {
                    check_glob(glob).map_err(|m| invalid(&key("executable"), m))?
                }
                (None, Some(glob)) => check_glob(glob).map_err(|m| invalid(&key("cgroup"), m))?,
            }
            if rule.name.trim().is_empty() {
                return Err(invalid(&key("name"), "must not be empty".to_owned()));
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_control(
        &self,
        invalid: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        self.control
            .validate()
            .map_err(|(key, message)| invalid(&format!("control.{key}"), message))
    }

    fn validate_profile(
        &self,
        invalid: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let p = &self.profile;
        if !(1..=999).contains(&p.frequency_hz) {
            return Err(invalid(
                "profile.frequency_hz",
                format!("{} is not allowed: use 1 to 999", p.frequency_hz),
            ));
        }
        if p.interval < Duration::from_secs(1) {
            return Err(invalid(
                "profile.interval",
                "must be at least 1s".to_owned(),
            ));
        }
        if p.unwind_table_bytes < 1 << 20 {
            return Err(invalid(
                "profile.unwind_table_bytes",
                format!(
                    "{} is not allowed: use at least 1048576",
                    p.unwind_table_bytes
                ),
            ));
        }
        if p.ring_bytes < 1 << 16 || !p.ring_bytes.is_power_of_two() {
            return Err(invalid(
                "profile.ring_bytes",
                format!(
                    "{} is not allowed: use a power of two of at least 65536",
                    p.ring_bytes
                ),
            ));
        }
        if !(1..=4_194_304).contains(&p.max_stacks) {
            return Err(invalid(
                "profile.max_stacks",
                format!("{} is not allowed: use 1 to 4194304", p.max_stacks),
            ));
        }
        for (list, selectors) in [("include", &p.include), ("exclude", &p.exclude)] {
            for (i, selector) in selectors.iter().enumerate() {
                let key = format!("profile.{list}[{i}]");
                if selector.is_pod() {
                    check_pod_selector(selector).map_err(|m| invalid(&key, m))?;
                    continue;
                }
                match (&selector.executable, &selector.cgroup, selector.port) {
                    (Some(glob), None, None) | (None, Some(glob), None) => {
                        check_glob(glob).map_err(|m| invalid(&key, m))?;
                    }
                    _ => {
                        return Err(invalid(
                            &key,
                            "give exactly one of `executable` or `cgroup`, or a pod's `namespace` and/or `labels`".into(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A pod selector names nothing else, and what it names is well formed.
fn check_pod_selector(selector: &Selector) -> Result<(), String> {
    if selector.executable.is_some() || selector.cgroup.is_some() || selector.port.is_some() {
        return Err(
            "a pod selector (`namespace`, `labels`) cannot also give `executable`, `cgroup` or `port`"
                .into(),
        );
    }
    if let Some(glob) = &selector.namespace {
        check_glob(glob)?;
    }
    if selector.labels.as_ref().is_some_and(|l| l.is_empty()) {
        return Err("`labels` needs at least one KEY: VALUE".into());
    }
    Ok(())
}

/// The receiver listener `endpoint` (an exporter's URL) would reach, if
/// it names one.
fn own_listener(endpoint: &str, receiver: &crate::receive::ReceiverConfig) -> Option<&'static str> {
    if !receiver.enabled {
        return None;
    }
    let uri: hyper::Uri = endpoint.parse().ok()?;
    let port = uri.port_u16()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip: Option<std::net::IpAddr> = match host {
        "localhost" => Some(std::net::Ipv4Addr::LOCALHOST.into()),
        host => host.parse().ok(),
    };
    let reaches = |listener: &SocketAddr| {
        listener.port() == port
            && ip.is_some_and(|ip| {
                ip == listener.ip()
                    || (ip.is_loopback()
                        && (listener.ip().is_loopback() || listener.ip().is_unspecified()))
            })
    };
    if receiver.grpc.as_ref().is_some_and(|p| reaches(&p.endpoint)) {
        return Some("receivers.otlp.grpc");
    }
    if receiver.http.as_ref().is_some_and(|p| reaches(&p.endpoint)) {
        return Some("receivers.otlp.http");
    }
    None
}

fn check_glob(glob: &str) -> Result<(), String> {
    globset::Glob::new(glob)
        .map(|_| ())
        .map_err(|err| format!("invalid glob {glob:?}: {err}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("c.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_default() {
        let config = parse("").unwrap();
        assert_eq!(config.telemetry.listen.port(), 9464);
        assert_eq!(config.data_dir, PathBuf::from("selfops-data"));
    }

    #[test]
    fn full_config_parses() {
        let config = parse(
            "data_dir: /var/lib/selfops\n\
             telemetry: { listen: 127.0.0.1:19464 }\n\
             process: { max_processes: 1000, exited_retention: 2s, rescan_interval: 10s }\n\
             service:\n  rules:\n    - { executable: nginx, name: web }\n    - { cgroup: '/system.slice/*', name: sys }\n",
        )
        .unwrap();
        assert_eq!(config.process.max_processes, 1000);
        assert_eq!(config.process.exited_retention, Duration::from_secs(2));
        assert_eq!(config.service.rules.len(), 2);
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../deploy/selfops.yaml");
        let config = parse(text).unwrap();
        assert!(config.export.otlp.is_some());
    }

    #[test]
    fn exporting_to_the_agents_own_receiver_is_refused() {
        for (yaml, key) in [
            (
                "export: { otlp: { endpoint: 'http://127.0.0.1:4317' } }",
                "export.otlp.endpoint",
            ),
            (
                "exporters: { otlp/x: { endpoint: 'http://localhost:4318', protocol: http_protobuf } }",
                "exporters.otlp/x.endpoint",
            ),
            (
                "receivers: { otlp: { grpc: { endpoint: '0.0.0.0:5317' } } }\n\
                 export: { otlp: { endpoint: 'http://127.0.0.1:5317' } }",
                "export.otlp.endpoint",
            ),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(
                err.contains(key) && err.contains("export to itself"),
                "{err}"
            );
        }
        // Elsewhere, or with the receiver moved or off: fine.
        parse("export: { otlp: { endpoint: 'http://10.0.0.9:4317' } }").unwrap();
        parse(
            "receivers: { otlp: { enabled: false } }\n\
             export: { otlp: { endpoint: 'http://127.0.0.1:4317' } }",
        )
        .unwrap();
        parse(
            "receivers: { otlp: { grpc: null } }\n\
             export: { otlp: { endpoint: 'http://127.0.0.1:4317' } }",
        )
        .unwrap();
    }

    #[test]
    fn pod_selectors_and_kubernetes_ranges() {
        let dir = std::env::temp_dir();
        let parse = |text: &str| {
            let path = dir.join(format!("selfops-k8s-config-{}.yaml", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Config::load(&path)
        };
        let ok = parse(
            "trace:\n  include: [{namespace: 'shop-*', labels: {tier: front}}]\nprofile:\n  exclude: [{labels: {profile: 'off'}}]\nkubernetes:\n  node_name: n1\n  cluster_name: c\n",
        )
        .unwrap();
        assert!(ok.trace.include[0].is_pod());
        assert_eq!(ok.kubernetes.node_name.as_deref(), Some("n1"));
        for (text, key) in [
            (
                "trace:\n  include: [{namespace: a, port: 80}]\n",
                "trace.include[0]",
            ),
            (
                "profile:\n  include: [{labels: {}}]\n",
                "profile.include[0]",
            ),
            (
                "trace:\n  exclude: [{namespace: '['}]\n",
                "trace.exclude[0]",
            ),
            ("kubernetes:\n  max_pods: 0\n", "kubernetes.max_pods"),
            (
                "kubernetes:\n  max_backoff: 1ms\n",
                "kubernetes.max_backoff",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn trace_selectors() {
        let config = parse(
            "trace: { include: [ { executable: nginx }, { port: 8080 } ], exclude: [ { cgroup: '/x/*' } ] }",
        )
        .unwrap();
        assert_eq!(config.trace.include.len(), 2);
        let err = parse("trace: { include: [ { port: 0 } ] }").unwrap_err();
        assert!(err.contains("trace.include[0]"), "{err}");
        let err = parse("trace: { exclude: [ { pid: 3 } ] }").unwrap_err();
        assert!(err.contains("trace.exclude[0]"), "{err}");
    }

    #[test]
    fn profile_config() {
        let config = parse(
            "profile: { enabled: true, frequency_hz: 99, interval: 5s, exclude: [ { executable: 'sshd' } ] }",
        )
        .unwrap();
        assert!(config.profile.enabled);
        assert_eq!(config.profile.frequency_hz, 99);
        assert_eq!(config.profile.interval, Duration::from_secs(5));
        let err = parse("profile: { frequency_hz: 1000 }").unwrap_err();
        assert!(err.contains("profile.frequency_hz"), "{err}");
        let err = parse("profile: { interval: 10ms }").unwrap_err();
        assert!(err.contains("profile.interval"), "{err}");
        let err = parse("profile: { include: [ { port: 80 } ] }").unwrap_err();
        assert!(err.contains("profile.include[0]"), "{err}");
        let err = parse("profile: { ring_bytes: 100000 }").unwrap_err();
        assert!(err.contains("profile.ring_bytes"), "{err}");
        let err = parse("profile: { unwind_table_bytes: 10 }").unwrap_err();
        assert!(err.contains("profile.unwind_table_bytes"), "{err}");
    }

    #[test]
    fn otlp_config() {
        let config =
            parse("export: { otlp: { endpoint: 'http://c:4318', protocol: http_protobuf } }")
                .unwrap();
        let otlp = config.export.otlp.unwrap();
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert!(otlp.gzip);
        let err = parse("export: { otlp: { endpoint: 'c:4317' } }").unwrap_err();
        assert!(err.contains("export.otlp.endpoint"), "{err}");
        let err = parse("export: { otlp: { endpoint: 'http://c', protocol: udp } }").unwrap_err();
        assert!(err.contains("export.otlp.protocol"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("process:\n  max_procs: 10\n").unwrap_err();
        assert!(err.contains("process.max_procs"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
        assert!(
            err.contains("max_processes"),
            "lists the allowed keys: {err}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let err = parse("process:\n  max_processes: many\n").unwrap_err();
        assert!(err.contains("process.max_processes"), "{err}");
    }

    #[test]
    fn out_of_range_is_named() {
        let err = parse("sensors: { process_ring_bytes: 5000 }").unwrap_err();
        assert!(err.contains("sensors.process_ring_bytes"), "{err}");
        let err = parse("service: { rules: [ { name: x } ] }").unwrap_err();
        assert!(err.contains("service.rules[0]"), "{err}");
        let err = parse("service: { rules: [ { executable: 'a[', name: x } ] }").unwrap_err();
        assert!(err.contains("service.rules[0].executable"), "{err}");
    }

    #[test]
    fn error_is_one_line() {
        for bad in [
            "nope: 1",
            "process: [1, 2]",
            "telemetry: { listen: nowhere }",
            ": :",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                !err.contains('\n'),
                "{bad:?} gave a multi-line error: {err}"
            );
        }
    }
}
