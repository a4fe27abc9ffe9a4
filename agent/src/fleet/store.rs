//! The fleet inventory and the signed configs it hands out, in SQLite.
//! One connection behind a mutex: every statement is short, and SQLite
//! serialises writers anyway. Statements are prepared once and cached:
//! parsing the SQL again was most of the cost of an agent's report.

use std::{collections::BTreeMap, path::Path, sync::Mutex};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("labels stored unreadable: {0}")]
    Json(#[from] serde_json::Error),
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
    /// before.
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

pub struct Store {
    db: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    uid TEXT PRIMARY KEY,
    host_name TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    healthy INTEGER,
    health_error TEXT NOT NULL DEFAULT '',
    effective_hash TEXT NOT NULL DEFAULT '',
    remote_hash TEXT NOT NULL DEFAULT '',
    remote_status TEXT NOT NULL DEFAULT '',
    remote_error TEXT NOT NULL DEFAULT '',
    desired_hash TEXT NOT NULL DEFAULT '',
    previous_hash TEXT NOT NULL DEFAULT '',
    last_seen INTEGER NOT NULL DEFAULT 0,
    connected INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS configs (
    hash TEXT PRIMARY KEY,
    yaml BLOB NOT NULL,
    signature TEXT NOT NULL
);
";

const COLUMNS: &str = "uid, host_name, labels, healthy, health_error, effective_hash, remote_hash, \
     remote_status, remote_error, desired_hash, previous_hash, last_seen, connected";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AgentRow, String)> {
    Ok((
        AgentRow {
            uid: r.get(0)?,
            host_name: r.get(1)?,
            labels: BTreeMap::new(),
            healthy: r.get::<_, Option<i64>>(3)?.map(|h| h != 0),
            health_error: r.get(4)?,
            effective_hash: r.get(5)?,
            remote_hash: r.get(6)?,
            remote_status: r.get(7)?,
            remote_error: r.get(8)?,
            desired_hash: r.get(9)?,
            previous_hash: r.get(10)?,
            last_seen_unix: r.get(11)?,
            connected: r.get::<_, i64>(12)? != 0,
        },
        r.get(2)?,
    ))
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Connection::open(path)?;
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
        Self::init(db)
    }

    /// A throwaway store (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(db: Connection) -> Result<Self, StoreError> {
        db.execute_batch(SCHEMA)?;
        // A restarted server holds no connection.
        db.execute("UPDATE agents SET connected = 0", [])?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn agent(&self, uid: &str) -> Result<Option<AgentRow>, StoreError> {
        let db = self.db();
        let found = db
            .prepare_cached(&format!("SELECT {COLUMNS} FROM agents WHERE uid = ?1"))?
            .query_row([uid], row)
            .optional()?;
        found
            .map(|(mut agent, labels)| {
                agent.labels = serde_json::from_str(&labels)?;
                Ok(agent)
            })
            .transpose()
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let db = self.db();
        let mut statement =
            db.prepare_cached(&format!("SELECT {COLUMNS} FROM agents ORDER BY uid"))?;
        let rows = statement.query_map([], row)?;
        let mut agents = Vec::new();
        for found in rows {
            let (mut agent, labels) = found?;
            agent.labels = serde_json::from_str(&labels)?;
            agents.push(agent);
        }
        Ok(agents)
    }

    /// The agents counted by the remote config they report and its status,
    /// for a summary that need not read every row out.
    pub fn counts(&self) -> Result<Vec<ConfigCounts>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT remote_hash, remote_status, COUNT(*), SUM(connected) FROM agents \
             GROUP BY remote_hash, remote_status",
        )?;
        let rows = statement.query_map([], |r| {
            Ok(ConfigCounts {
                hash: r.get(0)?,
                status: r.get(1)?,
                agents: usize::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                connected: usize::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inserts or replaces everything but the desired/previous configs,
    /// which only rollouts set.
    pub fn save_report(&self, agent: &AgentRow) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&agent.labels)?;
        self.db().prepare_cached(
            "INSERT INTO agents (uid, host_name, labels, healthy, health_error, effective_hash, \
                 remote_hash, remote_status, remote_error, last_seen, connected)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(uid) DO UPDATE SET host_name = ?2, labels = ?3, healthy = ?4,
                 health_error = ?5, effective_hash = ?6, remote_hash = ?7, remote_status = ?8,
                 remote_error = ?9, last_seen = ?10, connected = ?11",
        )?.execute(
            params![
                agent.uid,
                agent.host_name,
                labels,
                agent.healthy.map(i64::from),
                agent.health_error,
                agent.effective_hash,
                agent.remote_hash,
                agent.remote_status,
                agent.remote_error,
                agent.last_seen_unix,
                i64::from(agent.connected),
            ],
        )?;
        Ok(())
    }

    pub fn set_connected(&self, uid: &str, connected: bool) -> Result<(), StoreError> {
        self.db()
            .prepare_cached("UPDATE agents SET connected = ?2 WHERE uid = ?1")?
            .execute(params![uid, i64::from(connected)])?;
        Ok(())
    }

    /// Points `uid` at config `hash`, remembering what it had.
    pub fn assign(&self, uid: &str, hash: &str) -> Result<(), StoreError> {
        self.db()
            .prepare_cached(
                "UPDATE agents SET previous_hash = desired_hash, desired_hash = ?2 WHERE uid = ?1",
            )?
            .execute(params![uid, hash])?;
        Ok(())
    }

    pub fn put_config(&self, config: &SignedConfig) -> Result<(), StoreError> {
        self.db()
            .prepare_cached(
                "INSERT OR REPLACE INTO configs (hash, yaml, signature) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![config.hash, config.yaml, config.signature])?;
        Ok(())
    }

    pub fn config(&self, hash: &str) -> Result<Option<SignedConfig>, StoreError> {
        Ok(self
            .db()
            .prepare_cached("SELECT hash, yaml, signature FROM configs WHERE hash = ?1")?
            .query_row([hash], |r| {
                Ok(SignedConfig {
                    hash: r.get(0)?,
                    yaml: r.get(1)?,
                    signature: r.get(2)?,
                })
            })
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_and_configs_round_trip() {
        let store = Store::open_in_memory().unwrap();
        let mut agent = AgentRow {
            uid: "u1".into(),
            host_name: "h".into(),
            labels: [("zone".to_owned(), "a".to_owned())].into(),
            healthy: Some(true),
            ..Default::default()
        };
        store.save_report(&agent).unwrap();
        store.assign("u1", "c1").unwrap();
        store.assign("u1", "c2").unwrap();
        agent.remote_status = "APPLIED".into();
        // A report keeps what rollouts set.
        store.save_report(&agent).unwrap();
        let stored = store.agent("u1").unwrap().unwrap();
        assert_eq!(stored.desired_hash, "c2");
        assert_eq!(stored.previous_hash, "c1");
        assert_eq!(stored.labels["zone"], "a");
        assert_eq!(stored.remote_status, "APPLIED");
        assert_eq!(store.agents().unwrap().len(), 1);
        assert_eq!(
            store.counts().unwrap(),
            [ConfigCounts {
                hash: String::new(),
                status: "APPLIED".into(),
                agents: 1,
                connected: 0,
            }]
        );
        let config = SignedConfig {
            hash: "c1".into(),
            yaml: b"a: 1".to_vec(),
            signature: "sig".into(),
        };
        store.put_config(&config).unwrap();
        assert_eq!(store.config("c1").unwrap(), Some(config));
    }
}
