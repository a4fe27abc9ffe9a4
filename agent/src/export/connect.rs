//! The OTLP exporters' connector: TCP, then TLS with rustls for an
//! `https://` endpoint. One connector serves both transports (tonic's
//! channel and hyper's HTTP/1.1 pool), so both use the same rustls client
//! configuration as the control plane (`crate::tls`), differing only in
//! the ALPN they offer (`h2` or `http/1.1`). It is written on
//! tokio-rustls, already linked for the control plane, rather than pulled
//! in through hyper-rustls or tonic's TLS features: those would bring a
//! second way to load roots and certificates, and tonic's would make two
//! configurations of one endpoint.
//!
//! The endpoint's scheme decides, as with the OpenTelemetry Collector's
//! exporters: `https://` is TLS, `http://` is plain. A `tls` section with
//! an `http://` endpoint would never be used, so it is refused rather than
//! silently ignored.
//!
//! tonic's own TLS features must stay off: with them its channel would
//! refuse an `https://` URI it has no TLS settings for.

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use hyper::{
    Uri,
    rt::{Read, ReadBufCursor, Write},
};
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tower_service::Service;

use super::ExportError;
use crate::{config::OtlpConfig, tls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// ALPN offered over TLS by each transport.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// A `tower::Service<Uri>` giving a plain or a TLS stream.
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    tls: Option<Tls>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("tls_server_name", &self.tls.as_ref().map(|t| &t.name))
            .finish()
    }
}

/// Whether the connector makes TLS connections to `endpoint`.
pub fn over_tls(endpoint: &str) -> bool {
    endpoint.starts_with("https://")
}

impl Connector {
    /// The connector `config` asks for, offering `alpn` over TLS. Refuses
    /// TLS settings that cannot be used, naming the key.
    pub fn new(config: &OtlpConfig, alpn: &[u8]) -> Result<Self, ExportError> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(config.timeout));
        tcp.set_nodelay(true);
        let tls = match (over_tls(&config.endpoint), &config.tls) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ExportError::TlsWithPlainEndpoint {
                    endpoint: config.endpoint.clone(),
                });
            }
            (true, settings) => {
                let settings = settings.clone().unwrap_or_default();
                let invalid = |e: tls::TlsError| {
                    let (key, message) = e.keyed("export.otlp.tls");
                    ExportError::Tls { key, message }
                };
                let host = config
                    .endpoint
                    .parse::<Uri>()
                    .ok()
                    .and_then(|uri| uri.host().map(str::to_owned))
                    .ok_or_else(|| ExportError::InvalidEndpoint {
                        endpoint: config.endpoint.clone(),
                        reason: "no host".to_owned(),
                    })?;
                let client = tls::client_config(&settings, &[alpn]).map_err(invalid)?;
                let name = tls::server_name(&settings, &host).map_err(invalid)?;
                Some(Tls {
                    connector: TlsConnector::from(client),
                    name,
                })
            }
        };
        Ok(Self { tcp, tls })
    }
}

impl Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tcp = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tcp.await?;
            let Some(tls) = tls else {
                return Ok(Stream::Plain(tcp));
            };
            match tls.connector.connect(tls.name, tcp.into_inner()).await {
                Ok(stream) => Ok(Stream::Tls(Box::new(TokioIo::new(stream)))),
                Err(err) => Err(match rustls_error(&err) {
                    Some(rustls) => Box::new(TlsFailure(rustls.to_string())) as BoxError,
                    // Reset or closed mid-handshake: a transport error
                    // like any other.
                    None => Box::new(err),
                }),
            }
        })
    }
}

/// A handshake refused by either side (unknown issuer, name mismatch, a
/// client certificate missing or refused, …).
#[derive(Debug)]
pub struct TlsFailure(String);

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The TLS failure somewhere in `err`'s chain, if the error is one: a
/// refused handshake, or an alert the server sent after it (a TLS 1.3
/// server refuses a missing client certificate only once the client has
/// finished its side of the handshake). `over_tls`: whether the
/// connection was TLS; on one, an `InvalidData` I/O error comes from the
/// TLS layer (rustls reports a later alert as such an error, text only).
pub fn tls_failure(err: &(dyn std::error::Error + 'static), over_tls: bool) -> Option<String> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(failure) = err.downcast_ref::<TlsFailure>() {
            return Some(failure.0.clone());
        }
        if let Some(rustls) = err.downcast_ref::<rustls::Error>() {
            return Some(rustls.to_string());
        }
        // io::Error's `source` skips the error it wraps, and h2's error
        // has none: look inside both.
        let io = err
            .downcast_ref::<io::Error>()
            .or_else(|| err.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        if let Some(inner) = io.and_then(io::Error::get_ref) {
            if let Some(rustls) = inner.downcast_ref::<rustls::Error>() {
                return Some(rustls.to_string());
            }
            if let Some(failure) = inner.downcast_ref::<TlsFailure>() {
                return Some(failure.0.clone());
            }
        }
        if let Some(io) = io
            && over_tls
            && io.kind() == io::ErrorKind::InvalidData
        {
            return Some(match io.get_ref() {
                Some(inner) => inner.to_string(),
                None => io.to_string(),
            });
        }
        next = err.source();
    }
    None
}

/// A connection to the collector.
#[derive(Debug)]
pub enum Stream {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS session is large, a plain stream small.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(tcp) => tcp.connected(),
            Stream::Tls(tls) => {
                let (tcp, session) = tls.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(ALPN_H2) {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
}
