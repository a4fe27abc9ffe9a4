//! `selfops fleet rollout`: one signed config offered through the API in
//! steps, each a share of the selected agents (sorted by uid, so a rerun
//! picks the same ones first). A step advances once all its agents report
//! on the config and, after the health window, still run it healthy; too
//! many failures stop the rollout where it is and return that step's
//! agents to the config they had before (their local file alone when they
//! had none).

use std::{collections::BTreeMap, time::Duration};

use super::{
    api::{EMPTY_YAML, OfferRequest, RollbackRequest, selected},
    hex, status,
    store::{AgentRow, Returned},
};
use crate::control::signed::{self, SecretKey};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("steps {0:?}: ascending percentages up to 100%, like 1%,10%,50%,100%")]
    Steps(String),
    #[error("{0:?} is not a percentage (0% to 100%)")]
    Percent(String),
    #[error("no agent matches the selection")]
    NoAgents,
    #[error(
        "stopped at step {step}%: {failed} of {of} agents failed (at most {max_percent}% may); {} of the step's agents returned to their previous config",
        .returned.len()
    )]
    Stopped {
        step: u8,
        failed: usize,
        of: usize,
        max_percent: u8,
        returned: Vec<Returned>,
    },
    #[error("stopped at step {step}%, but returning its agents failed: {source}")]
    NotReturned {
        step: u8,
        source: status::StatusError,
    },
    #[error(transparent)]
    Api(#[from] status::StatusError),
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<u8>,
    pub health_window: Duration,
    pub max_failures_percent: u8,
    /// How long a step's agents have to report before the silent count as
    /// failed.
    pub step_timeout: Duration,
    pub poll: Duration,
}

pub fn parse_percent(text: &str) -> Result<u8, RolloutError> {
    text.trim()
        .trim_end_matches('%')
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| RolloutError::Percent(text.to_owned()))
}

pub fn parse_steps(text: &str) -> Result<Vec<u8>, RolloutError> {
    let steps = text
        .split(',')
        .map(parse_percent)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| RolloutError::Steps(text.to_owned()))?;
    let ascending = steps.windows(2).all(|w| w[0] < w[1]);
    if steps.last() != Some(&100) || !ascending || steps.first() == Some(&0) {
        return Err(RolloutError::Steps(text.to_owned()));
    }
    Ok(steps)
}

/// Agents a step of `percent` covers out of `total`: rounded up, so 1% of
/// a small fleet is still one agent.
pub fn step_size(total: usize, percent: u8) -> usize {
    total
        .checked_mul(usize::from(percent))
        .map_or(total, |n| n.div_ceil(100))
        .clamp(1, total.max(1))
}

fn reported(agent: &AgentRow, hash: &str) -> bool {
    agent.remote_hash == hash && matches!(agent.remote_status.as_str(), "APPLIED" | "FAILED")
}

fn good(agent: &AgentRow, hash: &str) -> bool {
    agent.remote_hash == hash && agent.remote_status == "APPLIED" && agent.healthy != Some(false)
}

/// The step's agents that are not running the config well, once all have
/// reported or the step's time is up.
async fn failures(
    server: &str,
    uids: &[String],
    hash: &str,
    plan: &Plan,
) -> Result<usize, RolloutError> {
    let deadline = tokio::time::Instant::now() + plan.step_timeout;
    loop {
        let agents: BTreeMap<String, AgentRow> = status::agents(server)
            .await?
            .into_iter()
            .map(|a| (a.uid.clone(), a))
            .collect();
        let all_reported = uids
            .iter()
            .all(|uid| agents.get(uid).is_some_and(|a| reported(a, hash)));
        if all_reported || tokio::time::Instant::now() >= deadline {
            return Ok(uids
                .iter()
                .filter(|uid| !agents.get(*uid).is_some_and(|a| good(a, hash)))
                .count());
        }
        tokio::time::sleep(plan.poll).await;
    }
}

/// Whether `failed` of `of` is over the budget: failed / of > max%, in
/// integers.
fn over_budget(failed: usize, of: usize, plan: &Plan) -> bool {
    failed.saturating_mul(100) > of.saturating_mul(usize::from(plan.max_failures_percent))
}

/// The rollout stops at `step`: `uids`, the step's agents, are pointed
/// back at what they had (the empty config, signed here, for those that
/// had none).
async fn stop(
    server: &str,
    step: u8,
    (failed, of): (usize, usize),
    hash: &str,
    uids: &[String],
    key: &SecretKey,
    plan: &Plan,
) -> RolloutError {
    let request = RollbackRequest {
        hash: hash.to_owned(),
        uids: uids.to_vec(),
        empty_signature: key.sign(EMPTY_YAML.as_bytes()),
    };
    match status::rollback(server, &request).await {
        Ok(answer) => RolloutError::Stopped {
            step,
            failed,
            of,
            max_percent: plan.max_failures_percent,
            returned: answer.returned,
        },
        Err(source) => RolloutError::NotReturned { step, source },
    }
}

/// Runs the rollout; the config's hash when every step passed.
pub async fn run(
    server: &str,
    yaml: &str,
    key: &SecretKey,
    select: &BTreeMap<String, String>,
    plan: &Plan,
) -> Result<String, RolloutError> {
    let mut chosen: Vec<String> = status::agents(server)
        .await?
        .into_iter()
        .filter(|a| selected(a, select))
        .map(|a| a.uid)
        .collect();
    chosen.sort();
    if chosen.is_empty() {
        return Err(RolloutError::NoAgents);
    }
    let hash = hex::encode(&signed::sha256(yaml.as_bytes()));
    let signature = key.sign(yaml.as_bytes());
    let mut done = 0;
    for &step in &plan.steps {
        let upto = step_size(chosen.len(), step);
        let Some(new) = chosen.get(done..upto).filter(|n| !n.is_empty()) else {
            continue;
        };
        status::offer(
            server,
            &OfferRequest {
                yaml: yaml.to_owned(),
                signature: Some(signature.clone()),
                select: select.clone(),
                uids: new.to_vec(),
                step: Some(step),
            },
        )
        .await?;
        let so_far = chosen.get(..upto).unwrap_or_default();
        let mut failed = failures(server, so_far, &hash, plan).await?;
        // Still well after the window: what the agents' own gate saw, the
        // fleet confirms.
        if !over_budget(failed, upto, plan) && !plan.health_window.is_zero() {
            tokio::time::sleep(plan.health_window).await;
            failed = failures(server, so_far, &hash, plan).await?;
        }
        if over_budget(failed, upto, plan) {
            return Err(stop(server, step, (failed, upto), &hash, new, key, plan).await);
        }
        tracing::info!(
            step,
            agents = upto,
            of = chosen.len(),
            failed,
            "rollout step passed"
        );
        done = upto;
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_sizes() {
        assert_eq!(
            parse_steps("1%,10%,50%,100%").unwrap(),
            vec![1, 10, 50, 100]
        );
        for bad in ["10%,5%,100%", "10%,50%", "0%,100%", "101%", "x"] {
            assert!(parse_steps(bad).is_err(), "{bad}");
        }
        assert_eq!(step_size(50, 1), 1);
        assert_eq!(step_size(50, 10), 5);
        assert_eq!(step_size(3, 50), 2);
        assert_eq!(step_size(50, 100), 50);
        assert_eq!(step_size(usize::MAX, 100), usize::MAX);
    }
}
