//! The inventory in SQLite: one connection behind a mutex. Every statement
//! is short and SQLite serialises writers anyway; one fleet server per file.
//! Statements are prepared once and cached: parsing the SQL again was most
//! of the cost of an agent's report.

use std::{path::Path, sync::Mutex};

use rusqlite::{Connection, OptionalExtension as _, Params, params};

use super::{
    AgentRow, ConfigCounts, Returned, RolloutRow, SignedConfig, StoreError, agents_counted,
    labels_from, sql,
};

pub struct Sqlite {
    db: Mutex<Connection>,
}

/// `$N` as SQLite numbers parameters.
fn local(statement: &str) -> String {
    statement.replace('$', "?")
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AgentRow, String)> {
    Ok((
        AgentRow {
            uid: r.get(0)?,
            host_name: r.get(1)?,
            labels: Default::default(),
            healthy: r.get(3)?,
            health_error: r.get(4)?,
            effective_hash: r.get(5)?,
            remote_hash: r.get(6)?,
            remote_status: r.get(7)?,
            remote_error: r.get(8)?,
            desired_hash: r.get(9)?,
            previous_hash: r.get(10)?,
            last_seen_unix: r.get(11)?,
            connected: r.get(12)?,
        },
        r.get(2)?,
    ))
}

fn with_labels((mut agent, labels): (AgentRow, String)) -> Result<AgentRow, StoreError> {
    agent.labels = labels_from(&labels)?;
    Ok(agent)
}

impl Sqlite {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Connection::open(path)?;
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
        let store = Self::init(db)?;
        // One server per file: what a server before this one held is gone,
        // however recently it was heard from.
        store.execute(sql::STALE, [i64::MAX])?;
        Ok(store)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(db: Connection) -> Result<Self, StoreError> {
        db.execute_batch(&sql::SCHEMA.replace("{BLOB}", "BLOB"))?;
        // A file from before the servers were told apart.
        let has_server: bool = db.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('agents') WHERE name = 'server'",
            [],
            |r| r.get(0),
        )?;
        if !has_server {
            db.execute_batch("ALTER TABLE agents ADD COLUMN server TEXT NOT NULL DEFAULT ''")?;
        }
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One statement, prepared once.
    fn execute(&self, statement: &str, params: impl Params) -> Result<usize, StoreError> {
        Ok(self
            .db()
            .prepare_cached(&local(statement))?
            .execute(params)?)
    }

    /// The row one statement finds, if any; prepared once.
    fn query_row<T>(
        &self,
        statement: &str,
        params: impl Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self
            .db()
            .prepare_cached(&local(statement))?
            .query_row(params, f)
            .optional()?)
    }

    pub fn agent(&self, uid: &str) -> Result<Option<AgentRow>, StoreError> {
        self.query_row(&sql::agent(), [uid], row)?
            .map(with_labels)
            .transpose()
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(&local(&sql::agents()))?;
        let rows = statement.query_map([], row)?;
        rows.map(|found| with_labels(found?)).collect()
    }

    pub fn counts(&self) -> Result<Vec<ConfigCounts>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(&local(sql::COUNTS))?;
        let rows = statement.query_map([], |r| {
            Ok(ConfigCounts {
                hash: r.get(0)?,
                status: r.get(1)?,
                agents: agents_counted(r.get(2)?),
                connected: agents_counted(r.get(3)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn save_report(&self, agent: &AgentRow, server: &str) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&agent.labels)?;
        self.execute(
            sql::SAVE_REPORT,
            params![
                agent.uid,
                agent.host_name,
                labels,
                agent.healthy,
                agent.health_error,
                agent.effective_hash,
                agent.remote_hash,
                agent.remote_status,
                agent.remote_error,
                agent.last_seen_unix,
                agent.connected,
                server,
            ],
        )?;
        Ok(())
    }

    pub fn disconnected(&self, uid: &str, server: &str) -> Result<(), StoreError> {
        self.execute(sql::DISCONNECTED, params![uid, server])?;
        Ok(())
    }

    pub fn assign(&self, uids: &[String], hash: &str) -> Result<(), StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        {
            let mut statement = tx.prepare_cached(&local(&sql::assign("= $1")))?;
            for uid in uids {
                statement.execute(params![uid, hash])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn roll_back(
        &self,
        uids: &[String],
        from: &str,
        empty: &str,
    ) -> Result<Vec<Returned>, StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut returned = Vec::new();
        {
            let mut statement = tx.prepare_cached(&local(&sql::roll_back("= $1")))?;
            for uid in uids {
                let back = statement
                    .query_row(params![uid, from, empty], |r| {
                        Ok(Returned {
                            uid: r.get(0)?,
                            hash: r.get(1)?,
                        })
                    })
                    .optional()?;
                returned.extend(back);
            }
        }
        tx.commit()?;
        Ok(returned)
    }

    pub fn put_config(&self, config: &SignedConfig) -> Result<(), StoreError> {
        self.execute(
            sql::PUT_CONFIG,
            params![config.hash, config.yaml, config.signature],
        )?;
        Ok(())
    }

    pub fn config(&self, hash: &str) -> Result<Option<SignedConfig>, StoreError> {
        self.query_row(sql::CONFIG, [hash], |r| {
            Ok(SignedConfig {
                hash: r.get(0)?,
                yaml: r.get(1)?,
                signature: r.get(2)?,
            })
        })
    }

    pub fn connected_desiring(&self, hash: &str, server: &str) -> Result<Vec<String>, StoreError> {
        let db = self.db();
        let mut statement = db.prepare_cached(&local(sql::CONNECTED_DESIRING))?;
        let uids = statement.query_map(params![hash, server], |r| r.get(0))?;
        Ok(uids.collect::<Result<_, _>>()?)
    }

    pub fn rollout_step(&self, hash: &str, step: u8, offered: u64) -> Result<(), StoreError> {
        self.execute(
            sql::ROLLOUT_STEP,
            params![hash, step, i64::try_from(offered).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    pub fn rollout_stopped(&self, hash: &str, returned: u64) -> Result<(), StoreError> {
        self.execute(
            sql::ROLLOUT_STOPPED,
            params![hash, i64::try_from(returned).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    pub fn rollout(&self) -> Result<Option<RolloutRow>, StoreError> {
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        self.query_row(sql::ROLLOUT, [], |r| {
            Ok(RolloutRow {
                hash: r.get(0)?,
                step: r.get(1)?,
                offered: count(r.get(2)?),
                returned: count(r.get(3)?),
                stopped: r.get(4)?,
                applied: count(r.get(5)?),
                failed: count(r.get(6)?),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_from_before_servers_were_told_apart_is_brought_up_to_date() {
        let path =
            std::env::temp_dir().join(format!("selfops-fleet-old-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE agents (uid TEXT PRIMARY KEY, host_name TEXT NOT NULL DEFAULT '',
                 labels TEXT NOT NULL DEFAULT '{}', healthy INTEGER,
                 health_error TEXT NOT NULL DEFAULT '', effective_hash TEXT NOT NULL DEFAULT '',
                 remote_hash TEXT NOT NULL DEFAULT '', remote_status TEXT NOT NULL DEFAULT '',
                 remote_error TEXT NOT NULL DEFAULT '', desired_hash TEXT NOT NULL DEFAULT '',
                 previous_hash TEXT NOT NULL DEFAULT '', last_seen INTEGER NOT NULL DEFAULT 0,
                 connected INTEGER NOT NULL DEFAULT 0);
             INSERT INTO agents (uid, healthy, desired_hash, connected) VALUES ('u1', 1, 'c1', 1);",
        )
        .unwrap();
        drop(old);
        let store = Sqlite::open(&path).unwrap();
        let agent = store.agent("u1").unwrap().unwrap();
        assert_eq!(agent.healthy, Some(true));
        assert_eq!(agent.desired_hash, "c1");
        // Nobody holds an agent when a server starts on the file.
        assert!(!agent.connected);
        store.save_report(&agent, "server").unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
