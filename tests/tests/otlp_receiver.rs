//! The agent as the node's collector: a Python application instrumented
//! with the OpenTelemetry SDK (from PyPI) sends spans, metrics and logs to
//! the agent's OTLP receiver over gRPC and over HTTP/protobuf; OTTL
//! statements redact and reduce them, a filter drops health checks, a
//! routing rule sends one tenant to a second exporter, and two downstream
//! OTLP receivers (tonic gRPC servers in this test) get the result with the
//! sender's process resource added. The same statements apply to the
//! kernel-made spans of curl → nginx.

use std::{
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            ExportLogsServiceRequest, ExportLogsServiceResponse,
            logs_service_server::{LogsService, LogsServiceServer},
        },
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::metric::Data,
    resource::v1::Resource,
};
use selfops_tests::{
    Agent, free_port, one_agent_at_a_time, privileged, python, scratch_dir, services::nginx,
    spans::read_spans, wait_for, workspace_root,
};
use sha2::{Digest, Sha256};
use tonic::codec::CompressionEncoding;

/// What one downstream receiver got.
#[derive(Debug, Default)]
struct Seen {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
}

#[derive(Clone, Default)]
struct Downstream(Arc<Mutex<Seen>>);

#[tonic::async_trait]
impl TraceService for Downstream {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().traces.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Downstream {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Downstream {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().logs.push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

impl Downstream {
    fn start(runtime: &tokio::runtime::Runtime) -> (Self, SocketAddr) {
        let downstream = Self::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(downstream.clone())
                    .accept_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                MetricsServiceServer::new(downstream.clone())
                    .accept_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                LogsServiceServer::new(downstream.clone())
                    .accept_compressed(CompressionEncoding::Gzip),
            );
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        runtime.spawn(async move { router.serve_with_incoming(incoming).await });
        (downstream, addr)
    }

    /// The resources of everything received from service `checkout`.
    fn checkout(&self) -> Checkout {
        let seen = self.0.lock().unwrap();
        let mut out = Checkout::default();
        for request in &seen.traces {
            for rs in &request.resource_spans {
                if is_checkout(&rs.resource) {
                    out.resources.push(rs.resource.clone().unwrap_or_default());
                    for ss in &rs.scope_spans {
                        for span in &ss.spans {
                            out.spans.push((span.name.clone(), span.attributes.clone()));
                        }
                    }
                }
            }
        }
        for request in &seen.metrics {
            for rm in &request.resource_metrics {
                if is_checkout(&rm.resource) {
                    out.resources.push(rm.resource.clone().unwrap_or_default());
                    for sm in &rm.scope_metrics {
                        for metric in &sm.metrics {
                            if let Some(Data::Sum(sum)) = &metric.data {
                                for point in &sum.data_points {
                                    out.points
                                        .push((metric.name.clone(), point.attributes.clone()));
                                }
                            }
                        }
                    }
                }
            }
        }
        for request in &seen.logs {
            for rl in &request.resource_logs {
                if is_checkout(&rl.resource) {
                    out.resources.push(rl.resource.clone().unwrap_or_default());
                    for sl in &rl.scope_logs {
                        for record in &sl.log_records {
                            out.logs.push(record.body.clone().and_then(|b| b.value));
                        }
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Default)]
struct Checkout {
    resources: Vec<Resource>,
    spans: Vec<(String, Vec<KeyValue>)>,
    points: Vec<(String, Vec<KeyValue>)>,
    logs: Vec<Option<Value>>,
}

impl Checkout {
    fn complete(&self) -> bool {
        !self.spans.is_empty() && !self.points.is_empty() && !self.logs.is_empty()
    }
}

fn is_checkout(resource: &Option<Resource>) -> bool {
    resource
        .as_ref()
        .is_some_and(|r| string(&r.attributes, "service.name") == Some("checkout"))
}

fn value<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match value(attributes, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn config(grpc: u16, http: u16, main: SocketAddr, tenant: SocketAddr) -> String {
    format!(
        r#"receivers:
  otlp:
    grpc: {{ endpoint: '127.0.0.1:{grpc}' }}
    http: {{ endpoint: '127.0.0.1:{http}' }}
export:
  batch_timeout: 200ms
  otlp: {{ endpoint: 'http://{main}', protocol: grpc, retry_for: 5s }}
exporters:
  otlp/tenant: {{ endpoint: 'http://{tenant}', protocol: grpc, retry_for: 5s }}
processors:
  transform/redact:
    error_mode: ignore
    trace_statements:
      - context: span
        statements:
          - set(attributes["card"], SHA256(attributes["card"])) where attributes["card"] != nil
          - delete_key(attributes, "password")
          - set(attributes["edge"], "selfops")
    metric_statements:
      - context: datapoint
        statements:
          - keep_keys(attributes, ["http.method"])
    log_statements:
      - context: log
        statements:
          - set(body, Substring(body, 0, 24)) where IsString(body) and Len(body) > 24
  filter/health:
    error_mode: ignore
    traces:
      span:
        - attributes["url.path"] == "/healthz"
  routing/tenant:
    table:
      - condition: resource.attributes["tenant"] == "acme"
        exporters: [otlp/tenant]
pipelines:
  traces:
    processors: [transform/redact, filter/health, routing/tenant]
    exporters: [file, otlp]
  metrics:
    processors: [transform/redact, routing/tenant]
    exporters: [file, otlp]
  logs:
    processors: [transform/redact, routing/tenant]
    exporters: [file, otlp]
"#
    )
}

/// Runs the SDK application; returns its pid.
fn send(python: &std::path::Path, protocol: &str, endpoint: &str, tenant: &str) -> u32 {
    let script = workspace_root().join("tests/python/otlp_sender.py");
    let out = Command::new(python)
        .arg(&script)
        .args([protocol, endpoint, tenant])
        .output()
        .expect("run the SDK application");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{protocol} sender failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim().parse().expect("the sender prints its pid")
}

fn check(got: &Checkout, tenant: &str, pid: u32) {
    for resource in &got.resources {
        let attrs = &resource.attributes;
        assert_eq!(string(attrs, "tenant"), Some(tenant), "{resource:?}");
        // Added by the agent from the peer socket's process; what the SDK
        // set (service.name) is kept.
        assert_eq!(
            value(attrs, "process.pid"),
            Some(&Value::IntValue(i64::from(pid))),
            "{resource:?}"
        );
        assert_eq!(string(attrs, "service.name"), Some("checkout"));
        assert!(
            string(attrs, "process.executable.name").is_some_and(|n| n.starts_with("python")),
            "{resource:?}"
        );
    }
    let names: Vec<&str> = got.spans.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["charge"], "the /healthz span is dropped");
    let charge = &got.spans[0].1;
    let hashed = format!("{:x}", Sha256::digest(b"4111111111111111"));
    assert_eq!(string(charge, "card"), Some(hashed.as_str()));
    assert_eq!(value(charge, "password"), None);
    assert_eq!(string(charge, "edge"), Some("selfops"));
    // The SDK exports its cumulative counter at the flush and again at
    // shutdown.
    for (name, attributes) in &got.points {
        let keys: Vec<&str> = attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            (name.as_str(), keys.as_slice()),
            ("orders", ["http.method"].as_slice())
        );
    }
    assert_eq!(
        got.logs,
        [Some(Value::StringValue("payment declined: xxxxxx".into()))]
    );
}

#[test]
fn sdk_signals_are_received_attributed_transformed_and_routed() {
    let test = "sdk_signals_are_received_attributed_transformed_and_routed";
    if !privileged(test) {
        return;
    }
    let Some(python) = python::with(
        test,
        "opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http",
    ) else {
        return;
    };
    let _turn = one_agent_at_a_time();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (main, main_addr) = Downstream::start(&runtime);
    let (tenant, tenant_addr) = Downstream::start(&runtime);
    let (grpc, http) = (free_port(), free_port());
    let agent = Agent::start("otlp-receiver", &config(grpc, http, main_addr, tenant_addr));
    let dir = scratch_dir("otlp-receiver-nginx");
    let server = nginx(&dir);

    let grpc_pid = send(
        &python,
        "grpc",
        &format!("http://127.0.0.1:{grpc}"),
        "public",
    );
    let http_pid = send(&python, "http", &format!("http://127.0.0.1:{http}"), "acme");
    for path in ["/healthz", "/index.html"] {
        let status = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{}{path}", server.port))
            .status()
            .expect("curl");
        assert!(status.success());
    }

    let done = wait_for(Duration::from_secs(20), || {
        (main.checkout().complete() && tenant.checkout().complete()).then_some(())
    });
    let (got_main, got_tenant) = (main.checkout(), tenant.checkout());
    assert!(
        done.is_some(),
        "main: {got_main:?}\ntenant: {got_tenant:?}\n{}",
        agent.log()
    );
    check(&got_main, "public", grpc_pid);
    check(&got_tenant, "acme", http_pid);

    // The kernel-made spans of curl → nginx went through the same
    // statements and filter (the file exporter writes what leaves them).
    let traces = agent.dir.join("data/traces.jsonl");
    let nginx_spans = wait_for(Duration::from_secs(20), || {
        let spans: Vec<_> = read_spans(&traces)
            .into_iter()
            .filter(|s| s.attr_int("server.port") == Some(i64::from(server.port)))
            .collect();
        (!spans.is_empty()).then_some(spans)
    })
    .expect("nginx spans in traces.jsonl");
    assert!(
        nginx_spans
            .iter()
            .all(|s| s.attr_str("url.path") != Some("/healthz")),
        "a /healthz span was not dropped"
    );
    assert!(
        nginx_spans
            .iter()
            .any(|s| s.attr_str("url.path") == Some("/index.html")
                && s.attr_str("edge") == Some("selfops")),
        "{nginx_spans:?}"
    );

    let metrics = agent.get("/metrics");
    for wanted in [
        r#"selfops_pipeline_filtered_total{signal="traces",processor="filter/health"}"#,
        r#"selfops_receiver_requests_total"#,
    ] {
        assert!(metrics.contains(wanted), "{wanted} missing:\n{metrics}");
    }
    agent.stop(libc::SIGTERM);
}
