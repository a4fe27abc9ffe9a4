//! What `/healthz` and `/readyz` report: live while no task has failed;
//! ready once start-up is complete (sensors attached, pipeline running),
//! and no longer as soon as a task fails or shutdown begins. Per component
//! (the tasks the supervisor started, by what they are to a user): running
//! since when, or failed and why.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use super::{Failure, Task};

#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    stopping: AtomicBool,
    failures: Mutex<Vec<Failure>>,
    /// Tasks the supervisor started, each with when (Unix nanoseconds).
    tasks: Mutex<Vec<(Task, u64)>>,
}

/// One component's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: &'static str,
    pub started_unix_nano: u64,
    /// The first failure of one of its tasks.
    pub failure: Option<String>,
}

impl Component {
    pub fn healthy(&self) -> bool {
        self.failure.is_none()
    }
}

impl Health {
    /// Start-up is complete: every task runs.
    pub fn started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The supervisor started `task`.
    pub fn task_started(&self, task: Task) {
        let now = crate::act::audit::now_unix_nano();
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if !tasks.iter().any(|(t, _)| *t == task) {
            tasks.push((task, now));
        }
    }

    /// Each component with a started task, in the order of
    /// [`Task::ALL`]: started when its first task started, failed when one
    /// of its tasks failed.
    pub fn components(&self) -> Vec<Component> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let mut components: Vec<Component> = Vec::new();
        for task in Task::ALL {
            let Some(name) = task.component() else {
                continue;
            };
            let Some(&(_, started)) = tasks.iter().find(|(t, _)| *t == task) else {
                continue;
            };
            let failure = failures
                .iter()
                .find(|f| f.task == task)
                .map(|f| f.to_string());
            match components.iter_mut().find(|c| c.name == name) {
                Some(c) => {
                    c.started_unix_nano = c.started_unix_nano.min(started);
                    c.failure = c.failure.take().or(failure);
                }
                None => components.push(Component {
                    name,
                    started_unix_nano: started,
                    failure,
                }),
            }
        }
        components
    }

    pub fn failed(&self, failure: &Failure) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(failure.clone());
        // Readiness reads the failure list first, so it is unready from
        // here on whatever else happens.
        self.stopping();
    }

    fn first_failure(&self) -> Option<Failure> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned()
    }

    /// `Err` with the reason once a task has failed.
    pub fn live(&self) -> Result<(), String> {
        match self.first_failure() {
            Some(failure) => Err(failure.to_string()),
            None => Ok(()),
        }
    }

    /// `Err` with the reason while starting, after a failure, or stopping.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(failure) = self.first_failure() {
            return Err(failure.to_string());
        }
        if self.is_stopping() {
            return Err("shutting down".to_owned());
        }
        if !self.started.load(Ordering::SeqCst) {
            return Err("starting".to_owned());
        }
        Ok(())
    }
}
