//! What `/healthz` and `/readyz` report: live while no task has failed;
//! ready once start-up is complete (sensors attached, pipeline running),
//! and no longer as soon as a task fails or shutdown begins.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use super::Failure;

#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    stopping: AtomicBool,
    failures: Mutex<Vec<Failure>>,
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
