//! `selfops fleet status`: the inventory from a running server's API.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, StatusCode, Uri,
    header::{CONTENT_TYPE, HOST},
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::store::AgentRow;

/// Largest inventory answer read.
const MAX_ANSWER_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("server URL {0:?}: http://HOST:PORT expected")]
    Url(String),
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("server answered {0}")]
    Status(StatusCode),
    #[error("inventory unreadable: {0}")]
    Json(#[from] serde_json::Error),
}

/// One API call to the server at `server` (`http://HOST:PORT`); a `json`
/// body makes it a POST.
pub async fn call(server: &str, path: &str, json: Option<Vec<u8>>) -> Result<Bytes, StatusError> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let uri: Uri = url.parse().map_err(|_| StatusError::Url(server.into()))?;
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(StatusError::Url(server.into()));
    };
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(StatusError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| StatusError::Http(e.to_string()))?;
    let connection = tokio::spawn(connection);
    let method = if json.is_some() {
        Method::POST
    } else {
        Method::GET
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|e| StatusError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| StatusError::Http(e.to_string()))?;
    if response.status() != StatusCode::OK {
        connection.abort();
        return Err(StatusError::Status(response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| StatusError::Http(e.to_string()))?;
    connection.abort();
    Ok(body.to_bytes())
}

pub async fn agents(server: &str) -> Result<Vec<AgentRow>, StatusError> {
    Ok(serde_json::from_slice(
        &call(server, "/v1/agents", None).await?,
    )?)
}

/// A JSON POST and its JSON answer.
async fn post<A: serde::de::DeserializeOwned>(
    server: &str,
    path: &str,
    request: &impl serde::Serialize,
) -> Result<A, StatusError> {
    let body = serde_json::to_vec(request)?;
    Ok(serde_json::from_slice(
        &call(server, path, Some(body)).await?,
    )?)
}

pub async fn offer(
    server: &str,
    request: &super::api::OfferRequest,
) -> Result<super::api::OfferResponse, StatusError> {
    post(server, "/v1/config", request).await
}

pub async fn rollback(
    server: &str,
    request: &super::api::RollbackRequest,
) -> Result<super::api::RollbackResponse, StatusError> {
    post(server, "/v1/rollback", request).await
}

pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// One row per agent, newest contact relative to `now_unix`.
pub fn table(agents: &[AgentRow], now_unix: i64) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<36}  {:<20}  {:<9}  {:<8}  {:<12}  {:<12}  {}\n",
        "UID", "HOST", "HEALTH", "REMOTE", "REMOTE HASH", "EFFECTIVE", "LAST SEEN"
    );
    for a in agents {
        let health = match a.healthy {
            Some(true) => "healthy",
            Some(false) => "unhealthy",
            None => "-",
        };
        let seen = match now_unix.checked_sub(a.last_seen_unix) {
            Some(ago) if a.connected => format!("{ago}s ago (connected)"),
            Some(ago) => format!("{ago}s ago"),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<36}  {:<20}  {:<9}  {:<8}  {:<12}  {:<12}  {}",
            a.uid,
            a.host_name,
            health,
            if a.remote_status.is_empty() {
                "-"
            } else {
                &a.remote_status
            },
            short(&a.remote_hash),
            short(&a.effective_hash),
            seen
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_agent() {
        let agents = [AgentRow {
            uid: "u1".into(),
            host_name: "node-1".into(),
            healthy: Some(true),
            remote_status: "APPLIED".into(),
            remote_hash: "0123456789abcdef".into(),
            last_seen_unix: 90,
            connected: true,
            ..Default::default()
        }];
        let text = table(&agents, 100);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].contains("node-1") && lines[1].contains("APPLIED"));
        assert!(lines[1].contains("0123456789ab ") && lines[1].contains("10s ago"));
    }
}
