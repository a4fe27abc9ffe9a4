//! The fleet server's one listener: OpAMP at /v1/opamp (WebSocket, or
//! HTTP POST polling) and the JSON API beside it.

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Request, State, rejection::BytesRejection},
    http::{
        StatusCode,
        header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE},
    },
    response::{IntoResponse as _, Response},
    routing::{get, post},
};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use selfops_proto::opamp::AgentToServer;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{api, listener::Capped, opamp::Fleet, session};

pub const OPAMP_PATH: &str = "/v1/opamp";

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest agent message or API body.
    pub max_message_bytes: usize,
    /// Open connections at once, WebSocket sessions included.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 << 20,
            max_connections: 4096,
        }
    }
}

#[derive(Clone)]
pub struct App {
    pub fleet: Arc<Fleet>,
    pub limits: Limits,
}

pub fn router(app: App) -> Router {
    let limit = app.limits.max_message_bytes;
    Router::new()
        .route(OPAMP_PATH, get(websocket).post(polling))
        .route("/v1/agents", get(api::agents))
        .route("/v1/summary", get(api::summary))
        .route("/v1/config", post(api::offer))
        .route("/v1/rollback", post(api::rollback))
        .route("/v1/rollout", get(api::rollout))
        .route("/metrics", get(api::metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let over = app
        .fleet
        .metrics
        .connections
        .get_or_create(&[("transport", "tcp"), ("outcome", "over_capacity")])
        .clone();
    let capped = Capped::new(listener, app.limits.max_connections, over);
    axum::serve(capped, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

/// The WebSocket handshake by hand; the session then frames messages
/// itself on the connection hyper hands over (`ws`).
async fn websocket(State(app): State<App>, mut request: Request) -> Response {
    let headers = request.headers();
    let upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY).filter(|_| upgrade) else {
        app.fleet.metrics.connection("websocket", "refused");
        return plain(StatusCode::BAD_REQUEST, "a WebSocket upgrade expected\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    let limit = app.limits.max_message_bytes;
    let fleet = app.fleet.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                fleet.metrics.connection("websocket", "accepted");
                session::run(TokioIo::new(upgraded), fleet, limit).await;
            }
            Err(err) => {
                fleet.metrics.connection("websocket", "failed");
                tracing::debug!(%err, "WebSocket upgrade");
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "handshake\n"))
}

/// HTTP polling: the body is a bare AgentToServer, the answer a bare
/// ServerToAgent (the body limit is applied by the extractor).
async fn polling(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let metrics = &app.fleet.metrics;
    metrics.connection("http", "polled");
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            metrics.reject(if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "read"
            });
            return rejection.into_response();
        }
    };
    let Ok(message) = AgentToServer::decode(body) else {
        metrics.reject("decode");
        return plain(StatusCode::BAD_REQUEST, "malformed AgentToServer\n");
    };
    let (_, answer) = app.fleet.handle(message, false).await;
    metrics.message("sent");
    (
        [(CONTENT_TYPE, "application/x-protobuf")],
        answer.encode_to_vec(),
    )
        .into_response()
}
