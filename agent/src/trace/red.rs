//! RED metrics from spans: `http.server.request.duration` and
//! `http.client.request.duration` histograms (seconds) by service, method,
//! route template and status class — and on Kubernetes by pod and
//! container, whose `k8s.*` attributes the series' resource carries — with
//! the number of routes per service capped so one noisy service cannot
//! grow memory without bound.

use std::{borrow::Cow, sync::Arc};

use super::{FastMap, FastSet};
use crate::signal::{AttrValue, HistogramPoint, Resource, SpanKind};

/// Bucket bounds the HTTP semantic conventions advise for request durations.
pub const DURATION_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The route every path beyond a service's cap is counted under.
pub const OVERFLOW_ROUTE: &str = "{overflow}";

/// Built per request from shared parts, so recording allocates nothing
/// once a series exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    kind: SpanKindKey,
    service: Arc<str>,
    workload: Option<Arc<Workload>>,
    method: &'static str,
    route: Arc<str>,
    status_class: &'static str,
}

/// Builds a series' resource from its service and pod container.
pub type ResourceOf<'a> = dyn FnMut(&str, Option<&Arc<Workload>>) -> Arc<Resource> + 'a;

/// The pod container a series' requests ran in: its `k8s.*` resource
/// attributes, interned so series keys share one copy.
#[derive(Debug)]
pub struct Workload {
    uid: Box<str>,
    container: Box<str>,
    pub attributes: Vec<(&'static str, AttrValue)>,
}

impl PartialEq for Workload {
    fn eq(&self, other: &Self) -> bool {
        self.uid == other.uid && self.container == other.container
    }
}

impl Eq for Workload {}

impl std::hash::Hash for Workload {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.uid.hash(state);
        self.container.hash(state);
    }
}

fn text<'r>(resource: &'r Resource, key: &str) -> Option<&'r str> {
    match resource.get(key) {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SpanKindKey {
    Server,
    Client,
}

#[derive(Debug, Clone)]
struct Series {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    buckets: Vec<u64>,
}

impl Series {
    fn new() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            buckets: vec![0; DURATION_BOUNDS.len() + 1],
        }
    }

    fn record(&mut self, seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        self.min = self.min.min(seconds);
        self.max = self.max.max(seconds);
        let bucket = DURATION_BOUNDS.partition_point(|bound| *bound < seconds);
        if let Some(b) = self.buckets.get_mut(bucket) {
            *b += 1;
        }
    }
}

/// One observed request, as RED needs it.
pub struct Observation<'a> {
    pub kind: SpanKind,
    /// The span's resource: its service and, in a pod, the pod. Shared by
    /// the spans of one process, so what it resolves to is cached by pointer.
    pub resource: &'a Arc<Resource>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub seconds: f64,
}

/// Resources whose resolution is kept; beyond it the cache starts over, so
/// the resources it holds alive stay few.
const RESOLVED_MAX: usize = 256;

/// A resource's interned service and pod container. The resource is held so
/// its address cannot be reused by another while the entry lives.
struct Resolved {
    _resource: Arc<Resource>,
    service: Arc<str>,
    workload: Option<Arc<Workload>>,
}

pub struct RedMetrics {
    series: FastMap<SeriesKey, Series>,
    /// Each service's routes, interned: series keys share them.
    routes: FastMap<Arc<str>, FastSet<Arc<str>>>,
    /// Pod containers seen, by pod uid (each made with a series, so bounded
    /// by `max_series`).
    workloads: FastMap<Box<str>, Vec<Arc<Workload>>>,
    /// What recent resources resolved to, by address: most spans then cost
    /// a hash of a pointer instead of a scan of their attributes.
    resolved: FastMap<usize, Resolved>,
    max_routes_per_service: usize,
    /// Series the agent keeps in all; beyond it new series fold into one
    /// overflow series per kind and status class.
    max_series: usize,
    start_unix_nano: u64,
    /// Observations whose route went to the overflow bucket.
    pub overflowed: u64,
    /// Observations folded into an overflow series (agent-wide cap).
    pub series_overflowed: u64,
}

/// `/users/42/orders/9f8e…` → `/users/{id}/orders/{id}`: segments that look
/// like identifiers (numbers, UUIDs, long hex) become `{id}`, since the real
/// route of an unknown framework cannot be known.
pub fn route_template(path: &str) -> Cow<'_, str> {
    // Most paths have no identifier: the path is its own template.
    if !path.split('/').any(looks_like_id) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if looks_like_id(segment) {
            out.push_str("{id}");
        } else {
            out.push_str(segment);
        }
    }
    Cow::Owned(out)
}

fn looks_like_id(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let digits = segment.bytes().all(|b| b.is_ascii_digit());
    let hexish = segment.len() >= 16 && segment.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    digits || hexish
}

const OTHER_METHOD: &str = "_OTHER";

/// The method as a static name: one of the standard ones, or `_OTHER`.
fn standard_method(method: &str) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    STANDARD
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or(OTHER_METHOD)
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

impl RedMetrics {
    pub fn new(max_routes_per_service: usize, max_series: usize, start_unix_nano: u64) -> Self {
        Self {
            series: FastMap::default(),
            routes: FastMap::default(),
            workloads: FastMap::default(),
            resolved: FastMap::default(),
            max_routes_per_service,
            max_series,
            start_unix_nano,
            overflowed: 0,
            series_overflowed: 0,
        }
    }

    pub fn record(&mut self, o: Observation<'_>) {
        let Some((service, workload)) = self.resolve(o.resource) else {
            return self.record_overflow(&o);
        };
        let template = route_template(o.path);
        let routes = self.routes.entry(service.clone()).or_default();
        let route: Arc<str> = match routes.get(template.as_ref()) {
            Some(known) => known.clone(),
            None if routes.len() < self.max_routes_per_service => {
                let route: Arc<str> = Arc::from(template.as_ref());
                routes.insert(route.clone());
                route
            }
            None => {
                self.overflowed += 1;
                Arc::from(OVERFLOW_ROUTE)
            }
        };
        // Methods outside the standard set collapse, as semconv advises.
        let method = standard_method(o.method);
        let key = SeriesKey {
            kind: match o.kind {
                SpanKind::Server => SpanKindKey::Server,
                SpanKind::Client => SpanKindKey::Client,
            },
            service,
            workload,
            method,
            route,
            status_class: status_class(o.status),
        };
        if let Some(series) = self.series.get_mut(&key) {
            return series.record(o.seconds);
        }
        if self.series.len() >= self.max_series {
            return self.record_overflow(&o);
        }
        self.series
            .entry(key)
            .or_insert_with(Series::new)
            .record(o.seconds);
    }

    /// The agent-wide cap is reached: one series per kind and status class
    /// holds what no series of its own may (at most a dozen beyond the cap).
    fn record_overflow(&mut self, o: &Observation<'_>) {
        self.series_overflowed += 1;
        let key = SeriesKey {
            kind: match o.kind {
                SpanKind::Server => SpanKindKey::Server,
                SpanKind::Client => SpanKindKey::Client,
            },
            service: Arc::from(OVERFLOW_ROUTE),
            workload: None,
            method: OTHER_METHOD,
            route: Arc::from(OVERFLOW_ROUTE),
            status_class: status_class(o.status),
        };
        self.series
            .entry(key)
            .or_insert_with(Series::new)
            .record(o.seconds);
    }

    /// The interned service and pod container of `resource`, from the cache
    /// when it was seen; `None` when a new one would exceed the series cap.
    fn resolve(&mut self, resource: &Arc<Resource>) -> Option<(Arc<str>, Option<Arc<Workload>>)> {
        let address = Arc::as_ptr(resource) as usize;
        if let Some(known) = self.resolved.get(&address) {
            return Some((known.service.clone(), known.workload.clone()));
        }
        let service_name = resource.service_name();
        let service: Arc<str> = match self.routes.get_key_value(service_name) {
            Some((name, _)) => name.clone(),
            // A new service's routes would add series beyond the cap.
            None if self.series.len() >= self.max_series => return None,
            None => Arc::from(service_name),
        };
        let workload = self.workload_of(resource).ok()?;
        // Interned now, so the cached name is the one series keys share.
        self.routes.entry(service.clone()).or_default();
        if self.resolved.len() >= RESOLVED_MAX {
            self.resolved.clear();
        }
        self.resolved.insert(
            address,
            Resolved {
                _resource: resource.clone(),
                service: service.clone(),
                workload: workload.clone(),
            },
        );
        Some((service, workload))
    }

    /// The interned pod container of `resource` (`None` outside a pod);
    /// `Err` when a new one would exceed the series cap.
    fn workload_of(&mut self, resource: &Resource) -> Result<Option<Arc<Workload>>, ()> {
        let Some(uid) = text(resource, "k8s.pod.uid") else {
            return Ok(None);
        };
        let container = text(resource, "k8s.container.name").unwrap_or("");
        if let Some(known) = self
            .workloads
            .get(uid)
            .and_then(|w| w.iter().find(|w| &*w.container == container))
        {
            return Ok(Some(known.clone()));
        }
        if self.series.len() >= self.max_series {
            return Err(());
        }
        let workload = Arc::new(Workload {
            uid: uid.into(),
            container: container.into(),
            attributes: resource
                .attributes
                .iter()
                .filter(|(key, _)| key.starts_with("k8s."))
                .cloned()
                .collect(),
        });
        self.workloads
            .entry(uid.into())
            .or_default()
            .push(workload.clone());
        Ok(Some(workload))
    }

    /// Cumulative points for every series, each with its service's (and
    /// pod's) resource.
    pub fn collect(
        &self,
        now_unix_nano: u64,
        resource_of: &mut ResourceOf<'_>,
    ) -> Vec<HistogramPoint> {
        self.series
            .iter()
            .map(|(key, s)| {
                let (name, description) = match key.kind {
                    SpanKindKey::Server => (
                        "http.server.request.duration",
                        "Duration of HTTP server requests",
                    ),
                    SpanKindKey::Client => (
                        "http.client.request.duration",
                        "Duration of HTTP client requests",
                    ),
                };
                HistogramPoint {
                    name,
                    description,
                    unit: "s",
                    attributes: vec![
                        ("http.request.method", AttrValue::from_static(key.method)),
                        ("http.route", AttrValue::from(key.route.to_string())),
                        (
                            "http.response.status_class",
                            AttrValue::from_static(key.status_class),
                        ),
                    ],
                    start_unix_nano: self.start_unix_nano,
                    time_unix_nano: now_unix_nano,
                    count: s.count,
                    sum: s.sum,
                    min: s.min,
                    max: s.max,
                    bounds: DURATION_BOUNDS,
                    bucket_counts: s.buckets.clone(),
                    resource: resource_of(&key.service, key.workload.as_ref()),
                }
            })
            .collect()
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> Resource {
        Resource {
            attributes: vec![("service.name", AttrValue::from(name))],
        }
    }

    fn observe(red: &mut RedMetrics, path: &str, status: u16, seconds: f64) {
        red.record(Observation {
            kind: SpanKind::Server,
            resource: &Arc::new(service("web")),
            method: "GET",
            path,
            status,
            seconds,
        });
    }

    #[test]
    fn templates() {
        assert_eq!(route_template("/users/42/orders"), "/users/{id}/orders");
        assert_eq!(
            route_template("/o/3fa85f64-5717-4562-b3fc-2c963f66afa6"),
            "/o/{id}"
        );
        assert_eq!(route_template("/static/app.js"), "/static/app.js");
        assert_eq!(route_template("/"), "/");
    }

    #[test]
    fn histogram_and_cap() {
        let mut red = RedMetrics::new(2, 1000, 1);
        observe(&mut red, "/a/1", 200, 0.003);
        observe(&mut red, "/a/2", 200, 0.2);
        observe(&mut red, "/b", 503, 20.0);
        observe(&mut red, "/c", 200, 0.01);
        observe(&mut red, "/d", 200, 0.01);
        assert_eq!(red.overflowed, 2, "third and fourth routes overflow");
        let resource = Arc::new(Resource { attributes: vec![] });
        let points = red.collect(2, &mut |_, _| resource.clone());
        let route = |p: &HistogramPoint| match &p.attributes[1].1 {
            AttrValue::Str(s) => s.to_string(),
            _ => String::new(),
        };
        let a = points.iter().find(|p| route(p) == "/a/{id}").unwrap();
        assert_eq!(a.count, 2);
        assert_eq!(a.bucket_counts[0], 1, "3 ms in the first bucket");
        assert_eq!(a.bucket_counts[6], 1, "200 ms in (0.1, 0.25]");
        assert!((a.sum - 0.203).abs() < 1e-9);
        let b = points.iter().find(|p| route(p) == "/b").unwrap();
        assert_eq!(b.bucket_counts[DURATION_BOUNDS.len()], 1, "20 s in +Inf");
        let overflow = points.iter().find(|p| route(p) == OVERFLOW_ROUTE).unwrap();
        assert_eq!(overflow.count, 2);
    }

    #[test]
    fn series_are_capped_per_agent() {
        let mut red = RedMetrics::new(100, 3, 1);
        for name in ["a", "b", "c", "d", "e"] {
            red.record(Observation {
                kind: SpanKind::Server,
                resource: &Arc::new(service(name)),
                method: "GET",
                path: "/",
                status: 200,
                seconds: 0.01,
            });
        }
        assert_eq!(red.series_overflowed, 2, "services d and e overflow");
        assert_eq!(
            red.series_count(),
            4,
            "three series and one overflow series"
        );
        let resource = Arc::new(Resource { attributes: vec![] });
        let points = red.collect(2, &mut |_, _| resource.clone());
        assert_eq!(points.iter().map(|p| p.count).sum::<u64>(), 5);
    }

    #[test]
    fn series_are_kept_per_pod_container_with_its_k8s_attributes() {
        let pod = |uid: &str, name: &str, container: &str| {
            Arc::new(Resource {
                attributes: vec![
                    ("service.name", AttrValue::from("web")),
                    ("process.pid", AttrValue::Int(1)),
                    ("k8s.namespace.name", AttrValue::from("shop")),
                    ("k8s.pod.name", AttrValue::from(name)),
                    ("k8s.pod.uid", AttrValue::from(uid)),
                    ("k8s.container.name", AttrValue::from(container)),
                ],
            })
        };
        let mut red = RedMetrics::new(100, 100, 1);
        let mut request = |resource: &Arc<Resource>| {
            red.record(Observation {
                kind: SpanKind::Server,
                resource,
                method: "GET",
                path: "/",
                status: 200,
                seconds: 0.01,
            })
        };
        request(&pod("u1", "web-a", "app"));
        request(&pod("u1", "web-a", "app"));
        request(&pod("u1", "web-a", "sidecar"));
        request(&pod("u2", "web-b", "app"));
        request(&Arc::new(service("web")));
        assert_eq!(red.series_count(), 4);
        let points = red.collect(2, &mut |service, workload| {
            let mut resource = super::tests::service(service);
            if let Some(w) = workload {
                resource.attributes.extend(w.attributes.iter().cloned());
            }
            Arc::new(resource)
        });
        let of = |pod: &str, container: &str| {
            points
                .iter()
                .find(|p| {
                    p.resource.get("k8s.pod.name") == Some(&AttrValue::from(pod))
                        && p.resource.get("k8s.container.name") == Some(&AttrValue::from(container))
                })
                .map(|p| p.count)
        };
        assert_eq!(of("web-a", "app"), Some(2));
        assert_eq!(of("web-a", "sidecar"), Some(1));
        assert_eq!(of("web-b", "app"), Some(1));
        let outside = points
            .iter()
            .find(|p| p.resource.get("k8s.pod.uid").is_none());
        assert_eq!(
            outside.map(|p| p.count),
            Some(1),
            "no pod: the service alone"
        );
        assert!(
            points
                .iter()
                .filter_map(|p| p.resource.get("k8s.namespace.name"))
                .all(|ns| *ns == AttrValue::from("shop"))
        );
    }

    #[test]
    fn a_resource_seen_again_resolves_from_the_cache_to_the_same_series() {
        let mut red = RedMetrics::new(100, 100, 1);
        let in_pod = Arc::new(Resource {
            attributes: vec![
                ("service.name", AttrValue::from("web")),
                ("k8s.pod.uid", AttrValue::from("u1")),
                ("k8s.container.name", AttrValue::from("app")),
            ],
        });
        // An equal resource of another process: its own cache entry, the
        // same interned workload and series.
        let twin = Arc::new((*in_pod).clone());
        for resource in [&in_pod, &in_pod, &twin] {
            red.record(Observation {
                kind: SpanKind::Server,
                resource,
                method: "GET",
                path: "/",
                status: 200,
                seconds: 0.01,
            });
        }
        assert_eq!(red.resolved.len(), 2, "one entry per resource");
        assert_eq!(red.series_count(), 1);
        assert_eq!(red.workloads.get("u1").map(Vec::len), Some(1));
        // The cache starts over when full, and still resolves correctly.
        for i in 0..RESOLVED_MAX + 10 {
            red.record(Observation {
                kind: SpanKind::Server,
                resource: &Arc::new(service(if i % 2 == 0 { "web" } else { "api" })),
                method: "GET",
                path: "/",
                status: 200,
                seconds: 0.01,
            });
        }
        assert!(red.resolved.len() <= RESOLVED_MAX);
        assert_eq!(red.series_count(), 3, "web in the pod, web and api outside");
        let resource = Arc::new(Resource { attributes: vec![] });
        let points = red.collect(2, &mut |_, _| resource.clone());
        assert_eq!(
            points.iter().map(|p| p.count).sum::<u64>(),
            3 + RESOLVED_MAX as u64 + 10
        );
    }
}
