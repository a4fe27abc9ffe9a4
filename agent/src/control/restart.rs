//! `control.allow_restart`: a remote config that changes what only a
//! restart changes (ring sizes, the telemetry address) is run by
//! re-executing the agent. The client keeps the offer in the data
//! directory and marks it on trial for a restart, then asks the agent to
//! stop in order (the same path as SIGTERM: limits withdrawn, programs
//! detached, agent_disconnect sent); `selfops run` then executes itself
//! again, same pid, arguments and environment. The new process starts on
//! the offer, verified again, and the client runs its health window as
//! for any other config. The restart mark is consumed at start-up, so a
//! run that dies within the window counts as interrupted and the next one
//! starts on the last-known-good config.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use selfops_proto::opamp::AgentRemoteConfig;

use super::{last_good, policy, signed};
use crate::config::Config;

/// How the running config came about, for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Startup {
    /// The local file's text, under every remote config.
    pub local: Arc<str>,
    /// The offer the previous run re-executed the agent for: running, on
    /// trial.
    pub trial: Option<AgentRemoteConfig>,
}

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks the agent to stop in order and execute itself again.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
    tracing::info!("stopping in order to re-execute on the new config");
    // SAFETY: kill with this process's own pid and a valid signal.
    if unsafe { libc::kill(libc::getpid(), libc::SIGTERM) } != 0 {
        tracing::error!(err = %std::io::Error::last_os_error(), "asking the agent to stop for a restart");
    }
}

/// Whether the agent stopped to re-execute itself.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Replaces this process with a fresh run of the same executable, with the
/// same arguments and environment. Returns only on failure.
pub fn exec_self() -> std::io::Error {
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("selfops"));
    tracing::info!("re-executing");
    // Command::exec is execve in this process: the pid stays, descriptors
    // (all close-on-exec) and other threads go, the signal mask is reset.
    std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .exec()
}

/// The config `selfops run` starts on, given the local file's: the remote
/// config a previous run re-executed for, or (with `allow_restart`) the
/// last-known-good one, each verified again against the local trusted
/// keys; else the local config. The client learns which from
/// `control.startup`.
pub fn startup(local: Config) -> Config {
    if local.control.opamp.is_none() {
        return local;
    }
    let text: Arc<str> = local.source.clone().unwrap_or_else(|| "".into());
    let dir = local.data_dir.clone();
    let (trial, run) = match restarted_for(&dir, &local, &text) {
        Some((remote, config)) => (Some(remote), Some(config)),
        None => (None, last_good_needing_restart(&dir, &local, &text)),
    };
    let mut config = run.unwrap_or(local);
    config.control.startup = Some(Arc::new(Startup { local: text, trial }));
    config
}

/// `remote` verified and laid over the local file.
pub fn lay_over(remote: &AgentRemoteConfig, local: &Config, text: &str) -> Result<Config, String> {
    let yaml = signed::verify(remote, &local.control.trusted_keys).map_err(|e| e.to_string())?;
    policy::lay_over(&yaml, text, local)
        .map(|(config, _)| config)
        .map_err(|e| e.to_string())
}

/// The offer a restart was asked for, consuming the request.
fn restarted_for(dir: &Path, local: &Config, text: &str) -> Option<(AgentRemoteConfig, Config)> {
    let mut mark = last_good::read_trial(dir).filter(|mark| mark.restart)?;
    // Consumed: a run that dies within the window now counts as
    // interrupted, and the next one starts on the last-known-good config.
    mark.restart = false;
    if let Err(err) = last_good::mark_trial(dir, &mark) {
        tracing::warn!(%err, "marking the config on trial");
    }
    let outcome = last_good::load_trial_offer(dir)
        .ok_or_else(|| format!("{} missing or unreadable", last_good::TRIAL_OFFER_FILE))
        .and_then(|remote| Ok((lay_over(&remote, local, text)?, remote)));
    match outcome {
        Ok((config, remote)) => {
            tracing::info!(keys = ?policy::changed_keys(local, &config), "starting on the remote config on trial");
            Some((remote, config))
        }
        Err(reason) => {
            tracing::warn!(%reason, "remote config on trial not run");
            last_good::clear_trial(dir);
            None
        }
    }
}

/// The last-known-good config when it changes keys that only a restart
/// changes (the client applies the others live), if restarts are allowed.
fn last_good_needing_restart(dir: &Path, local: &Config, text: &str) -> Option<Config> {
    if !local.control.allow_restart {
        return None;
    }
    let remote = last_good::load(dir).ok()??;
    let config = lay_over(&remote, local, text).ok()?;
    policy::restart_key(
        local.profile.enabled,
        &config,
        &policy::changed_keys(local, &config),
    )?;
    Some(config)
}
