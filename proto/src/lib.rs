//! Protobuf definitions selfops owns (pprof's profile.proto, OpAMP),
//! generated with prost. OTLP itself comes from the opentelemetry-proto
//! crate. Empty until the profile and control planes land.
