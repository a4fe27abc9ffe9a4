//! The fleet inventory and the signed configs it hands out: in an embedded
//! SQLite file (one fleet server), or in PostgreSQL (several fleet servers
//! behind one load balancer). Both run the same statements on the same
//! schema, so the rest of the server does not know which it has.

mod postgres;
mod sql;
mod sqlite;

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

pub use postgres::Subscription;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("labels stored unreadable: {0}")]
    Json(#[from] serde_json::Error),
    #[error("database {0:?}: sqlite://PATH, a bare PATH, or postgres://USER@HOST:PORT/DB expected")]
    Url(String),
    #[error("{0}")]
    Setup(String),
}

/// One agent as the inventory knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentRow {
    pub uid: String,
    pub host_name: String,
    pub labels: BTreeMap<String, String>,
    pub healthy: Option<bool>,
    pub health_error: String,
    pub effective_hash: String,
    pub remote_hash: String,
    pub remote_status: String,
    pub remote_error: String,
    /// The config the fleet wants it to run (hex SHA-256), and the one
    /// before (empty: none, the agent's local file alone).
    pub desired_hash: String,
    pub previous_hash: String,
    pub last_seen_unix: i64,
    pub connected: bool,
}

/// How many agents report one remote config hash with one status.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigCounts {
    pub hash: String,
    pub status: String,
    pub agents: usize,
    pub connected: usize,
}

/// A config as delivered; an empty signature is sent as none (the agents,
/// not the server, decide what to believe).
#[derive(Debug, Clone, PartialEq)]
pub struct SignedConfig {
    pub hash: String,
    pub yaml: Vec<u8>,
    pub signature: String,
}

/// The rollout under way (or the last one), as the servers' metrics and
/// `GET /v1/rollout` show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutRow {
    pub hash: String,
    /// The step reached, in percent of the selected agents.
    pub step: u8,
    /// Agents offered the config so far, and returned to their previous
    /// config when it stopped.
    pub offered: u64,
    pub returned: u64,
    pub stopped: bool,
    /// Agents now reporting the config APPLIED, or FAILED.
    pub applied: u64,
    pub failed: u64,
}

/// An agent a stopped rollout returned, and the config it now gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Returned {
    pub uid: String,
    pub hash: String,
}

/// Where the inventory lives, from `--database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Database {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        if path.is_empty() || path.contains("://") {
            return Err(StoreError::Url(url.to_owned()));
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }
}

pub enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// The same call on whichever backend this is.
macro_rules! each {
    ($self:ident, $db:ident => $call:expr) => {
        match $self {
            Store::Sqlite($db) => $call,
            Store::Postgres($db) => $call.await,
        }
    };
}

impl Store {
    /// Opens the database, creating the schema if missing. `stale_before`
    /// (unix seconds): agents silent since then are no longer counted as
    /// connected, whichever server held them (with SQLite, one server per
    /// file: none is).
    pub async fn open(database: &Database, stale_before: i64) -> Result<Self, StoreError> {
        Ok(match database {
            Database::Sqlite(path) => Self::Sqlite(sqlite::Sqlite::open(path)?),
            Database::Postgres(url) => {
                Self::Postgres(postgres::Postgres::open(url, stale_before).await?)
            }
        })
    }

    /// A throwaway store (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Ok(Self::Sqlite(sqlite::Sqlite::open_in_memory()?))
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    pub async fn agent(&self, uid: &str) -> Result<Option<AgentRow>, StoreError> {
        each!(self, db => db.agent(uid))
    }

    pub async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        each!(self, db => db.agents())
    }

    /// The agents counted by the remote config they report and its status.
    pub async fn counts(&self) -> Result<Vec<ConfigCounts>, StoreError> {
        each!(self, db => db.counts())
    }

    /// Inserts or replaces everything but the desired/previous configs,
    /// which only offers and rollbacks set; `server` is the fleet server
    /// that heard it.
    pub async fn save_report(&self, agent: &AgentRow, server: &str) -> Result<(), StoreError> {
        each!(self, db => db.save_report(agent, server))
    }

    /// Marks `uid` disconnected if `server` still holds it (it may have
    /// reconnected to another).
    pub async fn disconnected(&self, uid: &str, server: &str) -> Result<(), StoreError> {
        each!(self, db => db.disconnected(uid, server))
    }

    /// Points `uids` at config `hash`, remembering what they had (unless
    /// they had `hash` already).
    pub async fn assign(&self, uids: &[String], hash: &str) -> Result<(), StoreError> {
        each!(self, db => db.assign(uids, hash))
    }

    /// Points those of `uids` still pointed at `from` back at their
    /// previous config, or at `empty` (the config that is the local file
    /// alone) when they had none; the agents returned.
    pub async fn roll_back(
        &self,
        uids: &[String],
        from: &str,
        empty: &str,
    ) -> Result<Vec<Returned>, StoreError> {
        each!(self, db => db.roll_back(uids, from, empty))
    }

    pub async fn put_config(&self, config: &SignedConfig) -> Result<(), StoreError> {
        each!(self, db => db.put_config(config))
    }

    pub async fn config(&self, hash: &str) -> Result<Option<SignedConfig>, StoreError> {
        each!(self, db => db.config(hash))
    }

    /// Agents pointed at `hash` whose session `server` holds and that have
    /// not reported on it yet.
    pub async fn connected_desiring(
        &self,
        hash: &str,
        server: &str,
    ) -> Result<Vec<String>, StoreError> {
        each!(self, db => db.connected_desiring(hash, server))
    }

    /// Notes a rollout's step and the agents it offered the config to.
    pub async fn rollout_step(&self, hash: &str, step: u8, offered: u64) -> Result<(), StoreError> {
        each!(self, db => db.rollout_step(hash, step, offered))
    }

    /// Notes that the rollout of `hash` stopped and returned `returned` agents.
    pub async fn rollout_stopped(&self, hash: &str, returned: u64) -> Result<(), StoreError> {
        each!(self, db => db.rollout_stopped(hash, returned))
    }

    pub async fn rollout(&self) -> Result<Option<RolloutRow>, StoreError> {
        each!(self, db => db.rollout())
    }

    /// Tells the other servers on this database that agents were pointed at
    /// `hashes` (nothing to tell with SQLite: one server).
    pub async fn announce(&self, server: &str, hashes: &[String]) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(_) => Ok(()),
            Self::Postgres(db) => db.announce(server, hashes).await,
        }
    }

    /// Announcements from every server, this one included (PostgreSQL).
    pub async fn subscribe(&self) -> Option<Result<Subscription, StoreError>> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(db) => Some(db.subscribe().await),
        }
    }
}

/// Labels as stored: a JSON object.
/// A `COUNT(*)` as a number of agents (never negative).
fn agents_counted(count: i64) -> usize {
    usize::try_from(count).unwrap_or(0)
}

fn labels_from(text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    Ok(serde_json::from_str(text)?)
}

#[cfg(test)]
pub(crate) mod contract;
