//! The profiler's worker is a thread, not a task: supervised by a task that
//! checks every tick whether the thread, or the task writing its profiles,
//! ended before it was asked to stop.

use std::time::Duration;

use tokio::sync::watch;

use crate::profile::run::Running;

/// How often the profiler thread is checked.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Runs until `stopping` turns true, then stops the profiler; an `Err` if
/// its thread ended first (a panic in it included).
pub async fn profiler(
    profiler: Running,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => break,
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
