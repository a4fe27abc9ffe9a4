//! OTLP over TLS against real receivers on loopback: a tonic TraceService
//! and an axum `/v1/traces`, each behind a rustls server whose CA, server
//! and client certificates are made here. Delivery with the configured CA
//! (and with a client certificate when the server requires one), failures
//! that say why and are counted (`reason="tls"`), and the TLS settings the
//! config check refuses.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use prometheus_client::registry::Registry;
use prost::Message as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::mpsc,
};
use tonic::codec::CompressionEncoding;

use super::{
    ExportError, ExportOptions, ExportPipeline,
    metrics::{DropReason, SINK_OTLP, SinkLabels, TRACES},
    otlp_grpc::GrpcSettings,
    otlp_http::HttpExporter,
    retry::{Attempt, TLS_KIND},
    test_support::{resource, span, temp_dir},
};
use crate::{
    config::{Config, ExportConfig, OtlpConfig, OtlpProtocol},
    signal::Signal,
    tls::TlsConfig,
};

const PROTOCOLS: [OtlpProtocol; 2] = [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf];

/// A CA, a server certificate it signed (for 127.0.0.1 and
/// `collector.test`), a client certificate it signed, and a second CA
/// that signed nothing here; all as PEM files in `dir`.
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = temp_dir(&format!("tls-{tag}"));
        let ca = issuer("selfops test CA");
        let other = issuer("some other CA");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap();
        };
        write("ca.pem", &ca.pem());
        write("other-ca.pem", &other.pem());
        let (server, server_key) = leaf(
            &ca,
            &["127.0.0.1", "collector.test"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.pem", &server.pem());
        write("server-key.pem", &server_key.serialize_pem());
        let (client, client_key) = leaf(&ca, &["agent.test"], ExtendedKeyUsagePurpose::ClientAuth);
        write("client.pem", &client.pem());
        write("client-key.pem", &client_key.serialize_pem());
        write("empty.pem", "no certificate here\n");
        Self {
            ca: ca.der().clone(),
            server_chain: vec![server.der().clone()],
            server_key: dir.join("server-key.pem"),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// What the agent trusts: the test CA, with or without its client
    /// certificate.
    fn client(&self, client_cert: bool) -> TlsConfig {
        TlsConfig {
            ca_file: Some(self.path("ca.pem")),
            cert_file: client_cert.then(|| self.path("client.pem")),
            key_file: client_cert.then(|| self.path("client-key.pem")),
            server_name: None,
        }
    }

    /// The receiver's rustls configuration; with `require_client_cert`,
    /// only clients with a certificate from the test CA are let in.
    fn server(&self, require_client_cert: bool, alpn: &[u8]) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        let mut config = builder
            .with_single_cert(self.server_chain.clone(), key)
            .unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn issuer(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, KeyPair) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, "leaf");
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert, key)
}

/// Accepts TCP on loopback and hands on the connections whose TLS
/// handshake succeeded; the others are counted in `refused`.
async fn tls_accept(
    config: Arc<ServerConfig>,
) -> (
    SocketAddr,
    mpsc::Receiver<ServerIo>,
    Arc<Mutex<Vec<String>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let refused = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel(16);
    let seen = Arc::clone(&refused);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        let _ = tx.send(ServerIo(stream)).await;
                    }
                    Err(err) => seen.lock().unwrap().push(err.to_string()),
                }
            });
        }
    });
    (addr, rx, refused)
}

/// A server-side TLS connection, for tonic and axum.
struct ServerIo(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// axum's side of `tls_accept`.
struct TlsListener {
    addr: SocketAddr,
    connections: mpsc::Receiver<ServerIo>,
}

impl axum::serve::Listener for TlsListener {
    type Io = ServerIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ServerIo, SocketAddr) {
        match self.connections.recv().await {
            Some(io) => (io, self.addr),
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Counts the spans it is sent, over either protocol.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<usize>>,
}

impl Receiver {
    fn take(&self, request: &ExportTraceServiceRequest) {
        let n: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        *self.spans.lock().unwrap() += n;
    }

    fn spans(&self) -> usize {
        *self.spans.lock().unwrap()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_traces(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Vec<u8> {
    let mut raw = Vec::new();
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    if gzip {
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .unwrap();
    } else {
        raw.extend_from_slice(&body);
    }
    receiver.take(&ExportTraceServiceRequest::decode(raw.as_slice()).unwrap());
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// A receiver over TLS; its address and the handshakes it refused.
struct Server {
    addr: SocketAddr,
    receiver: Receiver,
    refused: Arc<Mutex<Vec<String>>>,
}

async fn server(pki: &Pki, protocol: OtlpProtocol, require_client_cert: bool) -> Server {
    let receiver = Receiver::default();
    let alpn: &[u8] = match protocol {
        OtlpProtocol::Grpc => b"h2",
        OtlpProtocol::HttpProtobuf => b"http/1.1",
    };
    let (addr, connections, refused) = tls_accept(pki.server(require_client_cert, alpn)).await;
    match protocol {
        OtlpProtocol::Grpc => {
            let router = tonic::transport::Server::builder().add_service(
                TraceServiceServer::new(receiver.clone())
                    .accept_compressed(CompressionEncoding::Gzip),
            );
            let incoming = futures_util::stream::unfold(connections, |mut rx| async move {
                rx.recv().await.map(|io| (Ok::<_, std::io::Error>(io), rx))
            });
            tokio::spawn(async move {
                router.serve_with_incoming(incoming).await.unwrap();
            });
        }
        OtlpProtocol::HttpProtobuf => {
            let app = axum::Router::new()
                .route("/v1/traces", post(http_traces))
                .with_state(receiver.clone());
            let listener = TlsListener { addr, connections };
            tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            });
        }
    }
    Server {
        addr,
        receiver,
        refused,
    }
}

fn otlp(endpoint: String, protocol: OtlpProtocol, tls: Option<TlsConfig>) -> OtlpConfig {
    OtlpConfig {
        endpoint,
        protocol,
        gzip: true,
        timeout: Duration::from_secs(5),
        headers: BTreeMap::new(),
        retry_for: Duration::from_secs(5),
        tls,
    }
}

/// One attempt of an empty traces request, as the sink makes it.
async fn attempt(config: &OtlpConfig) -> Attempt {
    let request = ExportTraceServiceRequest::default();
    let timeout = Duration::from_secs(5);
    match config.protocol {
        OtlpProtocol::Grpc => {
            let exporter = GrpcSettings::new(config).unwrap().connect();
            exporter.export_traces(&request, timeout).await
        }
        OtlpProtocol::HttpProtobuf => {
            let exporter = HttpExporter::new(config).unwrap();
            let body = exporter.encode(&request).unwrap();
            exporter
                .post::<ExportTraceServiceResponse>(exporter.traces_uri(), body, timeout)
                .await
        }
    }
}

/// Sends `n` spans through a pipeline exporting only to `config` and
/// waits until each is either delivered or dropped; returns the metrics.
async fn export_spans(config: OtlpConfig, n: u8) -> super::ExportMetrics {
    let dir = temp_dir("tls-pipeline");
    let export = ExportConfig {
        file: false,
        otlp: Some(config),
        queue_capacity: 100,
        batch_size: 100,
        batch_timeout: Duration::from_millis(20),
    };
    let options = ExportOptions {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..ExportOptions::default()
    };
    let mut registry = Registry::default();
    let (handle, pipeline) =
        ExportPipeline::start_with(&export, &dir, &mut registry, options).unwrap();
    let task = tokio::spawn(pipeline);
    let res = resource("svc", 7);
    for i in 0..n {
        handle.send(Signal::Span(span(&res, i, None)));
    }
    let metrics = handle.metrics().clone();
    let all = u64::from(n);
    let start = Instant::now();
    loop {
        let done = metrics.exported_count(TRACES, SINK_OTLP)
            + [
                DropReason::Tls,
                DropReason::ExportFailed,
                DropReason::RetriesExhausted,
            ]
            .into_iter()
            .map(|r| metrics.dropped_count(TRACES, r))
            .sum::<u64>();
        if done >= all {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "spans neither delivered nor dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handle.shutdown(Duration::from_secs(5)).await);
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    metrics
}

fn failures(metrics: &super::ExportMetrics) -> u64 {
    metrics
        .failures
        .get_or_create(&SinkLabels { sink: SINK_OTLP })
        .get()
}

/// The detail of a TLS failure (asserting the attempt is one).
fn tls_detail(attempt: Attempt) -> String {
    match attempt {
        Attempt::Permanent { kind, detail } if kind == TLS_KIND => detail,
        other => panic!("not a TLS failure: {other:?}"),
    }
}

#[tokio::test]
async fn delivers_over_grpc_tls_and_https_with_the_configured_ca() {
    let pki = Pki::new("deliver");
    for protocol in PROTOCOLS {
        let server = server(&pki, protocol, false).await;
        let endpoint = format!("https://{}", server.addr);
        let metrics = export_spans(otlp(endpoint, protocol, Some(pki.client(false))), 3).await;
        assert_eq!(metrics.exported_count(TRACES, SINK_OTLP), 3, "{protocol:?}");
        assert_eq!(server.receiver.spans(), 3, "{protocol:?}");
        assert_eq!(failures(&metrics), 0, "{protocol:?}");
        assert!(server.refused.lock().unwrap().is_empty(), "{protocol:?}");
    }
}

#[tokio::test]
async fn server_name_overrides_the_name_checked() {
    let pki = Pki::new("server-name");
    for protocol in PROTOCOLS {
        let server = server(&pki, protocol, false).await;
        // The certificate names collector.test; the endpoint is an address.
        let endpoint = format!("https://{}", server.addr);
        let mut tls = pki.client(false);
        tls.server_name = Some("collector.test".to_owned());
        let config = otlp(endpoint.clone(), protocol, Some(tls.clone()));
        assert!(
            matches!(attempt(&config).await, Attempt::Delivered { .. }),
            "{protocol:?}"
        );

        tls.server_name = Some("elsewhere.test".to_owned());
        let config = otlp(endpoint.clone(), protocol, Some(tls));
        let detail = tls_detail(attempt(&config).await);
        assert!(
            detail.starts_with(&format!(
                "OTLP export to {endpoint}: TLS: invalid peer certificate"
            )),
            "{protocol:?}: {detail}"
        );
        assert!(
            detail.contains("not valid for name \"elsewhere.test\""),
            "{protocol:?}: {detail}"
        );
    }
}

#[tokio::test]
async fn mtls_delivers_with_the_client_certificate_and_fails_counted_without() {
    let pki = Pki::new("mtls");
    for protocol in PROTOCOLS {
        let server = server(&pki, protocol, true).await;
        let endpoint = format!("https://{}", server.addr);

        let with_cert = otlp(endpoint.clone(), protocol, Some(pki.client(true)));
        let metrics = export_spans(with_cert, 2).await;
        assert_eq!(metrics.exported_count(TRACES, SINK_OTLP), 2, "{protocol:?}");
        assert_eq!(server.receiver.spans(), 2, "{protocol:?}");

        let without = otlp(endpoint.clone(), protocol, Some(pki.client(false)));
        let detail = tls_detail(attempt(&without).await);
        assert!(
            detail.starts_with(&format!("OTLP export to {endpoint}: TLS: ")),
            "{protocol:?}: {detail}"
        );
        assert!(
            detail.contains("CertificateRequired"),
            "{protocol:?}: {detail}"
        );

        let metrics = export_spans(without.clone(), 2).await;
        assert_eq!(metrics.exported_count(TRACES, SINK_OTLP), 0, "{protocol:?}");
        assert_eq!(
            metrics.dropped_count(TRACES, DropReason::Tls),
            2,
            "{protocol:?}"
        );
        assert_eq!(failures(&metrics), 1, "{protocol:?}");
        assert_eq!(
            metrics
                .retries
                .get_or_create(&SinkLabels { sink: SINK_OTLP })
                .get(),
            0,
            "{protocol:?}: TLS failures are not retried"
        );
        assert_eq!(server.receiver.spans(), 2, "{protocol:?}");
        assert!(!server.refused.lock().unwrap().is_empty(), "{protocol:?}");
    }
}

#[tokio::test]
async fn a_wrong_ca_fails_the_export_saying_why_and_is_counted() {
    let pki = Pki::new("wrong-ca");
    for protocol in PROTOCOLS {
        let server = server(&pki, protocol, false).await;
        let endpoint = format!("https://{}", server.addr);
        let mut tls = pki.client(false);
        tls.ca_file = Some(pki.path("other-ca.pem"));
        let config = otlp(endpoint.clone(), protocol, Some(tls));

        let detail = tls_detail(attempt(&config).await);
        assert_eq!(
            detail,
            format!("OTLP export to {endpoint}: TLS: invalid peer certificate: UnknownIssuer"),
            "{protocol:?}"
        );

        let metrics = export_spans(config, 3).await;
        assert_eq!(metrics.dropped_count(TRACES, DropReason::Tls), 3);
        assert_eq!(metrics.exported_count(TRACES, SINK_OTLP), 0);
        assert_eq!(failures(&metrics), 1, "{protocol:?}");
        assert_eq!(server.receiver.spans(), 0, "{protocol:?}");
    }
}

#[tokio::test]
async fn plain_http_to_a_tls_receiver_is_not_a_tls_failure() {
    // The scheme decides: http:// never starts a handshake.
    let pki = Pki::new("plain");
    let server = server(&pki, OtlpProtocol::HttpProtobuf, false).await;
    let config = otlp(
        format!("http://{}", server.addr),
        OtlpProtocol::HttpProtobuf,
        None,
    );
    match attempt(&config).await {
        Attempt::Retryable { kind, .. } => assert_ne!(kind, TLS_KIND),
        other => panic!("{other:?}"),
    }
}

/// The error the config check gives for `tls` (YAML flow mapping) with
/// `endpoint`.
fn config_error(endpoint: &str, tls: &str) -> String {
    let yaml = format!("export: {{ otlp: {{ endpoint: '{endpoint}', tls: {tls} }} }}");
    match Config::parse(&yaml, Path::new("agent.yaml")) {
        Ok(_) => panic!("accepted: {yaml}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn unusable_tls_settings_are_refused_naming_the_key() {
    let pki = Pki::new("config");
    let path = |name: &str| pki.path(name).display().to_string();
    let https = "https://collector.test:4317";
    for (endpoint, tls, wanted) in [
        (
            https,
            format!("{{ ca_file: '{}' }}", path("missing.pem")),
            "agent.yaml: export.otlp.tls.ca_file: ",
        ),
        (
            https,
            format!("{{ ca_file: '{}' }}", path("empty.pem")),
            "export.otlp.tls.ca_file: ",
        ),
        (
            https,
            format!(
                "{{ ca_file: '{}', key_file: '{}' }}",
                path("ca.pem"),
                path("client-key.pem")
            ),
            "export.otlp.tls.cert_file: give both `cert_file` and `key_file`, or neither",
        ),
        (
            https,
            format!(
                "{{ ca_file: '{}', cert_file: '{}' }}",
                path("ca.pem"),
                path("client.pem")
            ),
            "export.otlp.tls.key_file: give both",
        ),
        (
            https,
            format!(
                "{{ ca_file: '{}', cert_file: '{}', key_file: '{}' }}",
                path("ca.pem"),
                path("client.pem"),
                path("empty.pem")
            ),
            "export.otlp.tls.key_file: ",
        ),
        (
            https,
            format!(
                "{{ ca_file: '{}', server_name: 'not a name' }}",
                path("ca.pem")
            ),
            "export.otlp.tls.server_name: ",
        ),
        (
            "http://collector.test:4317",
            format!("{{ ca_file: '{}' }}", path("ca.pem")),
            "export.otlp.tls: set, but the endpoint",
        ),
        (https, "{ ca: x }".to_owned(), "export.otlp.tls"),
    ] {
        let err = config_error(endpoint, &tls);
        assert!(err.contains(wanted), "{tls}: {err}");
    }
    // What a file without a certificate says.
    let err = config_error(https, &format!("{{ ca_file: '{}' }}", path("empty.pem")));
    assert!(err.contains("no PEM certificate in it"), "{err}");

    // Usable settings pass the same check.
    let yaml = format!(
        "export: {{ otlp: {{ endpoint: '{https}', protocol: http_protobuf, tls: {{ ca_file: '{}', cert_file: '{}', key_file: '{}', server_name: collector.test }} }} }}",
        path("ca.pem"),
        path("client.pem"),
        path("client-key.pem")
    );
    let config = Config::parse(&yaml, Path::new("agent.yaml")).unwrap();
    let otlp = config.export.otlp.unwrap();
    assert_eq!(
        otlp.tls.as_ref().and_then(|t| t.server_name.as_deref()),
        Some("collector.test")
    );
    assert!(matches!(
        super::check(&ExportConfig {
            otlp: Some(otlp),
            ..ExportConfig::default()
        }),
        Ok(())
    ));

    // And the pipeline refuses what the check refuses.
    let mut tls = pki.client(false);
    tls.ca_file = Some(pki.path("empty.pem"));
    let export = ExportConfig {
        otlp: Some(otlp_config_for_refusal(tls)),
        ..ExportConfig::default()
    };
    let mut registry = Registry::default();
    match ExportPipeline::start(&export, &pki.dir, &mut registry) {
        Err(ExportError::Tls { key, .. }) => assert_eq!(key, "export.otlp.tls.ca_file"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("started"),
    }
}

fn otlp_config_for_refusal(tls: TlsConfig) -> OtlpConfig {
    otlp(
        "https://collector.test:4318".to_owned(),
        OtlpProtocol::HttpProtobuf,
        Some(tls),
    )
}
