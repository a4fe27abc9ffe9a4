//! The PostgreSQL store, on a throwaway cluster the test starts: the same
//! contract as SQLite; and two fleet servers on one database with the
//! agents split between them: each lists them all, a rollout through one
//! reaches the agents of both, and a config that fails health at the
//! canary step stops there with only the canary returned to the config
//! it ran before.

use std::{path::PathBuf, time::Duration};

use super::{
    server::Limits,
    status,
    store::{Database, Returned, Store, contract},
    test_postgres::Cluster,
    tests::{Agent, start_agent_with, start_server_on, wait_for},
    tests_rollback::{
        WINDOW, break_export_under, metric, metrics_text, plan, stop_all, uid_of, value_of, zone_a,
    },
};
use crate::{
    control::signed::SecretKey,
    fleet::rollout::{self, RolloutError},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_agents_configs_and_rollbacks() {
    let Some(cluster) = Cluster::start("store") else {
        return;
    };
    let url = cluster.database("contract").await;
    let store = Store::open(&Database::parse(&url).unwrap(), 0)
        .await
        .unwrap();
    contract::store_keeps_agents_configs_and_rollbacks(&store).await;
}

const AGENTS: usize = 10;
/// Server B offers its agents a heartbeat longer than the whole test: they
/// hear of offers made through A only by B's push.
const SLOW_HEARTBEAT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_share_agents_and_rollouts() {
    let Some(cluster) = Cluster::start("fleet") else {
        return;
    };
    let url = cluster.database("fleet").await;
    let database = Database::parse(&url).unwrap();
    // Started together: the schema is created once, under a lock.
    let (a, b) = tokio::join!(Store::open(&database, 0), Store::open(&database, 0));
    let (addr_a, stop_a) =
        start_server_on(a.unwrap(), Limits::default(), Duration::from_secs(1)).await;
    let (addr_b, stop_b) = start_server_on(b.unwrap(), Limits::default(), SLOW_HEARTBEAT).await;
    let servers = [format!("http://{addr_a}"), format!("http://{addr_b}")];
    let key = SecretKey::generate();
    let base = std::env::temp_dir().join(format!("selfops-fleet-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let dirs: Vec<PathBuf> = (0..AGENTS).map(|i| base.join(i.to_string())).collect();
    let agents: Vec<Agent> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let addr = if i % 2 == 0 { addr_a } else { addr_b };
            start_agent_with(dir, &format!("ws://{addr}/v1/opamp"), &key, "a", WINDOW)
        })
        .collect();
    for server in &servers {
        wait_for(server, "every agent listed, connected", |a| {
            a.len() == AGENTS && a.iter().all(|a| a.connected)
        })
        .await;
    }

    // 1. Through A, to every agent: B's agents get each step by B's push.
    let good = "trace:\n  exclude: [{ executable: curl }]\n";
    let started = std::time::Instant::now();
    let hash = rollout::run(&servers[0], good, &key, &zone_a(), &plan(&[10, 50, 100]))
        .await
        .unwrap();
    eprintln!(
        "rollout of {AGENTS} agents over two servers, 3 steps, {WINDOW} windows: {:?}",
        started.elapsed()
    );
    for server in &servers {
        let all = status::agents(server).await.unwrap();
        assert!(
            all.iter()
                .all(|a| a.remote_hash == hash && a.remote_status == "APPLIED"),
            "{all:#?}"
        );
    }
    assert!(metric(&servers[1], "selfops_fleet_peer_pushes_total").await >= 1.0);

    // 2. Through B this time, a config that breaks every agent that runs
    // it: the canary fails its health gate, the rollout stops, and the
    // canary alone is pointed back at the config before.
    let _breakers: Vec<_> = agents
        .iter()
        .map(|agent| break_export_under(agent, "break-me"))
        .collect();
    let canary = dirs.iter().map(|dir| uid_of(dir)).min().unwrap();
    let bad = "trace:\n  exclude: [{ executable: break-me }]\n";
    let err = rollout::run(&servers[1], bad, &key, &zone_a(), &plan(&[10, 50, 100]))
        .await
        .unwrap_err();
    let RolloutError::Stopped {
        step: 10,
        failed: 1,
        of: 1,
        returned,
        ..
    } = err
    else {
        panic!("{err}");
    };
    assert_eq!(
        returned,
        [Returned {
            uid: canary.clone(),
            hash: hash.clone()
        }]
    );
    for server in &servers {
        let all = wait_for(server, "the canary back on the config before", |all| {
            all.iter()
                .all(|a| a.remote_hash == hash && a.remote_status == "APPLIED")
        })
        .await;
        // No other agent was ever pointed at the bad config.
        assert!(all.iter().all(|a| a.desired_hash == hash), "{all:#?}");
        assert!(
            all.iter()
                .filter(|a| a.uid != canary)
                .all(|a| a.previous_hash.is_empty()),
            "{all:#?}"
        );
        for (series, value) in [
            ("selfops_fleet_rollout_step", 10.0),
            ("selfops_fleet_rollout_stopped", 1.0),
            ("selfops_fleet_rollout_agents{state=\"offered\"}", 1.0),
            ("selfops_fleet_rollout_agents{state=\"returned\"}", 1.0),
        ] {
            assert_eq!(metric(server, series).await, value, "{server} {series}");
        }
    }
    let by_rollout = "selfops_fleet_rollbacks_total{by=\"rollout\"}";
    assert_eq!(metric(&servers[1], by_rollout).await, 1.0);
    let mut by_agent = 0.0;
    for server in &servers {
        let text = metrics_text(server).await;
        by_agent += value_of(&text, "selfops_fleet_rollbacks_total{by=\"agent\"}").unwrap_or(0.0);
    }
    assert_eq!(
        by_agent, 1.0,
        "the canary's own rollback, seen by its server"
    );

    stop_all(agents).await;
    let _ = stop_a.send(());
    let _ = stop_b.send(());
    let _ = std::fs::remove_dir_all(&base);
}
