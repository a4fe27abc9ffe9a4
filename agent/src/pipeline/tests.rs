//! The pipelines without OTTL: exporter sets, sampling, rate limits and the
//! configuration errors (OTTL's own cases are in `ottl_tests`).

use std::path::Path;

use super::*;
use crate::{
    config::Config,
    export::{
        convert,
        test_support::{log_record, resource, span},
    },
    signal::Signal,
};

fn parse(yaml: &str) -> Result<Config, String> {
    Config::parse(yaml, Path::new("test.yaml")).map_err(|e| e.to_string())
}

pub fn pipelines_of(yaml: &str) -> Pipelines {
    let config = parse(yaml).unwrap();
    Pipelines::new(
        &config.processors,
        &config.exporters,
        &config.pipelines,
        PipelineMetrics::default(),
        ExportMetrics::default(),
    )
    .unwrap()
}

/// Spans of `service` with scope `selfops` (as the kernel makes them) and
/// two log records.
fn kernel_batch(service: &str, spans: u8) -> OtlpBatch {
    let res = resource(service, 7);
    let mut signals: Vec<Signal> = (0..spans)
        .map(|n| Signal::Span(span(&res, n, None)))
        .collect();
    signals.push(Signal::Log(log_record(&res, 1)));
    signals.push(Signal::Log(log_record(&res, 2)));
    convert(signals)
}

fn names(pipelines: &Pipelines, set: ExporterSet) -> Vec<&'static str> {
    pipelines.exporter_names(set).collect()
}

const ARCHIVE: &str = "exporters:\n  otlp/archive: { endpoint: 'http://127.0.0.1:1' }\n";

#[test]
fn without_pipelines_everything_goes_to_every_exporter_in_one_batch() {
    let pipelines = pipelines_of(ARCHIVE);
    let routed = pipelines.process(kernel_batch("svc", 3), false);
    assert_eq!(routed.parts.len(), 1);
    let (set, batch) = &routed.parts[0];
    assert_eq!(names(&pipelines, *set), ["file", "otlp", "otlp/archive"]);
    assert_eq!((batch.span_count, batch.log_count), (3, 2));
}

#[test]
fn each_signal_goes_to_its_pipelines_exporters() {
    let pipelines = pipelines_of(&format!(
        "{ARCHIVE}pipelines:\n  traces: {{ exporters: [otlp/archive] }}\n  logs: {{ exporters: [file] }}\n"
    ));
    let routed = pipelines.process(kernel_batch("svc", 3), false);
    assert_eq!(routed.parts.len(), 2);
    for (set, batch) in &routed.parts {
        match names(&pipelines, *set).as_slice() {
            ["otlp/archive"] => assert_eq!((batch.span_count, batch.log_count), (3, 0)),
            ["file"] => assert_eq!((batch.span_count, batch.log_count), (0, 2)),
            other => panic!("unexpected exporters {other:?}"),
        }
    }
    assert!(pipelines.includes(routed.parts[0].0, "otlp/archive"));
    assert!(!pipelines.includes(routed.parts[0].0, "otlp"));
    // A sink the pipelines do not know takes everything.
    assert!(pipelines.includes(0, "test"));
}

#[test]
fn sampling_out_is_counted_apart_and_audit_records_are_not_sampled() {
    let config = parse(
        "processors:\n  probabilistic_sampler: { sampling_percentage: 0 }\n\
         pipelines:\n  traces: { processors: [probabilistic_sampler] }\n  logs: { processors: [probabilistic_sampler] }\n",
    )
    .unwrap();
    let counters = PipelineMetrics::default();
    let pipelines = Pipelines::new(
        &config.processors,
        &config.exporters,
        &config.pipelines,
        counters.clone(),
        ExportMetrics::default(),
    )
    .unwrap();
    let routed = pipelines.process(kernel_batch("svc", 5), false);
    // The log records carry no trace id: they pass.
    assert_eq!(routed.parts.len(), 1);
    assert_eq!(
        (routed.parts[0].1.span_count, routed.parts[0].1.log_count),
        (0, 2)
    );
    let sampled = counters
        .sampled_out
        .get_or_create(&metrics::ProcessorLabels {
            signal: "traces",
            processor: "probabilistic_sampler".into(),
        })
        .get();
    assert_eq!(sampled, 5);
    // The audit lane skips the processors.
    let routed = pipelines.process(kernel_batch("svc", 5), true);
    assert_eq!(routed.parts[0].1.span_count, 5);
}

#[test]
fn the_rate_limit_applies_to_kernel_made_spans_per_service() {
    let pipelines = pipelines_of(
        "processors:\n  rate_limit/kernel: { spans_per_second: 2 }\n\
         pipelines:\n  traces: { processors: [rate_limit/kernel] }\n",
    );
    let first = pipelines.process(kernel_batch("a", 5), false);
    assert_eq!(first.parts[0].1.span_count, 2);
    // Another service has its own bucket.
    let other = pipelines.process(kernel_batch("b", 5), false);
    assert_eq!(other.parts[0].1.span_count, 2);
    // Spans an SDK sent (another scope) are not limited.
    let mut sdk = kernel_batch("a", 5);
    sdk.traces = sdk.agent_spans.take().map(|spans| spans.into_request());
    for resource in &mut sdk.traces.as_mut().unwrap().resource_spans {
        for scope in &mut resource.scope_spans {
            scope.scope.as_mut().unwrap().name = "io.opentelemetry.sdk".into();
        }
    }
    let sdk = pipelines.process(sdk, false);
    assert_eq!(sdk.parts[0].1.span_count, 5);
}

#[test]
fn configuration_errors_name_the_key() {
    let cases = [
        (
            "pipelines:\n  traces: { processors: [nope] }\n",
            "pipelines.traces.processors[0]: no processor named \"nope\"",
        ),
        (
            "pipelines:\n  logs: { exporters: [otlp/x] }\n",
            "pipelines.logs.exporters: no exporter named \"otlp/x\"",
        ),
        (
            "processors:\n  probabilistic_sampler: { sampling_percentage: 5 }\n\
             pipelines:\n  metrics: { processors: [probabilistic_sampler] }\n",
            "a probabilistic_sampler processor does not apply to metrics",
        ),
        (
            "processors:\n  rate_limit: { spans_per_second: 5 }\n\
             pipelines:\n  logs: { processors: [rate_limit] }\n",
            "a rate_limit processor does not apply to logs",
        ),
        (
            "processors:\n  probabilistic_sampler: { sampling_percentage: 500 }\n\
             pipelines:\n  traces: { processors: [probabilistic_sampler] }\n",
            "processors.probabilistic_sampler: sampling_percentage: 500 is not allowed",
        ),
        (
            "processors:\n  batch: {}\n",
            "processors: unknown variant `batch`",
        ),
        (
            "exporters:\n  archive: { endpoint: 'http://127.0.0.1:1' }\n",
            "exporters.archive: name OTLP exporters `otlp/NAME`",
        ),
        (
            "exporters:\n  otlp/a: { endpoint: 'http://bad host' }\n",
            "exporters.otlp/a: endpoint",
        ),
    ];
    for (yaml, expected) in cases {
        let err = parse(yaml).expect_err(yaml);
        assert!(err.contains(expected), "{yaml}\n{err}\nwanted {expected}");
    }
}

/// One interval's profiles, as the profiler hands them over.
fn profiles_batch() -> OtlpBatch {
    use opentelemetry_proto::tonic::{
        collector::profiles::v1development::ExportProfilesServiceRequest,
        profiles::v1development::{Profile, ResourceProfiles, ScopeProfiles},
    };
    OtlpBatch::profiles(ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            scope_profiles: vec![ScopeProfiles {
                profiles: vec![Profile::default(), Profile::default()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dictionary: None,
    })
}

#[test]
fn profiles_go_to_the_otlp_exporters_never_to_the_file() {
    let pipelines = pipelines_of(ARCHIVE);
    let mut batch = kernel_batch("svc", 1);
    let profiles = profiles_batch();
    batch.profiles = profiles.profiles;
    batch.profile_count = profiles.profile_count;
    let routed = pipelines.process(batch, false);
    assert_eq!(routed.parts.len(), 2);
    for (set, part) in &routed.parts {
        match names(&pipelines, *set).as_slice() {
            ["file", "otlp", "otlp/archive"] => {
                assert_eq!((part.span_count, part.profile_count), (1, 0));
            }
            ["otlp", "otlp/archive"] => {
                assert_eq!((part.span_count, part.profile_count), (0, 2));
                assert!(part.profiles.is_some());
            }
            other => panic!("unexpected exporters {other:?}"),
        }
    }

    let pipelines = pipelines_of(&format!(
        "{ARCHIVE}pipelines:\n  profiles: {{ exporters: [otlp/archive] }}\n"
    ));
    let routed = pipelines.process(profiles_batch(), false);
    assert_eq!(routed.parts.len(), 1);
    assert_eq!(names(&pipelines, routed.parts[0].0), ["otlp/archive"]);
}

#[test]
fn the_profiles_pipeline_takes_exporters_only() {
    for (yaml, key) in [
        (
            "processors:\n  filter: {}\npipelines:\n  profiles: { processors: [filter] }\n",
            "pipelines.profiles.processors",
        ),
        (
            "pipelines:\n  profiles: { exporters: [file] }\n",
            "pipelines.profiles.exporters",
        ),
        (
            "pipelines:\n  profiles: { exporters: [otlp/nowhere] }\n",
            "pipelines.profiles.exporters",
        ),
    ] {
        // The config is refused when read, naming the key.
        let err = parse(yaml).unwrap_err();
        assert!(err.contains(&format!("{key}: ")), "{yaml}: {err}");
    }
}
