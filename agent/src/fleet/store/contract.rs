//! What every backend must do alike, run against SQLite here and against
//! PostgreSQL by the fleet's PostgreSQL tests.

use super::{AgentRow, Returned, SignedConfig, Store};

fn agent(uid: &str) -> AgentRow {
    AgentRow {
        uid: uid.into(),
        host_name: format!("host-{uid}"),
        labels: [("zone".to_owned(), "a".to_owned())].into(),
        healthy: Some(true),
        last_seen_unix: 100,
        connected: true,
        ..Default::default()
    }
}

fn uids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

pub async fn store_keeps_agents_configs_and_rollbacks(store: &Store) {
    for uid in ["u1", "u2", "u3"] {
        store.save_report(&agent(uid), "server-a").await.unwrap();
    }
    store.assign(&uids(&["u1", "u2"]), "c1").await.unwrap();
    store.assign(&uids(&["u1"]), "c2").await.unwrap();
    // The same config again keeps what came before it.
    store.assign(&uids(&["u1"]), "c2").await.unwrap();
    let mut report = agent("u1");
    report.remote_status = "APPLIED".into();
    report.healthy = None;
    // A report keeps what offers set.
    store.save_report(&report, "server-b").await.unwrap();
    let stored = store.agent("u1").await.unwrap().unwrap();
    assert_eq!(
        (stored.desired_hash.as_str(), stored.previous_hash.as_str()),
        ("c2", "c1")
    );
    assert_eq!(stored.labels["zone"], "a");
    assert_eq!(stored.remote_status, "APPLIED");
    assert_eq!(stored.healthy, None);
    assert!(store.agent("nobody").await.unwrap().is_none());
    let all = store.agents().await.unwrap();
    assert_eq!(
        all.iter().map(|a| a.uid.as_str()).collect::<Vec<_>>(),
        ["u1", "u2", "u3"]
    );

    // Only the server that holds an agent lets it go.
    store.disconnected("u1", "server-a").await.unwrap();
    assert!(store.agent("u1").await.unwrap().unwrap().connected);
    assert_eq!(
        store.connected_desiring("c2", "server-b").await.unwrap(),
        ["u1"]
    );
    store.disconnected("u1", "server-b").await.unwrap();
    assert!(!store.agent("u1").await.unwrap().unwrap().connected);
    assert!(
        store
            .connected_desiring("c2", "server-b")
            .await
            .unwrap()
            .is_empty()
    );

    let config = SignedConfig {
        hash: "c1".into(),
        yaml: b"a: 1".to_vec(),
        signature: "sig".into(),
    };
    store.put_config(&config).await.unwrap();
    assert_eq!(store.config("c1").await.unwrap(), Some(config.clone()));
    let resigned = SignedConfig {
        signature: "sig2".into(),
        ..config
    };
    store.put_config(&resigned).await.unwrap();
    assert_eq!(store.config("c1").await.unwrap(), Some(resigned));
    assert_eq!(store.config("c9").await.unwrap(), None);

    // Only agents still pointed at the stopped config go back: u1 and u2
    // to c1, then u3 (which had nothing before c3) to the empty config;
    // a second call changes nothing.
    store.assign(&uids(&["u2"]), "c2").await.unwrap();
    let stale = store.roll_back(&uids(&["u1", "u3"]), "c1", "e").await;
    assert_eq!(stale.unwrap(), []);
    let mut returned = store
        .roll_back(&uids(&["u1", "u2", "u3"]), "c2", "e")
        .await
        .unwrap();
    returned.sort_by(|a, b| a.uid.cmp(&b.uid));
    let expected = [("u1", "c1"), ("u2", "c1")].map(|(uid, hash)| Returned {
        uid: uid.into(),
        hash: hash.into(),
    });
    assert_eq!(returned, expected);
    store.assign(&uids(&["u3"]), "c3").await.unwrap();
    let returned = store
        .roll_back(&uids(&["u1", "u3"]), "c3", "e")
        .await
        .unwrap();
    assert_eq!(
        returned,
        [Returned {
            uid: "u3".into(),
            hash: "e".into()
        }]
    );
    assert!(
        store
            .roll_back(&uids(&["u3"]), "c3", "e")
            .await
            .unwrap()
            .is_empty()
    );

    // Rollout progress: a new config starts the counts afresh.
    assert_eq!(store.rollout().await.unwrap(), None);
    store.rollout_step("c1", 10, 1).await.unwrap();
    store.rollout_step("c1", 50, 2).await.unwrap();
    store.rollout_stopped("c1", 2).await.unwrap();
    let rollout = store.rollout().await.unwrap().unwrap();
    assert_eq!(
        (
            rollout.step,
            rollout.offered,
            rollout.returned,
            rollout.stopped
        ),
        (50, 3, 2, true)
    );
    // Applied and failed are counted from the agents' reports.
    let mut applied = agent("u1");
    applied.remote_hash = "c4".into();
    applied.remote_status = "APPLIED".into();
    store.save_report(&applied, "server-a").await.unwrap();
    let mut failed = agent("u2");
    failed.remote_hash = "c4".into();
    failed.remote_status = "FAILED".into();
    store.save_report(&failed, "server-a").await.unwrap();
    store.rollout_step("c4", 10, 2).await.unwrap();
    let rollout = store.rollout().await.unwrap().unwrap();
    assert_eq!(
        rollout,
        super::RolloutRow {
            hash: "c4".into(),
            step: 10,
            offered: 2,
            returned: 0,
            stopped: false,
            applied: 1,
            failed: 1,
        }
    );
}

#[tokio::test]
async fn sqlite_keeps_agents_configs_and_rollbacks() {
    store_keeps_agents_configs_and_rollbacks(&Store::open_in_memory().unwrap()).await;
}
