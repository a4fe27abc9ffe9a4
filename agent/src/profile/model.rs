//! One interval of aggregated, symbolized CPU samples: what the sampler and
//! unwinder produce and what every encoder (pprof, OTLP, flame graph) reads.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

/// Samples of one aggregation interval, keyed by process and stack.
#[derive(Debug, Clone)]
pub struct IntervalProfile {
    pub start: SystemTime,
    pub duration: Duration,
    /// Sampling period in nanoseconds of CPU time (1e9 / frequency).
    pub period_nanos: u64,
    pub stacks: Vec<StackCount>,
}

/// How many times one stack was sampled in one process during the interval.
#[derive(Debug, Clone)]
pub struct StackCount {
    pub labels: Arc<ProcessLabels>,
    /// Leaf first: `frames[0]` is where the CPU was.
    pub frames: Vec<Frame>,
    pub count: u64,
}

/// Labels from the process model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ProcessLabels {
    pub pid: u32,
    pub thread_name: String,
    pub executable_name: String,
    pub container_id: Option<String>,
    pub service_name: String,
    /// The process's resource as every other signal carries it (string
    /// attributes: host, container, Kubernetes…), for OTLP profiles; empty
    /// for a process the model does not know yet.
    pub resource: Vec<(&'static str, String)>,
    /// The pod's `k8s.*` resource attributes, when the process is in one.
    pub k8s: Vec<(&'static str, String)>,
}

/// One stack frame: a user-space address inside a file mapping, or a kernel address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The address in the process (or the kernel) as sampled.
    pub address: u64,
    /// The file mapping it falls in; `None` for kernel frames and anonymous memory.
    pub mapping: Option<Arc<Mapping>>,
    /// Offset of `address` in the mapped file (what a backend symbolizes with).
    pub file_offset: u64,
    pub kernel: bool,
    /// Outermost function last; inlined callees come first. Empty when unknown.
    pub symbols: Vec<Symbol>,
}

/// A mapped file, identified by build-id when it has one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub path: String,
    /// Hex GNU build-id, when the file has one.
    pub build_id: Option<String>,
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Symbol {
    pub function: Arc<str>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
}
