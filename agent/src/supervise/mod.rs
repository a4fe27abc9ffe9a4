//! Supervision of the agent's long-running tasks: process model, tracer,
//! export pipeline, profiler, actuation loop, telemetry server.
//!
//! Each task runs behind a guard that turns a panic into an error, so the
//! supervisor sees every way a task can end. A task that ends before
//! shutdown — with an error, a panic, or just returning — is a failure:
//! logged with its cause, counted in `selfops_task_failures_total{task}`,
//! and reported to [`Health`] (so `/readyz` and `/healthz` turn unhealthy at
//! once). The agent then stops in order and exits non-zero, so systemd or
//! Kubernetes restarts it.

mod fault;
mod guard;
pub use guard::log_panics_in_one_line;
mod health;
mod profiler;
pub mod signals;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, task::Poll, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::task::{Id, JoinSet};

pub use fault::FaultPlan;
pub use health::{Component, Health};
pub use profiler::profiler;

/// The supervised tasks; `name` is the `task` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    Process,
    Tracer,
    Export,
    Profiler,
    Actuation,
    Telemetry,
    Receiver,
}

impl Task {
    pub const ALL: [Task; 7] = [
        Task::Process,
        Task::Tracer,
        Task::Export,
        Task::Profiler,
        Task::Actuation,
        Task::Telemetry,
        Task::Receiver,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::Process => "process",
            Task::Tracer => "tracer",
            Task::Export => "export",
            Task::Profiler => "profiler",
            Task::Actuation => "actuation",
            Task::Telemetry => "telemetry",
            Task::Receiver => "receiver",
        }
    }

    /// The component a task belongs to, as the agent reports its health
    /// (the telemetry server is the agent's own, not a component).
    pub fn component(self) -> Option<&'static str> {
        match self {
            Task::Process => Some("sensors"),
            Task::Tracer => Some("tracer"),
            Task::Export => Some("exporters"),
            Task::Profiler => Some("profiler"),
            Task::Actuation => Some("actuation"),
            Task::Telemetry => None,
            Task::Receiver => Some("receiver"),
        }
    }

    pub fn from_name(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A task that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub task: Task,
    pub cause: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} task failed: {}", self.task, self.cause)
    }
}

impl std::error::Error for Failure {}

/// How a task ended: `Ok` when it returned normally.
pub struct Exit {
    pub task: Task,
    pub result: Result<(), String>,
}

/// What a task's future returns, as seen by the supervisor.
pub trait TaskOutput {
    fn into_result(self) -> Result<(), String>;
}

impl TaskOutput for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: std::fmt::Display> TaskOutput for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: &'static str,
}

/// `selfops_task_failures_total{task}`.
#[derive(Debug, Clone, Default)]
pub struct TaskMetrics {
    failures: Family<TaskLabel, Counter>,
}

impl TaskMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "task_failures",
            "Supervised tasks that failed (panicked, returned an error, or stopped early)",
            metrics.failures.clone(),
        );
        for task in Task::ALL {
            // Zero-valued series from the start, so a scrape shows every task.
            let _ = metrics
                .failures
                .get_or_create(&TaskLabel { task: task.name() });
        }
        metrics
    }

    pub fn failures(&self, task: Task) -> u64 {
        self.failures
            .get_or_create(&TaskLabel { task: task.name() })
            .get()
    }
}

type LocalTask = Pin<Box<dyn Future<Output = Exit>>>;

/// Runs and watches the tasks. Spawned tasks run on the runtime's workers;
/// local ones are polled by whoever awaits the supervisor (the agent's own
/// thread), for futures that are not `Send` or that were always run there.
pub struct Supervisor {
    spawned: JoinSet<Exit>,
    ids: HashMap<Id, Task>,
    local: Vec<LocalTask>,
    health: Arc<Health>,
    metrics: TaskMetrics,
    fault: Option<FaultPlan>,
    failures: Vec<Failure>,
}

impl Supervisor {
    pub fn new(health: Arc<Health>, metrics: TaskMetrics, fault: Option<FaultPlan>) -> Self {
        Self {
            spawned: JoinSet::new(),
            ids: HashMap::new(),
            local: Vec::new(),
            health,
            metrics,
            fault,
            failures: Vec::new(),
        }
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Runs `future` on the runtime's workers.
    pub fn spawn<F, T>(&mut self, task: Task, future: F)
    where
        F: Future<Output = T> + Send + 'static,
        T: TaskOutput + Send + 'static,
    {
        let trigger = self.fault_for(task);
        self.health.task_started(task);
        let handle = self
            .spawned
            .spawn(guard::guarded(task, fault::inject(task, trigger, future)));
        self.ids.insert(handle.id(), task);
    }

    /// Polls `future` whenever the supervisor is awaited.
    pub fn local<F, T>(&mut self, task: Task, future: F)
    where
        F: Future<Output = T> + 'static,
        T: TaskOutput + 'static,
    {
        let trigger = self.fault_for(task);
        self.health.task_started(task);
        self.local.push(Box::pin(guard::guarded(
            task,
            fault::inject(task, trigger, future),
        )));
    }

    fn fault_for(&mut self, task: Task) -> Option<fault::Trigger> {
        if self.fault.as_ref().is_some_and(|f| f.task == task) {
            self.fault.take().map(|f| f.trigger)
        } else {
            None
        }
    }

    /// Waits until a task fails and returns the failure. Before shutdown
    /// every end is a failure.
    pub async fn next_failure(&mut self) -> Failure {
        loop {
            match self.next_exit().await {
                Some(exit) => {
                    if let Some(failure) = self.judge(exit) {
                        return failure;
                    }
                }
                // Nothing left to watch (only in tests): nothing can fail.
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Shutdown began: the agent is no longer ready, and tasks that end
    /// normally from now on are not failures.
    pub fn stopping(&self) {
        self.health.stopping();
    }

    /// Waits until each of `tasks` has ended, at most `within`; other tasks
    /// that fail meanwhile are still recorded. True when all ended in time.
    pub async fn finish(&mut self, tasks: &[Task], within: Duration) -> bool {
        let mut waiting: Vec<Task> = tasks
            .iter()
            .copied()
            .filter(|t| self.is_running(*t))
            .collect();
        let deadline = tokio::time::Instant::now()
            .checked_add(within)
            .unwrap_or_else(tokio::time::Instant::now);
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, self.next_exit()).await {
                Ok(Some(exit)) => {
                    waiting.retain(|t| *t != exit.task);
                    self.judge(exit);
                }
                Ok(None) => return true,
                Err(_) => {
                    let late: Vec<&str> = waiting.iter().map(|t| t.name()).collect();
                    tracing::warn!(tasks = ?late, ?within, "tasks did not stop in time");
                    return false;
                }
            }
        }
        true
    }

    /// Every failure seen so far, in order.
    pub fn failures(&self) -> &[Failure] {
        &self.failures
    }

    fn is_running(&self, task: Task) -> bool {
        self.ids.values().any(|t| *t == task)
    }

    /// Logs, counts and reports a failure; `None` for a normal end during
    /// shutdown.
    fn judge(&mut self, exit: Exit) -> Option<Failure> {
        let cause = match exit.result {
            Ok(()) if self.health.is_stopping() => return None,
            Ok(()) => "stopped unexpectedly".to_owned(),
            Err(cause) => cause,
        };
        let failure = Failure {
            task: exit.task,
            cause,
        };
        tracing::error!(task = failure.task.name(), cause = %failure.cause, "supervised task failed");
        self.metrics
            .failures
            .get_or_create(&TaskLabel {
                task: failure.task.name(),
            })
            .inc();
        self.health.failed(&failure);
        self.failures.push(failure.clone());
        Some(failure)
    }

    /// The next task to end, `None` when none is left.
    async fn next_exit(&mut self) -> Option<Exit> {
        std::future::poll_fn(|cx| {
            for i in 0..self.local.len() {
                if let Poll::Ready(exit) = self.local[i].as_mut().poll(cx) {
                    drop(self.local.swap_remove(i));
                    return Poll::Ready(Some(exit));
                }
            }
            loop {
                return match self.spawned.poll_join_next_with_id(cx) {
                    Poll::Ready(Some(Ok((id, exit)))) => {
                        self.ids.remove(&id);
                        Poll::Ready(Some(exit))
                    }
                    // The guard catches panics, so this is a cancellation.
                    Poll::Ready(Some(Err(err))) => match self.ids.remove(&err.id()) {
                        Some(task) => Poll::Ready(Some(Exit {
                            task,
                            result: Err(format!("cancelled: {err}")),
                        })),
                        None => continue,
                    },
                    Poll::Ready(None) if self.local.is_empty() => Poll::Ready(None),
                    Poll::Ready(None) | Poll::Pending => Poll::Pending,
                };
            }
        })
        .await
    }

    /// Ends every task still running (local ones are dropped).
    pub fn abort_all(&mut self) {
        self.spawned.abort_all();
        self.local.clear();
    }
}
