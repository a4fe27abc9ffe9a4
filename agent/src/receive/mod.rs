//! The OTLP receiver: OTLP/gRPC and OTLP/HTTP from instrumented
//! applications on the node, so that one agent replaces an agent beside a
//! Collector.
//!
//! Wiring (in the agent):
//!
//! ```ignore
//! let metrics = ReceiverMetrics::register(&mut registry);
//! let (tx, rx) = tokio::sync::mpsc::channel::<OtlpBatch>(64);   // rx: the pipeline
//! let resource_of: ResourceLookup = Arc::new(move |pid| table.resource_attributes(pid));
//! tokio::spawn(receive::run(config.receivers.otlp, tx, resource_of, metrics, stop));
//! ```
//!
//! Flow: each accepted connection (at most `accept::MAX_CONNECTIONS` open)
//! is attributed to the process owning the peer socket (`attribute`), whose
//! resource attributes are fetched once through `resource_of`; TLS is
//! handshaken when configured. Each export request is decoded (`decode`;
//! gzip, protobuf or OTLP/JSON, within `max_request_bytes`), stripped of
//! items no backend can use (reported back as partial success), given the
//! peer's resource attributes where the SDK did not set them (`enrich`) and
//! `try_send`-ed to the pipeline. A full pipeline answers
//! `RESOURCE_EXHAUSTED` with a `RetryInfo` (gRPC) or 429 with
//! `Retry-After` (HTTP), a closed one `UNAVAILABLE` / 503. Every request
//! and item is counted by outcome (`metrics`).

mod accept;
pub mod attribute;
pub mod config;
pub mod decode;
pub mod enrich;
mod grpc;
mod http;
mod intake;
pub mod metrics;
mod rpc_status;
#[cfg(test)]
mod tests;
mod tls;

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, watch},
};

pub use config::{ProtocolConfig, ReceiverConfig, ServerTlsConfig};
pub use decode::{DecodeError, Signal, decode_http};
pub use metrics::ReceiverMetrics;
pub use tls::TlsError;

use crate::export::OtlpBatch;

/// The resource attributes of a process, by pid (`None` when unknown).
/// Called once per connection, on a blocking thread.
pub type ResourceLookup = Arc<dyn Fn(u32) -> Option<Vec<KeyValue>> + Send + Sync>;

/// Why the receiver could not run. Each message names the config key.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("receivers.otlp.{key}.endpoint {endpoint}: {source}")]
    Bind {
        key: &'static str,
        endpoint: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("receivers.otlp.grpc: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// How long in-flight requests get to finish after `shutdown`.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the receiver until `shutdown` completes, then stops accepting and
/// gives in-flight requests `DRAIN_TIMEOUT` to finish. Returns at once when
/// disabled (or with neither listener); fails if a listener cannot bind or
/// the TLS files cannot be loaded.
pub async fn run(
    config: ReceiverConfig,
    pipeline: mpsc::Sender<OtlpBatch>,
    resource_of: ResourceLookup,
    metrics: ReceiverMetrics,
    shutdown: impl Future,
) -> Result<(), ReceiverError> {
    let listeners = bind(&config).await?;
    serve(config, listeners, pipeline, resource_of, metrics, shutdown).await
}

/// The bound listeners (gRPC, HTTP) of a configuration.
pub struct Listeners {
    pub grpc: Option<TcpListener>,
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// The addresses bound (port 0 resolved), for tests and logs.
    pub fn addresses(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let address = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        (address(&self.grpc), address(&self.http))
    }
}

/// Binds the configured listeners (none when disabled).
pub async fn bind(config: &ReceiverConfig) -> Result<Listeners, ReceiverError> {
    async fn one(
        key: &'static str,
        protocol: Option<&ProtocolConfig>,
    ) -> Result<Option<TcpListener>, ReceiverError> {
        let Some(protocol) = protocol else {
            return Ok(None);
        };
        TcpListener::bind(protocol.endpoint)
            .await
            .map(Some)
            .map_err(|source| ReceiverError::Bind {
                key,
                endpoint: protocol.endpoint,
                source,
            })
    }
    if !config.enabled {
        return Ok(Listeners {
            grpc: None,
            http: None,
        });
    }
    Ok(Listeners {
        grpc: one("grpc", config.grpc.as_ref()).await?,
        http: one("http", config.http.as_ref()).await?,
    })
}

/// Serves already bound `listeners` (see `bind`) until `shutdown`.
pub async fn serve(
    config: ReceiverConfig,
    listeners: Listeners,
    pipeline: mpsc::Sender<OtlpBatch>,
    resource_of: ResourceLookup,
    metrics: ReceiverMetrics,
    shutdown: impl Future,
) -> Result<(), ReceiverError> {
    if listeners.grpc.is_none() && listeners.http.is_none() {
        return Ok(());
    }
    let tls = match &config.tls {
        Some(tls) => Some((
            tls::server_config(tls, b"h2")?,
            tls::server_config(tls, b"http/1.1")?,
        )),
        None => None,
    };
    let limit = config.max_request_bytes;
    let intake = intake::Intake::new(pipeline, metrics.clone());
    let attributor = Arc::new(attribute::Attributor::new(resource_of, metrics.clone()));
    let slots = Arc::new(Semaphore::new(accept::MAX_CONNECTIONS));
    let acceptor = |transport, tls: Option<Arc<rustls::ServerConfig>>| {
        Arc::new(accept::Acceptor {
            transport,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            attributor: attributor.clone(),
            slots: slots.clone(),
            metrics: metrics.clone(),
            idle_timeout: accept::IDLE_TIMEOUT,
        })
    };
    let (stop, stopped) = watch::channel(false);

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.grpc {
        let acceptor = acceptor(metrics::Transport::Grpc, tls.as_ref().map(|t| t.0.clone()));
        tasks.spawn(grpc_task(
            listener,
            acceptor,
            intake.clone(),
            limit,
            stopped.clone(),
        ));
    }
    if let Some(listener) = listeners.http {
        let acceptor = acceptor(metrics::Transport::Http, tls.as_ref().map(|t| t.1.clone()));
        let fut = http::serve(listener, acceptor, intake.clone(), limit, stopped.clone());
        tasks.spawn(async move {
            fut.await;
            Ok(())
        });
    }
    drop(intake);

    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => {}
        // A listener failed before the shutdown: stop the other.
        Some(joined) = tasks.join_next() => result = flatten(joined),
    }
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = flatten(joined) {
                tracing::warn!(%err, "receiver stopped with an error");
            }
        }
        // Connections still open hold their slot until they end.
        let _ = slots.acquire_many(accept::MAX_CONNECTIONS as u32).await;
    })
    .await;
    if drained.is_err() {
        tracing::debug!("receiver: in-flight requests cut short at shutdown");
    }
    tasks.abort_all();
    result
}

async fn grpc_task(
    listener: TcpListener,
    acceptor: Arc<accept::Acceptor>,
    intake: intake::Intake,
    limit: usize,
    stopped: watch::Receiver<bool>,
) -> Result<(), ReceiverError> {
    grpc::serve(listener, acceptor, intake, limit, stopped)
        .await
        .map_err(ReceiverError::Grpc)
}

fn flatten(
    joined: Result<Result<(), ReceiverError>, tokio::task::JoinError>,
) -> Result<(), ReceiverError> {
    match joined {
        Ok(result) => result,
        Err(err) => {
            tracing::warn!(%err, "receiver task ended abnormally");
            Ok(())
        }
    }
}
