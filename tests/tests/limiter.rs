//! The kernel limiter against real traffic: a veth pair between two network
//! namespaces, a TCP/UDP server in one, clients in the other, the XDP or tc
//! program on the server's interface.

use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

#[path = "limiter/agent.rs"]
mod agent;

use selfops_agent::act::limiter::{
    AllowRules, Counters, Key, Limiter, LimiterOptions, Rate, Scope, TcHook, XdpHook, clock,
    remove_pinned,
};
use selfops_tests::{
    netns::{VethPair, ip},
    privileged,
    traffic::{CONNECT_TIMEOUT, Flood, TcpServer, connect_flood},
};

/// Long enough for any test; a key always expires by itself.
const TTL: Duration = Duration::from_secs(120);

/// The tests share the kernel's network stack and CPU time: one at a time.
static NETWORK: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    NETWORK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Loads the limiter and hooks it inside the server namespace (interface
/// names and netlink resolve in the caller's namespace).
fn limiter_on(
    pair: &VethPair,
    options: LimiterOptions,
    hook: fn(&mut Limiter, &str) -> String,
) -> (Limiter, String) {
    let interface = pair.server_if.clone();
    pair.in_server(move || {
        let mut limiter = Limiter::load(&options).expect("load the limiter object");
        let how = hook(&mut limiter, &interface);
        (limiter, how)
    })
    .join()
    .expect("attach thread")
}

fn xdp(limiter: &mut Limiter, interface: &str) -> String {
    let hook = limiter.attach_xdp(interface).expect("attach xdp");
    assert!(
        matches!(hook, XdpHook::Driver | XdpHook::Generic),
        "fresh attach, got {hook}"
    );
    hook.to_string()
}

fn tc(limiter: &mut Limiter, interface: &str) -> String {
    let hook = limiter.attach_tc(interface).expect("attach tc");
    assert!(matches!(hook, TcHook::Tcx | TcHook::Clsact), "got {hook}");
    hook.to_string()
}

/// Removes a test's pin directory, also when the test fails.
struct Unpin(std::path::PathBuf);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = remove_pinned(&self.0);
    }
}

fn within(value: f64, target: f64, tolerance: f64) -> bool {
    (value - target).abs() <= target * tolerance
}

/// Approximate equality for kernel counters against what clients saw: a
/// SYN admitted just as its connect gave up is counted as passed by the
/// kernel and failed by the client.
fn close(kernel: u64, seen: u64) -> bool {
    kernel.abs_diff(seen) <= 5 + seen / 50
}

const FREE_RATE: f64 = 600.0;

/// No limit in the way: far above any rate the tests set, and most
/// attempts complete. A flood of thousands of connections a second on two
/// cores loses some attempts to the 50 ms connect timeout when the
/// connecting thread waits for a CPU (a few percent on an idle machine,
/// more on a busy one); a limit left in place shows as a rate near its own
/// or no completions at all.
fn assert_unlimited(flood: &Flood, what: &str) {
    assert!(
        flood.rate() > FREE_RATE && flood.failed * 4 <= flood.completed,
        "{what}: {flood:?} = {:.0}/s",
        flood.rate()
    );
}

#[test]
fn xdp_syn_limit_holds_200_per_second_and_lifts() {
    if !privileged("xdp_syn_limit_holds_200_per_second_and_lifts") {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new("lim").expect("veth pair");
    let limited = SocketAddr::new(pair.server_addr(false), 8080);
    let other = SocketAddr::new(pair.server_addr(false), 8081);
    let _server = TcpServer::start(Some(&pair.server_ns), limited);
    let _other_server = TcpServer::start(Some(&pair.server_ns), other);
    let (mut limiter, how) = limiter_on(&pair, LimiterOptions::default(), xdp);
    eprintln!("limiter on {}: {how}", pair.server_if);

    let baseline = connect_flood(&pair.client_ns, limited, Duration::from_secs(1));
    eprintln!("no key: {baseline:?} = {:.0}/s", baseline.rate());
    assert_unlimited(&baseline, "no key");

    let key = Key::Port(8080);
    let rate = Rate {
        per_second: 200,
        burst: 20,
    };
    limiter
        .set(key, rate, Scope::NewConnections, TTL)
        .expect("set 200/s");
    let throttled = connect_flood(&pair.client_ns, limited, Duration::from_secs(3));
    let admitted = throttled.rate();
    eprintln!("200/s key: {throttled:?} = {admitted:.1}/s");
    assert!(
        within(admitted, 200.0, 0.10),
        "admitted {admitted:.1}/s, want 200/s ±10%: {throttled:?}"
    );
    assert!(throttled.failed > 0, "the flood never hit the limit");
    let counters = limiter.counters(key).expect("counters").expect("key set");
    eprintln!("kernel counters: {counters:?}");
    assert!(
        close(counters.passed, throttled.completed),
        "passed {} vs completed {}",
        counters.passed,
        throttled.completed
    );
    assert!(
        close(counters.dropped, throttled.failed),
        "dropped {} vs failed {}",
        counters.dropped,
        throttled.failed
    );

    // Another port has no key: untouched.
    let unrelated = connect_flood(&pair.client_ns, other, Duration::from_secs(1));
    eprintln!("unrelated port: {unrelated:?} = {:.0}/s", unrelated.rate());
    assert_unlimited(&unrelated, "unrelated port");

    // Established connections' packets are not SYNs: the SYN-only key
    // leaves them alone, so data flows while new connections are limited.
    assert_eq!(
        limiter.counters(key).expect("counters"),
        Some(counters),
        "the unrelated flood touched the key"
    );

    assert!(limiter.lift(key).expect("lift"), "key was set");
    assert_eq!(limiter.counters(key).expect("counters"), None);
    let lifted = connect_flood(&pair.client_ns, limited, Duration::from_secs(1));
    eprintln!("lifted: {lifted:?} = {:.0}/s", lifted.rate());
    assert_unlimited(&lifted, "lifted");
    assert!(!limiter.lift(key).expect("lift again"), "already lifted");
    let stats = limiter.stats().expect("stats");
    assert!(stats.unmatched > 0, "{stats:?}");
    assert_eq!(stats.contended, 0, "{stats:?}");

    // Dropping the limiter takes its enforcement with it.
    limiter
        .set(key, Rate::BLOCK, Scope::NewConnections, TTL)
        .expect("block");
    assert_eq!(
        connect_flood(&pair.client_ns, limited, Duration::from_millis(200)).completed,
        0
    );
    drop(limiter);
    let after_drop = connect_flood(&pair.client_ns, limited, Duration::from_millis(300));
    assert_unlimited(&after_drop, "after drop");
}

/// A UDP receiver in the server namespace counting datagrams.
fn udp_receiver(pair: &VethPair, addr: SocketAddr) -> (Arc<AtomicU64>, Arc<AtomicBool>) {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    pair.in_server({
        let received = received.clone();
        let stop = stop.clone();
        move || {
            let socket = UdpSocket::bind(addr).expect("bind udp");
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            tx.send(()).expect("ready");
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("udp ready");
    (received, stop)
}

/// Sends datagrams from the client namespace for `duration` (at most
/// 2 000 000); returns how many were sent.
fn udp_flood(pair: &VethPair, to: SocketAddr, duration: Duration) -> u64 {
    pair.in_client(move || {
        let bind: SocketAddr = if to.is_ipv6() {
            "[::]:0".parse().expect("addr")
        } else {
            "0.0.0.0:0".parse().expect("addr")
        };
        let socket = UdpSocket::bind(bind).expect("client udp");
        let deadline = Instant::now() + duration;
        let mut sent = 0u64;
        while sent < 2_000_000 && Instant::now() < deadline {
            if socket.send_to(b"selfops", to).is_ok() {
                sent += 1;
            }
        }
        sent
    })
    .join()
    .expect("udp sender")
}

/// Packets arrive in NAPI batches, and the sender may wait for a CPU:
/// tokens must be able to wait for the next batch (a burst of 1 would cap
/// the rate at one packet per batch), here up to 100 ms.
const UDP_BURST: u32 = 100;

#[test]
fn xdp_all_packets_scope_meters_udp_and_blocks_a_source() {
    if !privileged("xdp_all_packets_scope_meters_udp_and_blocks_a_source") {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new("lima").expect("veth pair");
    let udp = SocketAddr::new(pair.server_addr(false), 9000);
    let tcp = SocketAddr::new(pair.server_addr(false), 8080);
    let (received, stop) = udp_receiver(&pair, udp);
    let _server = TcpServer::start(Some(&pair.server_ns), tcp);
    let (mut limiter, how) = limiter_on(&pair, LimiterOptions::default(), xdp);
    eprintln!("limiter on {}: {how}", pair.server_if);

    let key = Key::Source(pair.client_addr(false));
    limiter
        .set(
            key,
            Rate {
                per_second: 1000,
                burst: UDP_BURST,
            },
            Scope::AllPackets,
            TTL,
        )
        .expect("set 1000/s");
    let start = Instant::now();
    let sent = udp_flood(&pair, udp, Duration::from_secs(1));
    let elapsed = start.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let got = received.load(Ordering::Relaxed);
    let counters = limiter.counters(key).expect("counters").expect("set");
    let rate = got as f64 / elapsed.as_secs_f64();
    eprintln!("udp: sent {sent}, received {got} in {elapsed:?} = {rate:.0}/s; {counters:?}");
    // The bucket starts full: a burst on top of the rate.
    let expected = 1000.0 * elapsed.as_secs_f64() + f64::from(UDP_BURST);
    assert!(
        within(got as f64, expected, 0.10),
        "received {got} ({rate:.0}/s), want {expected:.0} (1000/s + burst) ±10%"
    );
    assert!(
        close(counters.passed, got),
        "passed {} vs received {got}",
        counters.passed
    );
    // The veth may drop some of a flood before XDP sees it; never more
    // metered than sent.
    let metered = counters.passed + counters.dropped;
    assert!(
        metered <= sent && metered >= sent * 9 / 10,
        "metered {metered} of {sent}"
    );

    // Rate 0 blocks the source entirely, TCP included.
    limiter
        .set(key, Rate::BLOCK, Scope::AllPackets, TTL)
        .expect("block");
    let blocked = connect_flood(&pair.client_ns, tcp, Duration::from_millis(300));
    assert_eq!(blocked.completed, 0, "{blocked:?}");
    let after = limiter.counters(key).expect("counters").expect("set");
    assert!(
        after.dropped >= counters.dropped + blocked.failed,
        "{after:?}"
    );
    assert_eq!(after.passed, counters.passed, "counters kept across set");

    limiter.lift(key).expect("lift");
    let open = connect_flood(&pair.client_ns, tcp, Duration::from_millis(300));
    assert_unlimited(&open, "lifted");
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn tc_ipv6_port_source_key_wins_over_port_and_bad_updates_change_nothing() {
    if !privileged("tc_ipv6_port_source_key_wins_over_port_and_bad_updates_change_nothing") {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new("lim6").expect("veth pair");
    let server = SocketAddr::new(pair.server_addr(true), 8443);
    let _server = TcpServer::start(Some(&pair.server_ns), server);
    let (mut limiter, how) = limiter_on(&pair, LimiterOptions::default(), tc);
    eprintln!("limiter on {}: {how}", pair.server_if);

    let specific = Key::PortSource(8443, pair.client_addr(true));
    let port = Key::Port(8443);
    let rate = Rate {
        per_second: 200,
        burst: 10,
    };
    limiter
        .set(specific, rate, Scope::NewConnections, TTL)
        .expect("set port+source");
    limiter
        .set(port, Rate::BLOCK, Scope::NewConnections, TTL)
        .expect("block port");
    let flood = connect_flood(&pair.client_ns, server, Duration::from_secs(2));
    eprintln!("ipv6 via tc, 200/s: {flood:?} = {:.1}/s", flood.rate());
    assert!(within(flood.rate(), 200.0, 0.10), "{flood:?}");
    assert_eq!(
        limiter.counters(port).expect("counters"),
        Some(Counters::default()),
        "the less specific key metered packets"
    );

    // An update the limiter refuses leaves the policy as it was.
    let before = limiter.entries().expect("entries");
    let bad = Rate {
        per_second: 100,
        burst: 0,
    };
    assert!(limiter.set(specific, bad, Scope::AllPackets, TTL).is_err());
    let after = limiter.entries().expect("entries");
    let find = |entries: &[selfops_agent::act::limiter::Entry]| {
        entries
            .iter()
            .find(|e| e.key == specific)
            .map(|e| (e.rate, e.scope))
    };
    assert_eq!(find(&before), Some((rate, Scope::NewConnections)));
    assert_eq!(find(&after), find(&before));
    assert_eq!(after.len(), 2, "{after:?}");

    // Without the specific key, the port's block applies.
    limiter.lift(specific).expect("lift");
    let blocked = connect_flood(&pair.client_ns, server, Duration::from_millis(300));
    assert_eq!(blocked.completed, 0, "{blocked:?}");
    limiter.lift(port).expect("lift");
    let open = connect_flood(&pair.client_ns, server, Duration::from_millis(300));
    assert_unlimited(&open, "lifted");

    // Dropping the limiter detaches the tc program.
    limiter
        .set(port, Rate::BLOCK, Scope::NewConnections, TTL)
        .expect("block");
    assert_eq!(
        connect_flood(&pair.client_ns, server, Duration::from_millis(200)).completed,
        0
    );
    drop(limiter);
    let after_drop = connect_flood(&pair.client_ns, server, Duration::from_millis(300));
    assert_unlimited(&after_drop, "after drop");
}

#[test]
fn persisted_limiter_outlives_its_process_and_is_taken_over() {
    if !privileged("persisted_limiter_outlives_its_process_and_is_taken_over") {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new("limp").expect("veth pair");
    let server = SocketAddr::new(pair.server_addr(false), 8080);
    let _server = TcpServer::start(Some(&pair.server_ns), server);
    let pin_dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/selfops-test-limiter-{}",
        std::process::id()
    ));
    let _unpin = Unpin(pin_dir.clone());
    let options = LimiterOptions {
        pin_dir: Some(pin_dir.clone()),
        ..LimiterOptions::default()
    };
    let key = Key::Source(IpAddr::V4(pair.client_v4));
    let (mut limiter, _) = limiter_on(&pair, options.clone(), xdp);
    limiter
        .set(key, Rate::BLOCK, Scope::AllPackets, TTL)
        .expect("block");
    drop(limiter);
    let blocked = connect_flood(&pair.client_ns, server, Duration::from_millis(300));
    assert_eq!(
        blocked.completed, 0,
        "enforcement gone with the limiter: {blocked:?}"
    );

    let (limiter, how) = limiter_on(&pair, options, |l, i| {
        l.attach_xdp(i).expect("take over").to_string()
    });
    assert_eq!(how, XdpHook::TakenOver.to_string());
    let entries = limiter.entries().expect("entries");
    assert!(entries.iter().any(|e| e.key == key), "{entries:?}");
    drop(limiter);
    let still = connect_flood(&pair.client_ns, server, Duration::from_millis(200));
    assert_eq!(
        still.completed, 0,
        "taken-over link dropped with its limiter: {still:?}"
    );
    remove_pinned(&pin_dir).expect("remove pins");
    let open = connect_flood(&pair.client_ns, server, Duration::from_millis(300));
    assert_unlimited(&open, "pinned enforcement left behind");
}

#[test]
fn xdp_falls_back_to_generic_mode_where_the_driver_has_none() {
    if !privileged("xdp_falls_back_to_generic_mode_where_the_driver_has_none") {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new("limg").expect("veth pair");
    // Loopback has no native XDP.
    let server = SocketAddr::new("127.0.0.1".parse().expect("addr"), 8080);
    let _server = TcpServer::start(Some(&pair.server_ns), server);
    let (mut limiter, how) = limiter_on(&pair, LimiterOptions::default(), |l, _| {
        l.attach_xdp("lo").expect("attach to lo").to_string()
    });
    assert_eq!(how, XdpHook::Generic.to_string());
    // Hooked in the server namespace: its own loopback traffic is metered.
    let blocked = pair
        .in_server(move || {
            limiter
                .set(Key::Port(8080), Rate::BLOCK, Scope::NewConnections, TTL)
                .expect("block");
            let refused = TcpStream::connect_timeout(&server, CONNECT_TIMEOUT).is_err();
            let counters = limiter.counters(Key::Port(8080)).expect("counters");
            (refused, counters)
        })
        .join()
        .expect("loopback client");
    assert!(blocked.0, "a SYN over lo passed a blocked port");
    assert_eq!(blocked.1.map(|c| c.dropped), Some(1), "{:?}", blocked.1);
}

#[test]
fn the_allowlist_passes_before_any_key_and_an_expired_key_is_absent() {
    if !privileged("the_allowlist_passes_before_any_key_and_an_expired_key_is_absent") {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new("lall").expect("veth pair");
    let allowed = SocketAddr::new(pair.server_addr(false), 2222);
    let other = SocketAddr::new(pair.server_addr(false), 8080);
    let v6 = SocketAddr::new(pair.server_addr(true), 8443);
    let _servers = [allowed, other, v6].map(|a| TcpServer::start(Some(&pair.server_ns), a));
    let client_v6: ipnet::IpNet = format!("{}/128", pair.client_v6).parse().expect("net");
    let options = LimiterOptions {
        allow: AllowRules {
            ports: vec![2222],
            sources: vec![client_v6],
        },
        ..LimiterOptions::default()
    };
    let (mut limiter, how) = limiter_on(&pair, options.clone(), xdp);
    eprintln!("limiter on {}: {how}", pair.server_if);
    assert_eq!(limiter.allowlist(), options.allow);
    for v6 in [false, true] {
        limiter
            .set(
                Key::Source(pair.client_addr(v6)),
                Rate::BLOCK,
                Scope::AllPackets,
                TTL,
            )
            .expect("block");
    }
    let flood = |to| connect_flood(&pair.client_ns, to, Duration::from_millis(300));
    assert_eq!(flood(other).completed, 0, "the block did not hold");
    assert_unlimited(&flood(allowed), "allowlisted port");
    assert_unlimited(&flood(v6), "allowlisted IPv6 source");
    let stats = limiter.stats().expect("stats");
    assert!(stats.allowlisted > 0, "{stats:?}");

    // A key past its deadline is absent, with nobody lifting it.
    let v4 = Key::Source(pair.client_addr(false));
    limiter.lift(v4).expect("lift");
    let ttl = Duration::from_secs(1);
    limiter
        .set(Key::Port(8080), Rate::BLOCK, Scope::AllPackets, ttl)
        .expect("block for 1 s");
    let set_at = Instant::now();
    assert_eq!(flood(other).completed, 0, "the 1 s block did not hold");
    let open = selfops_tests::wait_for(ttl + Duration::from_secs(2), || {
        let f = connect_flood(&pair.client_ns, other, Duration::from_millis(100));
        (f.completed > 0).then_some(Instant::now())
    })
    .expect("still blocked past the deadline");
    assert!(
        open - set_at >= ttl - Duration::from_millis(100),
        "expired early"
    );
    let stats = limiter.stats().expect("stats");
    assert!(stats.expired > 0, "{stats:?}");
    let entry = limiter
        .entries()
        .expect("entries")
        .into_iter()
        .find(|e| e.key == Key::Port(8080))
        .expect("still in the map");
    assert_eq!(entry.remaining(clock::boot_ns()), None);
    // TTLs are bounded.
    assert!(
        limiter
            .set(
                Key::Port(1),
                Rate::BLOCK,
                Scope::AllPackets,
                Duration::from_secs(90_000)
            )
            .is_err()
    );
}

#[test]
fn a_pinned_link_whose_interface_was_recreated_is_replaced() {
    if !privileged("a_pinned_link_whose_interface_was_recreated_is_replaced") {
        return;
    }
    let _serial = serial();
    let pair = VethPair::new("lims").expect("veth pair");
    let pin_dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/selfops-test-stale-{}",
        std::process::id()
    ));
    let _unpin = Unpin(pin_dir.clone());
    let options = LimiterOptions {
        pin_dir: Some(pin_dir.clone()),
        ..LimiterOptions::default()
    };
    let (limiter, _) = limiter_on(&pair, options.clone(), xdp);
    drop(limiter);
    // Same name, new device: the pinned link is severed from it.
    let ns = pair.server_ns.as_str();
    ip(&["-n", ns, "link", "del", &pair.server_if]).expect("delete");
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        &pair.server_if,
        "type",
        "veth",
        "peer",
        "name",
        &pair.client_if,
        "netns",
        &pair.client_ns,
    ])
    .expect("recreate");
    ip(&["-n", ns, "link", "set", &pair.server_if, "up"]).expect("up");
    let (limiter, how) = limiter_on(&pair, options, |l, i| {
        l.attach_xdp(i)
            .unwrap_or_else(|e| panic!("attach over a stale pin: {e}"))
            .to_string()
    });
    assert_ne!(how, XdpHook::TakenOver.to_string());
    drop(limiter);
    remove_pinned(&pin_dir).expect("remove pins");
}
