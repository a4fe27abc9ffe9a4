//! The test-only fault hook: makes one supervised task panic from inside
//! itself when a trigger fires, so the supervision tests exercise the real
//! path. Only a caller of `agent::run_with` can build a plan (the tests'
//! `selfops-fault` binary); the `selfops` binary never does, and nothing
//! at run time (environment, config, signal) can turn it on.

use std::{future::Future, pin::Pin};

use super::Task;

pub type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Makes `task` panic once `trigger` completes.
pub struct FaultPlan {
    pub task: Task,
    pub trigger: Trigger,
}

pub async fn inject<F: Future>(task: Task, trigger: Option<Trigger>, future: F) -> F::Output {
    match trigger {
        None => future.await,
        Some(trigger) => tokio::select! {
            output = future => output,
            () = trigger => panic!("fault injected into the {task} task (test hook)"),
        },
    }
}
