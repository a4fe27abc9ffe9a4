//! Zero-instrumentation tracing: connections, protocol parsers, spans.

pub mod connection;
pub mod context;
pub mod event;
pub mod filter;
pub mod http1;
pub mod red;
pub mod spans;
pub mod tls_libraries;
pub mod tracer;
