//! Real traffic for the limiter and self-healing tests: a TCP server that
//! accepts and closes, a bounded connect flood from a network namespace,
//! and a CPU hog — each stops by itself.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::{VethPair, ip, spawn_in};

/// Concurrent connecting threads: enough that attempts outpace any rate
/// the tests set, while a dropped SYN only stalls one of them.
const CONNECTORS: usize = 32;
/// A dropped SYN is retransmitted after 1 s; giving up long before that
/// makes every attempt exactly one SYN.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(50);

/// A TCP listener that accepts and closes until dropped, in a namespace or
/// (with `None`) in the caller's.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    pub fn start(namespace: Option<&str>, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let serve = {
            let stop = stop.clone();
            move || {
                let listener = TcpListener::bind(addr).expect("bind server");
                listener.set_nonblocking(true).expect("nonblocking");
                tx.send(()).expect("report ready");
                while !stop.load(Ordering::Relaxed) {
                    if listener.accept().is_err() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        };
        let thread = match namespace {
            Some(ns) => spawn_in(ns, serve),
            None => std::thread::spawn(serve),
        };
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server listening");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a connect flood saw.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub completed: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

impl Flood {
    /// Completed handshakes per second.
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

/// Opens connections to `to` from namespace `ns` as fast as `CONNECTORS`
/// threads can for `duration`; counts completed handshakes.
pub fn connect_flood(ns: &str, to: SocketAddr, duration: Duration) -> Flood {
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let threads: Vec<_> = (0..CONNECTORS)
        .map(|_| {
            let completed = completed.clone();
            let failed = failed.clone();
            spawn_in(ns, move || {
                while Instant::now() < deadline {
                    match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
                        Ok(stream) => {
                            reset_on_close(&stream);
                            completed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("connector thread");
    }
    Flood {
        completed: completed.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}

/// Closes with RST: tens of thousands of client sockets in TIME_WAIT
/// would exhaust the ephemeral ports and slow every later connect().
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Busy threads on every CPU until dropped (or `limit` passes, whichever
/// comes first).
pub struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl CpuHog {
    pub fn start(limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let deadline = Instant::now() + limit;
        let threads = (0..cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        for i in 0..10_000u64 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Moves the server end of `pair` into the caller's (host) namespace with
/// its IPv4 address, for an agent that runs there. Deleting the client
/// namespace still removes both ends.
pub fn server_end_to_host(pair: &VethPair) -> Result<(), String> {
    ip(&[
        "-n",
        &pair.server_ns,
        "link",
        "set",
        &pair.server_if,
        "netns",
        "1",
    ])?;
    ip(&[
        "addr",
        "add",
        &format!("{}/24", pair.server_v4),
        "dev",
        &pair.server_if,
    ])?;
    ip(&["link", "set", &pair.server_if, "up"])
}
