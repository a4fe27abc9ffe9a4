//! The statements both backends run, in the dialect they share (upserts
//! with `excluded`, `RETURNING`, `$N` parameters: SQLite reads `$N` as
//! `?N` once the sign is swapped). Booleans are BOOLEAN in both schemas;
//! SQLite keeps them as 0/1.

/// The schema; `{BLOB}` is the backend's byte-string type.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    uid TEXT PRIMARY KEY,
    host_name TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    healthy BOOLEAN,
    health_error TEXT NOT NULL DEFAULT '',
    effective_hash TEXT NOT NULL DEFAULT '',
    remote_hash TEXT NOT NULL DEFAULT '',
    remote_status TEXT NOT NULL DEFAULT '',
    remote_error TEXT NOT NULL DEFAULT '',
    desired_hash TEXT NOT NULL DEFAULT '',
    previous_hash TEXT NOT NULL DEFAULT '',
    last_seen BIGINT NOT NULL DEFAULT 0,
    connected BOOLEAN NOT NULL DEFAULT FALSE,
    server TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS agents_desired ON agents (desired_hash);
CREATE TABLE IF NOT EXISTS configs (
    hash TEXT PRIMARY KEY,
    yaml {BLOB} NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    step INTEGER NOT NULL,
    offered BIGINT NOT NULL,
    returned BIGINT NOT NULL,
    stopped BOOLEAN NOT NULL
);
";

pub const COLUMNS: &str = "uid, host_name, labels, healthy, health_error, effective_hash, \
     remote_hash, remote_status, remote_error, desired_hash, previous_hash, last_seen, connected";

pub fn agent() -> String {
    format!("SELECT {COLUMNS} FROM agents WHERE uid = $1")
}

pub fn agents() -> String {
    format!("SELECT {COLUMNS} FROM agents ORDER BY uid")
}

pub const SAVE_REPORT: &str = "
INSERT INTO agents (uid, host_name, labels, healthy, health_error, effective_hash, remote_hash,
    remote_status, remote_error, last_seen, connected, server)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (uid) DO UPDATE SET host_name = excluded.host_name, labels = excluded.labels,
    healthy = excluded.healthy, health_error = excluded.health_error,
    effective_hash = excluded.effective_hash, remote_hash = excluded.remote_hash,
    remote_status = excluded.remote_status, remote_error = excluded.remote_error,
    last_seen = excluded.last_seen, connected = excluded.connected, server = excluded.server";

pub const DISCONNECTED: &str = "UPDATE agents SET connected = FALSE WHERE uid = $1 AND server = $2";

/// Nobody holds agents silent since $1 (a server that died kept them).
pub const STALE: &str = "UPDATE agents SET connected = FALSE WHERE connected AND last_seen < $1";

/// `$1` the agents (`uid_is`: `= $1` one at a time, `= ANY($1)` an array).
pub fn assign(uid_is: &str) -> String {
    format!(
        "UPDATE agents SET
            previous_hash = CASE WHEN desired_hash = $2 THEN previous_hash ELSE desired_hash END,
            desired_hash = $2
         WHERE uid {uid_is}"
    )
}

/// `$2` the config stopped, `$3` the empty config for agents that had none.
pub fn roll_back(uid_is: &str) -> String {
    format!(
        "UPDATE agents SET
            desired_hash = CASE WHEN previous_hash = '' THEN $3 ELSE previous_hash END,
            previous_hash = ''
         WHERE uid {uid_is} AND desired_hash = $2
         RETURNING uid, desired_hash"
    )
}

/// A config is named by its content; a new signature replaces the old.
pub const PUT_CONFIG: &str = "INSERT INTO configs (hash, yaml, signature) VALUES ($1, $2, $3)
     ON CONFLICT (hash) DO UPDATE SET signature = excluded.signature";

pub const CONFIG: &str = "SELECT hash, yaml, signature FROM configs WHERE hash = $1";

/// Those that have not reported on it yet.
pub const CONNECTED_DESIRING: &str = "SELECT uid FROM agents
     WHERE desired_hash = $1 AND server = $2 AND connected
         AND NOT (remote_hash = $1 AND remote_status IN ('APPLIED', 'FAILED'))";

/// A new config starts the counts afresh; the same one adds to them.
pub const ROLLOUT_STEP: &str = "
INSERT INTO rollout (id, hash, step, offered, returned, stopped) VALUES (1, $1, $2, $3, 0, FALSE)
ON CONFLICT (id) DO UPDATE SET
    step = excluded.step,
    offered = CASE WHEN rollout.hash = excluded.hash THEN rollout.offered + excluded.offered
        ELSE excluded.offered END,
    returned = CASE WHEN rollout.hash = excluded.hash THEN rollout.returned ELSE 0 END,
    stopped = CASE WHEN rollout.hash = excluded.hash THEN rollout.stopped ELSE FALSE END,
    hash = excluded.hash";

pub const ROLLOUT_STOPPED: &str =
    "UPDATE rollout SET returned = returned + $2, stopped = TRUE WHERE id = 1 AND hash = $1";

pub const ROLLOUT: &str = "
SELECT r.hash, r.step, r.offered, r.returned, r.stopped,
    (SELECT COUNT(*) FROM agents a WHERE a.remote_hash = r.hash AND a.remote_status = 'APPLIED'),
    (SELECT COUNT(*) FROM agents a WHERE a.remote_hash = r.hash AND a.remote_status = 'FAILED')
FROM rollout r WHERE r.id = 1";
