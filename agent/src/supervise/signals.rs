//! SIGINT and SIGTERM from the first instant of `selfops run`.
//!
//! `defer` blocks both before anything else happens, so one that arrives
//! early stays pending instead of killing the agent; `listen` installs the
//! handlers and then unblocks them, which delivers a pending one. Start-up
//! checks the request between steps, so a SIGTERM during start-up still
//! detaches what was attached and exits 0. (Threads started in between —
//! the runtime's workers — keep both blocked, so the handler runs on the
//! agent's main thread; the agent starts no other programs, which would
//! inherit the mask.)

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

/// Blocks SIGINT and SIGTERM in the calling thread and in the threads it
/// starts from now on, until `listen`.
pub fn defer() {
    set_mask(libc::SIG_BLOCK);
}

fn set_mask(how: libc::c_int) {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before
    // use; pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Whether (and by which signal) the agent was asked to stop.
#[derive(Debug, Clone)]
pub struct StopRequest {
    rx: watch::Receiver<Option<&'static str>>,
}

impl StopRequest {
    /// The signal's name once one arrived.
    pub fn requested(&self) -> Option<&'static str> {
        *self.rx.borrow()
    }

    pub async fn wait(&mut self) -> &'static str {
        match self.rx.wait_for(Option::is_some).await {
            Ok(name) => name.unwrap_or("signal"),
            // The listener is gone (runtime shutting down): no request.
            Err(_) => std::future::pending().await,
        }
    }

    /// A request that never comes, for tests.
    pub fn never() -> (watch::Sender<Option<&'static str>>, Self) {
        let (tx, rx) = watch::channel(None);
        (tx, Self { rx })
    }
}

/// Installs the handlers (inside the runtime), unblocks the signals in the
/// calling thread and returns the request a listener task sets.
pub fn listen() -> std::io::Result<StopRequest> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    set_mask(libc::SIG_UNBLOCK);
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!("{name}: stopping");
        let _ = tx.send(Some(name));
    });
    Ok(StopRequest { rx })
}
