//! The self-telemetry HTTP endpoint: GET /metrics, /processes, and the
//! probes /healthz (live: no supervised task has failed) and /readyz
//! (ready: started, no task failed, not shutting down), 200 or 503 with
//! the reason.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;

use super::{
    KernelCounters, Metrics,
    metrics::{ComponentLabel, resident_memory_bytes},
};
use crate::{
    process::{ResourceBuilder, SharedTable},
    signal::AttrValue,
    supervise::Health,
};

pub struct TelemetryState {
    pub metrics: Arc<Metrics>,
    pub table: SharedTable,
    pub resources: Arc<ResourceBuilder>,
    pub kernel: KernelCounters,
    pub health: Arc<Health>,
}

impl TelemetryState {
    /// Brings scrape-time values up to date: kernel loss counters, memory,
    /// component health, table sizes.
    fn refresh(&self) {
        self.kernel.refresh();
        if let Some(rss) = resident_memory_bytes() {
            self.metrics
                .resident_memory_bytes
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        for component in self.health.components() {
            self.metrics
                .component_healthy
                .get_or_create(&ComponentLabel {
                    component: component.name,
                })
                .set(i64::from(component.healthy()));
        }
        let table = self.table.read();
        self.metrics.process_table_size.set(table.len() as i64);
        self.metrics
            .process_table_exited
            .set(table.exited_len() as i64);
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<TelemetryState>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/processes", get(processes))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app).await
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn metrics(State(state): State<Arc<TelemetryState>>) -> Response {
    state.refresh();
    match state.metrics.encode() {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz(State(state): State<Arc<TelemetryState>>) -> Response {
    probe(state.health.live(), "ok")
}

async fn readyz(State(state): State<Arc<TelemetryState>>) -> Response {
    probe(state.health.ready(), "ready")
}

fn probe(result: Result<(), String>, ok: &'static str) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, format!("{ok}\n")).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

#[derive(Serialize)]
struct ProcessView {
    #[serde(flatten)]
    process: Arc<crate::process::Process>,
    resource: std::collections::BTreeMap<&'static str, AttrValue>,
}

async fn processes(State(state): State<Arc<TelemetryState>>) -> Json<Vec<ProcessView>> {
    let snapshot = state.table.read().snapshot();
    let views = snapshot
        .into_iter()
        .map(|process| {
            let resource = state.resources.attributes(&process).into_iter().collect();
            ProcessView { process, resource }
        })
        .collect();
    Json(views)
}
