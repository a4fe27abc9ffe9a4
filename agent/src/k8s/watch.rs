//! Keeps the directory in step with the API server: a paged list of this
//! node's pods, then a watch from the list's resource version. A watch that
//! ends is resumed from the last version seen; one that expired (410 Gone)
//! means a new list, whose result replaces the directory at once, so pods
//! still running keep their metadata throughout. While the API server is
//! away the directory keeps what it last knew, and requests back off
//! exponentially, with jitter, up to `max_backoff`.

use std::{borrow::Cow, convert::Infallible, sync::Arc, time::Duration};

use rand::Rng as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    client::{ApiClient, ClientError, Line},
    directory::PodDirectory,
    metrics::{EventLabels, KubeMetrics, ReasonLabels},
    pod::{Pod, PodList, PodMeta},
};

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A watch open this long (or one that brought events) was healthy: the
/// next failure starts the backoff over.
const HEALTHY_WATCH: Duration = Duration::from_secs(10);

pub struct WatchSettings {
    pub page_size: u32,
    pub max_backoff: Duration,
    pub watch_timeout: Duration,
}

pub struct PodWatch {
    client: ApiClient,
    directory: Arc<PodDirectory>,
    metrics: KubeMetrics,
    settings: WatchSettings,
}

enum WatchEnd {
    /// The server closed it (its timeout): resume from the last version.
    Closed { healthy: bool },
    /// 410: list again.
    Expired,
}

impl PodWatch {
    pub fn new(
        client: ApiClient,
        directory: Arc<PodDirectory>,
        metrics: KubeMetrics,
        settings: WatchSettings,
    ) -> Self {
        Self {
            client,
            directory,
            metrics,
            settings,
        }
    }

    pub async fn run(self) -> Infallible {
        let mut backoff = Backoff::new(self.settings.max_backoff);
        let mut listed_before = false;
        loop {
            let mut version = match self.list().await {
                Ok(version) => version,
                Err(err) => {
                    tracing::warn!(%err, "listing this node's pods");
                    self.wait(&mut backoff).await;
                    continue;
                }
            };
            if listed_before {
                tracing::info!(pods = self.directory.len(), "pods listed again");
            } else {
                tracing::info!(
                    pods = self.directory.len(),
                    node = self.directory.node_name(),
                    "pods of this node listed"
                );
            }
            listed_before = true;
            backoff.reset();
            loop {
                match self.watch(&mut version).await {
                    Ok(WatchEnd::Closed { healthy }) => {
                        self.metrics.request("watch", "ok");
                        if healthy {
                            backoff.reset();
                        } else {
                            self.wait(&mut backoff).await;
                        }
                    }
                    Ok(WatchEnd::Expired) | Err(ClientError::Gone) => {
                        self.metrics.request("watch", "gone");
                        self.relist("gone");
                        break;
                    }
                    Err(err) => {
                        self.metrics.request("watch", err.outcome());
                        tracing::warn!(%err, "watching this node's pods; resuming");
                        self.wait(&mut backoff).await;
                    }
                }
            }
        }
    }

    fn relist(&self, reason: &'static str) {
        self.metrics
            .relists
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    async fn wait(&self, backoff: &mut Backoff) {
        self.metrics.backoffs.inc();
        tokio::time::sleep(backoff.next()).await;
    }

    /// Every page, then the directory replaced at once. The version to
    /// watch from.
    async fn list(&self) -> Result<String, ClientError> {
        let mut pods = Vec::new();
        let mut token: Option<String> = None;
        let node = self.directory.node_name();
        loop {
            let page = match self
                .client
                .list_page(node, self.settings.page_size, token.as_deref())
                .await
            {
                Ok(page) => page,
                Err(err) => {
                    self.metrics.request("list", err.outcome());
                    return Err(err);
                }
            };
            self.metrics.request("list", "ok");
            let PodList { metadata, items } = page;
            for pod in items {
                if let Some(meta) = self.compact(pod) {
                    pods.push(self.directory.reuse(meta));
                }
            }
            match metadata.continue_token.filter(|t| !t.is_empty()) {
                Some(next) => token = Some(next),
                None => {
                    self.directory.replace_all(pods);
                    // The pages were parsed into many small allocations now
                    // freed; hand them back to the kernel (a list is rare:
                    // at start and after a watch expires).
                    crate::memory::release_everywhere();
                    return Ok(metadata.resource_version);
                }
            }
        }
    }

    async fn watch(&self, version: &mut String) -> Result<WatchEnd, ClientError> {
        let started = tokio::time::Instant::now();
        // The server's own timeout plus a margin: a connection that died
        // silently is given up then.
        let deadline = started + self.settings.watch_timeout + Duration::from_secs(15);
        let mut lines = self
            .client
            .watch(
                self.directory.node_name(),
                version,
                self.settings.watch_timeout,
            )
            .await?;
        let mut events = 0u64;
        loop {
            let line = match tokio::time::timeout_at(deadline, lines.next()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(line) => line?,
            };
            let line = match line {
                None => {
                    let healthy = events > 0 || started.elapsed() >= HEALTHY_WATCH;
                    return Ok(WatchEnd::Closed { healthy });
                }
                Some(Line::TooLarge) => {
                    self.metrics.reject("too_large");
                    continue;
                }
                Some(Line::Event(line)) => line,
            };
            events += 1;
            let event: WatchEvent = match serde_json::from_slice(&line) {
                Ok(event) => event,
                Err(err) => {
                    tracing::debug!(%err, "watch line is not an event");
                    self.metrics.reject("invalid");
                    continue;
                }
            };
            let kind = event_label(&event.kind);
            self.metrics
                .events
                .get_or_create(&EventLabels { event: kind })
                .inc();
            match kind {
                "ERROR" => {
                    let status: Status = serde_json::from_str(event.object()).unwrap_or_default();
                    if status.code == 410 {
                        return Ok(WatchEnd::Expired);
                    }
                    return Err(ClientError::Http(u16::try_from(status.code).unwrap_or(0)));
                }
                "unknown" => self.metrics.reject("invalid"),
                _ => {
                    let pod: Pod = match serde_json::from_str(event.object()) {
                        Ok(pod) => pod,
                        Err(_) => {
                            self.metrics.reject("invalid");
                            continue;
                        }
                    };
                    if !pod.metadata.resource_version.is_empty() {
                        version.clone_from(&pod.metadata.resource_version);
                    }
                    match kind {
                        "BOOKMARK" => {}
                        "DELETED" => {
                            self.directory.remove(&pod.metadata.uid);
                        }
                        _ => {
                            if let Some(meta) = self.compact(pod) {
                                self.directory.upsert(meta);
                            }
                        }
                    }
                }
            }
        }
    }

    fn compact(&self, pod: Pod) -> Option<PodMeta> {
        let mut dropped = 0;
        let meta = PodMeta::from_pod(pod, &mut dropped);
        self.metrics.fields_dropped.inc_by(dropped);
        match meta {
            Ok(meta) => Some(meta),
            Err(err) => {
                tracing::debug!(%err, "pod not kept");
                self.metrics.reject("invalid");
                None
            }
        }
    }
}

/// One line of a watch. The object is kept as the line's own bytes and
/// parsed once its kind is known, straight into [`Pod`] or [`Status`]:
/// no generic JSON tree per event.
#[derive(Deserialize)]
struct WatchEvent<'a> {
    #[serde(rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
}

impl WatchEvent<'_> {
    fn object(&self) -> &str {
        self.object.map_or("null", RawValue::get)
    }
}

#[derive(Deserialize, Default)]
struct Status {
    #[serde(default)]
    code: i64,
}

fn event_label(kind: &str) -> &'static str {
    match kind {
        "ADDED" => "ADDED",
        "MODIFIED" => "MODIFIED",
        "DELETED" => "DELETED",
        "BOOKMARK" => "BOOKMARK",
        "ERROR" => "ERROR",
        _ => "unknown",
    }
}

/// Doubling from `FIRST_BACKOFF` to `max`, each wait drawn between half
/// and all of the current step so many agents do not retry in step.
struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            step: FIRST_BACKOFF.min(max),
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    fn reset(&mut self) {
        self.step = FIRST_BACKOFF.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_event_object_is_parsed_by_kind() {
        let line = br#"{"type":"ERROR","object":{"kind":"Status","code":410}}"#;
        let event: WatchEvent = serde_json::from_slice(line).unwrap();
        assert_eq!(event_label(&event.kind), "ERROR");
        let status: Status = serde_json::from_str(event.object()).unwrap();
        assert_eq!(status.code, 410);

        let line = br#"{"type":"ADDED","object":{"metadata":{"uid":"u1","name":"web\u0031"}}}"#;
        let event: WatchEvent = serde_json::from_slice(line).unwrap();
        let pod: Pod = serde_json::from_str(event.object()).unwrap();
        assert_eq!(
            (pod.metadata.uid.as_str(), pod.metadata.name.as_str()),
            ("u1", "web1")
        );

        // No object: no pod, and a status of code 0.
        let event: WatchEvent = serde_json::from_slice(br#"{"type":"ERROR"}"#).unwrap();
        assert!(serde_json::from_str::<Pod>(event.object()).is_err());
        let status: Status = serde_json::from_str(event.object()).unwrap_or_default();
        assert_eq!(status.code, 0);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let waits: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        assert!(waits[0] >= FIRST_BACKOFF / 2 && waits[0] <= FIRST_BACKOFF);
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(2)));
        assert!(waits[7] >= Duration::from_secs(1), "{waits:?}");
        b.reset();
        assert!(b.next() <= FIRST_BACKOFF);
    }
}
