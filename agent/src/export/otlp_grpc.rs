//! OTLP/gRPC: the generated tonic clients of opentelemetry-proto over one
//! lazily connected channel (TLS for `https://`, see `connect`).
//!
//! opentelemetry-otlp's exporters are not used: their SpanExporter carries
//! one Resource per exporter, while every process here is its own resource,
//! so requests are built from the proto types and sent with tonic directly.

use std::{sync::Arc, time::Duration};

use opentelemetry_proto::tonic::collector::{
    logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
    metrics::v1::{ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient},
    profiles::v1development::{
        ExportProfilesServiceRequest, profiles_service_client::ProfilesServiceClient,
    },
    trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
};
use tonic::{
    codec::CompressionEncoding,
    metadata::{AsciiMetadataKey, AsciiMetadataValue},
    transport::{Channel, Endpoint},
};

use super::{
    ExportError,
    connect::{ALPN_H2, Connector, over_tls, tls_failure},
    retry::{Attempt, classify_grpc, tls_attempt},
    sink::PartialSuccess,
};
use crate::config::OtlpConfig;

/// Validated settings; `connect` needs the tokio runtime, so it happens in
/// the pipeline's future rather than in `start`.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// As configured, for error messages.
    name: Arc<str>,
    endpoint: Endpoint,
    connector: Connector,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    gzip: bool,
}

impl GrpcSettings {
    pub fn new(config: &OtlpConfig) -> Result<Self, ExportError> {
        let invalid = |reason: String| ExportError::InvalidEndpoint {
            endpoint: config.endpoint.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(config.timeout)
            .tcp_nodelay(true)
            .user_agent(super::USER_AGENT)
            .map_err(|e| invalid(e.to_string()))?;
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| {
                let invalid = |reason: String| ExportError::InvalidHeader {
                    name: name.clone(),
                    reason,
                };
                let key = AsciiMetadataKey::from_bytes(name.as_bytes())
                    .map_err(|e| invalid(e.to_string()))?;
                let value = AsciiMetadataValue::try_from(value.as_str())
                    .map_err(|e| invalid(e.to_string()))?;
                Ok((key, value))
            })
            .collect::<Result<_, ExportError>>()?;
        Ok(Self {
            name: Arc::from(config.endpoint.as_str()),
            endpoint,
            connector: Connector::new(config, ALPN_H2)?,
            headers,
            gzip: config.gzip,
        })
    }

    pub fn connect(self) -> GrpcExporter {
        // Lazy: an unreachable collector at start-up is a retryable export
        // error later, not a start-up failure.
        let channel = self.endpoint.connect_with_connector_lazy(self.connector);
        let mut traces = TraceServiceClient::new(channel.clone());
        let mut metrics = MetricsServiceClient::new(channel.clone());
        let mut logs = LogsServiceClient::new(channel.clone());
        let mut profiles = ProfilesServiceClient::new(channel);
        if self.gzip {
            traces = traces
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
            metrics = metrics
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
            logs = logs
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
            profiles = profiles
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        GrpcExporter {
            endpoint: self.name,
            traces,
            metrics,
            logs,
            profiles,
            headers: self.headers,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcExporter {
    endpoint: Arc<str>,
    traces: TraceServiceClient<Channel>,
    metrics: MetricsServiceClient<Channel>,
    logs: LogsServiceClient<Channel>,
    profiles: ProfilesServiceClient<Channel>,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
}

impl GrpcExporter {
    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // grpc-timeout tells the server; the tokio timeout below enforces it.
        request.set_timeout(timeout);
        let metadata = request.metadata_mut();
        for (key, value) in &self.headers {
            metadata.insert(key.clone(), value.clone());
        }
        request
    }

    pub async fn export_traces(
        &self,
        message: &ExportTraceServiceRequest,
        timeout: Duration,
    ) -> Attempt {
        // Clients share the channel; a clone is a handle, not a connection.
        let mut client = self.traces.clone();
        let request = self.request(message.clone(), timeout);
        finish(
            &self.endpoint,
            tokio::time::timeout(timeout, client.export(request)).await,
        )
    }

    pub async fn export_metrics(
        &self,
        message: &ExportMetricsServiceRequest,
        timeout: Duration,
    ) -> Attempt {
        let mut client = self.metrics.clone();
        let request = self.request(message.clone(), timeout);
        finish(
            &self.endpoint,
            tokio::time::timeout(timeout, client.export(request)).await,
        )
    }

    pub async fn export_profiles(
        &self,
        message: &ExportProfilesServiceRequest,
        timeout: Duration,
    ) -> Attempt {
        let mut client = self.profiles.clone();
        let request = self.request(message.clone(), timeout);
        finish(
            &self.endpoint,
            tokio::time::timeout(timeout, client.export(request)).await,
        )
    }

    pub async fn export_logs(
        &self,
        message: &ExportLogsServiceRequest,
        timeout: Duration,
    ) -> Attempt {
        let mut client = self.logs.clone();
        let request = self.request(message.clone(), timeout);
        finish(
            &self.endpoint,
            tokio::time::timeout(timeout, client.export(request)).await,
        )
    }
}

/// The outcome of one call to `endpoint`.
pub fn finish<R: PartialSuccess>(
    endpoint: &str,
    result: Result<Result<tonic::Response<R>, tonic::Status>, tokio::time::error::Elapsed>,
) -> Attempt {
    match result {
        Ok(Ok(response)) => {
            let (rejected, message) = response.into_inner().partial_success();
            Attempt::Delivered { rejected, message }
        }
        Ok(Err(status)) => match tls_failure(&status, over_tls(endpoint)) {
            Some(failure) => tls_attempt(endpoint, &failure),
            None => classify_grpc(&status),
        },
        Err(_) => Attempt::Retryable {
            kind: "grpc timeout".to_owned(),
            detail: "no response within the export timeout".to_owned(),
            delay: None,
        },
    }
}
