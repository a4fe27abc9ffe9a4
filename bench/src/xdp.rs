//! `cargo xtask bench xdp`: what the limiter costs per packet. A UDP flood
//! crosses one veth pair between two namespaces with no program, with the
//! XDP limiter and no key (three lookups that miss), with the XDP limiter
//! and with the tc limiter (a generous key present, so every packet takes
//! the full path: three lookups and a bucket update), in the same run and
//! interleaved, so the machine's state affects all alike. The kernel's own
//! accounting (bpf_stats) gives the time spent in the program.
//!
//! The throughput ratio of XDP also carries the veth driver's own change
//! of path: with an XDP program attached, a veth queues frames to its NAPI
//! ring instead of handing them straight to the stack.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use selfops_agent::act::limiter::{
    Key, Limiter, LimiterOptions, RATE_MAX, Rate, Scope, enable_run_stats,
};
use selfops_tests::netns::VethPair;

/// Length of one measured phase.
const PHASE: Duration = Duration::from_secs(2);
/// Rounds of (none, xdp, tc); each setup's median round is reported.
const ROUNDS: usize = 5;
/// Keys outlive the benchmark.
const TTL: Duration = Duration::from_secs(600);
const PORT: u16 = 9000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    None,
    /// XDP limiter with no key: every packet misses three lookups.
    XdpNoKey,
    Xdp,
    Tc,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::None => "no program",
            Setup::XdpNoKey => "xdp, no key",
            Setup::Xdp => "xdp limiter",
            Setup::Tc => "tc limiter",
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Totals {
    sent: u64,
    /// Datagrams the server's UDP stack took in (delivered or dropped for
    /// a full socket buffer): the receive path's throughput, independent of
    /// how fast the receiving thread reads.
    received: u64,
    seconds: f64,
    /// Program run time and runs, from bpf_stats.
    run_ns: u64,
    runs: u64,
    /// Packets the key metered (passed + dropped).
    metered: u64,
}

pub fn run() -> anyhow::Result<()> {
    if !is_root()? {
        bail!("bench xdp needs root: it creates network namespaces and loads eBPF");
    }
    // Run-time accounting stays on while this descriptor is open.
    let _stats = enable_run_stats().context("enabling bpf_stats")?;
    let pair = VethPair::new("bench").map_err(|e| anyhow!(e))?;
    let target = SocketAddr::new(pair.server_addr(false), PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = start_receiver(&pair, target, stop.clone())?;

    let setups = [Setup::None, Setup::XdpNoKey, Setup::Xdp, Setup::Tc];
    let mut totals = [Totals::default(); 4];
    let mut rates: [Vec<(f64, f64)>; 4] = Default::default();
    let mut hooks: [String; 4] = Default::default();
    for round in 0..ROUNDS {
        for (i, setup) in setups.into_iter().enumerate() {
            let (phase, hook) = measure(&pair, setup, target)?;
            eprintln!(
                "round {} {:<12} sent {:>8} taken in {:>8} in {:.2} s",
                round + 1,
                setup.label(),
                phase.sent,
                phase.received,
                phase.seconds
            );
            rates[i].push((
                phase.received as f64 / phase.seconds,
                phase.sent as f64 / phase.seconds,
            ));
            let t = &mut totals[i];
            t.run_ns += phase.run_ns;
            t.runs += phase.runs;
            t.metered += phase.metered;
            hooks[i] = hook;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();

    let medians = rates.map(|mut r| {
        r.sort_by(|a, b| a.0.total_cmp(&b.0));
        r[r.len() / 2]
    });
    let base_pps = medians[0].0;
    println!(
        "UDP flood over one veth pair, {ROUNDS} rounds × {} s per setup, interleaved; median round",
        PHASE.as_secs()
    );
    println!(
        "{:<12} {:<24} {:>10} {:>12} {:>8} {:>10}",
        "setup", "hook", "sent/s", "taken in/s", "ratio", "ns/packet"
    );
    for (i, setup) in setups.into_iter().enumerate() {
        let t = totals[i];
        let (pps, sent_pps) = medians[i];
        let ns = if t.runs > 0 {
            format!("{:.1}", t.run_ns as f64 / t.runs as f64)
        } else {
            "-".to_owned()
        };
        println!(
            "{:<12} {:<24} {:>10.0} {:>12.0} {:>8.3} {:>10}",
            setup.label(),
            hooks[i],
            sent_pps,
            pps,
            pps / base_pps,
            ns
        );
        if setup != Setup::None {
            println!(
                "{:<12} program runs {} for {} packets metered by the key",
                "", t.runs, t.metered
            );
        }
    }
    Ok(())
}

/// One phase: the setup in place, a flood for `PHASE`, counts read.
fn measure(pair: &VethPair, setup: Setup, target: SocketAddr) -> anyhow::Result<(Totals, String)> {
    let limiter = match setup {
        Setup::None => None,
        Setup::XdpNoKey | Setup::Xdp | Setup::Tc => Some(limiter(pair, setup)?),
    };
    let before_runs = run_stats(limiter.as_ref().map(|l| &l.0))?;
    let before = udp_taken_in(pair)?;
    let start = Instant::now();
    let sent = flood(pair, target)?;
    // Let the receiver drain what is queued.
    std::thread::sleep(Duration::from_millis(50));
    let seconds = start.elapsed().as_secs_f64() - 0.05;
    let got = udp_taken_in(pair)? - before;
    let after_runs = run_stats(limiter.as_ref().map(|l| &l.0))?;
    let (metered, hook) = match &limiter {
        Some((l, hook)) => {
            let key = Key::Source(pair.client_addr(false));
            let metered = match l.counters(key)? {
                Some(c) => c.passed + c.dropped,
                None if setup == Setup::XdpNoKey => 0,
                None => bail!("bench key evicted"),
            };
            (metered, hook.clone())
        }
        None => (0, "-".to_owned()),
    };
    Ok((
        Totals {
            sent,
            received: got,
            seconds,
            run_ns: after_runs.0 - before_runs.0,
            runs: after_runs.1 - before_runs.1,
            metered,
        },
        hook,
    ))
}

/// Program run time (ns) and run count of the attached program.
fn run_stats(limiter: Option<&Limiter>) -> anyhow::Result<(u64, u64)> {
    let Some(limiter) = limiter else {
        return Ok((0, 0));
    };
    let mut total = (0, 0);
    for (_, time, count) in limiter.run_stats()? {
        total.0 += u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        total.1 += count;
    }
    Ok(total)
}

/// A limiter hooked on the server side with (but for `XdpNoKey`) a key
/// every flood packet hits and a rate far above the flood's.
fn limiter(pair: &VethPair, setup: Setup) -> anyhow::Result<(Limiter, String)> {
    let interface = pair.server_if.clone();
    let key = Key::Source(pair.client_addr(false));
    let handle = pair.in_server(move || -> anyhow::Result<(Limiter, String)> {
        let mut limiter = Limiter::load(&LimiterOptions::default())?;
        let hook = match setup {
            Setup::Tc => limiter.attach_tc(&interface)?.to_string(),
            _ => limiter.attach_xdp(&interface)?.to_string(),
        };
        if setup == Setup::XdpNoKey {
            return Ok((limiter, hook));
        }
        limiter.set(
            key,
            Rate {
                per_second: RATE_MAX,
                burst: u32::MAX,
            },
            Scope::AllPackets,
            TTL,
        )?;
        Ok((limiter, hook))
    });
    handle
        .join()
        .map_err(|_| anyhow!("limiter thread panicked"))?
}

/// UDP datagrams the server namespace's stack took in: InDatagrams +
/// InErrors of /proc/net/snmp, read from a thread inside the namespace
/// (thread-self: /proc/self/net is the main thread's namespace).
fn udp_taken_in(pair: &VethPair) -> anyhow::Result<u64> {
    pair.in_server(|| -> anyhow::Result<u64> {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let names: Vec<&str> = udp
            .next()
            .context("no Udp header")?
            .split_whitespace()
            .collect();
        let values: Vec<&str> = udp
            .next()
            .context("no Udp values")?
            .split_whitespace()
            .collect();
        let field = |name: &str| -> anyhow::Result<u64> {
            let i = names
                .iter()
                .position(|n| *n == name)
                .with_context(|| format!("no Udp {name}"))?;
            Ok(values.get(i).context("short Udp line")?.parse()?)
        };
        Ok(field("InDatagrams")? + field("InErrors")?)
    })
    .join()
    .map_err(|_| anyhow!("snmp reader panicked"))?
}

fn is_root() -> anyhow::Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    Ok(uid == "0")
}

fn start_receiver(
    pair: &VethPair,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = pair.in_server(move || {
        let socket = match UdpSocket::bind(addr).and_then(|s| {
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .map(|()| s)
        }) {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let mut buf = [0u8; 64];
        // Reads only to keep the socket from filling; the stack's own
        // counters say what arrived.
        while !stop.load(Ordering::Relaxed) {
            let _ = socket.recv(&mut buf);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("receiver did not start")?
        .context("binding the receiver")?;
    Ok(handle)
}

/// Sends 18-byte datagrams from the client namespace for `PHASE`.
fn flood(pair: &VethPair, to: SocketAddr) -> anyhow::Result<u64> {
    pair.in_client(move || -> anyhow::Result<u64> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(to)?;
        let deadline = Instant::now() + PHASE;
        let mut sent = 0u64;
        while Instant::now() < deadline {
            // A batch between clock reads keeps the loop on the socket.
            for _ in 0..64 {
                if socket.send(b"selfops-bench-data").is_ok() {
                    sent += 1;
                }
            }
        }
        Ok(sent)
    })
    .join()
    .map_err(|_| anyhow!("sender thread panicked"))?
}
