//! The agent's own spans of a batch, grouped by resource and left as they
//! are. The file sink writes them as OTLP/JSON directly (`span_json`); only
//! what needs protobuf messages (an OTLP exporter, a trace processor or
//! route) converts them, when it gets them. Converting every span up front
//! cost an owned key per attribute and a tree of messages to build and free
//! per request, for a file that never needed it.

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, trace::v1 as pt,
};

use super::convert::{resource_to_proto, scope, span_ref_to_proto, span_to_proto};
use crate::signal::{Resource, Span};

/// Spans by resource, in first-seen order, each group non-empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSpans {
    pub groups: Vec<(Arc<Resource>, Vec<Span>)>,
}

impl AgentSpans {
    pub fn span_count(&self) -> u64 {
        self.groups
            .iter()
            .map(|(_, spans)| spans.len() as u64)
            .sum()
    }

    /// Appends `other`'s groups (two parts routed to the same exporters).
    pub fn append(&mut self, other: AgentSpans) {
        self.groups.extend(other.groups);
    }

    /// The OTLP request, the spans moved into it.
    pub fn into_request(self) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: self
                .groups
                .into_iter()
                .map(|(resource, spans)| {
                    resource_spans(&resource, spans.into_iter().map(span_to_proto).collect())
                })
                .collect(),
        }
    }

    /// The OTLP request, the spans copied (other sinks share the batch).
    pub fn to_request(&self) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: self
                .groups
                .iter()
                .map(|(resource, spans)| {
                    resource_spans(resource, spans.iter().map(span_ref_to_proto).collect())
                })
                .collect(),
        }
    }
}

fn resource_spans(resource: &Resource, spans: Vec<pt::Span>) -> pt::ResourceSpans {
    pt::ResourceSpans {
        resource: Some(resource_to_proto(resource)),
        scope_spans: vec![pt::ScopeSpans {
            scope: Some(scope()),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}
