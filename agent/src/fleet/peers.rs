//! Several fleet servers on one PostgreSQL database: an offer made through
//! one server's API reaches the agents another holds at once. Every offer
//! and rollback is announced (NOTIFY, one per config); each server LISTENs,
//! drops the config from its cache (another server may have signed it
//! anew) and wakes the sessions of the agents it holds that were pointed
//! at it, which send their offer as read from the store.
//! LISTEN/NOTIFY rather than polling a version counter: it costs nothing
//! while nothing changes and arrives in milliseconds. A notification lost
//! with the listening connection costs at most one heartbeat, since every
//! answer carries the agent's offer; after reconnecting, the server forgets
//! every cached config and wakes every session it holds.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use super::opamp::Fleet;

const FIRST_WAIT: Duration = Duration::from_millis(200);
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Follows the announcements until the fleet is gone.
pub async fn follow(fleet: Weak<Fleet>) {
    let mut wait = FIRST_WAIT;
    loop {
        let Some(strong) = fleet.upgrade() else {
            return;
        };
        let mut subscription = match strong.store.subscribe().await {
            None => return,
            Some(Ok(subscription)) => subscription,
            Some(Err(err)) => {
                strong.store_failed(&err);
                drop(strong);
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2).min(MAX_WAIT);
                continue;
            }
        };
        wait = FIRST_WAIT;
        // Whatever was announced while nobody listened.
        strong.forget_config(None);
        strong.push(&strong.session_uids());
        drop(strong);
        loop {
            let next = subscription.next().await;
            let Some(fleet) = fleet.upgrade() else {
                return;
            };
            match next {
                Ok((server, hash)) if server != fleet.id => announced(&fleet, &hash).await,
                Ok(_) => {}
                Err(err) => {
                    fleet.metrics.store_errors.inc();
                    tracing::warn!(%err, "fleet announcements lost: listening again");
                    break;
                }
            }
        }
    }
}

/// Another server pointed agents at `hash`: those held here get it now.
async fn announced(fleet: &Arc<Fleet>, hash: &str) {
    fleet.forget_config(Some(hash));
    let uids = match fleet.store.connected_desiring(hash, &fleet.id).await {
        Ok(uids) => uids,
        Err(err) => {
            fleet.store_failed(&err);
            return;
        }
    };
    if uids.is_empty() {
        return;
    }
    tracing::debug!(%hash, agents = uids.len(), "config announced by another server: pushed");
    fleet
        .metrics
        .peer_pushes
        .inc_by(u64::try_from(uids.len()).unwrap_or(u64::MAX));
    fleet.push(&uids);
}
