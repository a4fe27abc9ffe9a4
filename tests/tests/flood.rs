//! A flood of 20,000 short-lived processes: the agent keeps answering,
//! every exec is either received or counted as lost in the kernel (never
//! silently dropped), the table returns to its size, and memory stays
//! bounded. Prints the figures.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use selfops_tests::{Agent, metric_value, one_agent_at_a_time, privileged, wait_for};

const PROCESSES: u64 = 20_000;
/// A flood must not grow the agent past this (bounded table, bounded caches).
const RSS_LIMIT_BYTES: f64 = 128.0 * 1024.0 * 1024.0;

#[test]
fn flood_of_short_lived_processes() {
    if !privileged("flood_of_short_lived_processes") {
        return;
    }
    let _turn = one_agent_at_a_time();
    // The bound is the process model's under a flood. The profiler's memory
    // depends on which binaries run beside it (a compiler's libraries took
    // it past this bound), so it is off here; `bench profile` measures it.
    let agent = Agent::start("flood", "profile:\n  enabled: false\n");
    let before = agent.get("/metrics");
    let received = |text: &str, sensor: &str| {
        metric_value(text, "selfops_sensor_events_received_total", &[sensor])
    };
    let lost = |text: &str, sensor: &str| {
        metric_value(text, "selfops_sensor_events_lost_total", &[sensor])
    };
    let table_before = metric_value(&before, "selfops_process_table_size", &[]);
    let rss_before = metric_value(&before, "selfops_agent_resident_memory_bytes", &[]);

    // Scrape /metrics throughout the flood; every answer must come quickly.
    let done = Arc::new(AtomicBool::new(false));
    let port = agent.port;
    let scraper = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut scrapes = 0u32;
            let mut peak_rss = 0f64;
            while !done.load(Ordering::Relaxed) {
                let start = Instant::now();
                let body = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
                    .timeout(Duration::from_secs(5))
                    .call()
                    .expect("agent answers /metrics during the flood")
                    .into_string()
                    .unwrap_or_default();
                slowest = slowest.max(start.elapsed());
                scrapes += 1;
                peak_rss = peak_rss.max(metric_value(
                    &body,
                    "selfops_agent_resident_memory_bytes",
                    &[],
                ));
                std::thread::sleep(Duration::from_millis(200));
            }
            (slowest, scrapes, peak_rss)
        })
    };

    let start = Instant::now();
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("i=0; while [ $i -lt {PROCESSES} ]; do /bin/true; i=$((i+1)); done"),
        ])
        .status()
        .expect("run the flood");
    let flood_time = start.elapsed();
    assert!(status.success());

    // Every exec of the flood must be accounted for: received or lost.
    let accounted = wait_for(Duration::from_secs(20), || {
        let text = agent.get("/metrics");
        let execs = received(&text, "process_exec") - received(&before, "process_exec")
            + lost(&text, "process_exec")
            - lost(&before, "process_exec");
        (execs >= PROCESSES as f64).then_some(text)
    });
    done.store(true, Ordering::Relaxed);
    let (slowest, scrapes, peak_rss) = scraper.join().expect("scraper thread");
    let after = accounted.unwrap_or_else(|| {
        panic!(
            "exec events neither received nor counted as lost:\n{}",
            agent.get("/metrics")
        )
    });

    let table_after = wait_for(Duration::from_secs(10), || {
        let size = agent.metric("selfops_process_table_size", &[]);
        (size <= table_before + 50.0).then_some(size)
    });
    let lost_total: f64 = ["process_exec", "process_fork", "process_exit"]
        .iter()
        .map(|s| lost(&after, s) - lost(&before, s))
        .sum();
    println!(
        "flood: {PROCESSES} processes in {flood_time:.1?}; events lost {lost_total}; \
         exec received {}; fork received {}; exit received {}; \
         /metrics scrapes {scrapes}, slowest {slowest:.0?}; \
         RSS before {:.1} MiB, peak {:.1} MiB; table {table_before} -> {table_after:?}",
        received(&after, "process_exec") - received(&before, "process_exec"),
        received(&after, "process_fork") - received(&before, "process_fork"),
        received(&after, "process_exit") - received(&before, "process_exit"),
        rss_before / 1048576.0,
        peak_rss / 1048576.0,
    );
    assert!(scrapes > 0);
    assert!(
        slowest < Duration::from_secs(1),
        "slowest scrape {slowest:?}"
    );
    assert!(peak_rss < RSS_LIMIT_BYTES, "peak RSS {peak_rss} bytes");
    assert!(
        table_after.is_some(),
        "process table did not shrink back from the flood: {}",
        agent.metric("selfops_process_table_size", &[])
    );
}

/// With a ring buffer far too small for a burst, the kernel drops events:
/// each drop is counted per sensor (received + lost covers every process),
/// and the /proc reconciliation repairs the table the lost exits left
/// behind.
#[test]
fn lost_events_are_counted_and_repaired() {
    if !privileged("lost_events_are_counted_and_repaired") {
        return;
    }
    let _turn = one_agent_at_a_time();
    let agent = Agent::start(
        "flood-small-ring",
        "sensors:\n  process_ring_bytes: 4096\nprocess:\n  rescan_interval: 1s\n",
    );
    let before = agent.get("/metrics");
    let table_before = metric_value(&before, "selfops_process_table_size", &[]);
    // Four shells each start 3,000 processes without waiting for them.
    const BURST: u64 = 12_000;
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            "for j in 1 2 3 4; do (i=0; while [ $i -lt 3000 ]; do /bin/true & i=$((i+1)); done; wait) & done; wait",
        ])
        .status()
        .expect("run the burst");
    assert!(status.success());

    let sensors = ["process_exec", "process_fork", "process_exit"];
    let totals = |text: &str, metric: &str| -> Vec<f64> {
        sensors
            .iter()
            .map(|s| metric_value(text, metric, &[s]) - metric_value(&before, metric, &[s]))
            .collect()
    };
    let after = wait_for(Duration::from_secs(20), || {
        let text = agent.get("/metrics");
        let received = totals(&text, "selfops_sensor_events_received_total");
        let lost = totals(&text, "selfops_sensor_events_lost_total");
        received
            .iter()
            .zip(&lost)
            .all(|(r, l)| r + l >= BURST as f64)
            .then_some((received, lost))
    });
    let (received, lost) =
        after.unwrap_or_else(|| panic!("events unaccounted for:\n{}", agent.get("/metrics")));
    println!(
        "burst of {BURST} with a 4 KiB ring: received {received:?}, lost {lost:?} (exec, fork, exit)"
    );
    assert!(
        lost.iter().sum::<f64>() > 0.0,
        "a 4 KiB ring should overflow under this burst; nothing was lost"
    );

    // Lost exits leave dead entries; the 1 s /proc scan removes them.
    let repaired = wait_for(Duration::from_secs(10), || {
        let size = agent.metric("selfops_process_table_size", &[]);
        (size <= table_before + 50.0).then_some(size)
    });
    assert!(
        repaired.is_some(),
        "table still holds {} entries (was {table_before})",
        agent.metric("selfops_process_table_size", &[])
    );
    if lost[2] > 0.0 {
        assert!(agent.metric("selfops_processes_reconciled_total", &["exit_missed"]) > 0.0);
    }
}
