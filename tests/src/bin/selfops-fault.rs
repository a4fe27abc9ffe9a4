//! `selfops run` with the supervision tests' fault hook:
//! `selfops-fault TASK TRIGGER CONFIG` runs the agent with CONFIG and makes
//! TASK (process, tracer, export, actuation, telemetry) panic from inside
//! once the file TRIGGER exists, after writing the time it fired (Unix
//! nanoseconds) to TRIGGER.fired. The same agent library as `selfops`; only
//! this binary, built with the tests, can set the hook.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use selfops_agent::{
    agent::{self, RunOptions},
    cli,
    config::Config,
    supervise::{FaultPlan, Task, signals},
};

fn main() -> ExitCode {
    signals::defer();
    cli::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [task, trigger, config] = args.as_slice() else {
        eprintln!("usage: selfops-fault TASK TRIGGER_FILE CONFIG");
        return ExitCode::from(2);
    };
    let Some(task) = Task::from_name(task) else {
        eprintln!("selfops-fault: unknown task {task:?}");
        return ExitCode::from(2);
    };
    let config = match Config::load(std::path::Path::new(config)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("selfops: config error: {e}");
            return ExitCode::from(2);
        }
    };
    let trigger = PathBuf::from(trigger);
    let fault = FaultPlan {
        task,
        trigger: Box::pin(async move {
            while !trigger.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let _ = std::fs::write(trigger.with_extension("fired"), now.to_string());
        }),
    };
    match agent::run_with(config, RunOptions { fault: Some(fault) }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("selfops: {e:#}");
            ExitCode::FAILURE
        }
    }
}
