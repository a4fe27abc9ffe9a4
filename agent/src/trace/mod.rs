//! Zero-instrumentation tracing: connections, protocol parsers, spans.
