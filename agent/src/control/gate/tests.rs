//! Each check against counters the test moves: the export pipeline's and
//! the sensor series' own counters, this process's CPU time and memory.

use super::*;
use crate::{
    supervise::{Failure, Task},
    telemetry::Metrics,
};

/// A budget no check can exceed but the one a test narrows.
fn roomy() -> Budget {
    Budget {
        cpu: 1024.0,
        rss: u64::MAX,
        ring_losses: 0,
        export_failure_ratio: 0.0,
    }
}

const WINDOW: Duration = Duration::from_secs(30);

fn watch() -> (Watch, Arc<Health>, ExportMetrics) {
    let health = Arc::new(Health::default());
    health.started();
    let export = ExportMetrics::default();
    (Watch::new(health.clone(), export.clone()), health, export)
}

#[test]
fn a_failed_task_fails_the_gate() {
    let (watch, health, _) = watch();
    let since = watch.baseline();
    assert_eq!(watch.check(&since, &roomy(), WINDOW), Ok(()));
    health.failed(&Failure {
        task: Task::Profiler,
        cause: "boom".into(),
    });
    let err = watch.check(&since, &roomy(), WINDOW).unwrap_err();
    assert_eq!(err.check, Check::Tasks);
    assert!(
        err.reason.contains("profiler") && err.reason.contains("boom"),
        "{err:?}"
    );
}

#[test]
fn export_failures_beyond_the_ratio_and_retries_without_delivery_fail() {
    let (watch, _, export) = watch();
    // Failures from before the trial do not count.
    export.failure(export::SINK_OTLP);
    export.drop_signals(export::TRACES, DropReason::ExportFailed, 50);
    let since = watch.baseline();
    assert_eq!(watch.check(&since, &roomy(), WINDOW), Ok(()));

    // Retries that still deliver are tolerated.
    export.retry(export::SINK_OTLP);
    export.exported(export::TRACES, export::SINK_OTLP, 95);
    assert_eq!(watch.check(&since, &roomy(), WINDOW), Ok(()));

    // 5 of 100 lost: within a 5% budget, not within 0%.
    export.failure(export::SINK_OTLP);
    export.drop_signals(export::LOGS, DropReason::RetriesExhausted, 5);
    let five_percent = Budget {
        export_failure_ratio: 0.05,
        ..roomy()
    };
    assert_eq!(watch.check(&since, &five_percent, WINDOW), Ok(()));
    let err = watch.check(&since, &roomy(), WINDOW).unwrap_err();
    assert_eq!(err.check, Check::Export);
    assert_eq!(
        err.reason,
        "export failing: 5 of 100 signals not delivered since the config was applied (5.0%, budget 0.0%); otlp gave up 1 batch(es)"
    );
    // One more lost tips it over 5%; TLS failures are export failures.
    export.drop_signals(export::TRACES, DropReason::Tls, 1);
    let err = watch.check(&since, &five_percent, WINDOW).unwrap_err();
    assert!(err.reason.contains("6 of 101"), "{err:?}");

    // Retries with nothing delivered fail, even while another sink delivers.
    let since = watch.baseline();
    export.retry(export::SINK_OTLP);
    export.exported(export::TRACES, export::SINK_FILE, 3);
    let err = watch.check(&since, &roomy(), WINDOW).unwrap_err();
    assert_eq!(
        err.reason,
        "export to otlp failing: 1 retries and nothing delivered since the config was applied"
    );
}

#[test]
fn ring_losses_beyond_the_budget_fail() {
    let (watch, _, _) = watch();
    let metrics = Metrics::new();
    let lost = |sensor, n| {
        metrics
            .events_lost
            .get_or_create(&Metrics::sensor(sensor))
            .inc_by(n)
    };
    lost(selfops_ebpf::Sensor::ProcessExec, 7);
    let watch = watch.with_kernel(Some(KernelCounters::series(&metrics)));
    let since = watch.baseline();
    let budget = Budget {
        ring_losses: 5,
        ..roomy()
    };
    lost(selfops_ebpf::Sensor::ProcessExec, 2);
    lost(selfops_ebpf::Sensor::ProcessExit, 3);
    assert_eq!(watch.check(&since, &budget, WINDOW), Ok(()));
    lost(selfops_ebpf::Sensor::ProcessExit, 1);
    let err = watch.check(&since, &budget, WINDOW).unwrap_err();
    assert_eq!(err.check, Check::RingLosses);
    assert_eq!(
        err.reason,
        "ring buffers full: 6 events lost since the config was applied, budget 5"
    );
}

#[test]
fn cpu_over_the_budget_fails_once_enough_of_the_window_passed() {
    let (watch, _, _) = watch();
    let since = watch.baseline();
    // The process's CPU clock is what the gate reads.
    assert!(since.cpu.is_some());
    assert_eq!(watch.check(&since, &roomy(), WINDOW), Ok(()));
    let stingy = Budget {
        cpu: 0.01,
        ..roomy()
    };
    // The readings `elapsed` after the apply, with 300 ms of CPU used:
    // set, not spun and slept for, so no machine's speed enters.
    let later = |elapsed: Duration| Baseline {
        cpu: since.cpu.map(|cpu| cpu + Duration::from_millis(300)),
        at: since.at + elapsed,
        ..since
    };
    // Not judged before 5 s of a 30 s window: start-up work is not a runaway.
    assert_eq!(
        cpu(&since, &later(Duration::from_secs(4)), &stingy, WINDOW),
        Ok(())
    );
    let err = cpu(&since, &later(Duration::from_secs(6)), &stingy, WINDOW).unwrap_err();
    assert_eq!(err.check, Check::Cpu);
    // A window shorter than that is judged whole.
    let short = Duration::from_millis(200);
    let err = cpu(&since, &later(short), &stingy, short).unwrap_err();
    assert_eq!(err.check, Check::Cpu);
    assert!(
        err.reason.starts_with("CPU ") && err.reason.ends_with("budget 0.01 cores"),
        "{err:?}"
    );
    assert_eq!(cpu(&since, &later(short), &roomy(), short), Ok(()));
}

#[test]
fn resident_memory_over_the_budget_fails() {
    let (watch, _, _) = watch();
    let since = watch.baseline();
    // 64 MiB touched page by page is resident while it is held.
    let held = vec![1u8; 64 << 20];
    let budget = Budget {
        rss: 32 << 20,
        ..roomy()
    };
    let err = watch.check(&since, &budget, WINDOW).unwrap_err();
    assert_eq!(err.check, Check::Rss);
    assert!(
        err.reason.starts_with("resident memory ") && err.reason.ends_with(", budget 32 MiB"),
        "{err:?}"
    );
    assert_eq!(watch.check(&since, &roomy(), WINDOW), Ok(()));
    assert_eq!(std::hint::black_box(&held)[held.len() - 1], 1);
    assert_eq!(
        rss(Some(33 << 20), &budget).unwrap_err().reason,
        "resident memory 33 MiB, budget 32 MiB"
    );
    assert_eq!(rss(Some(32 << 20), &budget), Ok(()));
}
