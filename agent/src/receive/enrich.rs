//! The peer process's resource merged into what an SDK sent: each
//! attribute added only where the SDK did not set that key, so nothing the
//! application says about itself (`service.name` above all) is overridden.

use opentelemetry_proto::tonic::{common::v1::KeyValue, resource::v1::Resource};

use crate::export::OtlpBatch;

/// Adds `attributes` to every resource of `batch` (a missing resource is
/// created), skipping keys already present.
pub fn enrich(batch: &mut OtlpBatch, attributes: &[KeyValue]) {
    if attributes.is_empty() {
        return;
    }
    if let Some(request) = batch.traces.as_mut() {
        for r in &mut request.resource_spans {
            merge(&mut r.resource, attributes);
        }
    }
    if let Some(request) = batch.metrics.as_mut() {
        for r in &mut request.resource_metrics {
            merge(&mut r.resource, attributes);
        }
    }
    if let Some(request) = batch.logs.as_mut() {
        for r in &mut request.resource_logs {
            merge(&mut r.resource, attributes);
        }
    }
}

fn merge(resource: &mut Option<Resource>, attributes: &[KeyValue]) {
    let resource = resource.get_or_insert_with(Resource::default);
    for attribute in attributes {
        if !resource.attributes.iter().any(|a| a.key == attribute.key) {
            resource.attributes.push(attribute.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, any_value::Value},
        trace::v1::ResourceSpans,
    };

    use super::*;
    use crate::receive::decode;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
            ..KeyValue::default()
        }
    }

    #[test]
    fn receive_enrich_adds_only_missing_keys() {
        let mut batch = decode::traces(ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", "shop")],
                        ..Resource::default()
                    }),
                    ..ResourceSpans::default()
                },
                ResourceSpans::default(),
            ],
        });
        enrich(
            &mut batch,
            &[kv("service.name", "python3"), kv("process.pid", "7")],
        );
        let spans = &batch.traces.as_ref().unwrap().resource_spans;
        assert_eq!(
            spans[0].resource.as_ref().unwrap().attributes,
            vec![kv("service.name", "shop"), kv("process.pid", "7")]
        );
        assert_eq!(
            spans[1].resource.as_ref().unwrap().attributes,
            vec![kv("service.name", "python3"), kv("process.pid", "7")]
        );
    }
}
