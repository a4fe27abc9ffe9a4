//! `selfops run`: lock, probe, load, attach, seed, serve — and on SIGINT or
//! SIGTERM detach everything and exit.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use selfops_ebpf::{NetSettings, SocketOffsets};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    act::{ActuationLoop, audit::AuditMetrics},
    config::Config,
    export::ExportPipeline,
    kernel::{
        btf_offsets,
        features::{Features, raise_memlock_rlimit},
        hooks::{HookTier, choose},
        object::{LoadOptions, SensorObject},
        ring_reader::RingReader,
        tracefs,
    },
    lock::{InstanceLock, LOCK_DIR},
    process::{ResourceBuilder, sensor::ProcessModel},
    series::ServiceStats,
    telemetry::{Metrics, server},
    trace::{
        tls_libraries,
        tracer::{TraceMetrics, Tracer},
    },
};

pub fn run(config: Config) -> anyhow::Result<()> {
    let _lock = InstanceLock::acquire(std::path::Path::new(LOCK_DIR))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(run_agent(config));
    // Tasks still running hold nothing the kernel needs; do not wait on them.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

async fn run_agent(config: Config) -> anyhow::Result<()> {
    let listener = server::bind(config.telemetry.listen)
        .await
        .with_context(|| format!("binding telemetry.listen {}", config.telemetry.listen))?;

    let features = Features::probe();
    for row in &features.features {
        tracing::debug!(feature = row.feature.label(), available = row.available, detail = %row.detail, "probe");
    }
    raise_memlock_rlimit();
    if choose("process", &features, &[HookTier::Tracepoint]).is_none() {
        anyhow::bail!("this kernel offers no tracepoints; selfops cannot observe processes");
    }
    let layout = tracefs::tracepoint_layout().context("reading tracepoint formats")?;
    let socket_offsets = if config.trace.enabled {
        tracefs::check_syscall_layout().context("socket sensor")?;
        btf_offsets::socket_offsets().context("socket sensor")?
    } else {
        SocketOffsets::default()
    };
    let mut object = SensorObject::load(&LoadOptions {
        layout,
        process_ring_bytes: config.sensors.process_ring_bytes,
        socket_offsets,
        net_settings: NetSettings {
            agent_tgid: std::process::id(),
            payload_bytes: config.trace.payload_bytes,
        },
        socket_ring_bytes: config.trace.ring_bytes,
    })?;
    let attached = object.attach_process_sensors()?;
    tracing::info!(?attached, "process sensors attached");
    if config.trace.enabled {
        // Only the tracepoint tier is written so far; choose() logs what
        // cheaper tiers this kernel would offer.
        choose("socket", &features, &[HookTier::Tracepoint])
            .context("the socket sensor needs syscall tracepoints")?;
        let count = object.attach_socket_sensor()?;
        tracing::info!(
            tracepoints = count,
            "socket sensor attached (syscall tracepoints)"
        );
    }

    let mut metrics = Metrics::new();
    let (export, pipeline) =
        ExportPipeline::start(&config.export, &config.data_dir, metrics.registry_mut())?;
    let pipeline = tokio::spawn(pipeline);
    let trace_metrics = TraceMetrics::register(metrics.registry_mut());
    let profiler = crate::profile::run::Prepared::new(&config, metrics.registry_mut())?;
    let audit_metrics = AuditMetrics::register(metrics.registry_mut());
    let metrics = Arc::new(metrics);
    for sensor in selfops_ebpf::Sensor::ALL {
        // Zero-valued series from the start, so a scrape shows every sensor.
        let _ = metrics
            .events_received
            .get_or_create(&Metrics::sensor(sensor));
        let _ = metrics
            .events_malformed
            .get_or_create(&Metrics::sensor(sensor));
    }
    let mut model = ProcessModel::new(&config.process, metrics.clone());
    let seeded = model
        .seed()
        .context("seeding the process table from /proc")?;
    tracing::info!(seeded, "process table seeded from /proc");
    release_startup_memory();

    let ring = RingReader::new(object.take_process_ring()?).context("polling the ring buffer")?;
    let resources = Arc::new(
        ResourceBuilder::new(&config.service)?
            .with_command_line_on_signals(config.process.command_line_on_signals),
    );
    let profiler = profiler
        .map(|p| p.start(model.table(), resources.clone()))
        .transpose()?;
    // Server spans feed the per-service series the playbooks read.
    let service_stats = Arc::new(ServiceStats::default());
    let actuation = {
        let sink = export.clone();
        ActuationLoop::start(
            &config.actuation,
            model.table(),
            service_stats.clone(),
            audit_metrics,
            Box::new(move |signal| sink.send(signal)),
        )?
    };
    let (stop_actuation, stopping) = tokio::sync::watch::channel(false);
    let actuation = actuation.map(|run| tokio::spawn(run.run(stopping)));
    let tracer = if config.trace.enabled {
        attach_tls(&mut object);
        let sink = export.clone();
        // Only when a playbook reads a service series: it costs a lock per span.
        let services = config
            .actuation
            .playbooks
            .iter()
            .any(|p| p.when.signal.subject() == Some("service"))
            .then(|| service_stats.clone());
        let tracer = Tracer::new(
            &config.trace,
            model.table(),
            resources.clone(),
            metrics.clone(),
            trace_metrics,
            Box::new(move |signal| {
                if let Some(services) = &services {
                    services.observe(&signal);
                }
                sink.send(signal)
            }),
        )?;
        let ring =
            RingReader::new(object.take_socket_ring()?).context("polling the socket ring")?;
        Some(tracer.run(ring))
    } else {
        None
    };
    let state = Arc::new(server::TelemetryState {
        metrics,
        table: model.table(),
        resources,
        lost: std::sync::Mutex::new(object.take_lost_counters()?),
    });
    tracing::info!(listen = %config.telemetry.listen, "self-telemetry at /metrics and /processes");

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let tracing = async {
        match tracer {
            Some(run) => run.await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        r = model.run(ring, config.process.rescan_interval) => r.context("process sensor stopped"),
        r = tracing => r.context("tracer stopped"),
        r = server::serve(listener, state) => r.context("telemetry server stopped"),
        _ = sigint.recv() => { tracing::info!("SIGINT: detaching"); Ok(()) }
        _ = sigterm.recv() => { tracing::info!("SIGTERM: detaching"); Ok(()) }
    };
    // Limits are withdrawn (and audited) before the exporters flush.
    let _ = stop_actuation.send(true);
    if let Some(actuation) = actuation {
        let _ = tokio::time::timeout(Duration::from_millis(500), actuation).await;
    }
    // Detaching waits on the kernel; flush the exporters meanwhile.
    let detach = tokio::task::spawn_blocking(move || object.detach());
    if let Some(profiler) = profiler {
        profiler.stop(Duration::from_millis(500)).await;
    }
    if !export.shutdown(Duration::from_millis(500)).await {
        tracing::warn!("export queue not drained at shutdown; the rest is counted as dropped");
    }
    let _ = pipeline.await;
    detach.await.context("detaching")?;
    tracing::info!("all programs detached");
    outcome
}

/// TLS uprobes on every OpenSSL 3 library in use. A failure costs TLS
/// visibility, not the agent, so it is logged.
fn attach_tls(object: &mut SensorObject) {
    let mut seen = std::collections::HashSet::new();
    for library in tls_libraries::find_new(&mut seen) {
        match object.attach_tls(&library) {
            Ok(()) => tracing::info!(library = %library.display(), "TLS uprobes attached"),
            Err(err) => {
                tracing::warn!(library = %library.display(), %err, "TLS uprobes not attached")
            }
        }
    }
}

/// Parsing kernel BTF (probe and loader) leaves tens of MiB of freed heap
/// that glibc keeps; hand it back once start-up is done.
fn release_startup_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe { libc::malloc_trim(0) };
}
