//! OTLP/HTTP with binary protobuf: `POST <endpoint>/v1/traces`,
//! `/v1/metrics`, `/v1/logs` and `/v1development/profiles` over hyper's pooled HTTP/1.1 client, over
//! TLS for `https://` (see `connect`).

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Uri,
    header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};
use prost::Message;

use super::{
    ExportError,
    connect::{ALPN_HTTP1, Connector, over_tls, tls_failure},
    retry::{Attempt, RpcStatus, classify_http, parse_retry_after, tls_attempt},
    sink::PartialSuccess,
};
use crate::config::OtlpConfig;

pub const PROTOBUF: &str = "application/x-protobuf";

/// Response bodies are small protobuf messages; anything bigger is not
/// worth reading.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct HttpExporter {
    /// As configured, for error messages.
    endpoint: Arc<str>,
    client: Client<Connector, Full<Bytes>>,
    traces_uri: Uri,
    metrics_uri: Uri,
    logs_uri: Uri,
    profiles_uri: Uri,
    headers: HeaderMap,
    gzip: bool,
}

impl HttpExporter {
    pub fn new(config: &OtlpConfig) -> Result<Self, ExportError> {
        let base = config.endpoint.trim_end_matches('/');
        let uri = |path: &str| {
            format!("{base}{path}")
                .parse::<Uri>()
                .map_err(|e| ExportError::InvalidEndpoint {
                    endpoint: config.endpoint.clone(),
                    reason: e.to_string(),
                })
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let invalid = |reason: String| ExportError::InvalidHeader {
                name: name.clone(),
                reason,
            };
            let key =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
            let value = HeaderValue::from_str(value).map_err(|e| invalid(e.to_string()))?;
            headers.insert(key, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
        headers.insert(
            hyper::header::USER_AGENT,
            HeaderValue::from_static(super::USER_AGENT),
        );
        if config.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let connector = Connector::new(config, ALPN_HTTP1)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            endpoint: Arc::from(config.endpoint.as_str()),
            client,
            traces_uri: uri("/v1/traces")?,
            metrics_uri: uri("/v1/metrics")?,
            logs_uri: uri("/v1/logs")?,
            // The path the Collector's OTLP receiver serves profiles on
            // while the signal is in development.
            profiles_uri: uri("/v1development/profiles")?,
            headers,
            gzip: config.gzip,
        })
    }

    pub fn traces_uri(&self) -> &Uri {
        &self.traces_uri
    }

    pub fn metrics_uri(&self) -> &Uri {
        &self.metrics_uri
    }

    pub fn logs_uri(&self) -> &Uri {
        &self.logs_uri
    }

    pub fn profiles_uri(&self) -> &Uri {
        &self.profiles_uri
    }

    /// The request body: protobuf, gzipped when configured. Done once per
    /// batch, not per attempt.
    pub fn encode<M: Message>(&self, message: &M) -> std::io::Result<Bytes> {
        let raw = message.encode_to_vec();
        if !self.gzip {
            return Ok(raw.into());
        }
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(raw.len() / 4),
            flate2::Compression::default(),
        );
        encoder.write_all(&raw)?;
        Ok(encoder.finish()?.into())
    }

    /// One POST. `R` is the signal's response message, read for partial
    /// success.
    pub async fn post<R: PartialSuccess + Message + Default>(
        &self,
        uri: &Uri,
        body: Bytes,
        timeout: Duration,
    ) -> Attempt {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = self.headers.clone();
        match tokio::time::timeout(timeout, self.round_trip::<R>(request)).await {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Retryable {
                kind: "http timeout".to_owned(),
                detail: "no response within the export timeout".to_owned(),
                delay: None,
            },
        }
    }

    async fn round_trip<R: PartialSuccess + Message + Default>(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Attempt {
        let response = match self.client.request(request).await {
            Ok(response) => response,
            // Refused connections and servers that hang up without an
            // answer are both worth another try.
            Err(err) => {
                if let Some(failure) = tls_failure(&err, over_tls(&self.endpoint)) {
                    return tls_attempt(&self.endpoint, &failure);
                }
                let kind = if err.is_connect() {
                    "http connect"
                } else {
                    "http transport"
                };
                return Attempt::Retryable {
                    kind: kind.to_owned(),
                    detail: error_chain(&err),
                    delay: None,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = match Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            // The status line already decided the outcome; a lost body only
            // loses the partial-success detail.
            Err(_) => Bytes::new(),
        };
        if status.is_success() {
            let (rejected, message) =
                R::decode(body).map_or((0, String::new()), |r| r.partial_success());
            return Attempt::Delivered { rejected, message };
        }
        let detail = match RpcStatus::decode(body.clone()) {
            Ok(rpc) if !rpc.message.is_empty() => rpc.message,
            _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        };
        classify_http(status.as_u16(), retry_after, detail)
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
