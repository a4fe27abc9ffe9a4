//! The profiler's worker is a thread, not a task: supervised by a task that
//! checks every tick whether the thread, or the task writing its profiles,
//! ended before it was asked to stop.

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    config::ProfileConfig,
    control::next_update,
    profile::{live::TuneError, run::Running},
};

/// How often the profiler thread is checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Runs until `stopping` turns true, then stops the profiler; an `Err` if
/// its thread ended first (a panic in it included). Each profile section on
/// `updates` is applied as it comes.
pub async fn profiler(
    mut profiler: Running,
    mut updates: Option<watch::Receiver<ProfileConfig>>,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut tuner = profiler.tuner.take();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => break,
            Some(config) = next_update(&mut updates) => {
                let Some(tuner) = tuner.as_mut() else { continue };
                match tuner.apply(&mut profiler, &config) {
                    // Logged by the tuner; the previous settings still run.
                    Ok(()) | Err(TuneError::Filter(_) | TuneError::Sampler(_)) => {}
                    Err(stuck) => return Err(stuck.to_string()),
                }
            }
            _ = check.tick() => {
                if let Some(ended) = profiler.ended() {
                    return Err(ended.to_owned());
                }
            }
        }
    }
    profiler.stop(Duration::from_millis(500)).await;
    Ok(())
}
