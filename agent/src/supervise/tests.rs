use std::{sync::Arc, time::Duration};

use prometheus_client::registry::Registry;

use super::{FaultPlan, Health, Supervisor, Task, TaskMetrics};

fn supervisor(fault: Option<FaultPlan>) -> (Supervisor, Arc<Health>, Registry) {
    let mut registry = Registry::with_prefix("selfops");
    let health = Arc::new(Health::default());
    let metrics = TaskMetrics::register(&mut registry);
    (
        Supervisor::new(health.clone(), metrics, fault),
        health,
        registry,
    )
}

fn text(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

#[tokio::test]
async fn a_panic_in_a_spawned_task_is_a_counted_failure_with_its_cause() {
    let (mut s, health, registry) = supervisor(None);
    health.started();
    assert_eq!(health.ready(), Ok(()));
    s.spawn(Task::Telemetry, std::future::pending::<()>());
    s.spawn(Task::Export, async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if std::hint::black_box(true) {
            panic!("boom");
        }
    });
    let failure = tokio::time::timeout(Duration::from_secs(10), s.next_failure())
        .await
        .unwrap();
    assert_eq!(failure.task, Task::Export);
    assert_eq!(failure.cause, "panicked: boom");
    assert_eq!(
        failure.to_string(),
        "the export task failed: panicked: boom"
    );
    let metrics = text(&registry);
    assert!(
        metrics.contains(r#"selfops_task_failures_total{task="export"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"selfops_task_failures_total{task="actuation"} 0"#),
        "every task has a series: {metrics}"
    );
    assert!(health.ready().unwrap_err().contains("export task failed"));
    assert!(health.live().unwrap_err().contains("panicked: boom"));
    s.abort_all();
}

#[tokio::test]
async fn a_local_task_error_or_early_return_is_a_failure() {
    let (mut s, _health, _registry) = supervisor(None);
    s.local(Task::Process, async {
        Err::<(), _>(std::io::Error::other("ring buffer gone"))
    });
    let failure = s.next_failure().await;
    assert_eq!(
        (failure.task, failure.cause.as_str()),
        (Task::Process, "ring buffer gone")
    );
    assert_eq!(s.failures().len(), 1);
    let (mut s, _health, _registry) = supervisor(None);
    s.local(Task::Tracer, async {});
    let failure = s.next_failure().await;
    assert_eq!(
        (failure.task, failure.cause.as_str()),
        (Task::Tracer, "stopped unexpectedly")
    );
}

#[tokio::test]
async fn a_local_panic_is_caught_too() {
    let (mut s, _health, _registry) = supervisor(None);
    s.local(Task::Process, async {
        let v: Vec<u8> = Vec::new();
        // An index out of bounds, as a bug would.
        let _ = v[std::hint::black_box(3)];
    });
    let failure = s.next_failure().await;
    assert!(
        failure.cause.starts_with("panicked: index out of bounds"),
        "{failure}"
    );
}

#[tokio::test]
async fn ends_during_shutdown_are_not_failures() {
    let (mut s, health, registry) = supervisor(None);
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    s.spawn(Task::Actuation, async move {
        let _ = rx.wait_for(|stop| *stop).await;
    });
    s.spawn(Task::Telemetry, std::future::pending::<()>());
    health.started();
    s.stopping();
    assert_eq!(health.ready(), Err("shutting down".to_owned()));
    assert_eq!(health.live(), Ok(()), "stopping is not a failure");
    let _ = tx.send(true);
    assert!(s.finish(&[Task::Actuation], Duration::from_secs(10)).await);
    // The telemetry server runs on; finish does not wait for it.
    assert!(
        !s.finish(&[Task::Telemetry], Duration::from_millis(20))
            .await
    );
    assert!(s.failures().is_empty());
    assert!(text(&registry).contains(r#"selfops_task_failures_total{task="actuation"} 0"#));
    s.abort_all();
}

#[tokio::test]
async fn the_fault_hook_makes_the_named_task_panic_from_inside() {
    let (fire, fired) = tokio::sync::oneshot::channel::<()>();
    let plan = FaultPlan {
        task: Task::Process,
        trigger: Box::pin(async move {
            let _ = fired.await;
        }),
    };
    let (mut s, _health, _registry) = supervisor(Some(plan));
    s.spawn(Task::Export, std::future::pending::<()>());
    s.local(Task::Process, std::future::pending::<()>());
    let _ = fire.send(());
    let failure = s.next_failure().await;
    assert_eq!(failure.task, Task::Process);
    assert_eq!(
        failure.cause,
        "panicked: fault injected into the process task (test hook)"
    );
    s.abort_all();
}

#[test]
fn readiness_waits_for_start_up() {
    let health = Health::default();
    assert_eq!(health.ready(), Err("starting".to_owned()));
    assert_eq!(health.live(), Ok(()));
    health.started();
    assert_eq!(health.ready(), Ok(()));
    for task in Task::ALL {
        assert_eq!(Task::from_name(task.name()), Some(task));
    }
}

#[tokio::test]
async fn a_failed_task_marks_its_component_only() {
    let (mut s, health, _registry) = supervisor(None);
    assert!(health.components().is_empty());
    s.spawn(Task::Telemetry, std::future::pending::<()>());
    s.spawn(Task::Export, std::future::pending::<()>());
    s.local(Task::Tracer, async { Err::<(), _>("ring gone") });
    let names: Vec<_> = health.components().iter().map(|c| c.name).collect();
    // The telemetry server is not a component; the order is the tasks'.
    assert_eq!(names, ["tracer", "exporters"]);
    assert!(health.components().iter().all(|c| c.healthy()));
    assert!(health.components().iter().all(|c| c.started_unix_nano > 0));
    let failure = tokio::time::timeout(Duration::from_secs(10), s.next_failure())
        .await
        .unwrap();
    assert_eq!(failure.task, Task::Tracer);
    let components = health.components();
    assert_eq!(
        components[0].failure.as_deref(),
        Some("the tracer task failed: ring gone")
    );
    assert!(components[1].healthy());
    s.abort_all();
}
