//! Exporters: OTLP (gRPC, HTTP/protobuf) and the JSON-lines file sink.
