//! Accepting connections for either transport: a bounded number open at
//! once, each attributed to its peer's process and (optionally) wrapped in
//! TLS before the protocol sees it, and closed when idle too long.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::{Instant, Sleep},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{
    attribute::Attributor,
    metrics::{ReceiverMetrics, Transport, TransportLabels},
};

/// Connections open at once on one listener; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Time for the TLS handshake and the attribution of a new connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no byte in either direction for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// What is known of a connection's peer, for as long as it lasts.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The peer process's resource attributes, when it was found.
    pub resource: Option<Arc<Vec<KeyValue>>>,
}

/// Plain TCP or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection, holding its slot under `MAX_CONNECTIONS`.
pub struct Conn {
    io: Io,
    pub info: ConnInfo,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    _slot: Slot,
}

/// Frees the connection's slot and its place in the open gauge on drop.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Shared by the accept loop and every connection task of one listener.
pub struct Acceptor {
    pub transport: Transport,
    pub tls: Option<TlsAcceptor>,
    pub attributor: Arc<Attributor>,
    /// Slots of every open connection (both listeners share it).
    pub slots: Arc<Semaphore>,
    pub metrics: ReceiverMetrics,
    pub idle_timeout: Duration,
}

/// Accepts until `shutdown` turns true, handing each ready connection to
/// `handle`.
pub async fn accept_loop<F>(
    listener: TcpListener,
    acceptor: Arc<Acceptor>,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(Conn) + Clone + Send + Sync + 'static,
{
    let labels = TransportLabels {
        transport: acceptor.transport.as_str(),
    };
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(%err, transport = acceptor.transport.as_str(), "receiver: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = acceptor.slots.clone().try_acquire_owned() else {
            acceptor
                .metrics
                .connections_refused
                .get_or_create(&labels)
                .inc();
            drop(tcp);
            continue;
        };
        let open = acceptor.metrics.connections.get_or_create(&labels).clone();
        open.inc();
        let slot = Slot {
            _permit: permit,
            open,
        };
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let ready =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, prepare(&acceptor, tcp, peer)).await;
            match ready {
                Ok(Ok((io, info))) => {
                    tracing::debug!(
                        peer = %info.peer,
                        local = %info.local,
                        attributed = info.resource.is_some(),
                        "receiver: connection open"
                    );
                    handle(Conn {
                        io,
                        info,
                        idle: Box::pin(tokio::time::sleep(acceptor.idle_timeout)),
                        idle_timeout: acceptor.idle_timeout,
                        _slot: slot,
                    })
                }
                Ok(Err(err)) => tracing::debug!(%err, %peer, "receiver: connection set-up failed"),
                Err(_) => tracing::debug!(%peer, "receiver: connection set-up timed out"),
            }
        });
    }
}

/// Completes once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Attribution and TLS handshake, side by side.
async fn prepare(
    acceptor: &Acceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> io::Result<(Io, ConnInfo)> {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr()?;
    let handshake = async {
        match &acceptor.tls {
            Some(tls) => Ok(Io::Tls(Box::new(tls.accept(tcp).await?))),
            None => Ok::<_, io::Error>(Io::Plain(tcp)),
        }
    };
    let (resource, io) = tokio::join!(acceptor.attributor.attribute(peer, local), handshake);
    Ok((
        io?,
        ConnInfo {
            peer,
            local,
            resource,
        },
    ))
}

impl Conn {
    /// Pushes the idle deadline back after progress.
    fn progressed(&mut self) {
        let next = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(next);
    }

    /// When nothing moves: an error once the idle deadline has passed.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.idle.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "receiver connection idle too long",
        ))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        match polled {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}
