//! Sampling processors: consistent probability sampling by trace id, and a
//! per-service rate limit on the spans the agent makes from the kernel.
//! What they leave out is counted as sampled out, apart from drops.

use std::collections::HashMap;

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{AnyValue, KeyValue, any_value},
};
use tokio::time::Instant;

use super::config::{RateLimitConfig, SamplerConfig};
use crate::export::SCOPE_NAME;

/// The random part of a trace id: its last 7 bytes (56 bits).
const RANDOM_BITS: u32 = 56;

#[derive(Debug)]
pub struct ProbabilisticSampler {
    /// Kept when the trace id's random value is at least this; 2^56 keeps
    /// nothing.
    threshold: u64,
}

impl ProbabilisticSampler {
    pub fn new(config: &SamplerConfig) -> Result<Self, String> {
        let p = config.sampling_percentage;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!(
                "sampling_percentage: {p} is not allowed: use 0 to 100"
            ));
        }
        let span = (1u64 << RANDOM_BITS) as f64;
        // Rounded as the threshold is published (to 56 bits), so nodes that
        // share the setting share the threshold exactly.
        let threshold = ((1.0 - p / 100.0) * span).round() as u64;
        Ok(Self {
            threshold: threshold.min(1u64 << RANDOM_BITS),
        })
    }

    fn keeps(&self, trace_id: &[u8]) -> bool {
        match random_value(trace_id) {
            Some(r) => r >= self.threshold,
            // No trace to agree on: kept (nothing else could decide it the
            // same way everywhere).
            None => true,
        }
    }

    /// Removes the spans of traces not kept; returns how many.
    pub fn traces(&self, request: &mut ExportTraceServiceRequest) -> u64 {
        let mut removed = 0u64;
        for resource in &mut request.resource_spans {
            for scope in &mut resource.scope_spans {
                let before = scope.spans.len();
                scope.spans.retain(|span| self.keeps(&span.trace_id));
                removed += (before - scope.spans.len()) as u64;
            }
        }
        removed
    }

    /// Removes the log records of traces not kept; returns how many.
    pub fn logs(&self, request: &mut ExportLogsServiceRequest) -> u64 {
        let mut removed = 0u64;
        for resource in &mut request.resource_logs {
            for scope in &mut resource.scope_logs {
                let before = scope.log_records.len();
                scope
                    .log_records
                    .retain(|record| record.trace_id.is_empty() || self.keeps(&record.trace_id));
                removed += (before - scope.log_records.len()) as u64;
            }
        }
        removed
    }
}

/// The low 56 bits of a 16-byte trace id; `None` for any other length or
/// the all-zero (invalid) id.
fn random_value(trace_id: &[u8]) -> Option<u64> {
    let id: &[u8; 16] = trace_id.try_into().ok()?;
    if id.iter().all(|b| *b == 0) {
        return None;
    }
    let mut bytes = [0u8; 8];
    bytes[1..].copy_from_slice(&id[9..]);
    Some(u64::from_be_bytes(bytes))
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by `service.name`, bounded in number.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_services: usize,
    buckets: HashMap<String, Bucket>,
    /// Shared by the services beyond `max_services`.
    overflow: Option<Bucket>,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> Result<Self, String> {
        if config.spans_per_second == 0 {
            return Err("spans_per_second: must be at least 1".into());
        }
        let burst = config.burst.unwrap_or(config.spans_per_second);
        if burst == 0 {
            return Err("burst: must be at least 1".into());
        }
        if !(1..=1_048_576).contains(&config.max_services) {
            return Err(format!(
                "max_services: {} is not allowed: use 1 to 1048576",
                config.max_services
            ));
        }
        Ok(Self {
            rate: f64::from(config.spans_per_second),
            burst: f64::from(burst),
            max_services: config.max_services,
            buckets: HashMap::new(),
            overflow: None,
        })
    }

    /// Services tracked now.
    #[cfg(test)]
    pub fn services(&self) -> usize {
        self.buckets.len()
    }

    /// Removes the kernel-made spans over each service's rate; returns how
    /// many.
    pub fn traces(&mut self, request: &mut ExportTraceServiceRequest, now: Instant) -> u64 {
        let mut removed = 0u64;
        for resource in &mut request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| string_attribute(&r.attributes, "service.name"))
                .unwrap_or("");
            for scope in &mut resource.scope_spans {
                let kernel_made = scope.scope.as_ref().is_some_and(|s| s.name == SCOPE_NAME);
                if !kernel_made || scope.spans.is_empty() {
                    continue;
                }
                let allowed = self.take(service, scope.spans.len(), now);
                removed += (scope.spans.len() - allowed) as u64;
                scope.spans.truncate(allowed);
            }
        }
        removed
    }

    /// Takes up to `wanted` tokens of `service`'s bucket; returns how many.
    fn take(&mut self, service: &str, wanted: usize, now: Instant) -> usize {
        let full = Bucket {
            tokens: self.burst,
            at: now,
        };
        let (rate, burst) = (self.rate, self.burst);
        let bucket = if let Some(bucket) = self.buckets.get_mut(service) {
            bucket
        } else if self.buckets.len() < self.max_services {
            self.buckets.entry(service.to_owned()).or_insert(full)
        } else {
            self.overflow.get_or_insert(full)
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        let allowed = (bucket.tokens.floor() as usize).min(wanted);
        bucket.tokens -= allowed as f64;
        allowed
    }
}

pub fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.as_str()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(last7: u64) -> Vec<u8> {
        let mut id = vec![0xab; 9];
        id.extend_from_slice(&last7.to_be_bytes()[1..]);
        id
    }

    #[test]
    fn the_threshold_splits_the_random_bits() {
        let half = ProbabilisticSampler::new(&SamplerConfig {
            sampling_percentage: 50.0,
        })
        .unwrap();
        assert!(!half.keeps(&id((1 << 55) - 1)));
        assert!(half.keeps(&id(1 << 55)));
        let none = ProbabilisticSampler::new(&SamplerConfig {
            sampling_percentage: 0.0,
        })
        .unwrap();
        assert!(!none.keeps(&id((1 << 56) - 1)));
        let all = ProbabilisticSampler::new(&SamplerConfig {
            sampling_percentage: 100.0,
        })
        .unwrap();
        assert!(all.keeps(&id(0)));
        // Ids with no randomness to agree on are kept.
        assert!(none.keeps(&[0u8; 16]));
        assert!(none.keeps(&[1u8; 8]));
        assert!(
            ProbabilisticSampler::new(&SamplerConfig {
                sampling_percentage: 101.0
            })
            .is_err()
        );
    }

    #[test]
    fn a_share_of_random_traces_is_kept() {
        let sampler = ProbabilisticSampler::new(&SamplerConfig {
            sampling_percentage: 25.0,
        })
        .unwrap();
        // A fixed pseudo-random sequence (xorshift), not luck.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let kept = (0..20_000)
            .filter(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                sampler.keeps(&id(x >> 8))
            })
            .count();
        assert!((4_500..5_500).contains(&kept), "kept {kept} of 20000");
    }

    #[test]
    fn buckets_refill_at_the_rate_and_are_bounded_in_number() {
        let mut limiter = RateLimiter::new(&RateLimitConfig {
            spans_per_second: 10,
            burst: None,
            max_services: 2,
        })
        .unwrap();
        let t0 = Instant::now();
        assert_eq!(limiter.take("a", 25, t0), 10);
        assert_eq!(limiter.take("a", 25, t0), 0);
        assert_eq!(limiter.take("a", 25, t0 + Duration::from_millis(500)), 5);
        assert_eq!(limiter.take("b", 3, t0), 3);
        // Services beyond the bound share one bucket.
        assert_eq!(limiter.take("c", 8, t0), 8);
        assert_eq!(limiter.take("d", 8, t0), 2);
        assert_eq!(limiter.services(), 2);
    }
}
