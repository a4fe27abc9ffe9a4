//! Per-service request rate, error rate and p99 latency, taken from the
//! tracer's SERVER spans as they are emitted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use crate::signal::{Attributes, Resource, Signal, SpanKind, SpanStatus};

/// Latency buckets: geometric from 10 µs by 1.25, the last open-ended
/// (about 98 s). A p99 is reported as its bucket's upper bound, within 25%.
const BUCKETS: usize = 72;
const FIRST_BOUND_SECONDS: f64 = 1e-5;
const GROWTH: f64 = 1.25;

/// Services tracked at once; spans of further services are counted in
/// `overflow` and otherwise ignored, so memory stays bounded.
const MAX_SERVICES: usize = 1024;

#[derive(Clone)]
struct Window {
    requests: u64,
    errors: u64,
    latency: [u32; BUCKETS],
    /// The `k8s.*` attributes every span of the window shared (`None`
    /// before the first span).
    k8s: Option<Attributes>,
    /// The resource last merged into `k8s`: spans of one process share
    /// theirs, so most spans cost a pointer comparison.
    last_resource: Option<Arc<Resource>>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            latency: [0; BUCKETS],
            k8s: None,
            last_resource: None,
        }
    }
}

impl Window {
    fn note_resource(&mut self, resource: &Arc<Resource>) {
        if self
            .last_resource
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, resource))
        {
            return;
        }
        match &mut self.k8s {
            None => {
                self.k8s = Some(
                    resource
                        .attributes
                        .iter()
                        .filter(|(key, _)| key.starts_with("k8s."))
                        .cloned()
                        .collect(),
                )
            }
            Some(common) => common.retain(|(key, value)| resource.get(key) == Some(value)),
        }
        self.last_resource = Some(resource.clone());
    }
}

fn bucket_of(seconds: f64) -> usize {
    if seconds <= FIRST_BOUND_SECONDS {
        return 0;
    }
    let index = (seconds / FIRST_BOUND_SECONDS).ln() / GROWTH.ln();
    (index.ceil() as usize).min(BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> f64 {
    FIRST_BOUND_SECONDS * GROWTH.powi(bucket as i32)
}

/// What one service did during one sampling interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceWindow {
    pub request_rate: f64,
    pub error_rate: f64,
    /// `None` when there were no requests.
    pub latency_p99: Option<f64>,
}

#[derive(Default)]
pub struct ServiceStats {
    windows: Mutex<HashMap<String, Window>>,
    /// Per service, the `k8s.*` attributes its spans shared in its last
    /// window with requests: whose series a decision read.
    workloads: Mutex<HashMap<String, Attributes>>,
    overflow: std::sync::atomic::AtomicU64,
}

impl ServiceStats {
    /// Counts a finished SERVER span; everything else passes by.
    pub fn observe(&self, signal: &Signal) {
        let Signal::Span(span) = signal else { return };
        if span.kind != SpanKind::Server {
            return;
        }
        let seconds = span.end_unix_nano.saturating_sub(span.start_unix_nano) as f64 / 1e9;
        let failed = matches!(span.status, SpanStatus::Error { .. });
        let service = span.resource.service_name();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if !windows.contains_key(service) {
            if windows.len() >= MAX_SERVICES {
                self.overflow
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            windows.insert(service.to_owned(), Window::default());
        }
        let Some(window) = windows.get_mut(service) else {
            return;
        };
        window.requests += 1;
        window.errors += u64::from(failed);
        window.note_resource(&span.resource);
        let bucket = &mut window.latency[bucket_of(seconds)];
        *bucket = bucket.saturating_add(1);
    }

    /// The `k8s.*` attributes all of `service`'s spans shared in its last
    /// window with requests: namespace and owner when its pods on this
    /// node agree on them, the pod when there is one. Empty outside
    /// Kubernetes.
    pub fn workload(&self, service: &str) -> Attributes {
        self.workloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// Spans not counted because `MAX_SERVICES` were already tracked.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The interval's figures for `service` over `seconds`, and a fresh
    /// window. A service with no requests reads as rate 0.
    pub fn take(&self, service: &str, seconds: f64) -> ServiceWindow {
        let window = self
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(service)
            .map(std::mem::take)
            .unwrap_or_default();
        if let Some(k8s) = window.k8s {
            self.workloads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(service.to_owned(), k8s);
        }
        let requests = window.requests as f64;
        let latency_p99 = (window.requests > 0).then(|| {
            let rank = (requests * 0.99).ceil() as u64;
            let mut seen = 0u64;
            let bucket = window
                .latency
                .iter()
                .position(|&n| {
                    seen += u64::from(n);
                    seen >= rank
                })
                .unwrap_or(BUCKETS - 1);
            upper_bound(bucket)
        });
        ServiceWindow {
            request_rate: if seconds > 0.0 {
                requests / seconds
            } else {
                0.0
            },
            error_rate: if window.requests > 0 {
                window.errors as f64 / requests
            } else {
                0.0
            },
            latency_p99,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::signal::{AttrValue, Resource, Span};

    fn span(service: &str, kind: SpanKind, millis: u64, error: bool) -> Signal {
        Signal::Span(Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: "GET".into(),
            kind,
            start_unix_nano: 1_000_000_000,
            end_unix_nano: 1_000_000_000 + millis * 1_000_000,
            attributes: Vec::new(),
            status: if error {
                SpanStatus::Error {
                    message: "500".into(),
                }
            } else {
                SpanStatus::Unset
            },
            resource: Arc::new(Resource {
                attributes: vec![("service.name", AttrValue::from(service))],
            }),
        })
    }

    #[test]
    fn rate_errors_and_p99_over_one_window_then_reset() {
        let stats = ServiceStats::default();
        for i in 0..100 {
            stats.observe(&span(
                "web",
                SpanKind::Server,
                if i < 98 { 2 } else { 400 },
                i % 10 == 0,
            ));
        }
        stats.observe(&span("web", SpanKind::Client, 5000, true));
        let w = stats.take("web", 0.5);
        assert_eq!(w.request_rate, 200.0);
        assert!((w.error_rate - 0.1).abs() < 1e-9);
        let p99 = w.latency_p99.unwrap_or_default();
        assert!((0.4..0.5).contains(&p99), "p99 {p99}");
        let empty = stats.take("web", 0.5);
        assert_eq!(empty.request_rate, 0.0);
        assert_eq!(empty.latency_p99, None);
    }

    #[test]
    fn workload_is_what_the_window_s_spans_shared() {
        let pod = |name: &str| {
            Arc::new(Resource {
                attributes: vec![
                    ("service.name", AttrValue::from("web")),
                    ("process.pid", AttrValue::Int(7)),
                    ("k8s.namespace.name", AttrValue::from("shop")),
                    ("k8s.deployment.name", AttrValue::from("web")),
                    ("k8s.pod.name", AttrValue::from(name)),
                ],
            })
        };
        let with = |resource: &Arc<Resource>| {
            let Signal::Span(mut s) = span("web", SpanKind::Server, 1, false) else {
                unreachable!()
            };
            s.resource = resource.clone();
            Signal::Span(s)
        };
        let stats = ServiceStats::default();
        assert!(stats.workload("web").is_empty());
        let (a, b) = (pod("web-a"), pod("web-b"));
        stats.observe(&with(&a));
        stats.observe(&with(&a));
        stats.take("web", 1.0);
        let one = stats.workload("web");
        assert_eq!(one.len(), 3, "{one:?}");
        assert!(one.contains(&("k8s.pod.name", AttrValue::from("web-a"))));
        // Two pods: what they share stays, the pod goes.
        stats.observe(&with(&a));
        stats.observe(&with(&b));
        stats.take("web", 1.0);
        let two = stats.workload("web");
        assert_eq!(
            two,
            vec![
                ("k8s.namespace.name", AttrValue::from("shop")),
                ("k8s.deployment.name", AttrValue::from("web")),
            ]
        );
        // A window without requests keeps the last known workload.
        stats.take("web", 1.0);
        assert_eq!(stats.workload("web"), two);
    }

    #[test]
    fn buckets_cover_the_range() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(f64::NAN), 0);
        assert_eq!(bucket_of(1e9), BUCKETS - 1);
        let b = bucket_of(0.002);
        assert!(upper_bound(b) >= 0.002 && upper_bound(b) < 0.0025);
    }
}
