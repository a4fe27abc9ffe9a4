//! The inventory in PostgreSQL, shared by several fleet servers: a pool of
//! connections (plain TCP or a unix socket; no TLS), every change one
//! statement or one transaction, and NOTIFY on a channel so that a server
//! learns at once that agents it holds were pointed at a new config
//! through another server.

use std::{str::FromStr as _, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket, tls::NoTlsStream};

use super::{
    AgentRow, ConfigCounts, Returned, RolloutRow, SignedConfig, StoreError, agents_counted,
    labels_from, sql,
};

/// Connections per server: enough for a burst of agent messages and API
/// calls; each query is short.
const POOL_SIZE: usize = 16;
/// How long a caller waits for a connection, or a connection to open.
const WAIT: Duration = Duration::from_secs(10);
/// The channel announcements go on.
const CHANNEL: &str = "selfops_fleet";
/// Held while a server creates the schema, so that two starting together
/// do not race on `CREATE … IF NOT EXISTS`.
const SCHEMA_LOCK: i64 = 0x5e1f_0f5e_f1ee;

pub struct Postgres {
    pool: Pool,
    config: tokio_postgres::Config,
}

fn agent_row(r: &tokio_postgres::Row) -> Result<AgentRow, StoreError> {
    Ok(AgentRow {
        uid: r.try_get(0)?,
        host_name: r.try_get(1)?,
        labels: labels_from(r.try_get(2)?)?,
        healthy: r.try_get(3)?,
        health_error: r.try_get(4)?,
        effective_hash: r.try_get(5)?,
        remote_hash: r.try_get(6)?,
        remote_status: r.try_get(7)?,
        remote_error: r.try_get(8)?,
        desired_hash: r.try_get(9)?,
        previous_hash: r.try_get(10)?,
        last_seen_unix: r.try_get(11)?,
        connected: r.try_get(12)?,
    })
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn bigint(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Postgres {
    pub async fn open(url: &str, stale_before: i64) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(WAIT);
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .build()
            .map_err(|e| StoreError::Setup(format!("PostgreSQL connection pool: {e}")))?;
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        // Quiet about what exists already; one server creates it at a time.
        tx.batch_execute(&format!(
            "SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"
        ))
        .await?;
        tx.batch_execute(&sql::SCHEMA.replace("{BLOB}", "BYTEA"))
            .await?;
        tx.execute(sql::STALE, &[&stale_before]).await?;
        tx.commit().await?;
        drop(client);
        Ok(Self { pool, config })
    }

    async fn query(
        &self,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.pool.get().await?;
        let prepared = client.prepare_cached(statement).await?;
        Ok(client.query(&prepared, params).await?)
    }

    pub async fn agent(&self, uid: &str) -> Result<Option<AgentRow>, StoreError> {
        self.query(&sql::agent(), &[&uid])
            .await?
            .first()
            .map(agent_row)
            .transpose()
    }

    pub async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        self.query(&sql::agents(), &[])
            .await?
            .iter()
            .map(agent_row)
            .collect()
    }

    pub async fn counts(&self) -> Result<Vec<ConfigCounts>, StoreError> {
        self.query(sql::COUNTS, &[])
            .await?
            .iter()
            .map(|r| {
                Ok(ConfigCounts {
                    hash: r.try_get(0)?,
                    status: r.try_get(1)?,
                    agents: agents_counted(r.try_get(2)?),
                    connected: agents_counted(r.try_get(3)?),
                })
            })
            .collect()
    }

    pub async fn save_report(&self, agent: &AgentRow, server: &str) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&agent.labels)?;
        self.query(
            sql::SAVE_REPORT,
            &[
                &agent.uid,
                &agent.host_name,
                &labels,
                &agent.healthy,
                &agent.health_error,
                &agent.effective_hash,
                &agent.remote_hash,
                &agent.remote_status,
                &agent.remote_error,
                &agent.last_seen_unix,
                &agent.connected,
                &server,
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn disconnected(&self, uid: &str, server: &str) -> Result<(), StoreError> {
        self.query(sql::DISCONNECTED, &[&uid, &server]).await?;
        Ok(())
    }

    pub async fn assign(&self, uids: &[String], hash: &str) -> Result<(), StoreError> {
        self.query(&sql::assign("= ANY($1)"), &[&uids, &hash])
            .await?;
        Ok(())
    }

    pub async fn roll_back(
        &self,
        uids: &[String],
        from: &str,
        empty: &str,
    ) -> Result<Vec<Returned>, StoreError> {
        self.query(&sql::roll_back("= ANY($1)"), &[&uids, &from, &empty])
            .await?
            .iter()
            .map(|r| {
                Ok(Returned {
                    uid: r.try_get(0)?,
                    hash: r.try_get(1)?,
                })
            })
            .collect()
    }

    pub async fn put_config(&self, config: &SignedConfig) -> Result<(), StoreError> {
        self.query(
            sql::PUT_CONFIG,
            &[&config.hash, &config.yaml, &config.signature],
        )
        .await?;
        Ok(())
    }

    pub async fn config(&self, hash: &str) -> Result<Option<SignedConfig>, StoreError> {
        self.query(sql::CONFIG, &[&hash])
            .await?
            .first()
            .map(|r| {
                Ok(SignedConfig {
                    hash: r.try_get(0)?,
                    yaml: r.try_get(1)?,
                    signature: r.try_get(2)?,
                })
            })
            .transpose()
    }

    pub async fn connected_desiring(
        &self,
        hash: &str,
        server: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.query(sql::CONNECTED_DESIRING, &[&hash, &server])
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }

    pub async fn rollout_step(&self, hash: &str, step: u8, offered: u64) -> Result<(), StoreError> {
        let step = i32::from(step);
        self.query(sql::ROLLOUT_STEP, &[&hash, &step, &bigint(offered)])
            .await?;
        Ok(())
    }

    pub async fn rollout_stopped(&self, hash: &str, returned: u64) -> Result<(), StoreError> {
        self.query(sql::ROLLOUT_STOPPED, &[&hash, &bigint(returned)])
            .await?;
        Ok(())
    }

    pub async fn rollout(&self) -> Result<Option<RolloutRow>, StoreError> {
        self.query(sql::ROLLOUT, &[])
            .await?
            .first()
            .map(|r| {
                Ok(RolloutRow {
                    hash: r.try_get(0)?,
                    step: u8::try_from(r.try_get::<_, i32>(1)?).unwrap_or(0),
                    offered: count(r.try_get(2)?),
                    returned: count(r.try_get(3)?),
                    stopped: r.try_get(4)?,
                    applied: count(r.try_get(5)?),
                    failed: count(r.try_get(6)?),
                })
            })
            .transpose()
    }

    /// One notification per config: `SERVER HASH`.
    pub async fn announce(&self, server: &str, hashes: &[String]) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let notify = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
        for hash in hashes {
            let payload = format!("{server} {hash}");
            client.execute(&notify, &[&CHANNEL, &payload]).await?;
        }
        Ok(())
    }

    /// A connection of its own (out of the pool) listening on the channel.
    pub async fn subscribe(&self) -> Result<Subscription, StoreError> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        let statement = format!("LISTEN {CHANNEL}");
        {
            // The connection is driven by hand: polled while LISTEN runs.
            let listen = client.batch_execute(&statement);
            tokio::pin!(listen);
            loop {
                tokio::select! {
                    done = &mut listen => {
                        done?;
                        break;
                    }
                    message = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                        Subscription::alive(message)?;
                    }
                }
            }
        }
        Ok(Subscription {
            _client: client,
            connection,
        })
    }
}

/// Announcements as they come.
pub struct Subscription {
    /// The connection ends with its last client.
    _client: Client,
    connection: Connection<Socket, NoTlsStream>,
}

impl Subscription {
    /// The next announcement: the server that made it and the config's
    /// hash. `Err` when the connection is lost (announcements may have
    /// been missed).
    pub async fn next(&mut self) -> Result<(String, String), StoreError> {
        loop {
            let message = std::future::poll_fn(|cx| self.connection.poll_message(cx)).await;
            if let Some(announced) = Self::alive(message)? {
                return Ok(announced);
            }
        }
    }

    /// What one message from the connection says, if it is an announcement.
    fn alive(
        message: Option<Result<AsyncMessage, tokio_postgres::Error>>,
    ) -> Result<Option<(String, String)>, StoreError> {
        match message {
            Some(Ok(AsyncMessage::Notification(note))) => Ok(note
                .payload()
                .split_once(' ')
                .map(|(server, hash)| (server.to_owned(), hash.to_owned()))),
            Some(Ok(_)) => Ok(None),
            Some(Err(err)) => Err(err.into()),
            None => Err(StoreError::Setup(
                "the database closed the notification connection".into(),
            )),
        }
    }
}
