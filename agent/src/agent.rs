//! `selfops run`: lock, start the pipeline's components under supervision,
//! run until a signal or a task failure, and stop in order: limits
//! withdrawn, programs detached, exporters flushed.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use selfops_ebpf::{NetSettings, SocketOffsets};
use tokio::sync::{mpsc, watch};

use crate::{
    act::{ActuationLoop, audit::AuditMetrics, runner::ServiceHook},
    config::Config,
    control::{self, ControlHandle, ControlMetrics, Live},
    export::{ExportHandle, ExportOptions, ExportPipeline, Graph, OtlpBatch, resource_to_proto},
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
    receive::{self, ReceiverMetrics},
    series::ServiceStats,
    supervise::{
        self, FaultPlan, Health, Supervisor, Task, TaskMetrics,
        signals::{self, StopRequest},
    },
    telemetry::{KernelCounters, Metrics, program_stats::ProgramStats, server},
    trace::{
        tls_libraries,
        tracer::{TraceMetrics, Tracer},
    },
};

/// How long each stage of stopping may take; together well under the 2 s
/// in which a failed agent must be gone.
const WITHDRAW_WITHIN: Duration = Duration::from_millis(500);
const FLUSH_WITHIN: Duration = Duration::from_millis(500);
/// Export requests the OTLP receiver may hand over before the batcher has
/// taken them; beyond it senders are told to retry later.
const RECEIVED_BATCHES: usize = 16;
/// In-flight OTLP requests, and the profiler's last interval, get this
/// long to be handed to the exporters once the agent stops.
const HANDOVER_WITHIN: Duration = Duration::from_millis(800);
const CONTROL_STOP_WITHIN: Duration = Duration::from_millis(400);
/// After a task failure the process is gone by then, stopped in order or
/// not: a restart by systemd or Kubernetes beats an agent stuck stopping.
/// Limits expire in the kernel by themselves, and closing the process's
/// descriptors detaches its programs.
const FAILED_EXIT_WITHIN: Duration = Duration::from_millis(1800);

/// Hooks for tests; `Default` is what `selfops run` uses.
#[derive(Default)]
pub struct RunOptions {
    /// Makes one task fail on cue (the supervision tests).
    pub fault: Option<FaultPlan>,
}

pub fn run(config: Config) -> anyhow::Result<()> {
    run_with(config, RunOptions::default())
}

pub fn run_with(config: Config, options: RunOptions) -> anyhow::Result<()> {
    // Until the handlers are installed a SIGTERM waits instead of killing.
    signals::defer();
    supervise::log_panics_in_one_line();
    let _lock = InstanceLock::acquire(std::path::Path::new(LOCK_DIR))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_park(crate::memory::on_thread_park)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(run_agent(config, options));
    // Tasks still running hold nothing the kernel needs; do not wait on them.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

/// What start-up brought up, for stopping in order.
struct Running {
    export: ExportHandle,
    object: Option<SensorObject>,
    stop_actuation: Option<watch::Sender<bool>>,
    stop_profiler: Option<watch::Sender<bool>>,
    control: Option<ControlHandle>,
    kernel: Option<KernelCounters>,
    /// Bound before start-up, served once the process model can attribute
    /// connections.
    receiver: Option<PendingReceiver>,
    stop_receiver: Option<watch::Sender<bool>>,
}

struct PendingReceiver {
    listeners: receive::Listeners,
    pipeline: mpsc::Sender<OtlpBatch>,
    metrics: ReceiverMetrics,
}

async fn run_agent(config: Config, options: RunOptions) -> anyhow::Result<()> {
    let mut stop = signals::listen().context("installing the SIGINT/SIGTERM handlers")?;
    let listener = server::bind(config.telemetry.listen)
        .await
        .with_context(|| format!("binding telemetry.listen {}", config.telemetry.listen))?;
    let mut metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let mut supervisor = Supervisor::new(
        health.clone(),
        TaskMetrics::register(metrics.registry_mut()),
        options.fault,
    );
    // Sections a remote config may change live, one channel each.
    let live = Live::new(&config);
    // Bound now, so a port in use stops the start before the kernel is
    // touched.
    let listeners = receive::bind(&config.receivers.otlp)
        .await
        .context("starting the OTLP receiver")?;
    let (received_tx, received_rx) = mpsc::channel(RECEIVED_BATCHES);
    let receiving = listeners.grpc.is_some() || listeners.http.is_some();
    let receiver = receiving.then(|| PendingReceiver {
        listeners,
        pipeline: received_tx,
        metrics: ReceiverMetrics::register(metrics.registry_mut()),
    });
    // Exporters first: whatever starts later has somewhere to send to.
    let (export, pipeline) = ExportPipeline::start_graph(
        &config.export,
        &config.data_dir,
        metrics.registry_mut(),
        ExportOptions::default(),
        Some(live.export.subscribe()),
        Graph {
            exporters: config.exporters.clone(),
            processors: config.processors.clone(),
            pipelines: config.pipelines.clone(),
            received: receiving.then_some(received_rx),
        },
    )?;
    supervisor.spawn(Task::Export, pipeline);
    let mut running = Running {
        export,
        object: None,
        stop_actuation: None,
        stop_profiler: None,
        control: None,
        kernel: None,
        receiver,
        stop_receiver: None,
    };
    let control_metrics = ControlMetrics::register(metrics.registry_mut());

    let started = start(
        &config,
        &stop,
        listener,
        metrics,
        &live,
        &mut supervisor,
        &mut running,
    )
    .await;
    let started = match started {
        Ok(true) => {
            let sink = running.export.clone();
            control::start(
                &Arc::new(config.clone()),
                live,
                health.clone(),
                running.export.metrics().clone(),
                control_metrics,
                Box::new(move |signal| sink.send_audit(signal)),
                running.kernel.clone(),
            )
            .map(|handle| {
                running.control = handle;
                true
            })
        }
        other => other,
    };
    let outcome: anyhow::Result<()> = match started {
        Ok(true) => {
            health.started();
            tracing::info!(listen = %config.telemetry.listen, "running; self-telemetry at /metrics, /healthz, /readyz");
            tokio::select! {
                failure = supervisor.next_failure() => {
                    exit_anyway_after(FAILED_EXIT_WITHIN);
                    Err(failure.into())
                }
                name = stop.wait() => { tracing::info!("{name}: detaching"); Ok(()) }
            }
        }
        Ok(false) => {
            let name = stop.requested().unwrap_or("signal");
            tracing::info!("{name} during start-up: detaching what was attached");
            Ok(())
        }
        Err(err) => Err(err),
    };
    stop_in_order(&mut supervisor, running).await;
    match supervisor.failures().first() {
        // A failure while stopping still makes the exit non-zero.
        Some(failure) if outcome.is_ok() => Err(failure.clone().into()),
        _ => outcome,
    }
}

/// Loads, attaches and starts everything, checking between steps whether a
/// signal asked the agent to stop. `Ok(false)`: stopped early on request.
async fn start(
    config: &Config,
    stop: &StopRequest,
    listener: tokio::net::TcpListener,
    mut metrics: Metrics,
    live: &Live,
    supervisor: &mut Supervisor,
    running: &mut Running,
) -> anyhow::Result<bool> {
    let go_on = || stop.requested().is_none();
    let trace_metrics = TraceMetrics::register(metrics.registry_mut());
    let profiler =
        crate::profile::run::Prepared::new(config, metrics.registry_mut(), running.export.clone())?;
    let audit_metrics = AuditMetrics::register(metrics.registry_mut());
    let kubernetes = crate::k8s::setup::prepare(&config.kubernetes, metrics.registry_mut())?;
    let program_stats = Arc::new(ProgramStats::register(metrics.registry_mut()));
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

    if !go_on() {
        return Ok(false);
    }
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
        btf_offsets::socket_offsets().context("socket sensor")?
    } else {
        SocketOffsets::default()
    };
    if !go_on() {
        return Ok(false);
    }
    let object = running.object.insert(SensorObject::load(&LoadOptions {
        layout,
        process_ring_bytes: config.sensors.process_ring_bytes,
        socket_offsets,
        net_settings: NetSettings {
            agent_tgid: std::process::id(),
            payload_bytes: config.trace.payload_bytes,
        },
        socket_ring_bytes: config.trace.ring_bytes,
    })?);
    let attached = object.attach_process_sensors()?;
    tracing::info!(?attached, "process sensors attached");
    if !go_on() {
        return Ok(false);
    }
    if config.trace.enabled {
        let (hook, programs) =
            crate::kernel::socket_hooks::attach(object, &features).context("socket sensor")?;
        tracing::info!(?hook, programs, "socket sensor attached");
        if !go_on() {
            return Ok(false);
        }
    }

    let mut model = ProcessModel::new(&config.process, metrics.clone());
    let seeded = model
        .seed()
        .context("seeding the process table from /proc")?;
    tracing::info!(seeded, "process table seeded from /proc");
    release_startup_memory();
    let ring = RingReader::new(object.take_process_ring()?).context("polling the ring buffer")?;
    let mut resources = ResourceBuilder::new(&config.service)?
        .with_command_line_on_signals(config.process.command_line_on_signals);
    let (pods, pod_watch) = kubernetes.unzip();
    if let Some(pods) = pods {
        // Before the tracer and profiler build their selectors.
        crate::k8s::install(pods.clone());
        resources = resources.with_pods(pods);
    }
    let resources = Arc::new(resources);
    if !go_on() {
        return Ok(false);
    }

    if let Some(profiler) = profiler {
        let profiler = profiler.start(model.table(), resources.clone())?;
        let (tx, stopping) = watch::channel(false);
        running.stop_profiler = Some(tx);
        supervisor.spawn(
            Task::Profiler,
            supervise::profiler(profiler, Some(live.profile.subscribe()), stopping),
        );
        if !go_on() {
            return Ok(false);
        }
    }

    // Server spans feed the per-service series the playbooks read.
    let service_hook = Arc::new(ServiceHook::new(Arc::new(ServiceStats::default())));
    let actuation = {
        let sink = running.export.clone();
        ActuationLoop::start(
            &config.actuation,
            model.table(),
            service_hook.clone(),
            audit_metrics,
            // Audit records take their own lane through the exporters.
            Box::new(move |signal| sink.send_audit(signal)),
            // With a control plane the loop runs even without playbooks,
            // so that a remote config can add one.
            config
                .control
                .opamp
                .is_some()
                .then(|| live.actuation.subscribe()),
        )?
    };
    if let Some(actuation) = actuation {
        // Started even when a stop is already requested: stopping it is
        // what withdraws whatever it may have put in place.
        let (tx, stopping) = watch::channel(false);
        running.stop_actuation = Some(tx);
        supervisor.spawn(Task::Actuation, actuation.run(stopping));
    }
    if !go_on() {
        return Ok(false);
    }

    if config.trace.enabled {
        attach_tls(object);
        let sink = running.export.clone();
        let services = service_hook.clone();
        let tracer = Tracer::new(
            &config.trace,
            model.table(),
            resources.clone(),
            metrics.clone(),
            trace_metrics,
            model.caught_up(),
            Box::new(move |signal| {
                services.observe(&signal);
                sink.send(signal)
            }),
        )?
        .with_updates(live.trace.subscribe())
        .with_kernel_exclusions(Box::new(object.take_exclusion_maps()?));
        let ring =
            RingReader::new(object.take_socket_ring()?).context("polling the socket ring")?;
        supervisor.local(Task::Tracer, tracer.run(ring));
    }
    if let Some(pending) = running.receiver.take() {
        let table = model.table();
        let of_process = resources.clone();
        let resource_of: receive::ResourceLookup = Arc::new(move |pid| {
            let process = table.read().get(pid)?;
            Some(resource_to_proto(&of_process.resource(&process)).attributes)
        });
        let (tx, mut stopping) = watch::channel(false);
        running.stop_receiver = Some(tx);
        supervisor.spawn(
            Task::Receiver,
            receive::serve(
                config.receivers.otlp.clone(),
                pending.listeners,
                pending.pipeline,
                resource_of,
                pending.metrics,
                async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                },
            ),
        );
    }
    // The service rules live with the process model they name.
    let rules = resources.clone().follow(live.service.subscribe());
    program_stats.follow(object.program_ids());
    let kernel = KernelCounters::new(object.take_lost_counters()?, program_stats, &metrics);
    running.kernel = Some(kernel.clone());
    let state = Arc::new(server::TelemetryState {
        metrics,
        table: model.table(),
        resources,
        kernel,
        health: supervisor.health().clone(),
    });
    let interval = config.process.rescan_interval;
    // Pod metadata is part of the process model's resources.
    let pods = async move {
        match pod_watch {
            Some(watch) => watch.run().await,
            None => std::future::pending().await,
        }
    };
    supervisor.local(Task::Process, async move {
        tokio::select! {
            result = model.run(ring, interval) => result,
            never = rules => match never {},
            never = pods => match never {},
        }
    });
    supervisor.spawn(Task::Telemetry, server::serve(listener, state));
    Ok(go_on())
}

/// Not ready any more; sensors detaching meanwhile; limits withdrawn (and
/// audited) before the exporters flush; the telemetry server answers to the
/// end, so `/readyz` tells the truth while the agent stops.
async fn stop_in_order(supervisor: &mut Supervisor, running: Running) {
    supervisor.stopping();
    // The server hears agent_disconnect while the rest stops.
    let control = running
        .control
        .map(|control| tokio::spawn(control.stop(CONTROL_STOP_WITHIN)));
    // Detaching waits on kernel grace periods (the longest stage, longer
    // still on a busy host): started first, it overlaps everything else.
    let detach = running
        .object
        .map(|object| tokio::task::spawn_blocking(move || object.detach()));
    // The profiler's last interval is written while the rest stops.
    if let Some(stop) = running.stop_profiler {
        let _ = stop.send(true);
    }
    if let Some(stop) = running.stop_actuation {
        let _ = stop.send(true);
        supervisor.finish(&[Task::Actuation], WITHDRAW_WITHIN).await;
    }
    // Senders are answered (and what they sent queued), and the profiler
    // has handed over its last interval, before the exporters flush.
    if let Some(stop) = running.stop_receiver {
        let _ = stop.send(true);
    }
    supervisor
        .finish(&[Task::Receiver, Task::Profiler], HANDOVER_WITHIN)
        .await;
    let export = running.export;
    let (_, flushed) = tokio::join!(
        supervisor.finish(&[Task::Export], FLUSH_WITHIN),
        export.shutdown(FLUSH_WITHIN),
    );
    if !flushed {
        tracing::warn!("export queue not drained at shutdown; the rest is counted as dropped");
    }
    if let Some(detach) = detach {
        match detach.await {
            Ok(()) => tracing::info!("all programs detached"),
            Err(err) => tracing::error!(%err, "detaching the programs failed"),
        }
    }
    if let Some(control) = control {
        let _ = control.await;
    }
    supervisor.abort_all();
}

/// A watchdog thread that ends the process with status 1 after `within`,
/// whatever the runtime is doing.
fn exit_anyway_after(within: Duration) {
    let watchdog = std::thread::Builder::new()
        .name("stop-watchdog".into())
        .spawn(move || {
            std::thread::sleep(within);
            tracing::error!(
                ?within,
                "stopping after a task failure took too long: exiting now"
            );
            // _exit, not exit: no atexit handler or stdio lock held by a
            // stuck thread can keep the process alive.
            // SAFETY: ends the process; nothing runs after it.
            unsafe { libc::_exit(1) };
        });
    if let Err(err) = watchdog {
        tracing::warn!(%err, "no stop watchdog");
    }
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
/// on this thread; hand it back once start-up is done.
fn release_startup_memory() {
    crate::memory::release_everywhere();
}
