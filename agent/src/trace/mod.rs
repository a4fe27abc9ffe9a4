//! Zero-instrumentation tracing: connections, protocol parsers, spans.

pub mod connection;
pub mod conntrack;
pub mod context;
pub mod event;
pub mod filter;
pub mod http1;
pub mod kernel_filter;
pub mod red;
pub mod spans;
pub mod tls_libraries;
pub mod tracer;

/// The tracer's maps are touched several times per socket event: a fast
/// hasher, still seeded per process so peers cannot aim collisions at it.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
