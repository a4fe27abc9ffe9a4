//! Converts an interval to an OTLP profiles export request and sends it
//! over gRPC (`ProfilesService/Export`, v1development).
//!
//! Each process is a `ResourceProfiles` (service.name, process.pid,
//! process.executable.name, container.id) with one `Profile`; the thread
//! name is a sample attribute. All tables live in the request's shared
//! `ProfilesDictionary`, each starting with its zero entry as the spec
//! requires. Sample type `samples/count`, period `cpu/nanoseconds`.
//! Mappings carry the GNU build-id as an attribute, locations their address
//! and `profile.frame.type` (kernel/native), so frames without symbols can
//! be symbolized by a back-end.

use std::{collections::HashMap, sync::Arc, time::Duration};

use opentelemetry_proto::tonic::{
    collector::profiles::v1development::{
        ExportProfilesServiceRequest, ExportProfilesServiceResponse,
        profiles_service_client::ProfilesServiceClient,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    profiles::v1development::{
        Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
        ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
    },
    resource::v1::Resource,
};
use rand::Rng;
use tonic::{
    codec::CompressionEncoding,
    metadata::{AsciiMetadataKey, AsciiMetadataValue},
    transport::Channel,
};

use super::{
    model::{self, Frame, IntervalProfile, ProcessLabels},
    names,
    strings::StringTable,
};
use crate::export::{
    SCOPE_NAME, SCOPE_VERSION,
    otlp_grpc::{GrpcParts, GrpcSettings, finish},
    retry::Attempt,
    sink::PartialSuccess,
};

#[derive(Debug, thiserror::Error)]
pub enum OtlpEncodeError {
    #[error("the profile's {table} table has {len} entries, more than OTLP's int32 indices reach")]
    TableTooLarge { table: &'static str, len: usize },
}

/// The export request of one interval.
pub fn build_request(
    profile: &IntervalProfile,
) -> Result<ExportProfilesServiceRequest, OtlpEncodeError> {
    let mut d = Dictionary::new();
    let sample_type = ValueType {
        type_strindex: d.string("samples"),
        unit_strindex: d.string("count"),
    };
    let period_type = ValueType {
        type_strindex: d.string("cpu"),
        unit_strindex: d.string("nanoseconds"),
    };
    let time_unix_nano = profile
        .start
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
    let duration_nano = u64::try_from(profile.duration.as_nanos()).unwrap_or(u64::MAX);
    let period = i64::try_from(profile.period_nanos).unwrap_or(i64::MAX);

    // One resource per process, in order of first appearance.
    let mut resource_of: HashMap<ProcessKey<'_>, usize> = HashMap::new();
    let mut resources: Vec<ResourceProfiles> = Vec::new();
    for stack in &profile.stacks {
        let key = ProcessKey::of(&stack.labels);
        let r = *resource_of.entry(key).or_insert_with(|| {
            resources.push(resource_profiles(
                &stack.labels,
                Profile {
                    sample_type: Some(sample_type),
                    time_unix_nano,
                    duration_nano,
                    period_type: Some(period_type),
                    period,
                    profile_id: rand::rng().random::<[u8; 16]>().to_vec(),
                    ..Default::default()
                },
            ));
            resources.len() - 1
        });
        let stack_index = d.stack(&stack.frames);
        let mut attribute_indices = Vec::new();
        if !stack.labels.thread_name.is_empty() {
            attribute_indices.push(d.attribute(names::THREAD_NAME, &stack.labels.thread_name));
        }
        let sample = Sample {
            stack_index,
            attribute_indices,
            link_index: 0,
            values: vec![i64::try_from(stack.count).unwrap_or(i64::MAX)],
            timestamps_unix_nano: Vec::new(),
        };
        // The vector has an entry for every index handed out above.
        if let Some(profile) = resources
            .get_mut(r)
            .and_then(|rp| rp.scope_profiles.first_mut())
            .and_then(|sp| sp.profiles.first_mut())
        {
            profile.samples.push(sample);
        }
    }
    Ok(ExportProfilesServiceRequest {
        resource_profiles: resources,
        dictionary: Some(d.finish()?),
    })
}

/// How many `Profile` messages a request carries (the unit of the
/// `profiles` signal in the export metrics and of partial success).
pub fn profile_count(request: &ExportProfilesServiceRequest) -> u64 {
    request
        .resource_profiles
        .iter()
        .flat_map(|rp| &rp.scope_profiles)
        .map(|sp| sp.profiles.len() as u64)
        .sum()
}

#[derive(Hash, PartialEq, Eq)]
struct ProcessKey<'a> {
    pid: u32,
    executable: &'a str,
    container: Option<&'a str>,
    service: &'a str,
}

impl<'a> ProcessKey<'a> {
    fn of(labels: &'a ProcessLabels) -> Self {
        Self {
            pid: labels.pid,
            executable: &labels.executable_name,
            container: labels.container_id.as_deref(),
            service: &labels.service_name,
        }
    }
}

fn resource_profiles(labels: &ProcessLabels, profile: Profile) -> ResourceProfiles {
    let mut attributes = vec![key_value(names::PROCESS_PID, int(i64::from(labels.pid)))];
    let texts = [
        (names::SERVICE_NAME, labels.service_name.as_str()),
        (names::EXECUTABLE_NAME, labels.executable_name.as_str()),
        (
            names::CONTAINER_ID,
            labels.container_id.as_deref().unwrap_or(""),
        ),
    ];
    for (key, value) in texts {
        if !value.is_empty() {
            attributes.push(key_value(key, text(value)));
        }
    }
    for (key, value) in &labels.k8s {
        attributes.push(key_value(key, text(value)));
    }
    ResourceProfiles {
        resource: Some(Resource {
            attributes,
            ..Default::default()
        }),
        scope_profiles: vec![ScopeProfiles {
            scope: Some(InstrumentationScope {
                name: SCOPE_NAME.to_owned(),
                version: SCOPE_VERSION.to_owned(),
                ..Default::default()
            }),
            profiles: vec![profile],
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

fn key_value(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value),
        ..Default::default()
    }
}

fn text(value: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value.to_owned())),
    }
}

fn int(value: i64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(value)),
    }
}

/// The request-wide tables. Indices are handed out as `i32` while
/// building; `finish` refuses tables past `i32::MAX`, so no handed-out
/// index has wrapped.
struct Dictionary<'a> {
    strings: StringTable,
    mappings: Vec<Mapping>,
    mapping_index: HashMap<&'a model::Mapping, i32>,
    locations: Vec<Location>,
    location_index: HashMap<&'a Frame, i32>,
    functions: Vec<Function>,
    function_index: HashMap<(&'a str, Option<&'a str>), i32>,
    attributes: Vec<KeyValueAndUnit>,
    /// By key, then value: looked up without allocating.
    attribute_index: HashMap<&'static str, HashMap<String, i32>>,
    stacks: Vec<Stack>,
    stack_index: HashMap<Vec<i32>, i32>,
}

impl<'a> Dictionary<'a> {
    fn new() -> Self {
        Self {
            strings: StringTable::new(),
            mappings: vec![Mapping::default()],
            mapping_index: HashMap::new(),
            locations: vec![Location::default()],
            location_index: HashMap::new(),
            functions: vec![Function::default()],
            function_index: HashMap::new(),
            attributes: vec![KeyValueAndUnit::default()],
            attribute_index: HashMap::new(),
            stacks: vec![Stack::default()],
            stack_index: HashMap::new(),
        }
    }

    fn string(&mut self, s: &str) -> i32 {
        self.strings.intern(s) as i32
    }

    fn attribute(&mut self, key: &'static str, value: &str) -> i32 {
        if let Some(&i) = self.attribute_index.get(key).and_then(|v| v.get(value)) {
            return i;
        }
        let key_strindex = self.string(key);
        let i = self.attributes.len() as i32;
        self.attributes.push(KeyValueAndUnit {
            key_strindex,
            value: Some(text(value)),
            unit_strindex: 0,
        });
        self.attribute_index
            .entry(key)
            .or_default()
            .insert(value.to_owned(), i);
        i
    }

    fn stack(&mut self, frames: &'a [Frame]) -> i32 {
        let location_indices: Vec<i32> = frames.iter().map(|f| self.location(f)).collect();
        if let Some(&i) = self.stack_index.get(&location_indices) {
            return i;
        }
        let i = self.stacks.len() as i32;
        self.stacks.push(Stack {
            location_indices: location_indices.clone(),
        });
        self.stack_index.insert(location_indices, i);
        i
    }

    fn location(&mut self, frame: &'a Frame) -> i32 {
        if let Some(&i) = self.location_index.get(frame) {
            return i;
        }
        let mapping_index = frame.mapping.as_deref().map_or(0, |m| self.mapping(m));
        let lines = frame
            .symbols
            .iter()
            .map(|symbol| Line {
                function_index: self.function(&symbol.function, symbol.file.as_deref()),
                line: symbol.line.map_or(0, i64::from),
                column: 0,
            })
            .collect();
        let frame_type = if frame.kernel { "kernel" } else { "native" };
        let attribute_indices = vec![self.attribute(names::FRAME_TYPE, frame_type)];
        let i = self.locations.len() as i32;
        self.locations.push(Location {
            mapping_index,
            address: frame.address,
            lines,
            attribute_indices,
        });
        self.location_index.insert(frame, i);
        i
    }

    fn mapping(&mut self, mapping: &'a model::Mapping) -> i32 {
        if let Some(&i) = self.mapping_index.get(mapping) {
            return i;
        }
        let attribute_indices = mapping
            .build_id
            .as_deref()
            .map(|id| vec![self.attribute(names::BUILD_ID_GNU, id)])
            .unwrap_or_default();
        let filename_strindex = self.string(&mapping.path);
        let i = self.mappings.len() as i32;
        self.mappings.push(Mapping {
            memory_start: mapping.start,
            memory_limit: mapping.end,
            file_offset: mapping.file_offset,
            filename_strindex,
            attribute_indices,
        });
        self.mapping_index.insert(mapping, i);
        i
    }

    fn function(&mut self, name: &'a str, file: Option<&'a str>) -> i32 {
        if let Some(&i) = self.function_index.get(&(name, file)) {
            return i;
        }
        let name_strindex = self.string(name);
        let filename_strindex = self.string(file.unwrap_or(""));
        let i = self.functions.len() as i32;
        self.functions.push(Function {
            name_strindex,
            system_name_strindex: name_strindex,
            filename_strindex,
            start_line: 0,
        });
        self.function_index.insert((name, file), i);
        i
    }

    fn finish(self) -> Result<ProfilesDictionary, OtlpEncodeError> {
        let limit = i32::MAX as usize;
        for (table, len) in [
            ("string", self.strings.len()),
            ("mapping", self.mappings.len()),
            ("location", self.locations.len()),
            ("function", self.functions.len()),
            ("attribute", self.attributes.len()),
            ("stack", self.stacks.len()),
        ] {
            if len > limit {
                return Err(OtlpEncodeError::TableTooLarge { table, len });
            }
        }
        Ok(ProfilesDictionary {
            mapping_table: self.mappings,
            location_table: self.locations,
            function_table: self.functions,
            link_table: vec![Link::default()],
            string_table: self.strings.into_strings(),
            attribute_table: self.attributes,
            stack_table: self.stacks,
        })
    }
}

impl PartialSuccess for ExportProfilesServiceResponse {
    fn partial_success(self) -> (u64, String) {
        self.partial_success.map_or((0, String::new()), |p| {
            (
                u64::try_from(p.rejected_profiles).unwrap_or(0),
                p.error_message,
            )
        })
    }
}

/// The gRPC client of the collector's profiles service.
#[derive(Debug, Clone)]
pub struct ProfilesExporter {
    endpoint: Arc<str>,
    client: ProfilesServiceClient<Channel>,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
}

impl ProfilesExporter {
    /// Connects lazily (so needs the tokio runtime): an unreachable
    /// collector is a retryable export error later, not a start-up failure.
    pub fn connect(settings: GrpcSettings) -> Self {
        let GrpcParts {
            endpoint,
            channel,
            headers,
            gzip,
        } = settings.into_parts();
        let mut client = ProfilesServiceClient::new(channel);
        if gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        Self {
            endpoint,
            client,
            headers,
        }
    }

    /// One attempt, classified for the retry loop.
    pub async fn export(
        &self,
        message: &ExportProfilesServiceRequest,
        timeout: Duration,
    ) -> Attempt {
        let mut request = tonic::Request::new(message.clone());
        // grpc-timeout tells the server; the tokio timeout enforces it.
        request.set_timeout(timeout);
        for (key, value) in &self.headers {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        let mut client = self.client.clone();
        finish(
            &self.endpoint,
            tokio::time::timeout(timeout, client.export(request)).await,
        )
    }
}

/// Checks that every index of `request` resolves and each table starts
/// with its zero entry; panics naming what is broken. Returns, per sample,
/// the resolved stack as (function names, address) leaf first, with the
/// sample's resource attributes and sample attributes, for assertions.
#[cfg(test)]
pub fn check_dictionary(request: &ExportProfilesServiceRequest) -> Vec<ResolvedSample> {
    let d = request.dictionary.as_ref().expect("dictionary");
    assert_eq!(d.string_table.first().map(String::as_str), Some(""));
    assert_eq!(d.mapping_table.first(), Some(&Mapping::default()));
    assert_eq!(d.location_table.first(), Some(&Location::default()));
    assert_eq!(d.function_table.first(), Some(&Function::default()));
    assert_eq!(d.link_table.first(), Some(&Link::default()));
    assert_eq!(d.attribute_table.first(), Some(&KeyValueAndUnit::default()));
    assert_eq!(d.stack_table.first(), Some(&Stack::default()));
    fn get<'t, T>(table: &'t [T], i: i32, what: &str) -> &'t T {
        usize::try_from(i)
            .ok()
            .and_then(|i| table.get(i))
            .unwrap_or_else(|| panic!("{what} index {i} out of range"))
    }
    let string = |i: i32| get(&d.string_table, i, "string").as_str();
    let attribute = |i: i32| -> (String, String) {
        let a = get(&d.attribute_table, i, "attribute");
        let value = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            Some(any_value::Value::IntValue(n)) => n.to_string(),
            other => panic!("unexpected attribute value {other:?}"),
        };
        string(a.unit_strindex);
        (string(a.key_strindex).to_owned(), value)
    };
    for m in &d.mapping_table[1..] {
        string(m.filename_strindex);
        for &i in &m.attribute_indices {
            attribute(i);
        }
    }
    for f in &d.function_table[1..] {
        string(f.name_strindex);
        string(f.system_name_strindex);
        string(f.filename_strindex);
    }
    let mut resolved = Vec::new();
    for rp in &request.resource_profiles {
        let resource: Vec<(String, String)> = rp
            .resource
            .as_ref()
            .map(|r| {
                r.attributes
                    .iter()
                    .map(|kv| {
                        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(s)) => s.clone(),
                            Some(any_value::Value::IntValue(n)) => n.to_string(),
                            other => panic!("unexpected resource value {other:?}"),
                        };
                        (kv.key.clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for sp in &rp.scope_profiles {
            for profile in &sp.profiles {
                assert_eq!(profile.profile_id.len(), 16);
                for vt in profile.sample_type.iter().chain(profile.period_type.iter()) {
                    string(vt.type_strindex);
                    string(vt.unit_strindex);
                }
                for sample in &profile.samples {
                    assert_eq!(sample.values.len(), 1, "one value per sample type");
                    get(&d.link_table, sample.link_index, "link");
                    let stack = get(&d.stack_table, sample.stack_index, "stack");
                    let frames = stack
                        .location_indices
                        .iter()
                        .map(|&i| {
                            let l = get(&d.location_table, i, "location");
                            let mapping = get(&d.mapping_table, l.mapping_index, "mapping");
                            let build_id = mapping
                                .attribute_indices
                                .iter()
                                .map(|&a| attribute(a))
                                .find(|(k, _)| k == names::BUILD_ID_GNU)
                                .map(|(_, v)| v);
                            let kind = l
                                .attribute_indices
                                .iter()
                                .map(|&a| attribute(a))
                                .find(|(k, _)| k == names::FRAME_TYPE)
                                .map(|(_, v)| v)
                                .unwrap_or_default();
                            ResolvedFrame {
                                functions: l
                                    .lines
                                    .iter()
                                    .map(|line| {
                                        let f =
                                            get(&d.function_table, line.function_index, "function");
                                        string(f.name_strindex).to_owned()
                                    })
                                    .collect(),
                                address: l.address,
                                build_id,
                                kind,
                            }
                        })
                        .collect();
                    resolved.push(ResolvedSample {
                        resource: resource.clone(),
                        attributes: sample
                            .attribute_indices
                            .iter()
                            .map(|&a| attribute(a))
                            .collect(),
                        frames,
                        count: sample.values[0],
                    });
                }
            }
        }
    }
    resolved
}

#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSample {
    pub resource: Vec<(String, String)>,
    pub attributes: Vec<(String, String)>,
    pub frames: Vec<ResolvedFrame>,
    pub count: i64,
}

#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedFrame {
    pub functions: Vec<String>,
    pub address: u64,
    pub build_id: Option<String>,
    pub kind: String,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::profile::test_fixture::{self, APP_BUILD_ID, LIBC_BUILD_ID, PERIOD_NANOS};

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn request_resolves_and_groups_by_process() {
        let request = build_request(&test_fixture::interval()).unwrap();
        // Survives the wire.
        let request =
            ExportProfilesServiceRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            request.resource_profiles.len(),
            2,
            "one resource per process"
        );
        assert_eq!(profile_count(&request), 2);
        let d = request.dictionary.as_ref().unwrap();
        let profile = &request.resource_profiles[0].scope_profiles[0].profiles[0];
        let s = |i: i32| d.string_table[i as usize].as_str();
        let st = profile.sample_type.unwrap();
        assert_eq!(
            (s(st.type_strindex), s(st.unit_strindex)),
            ("samples", "count")
        );
        let pt = profile.period_type.unwrap();
        assert_eq!(
            (s(pt.type_strindex), s(pt.unit_strindex)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(profile.period, PERIOD_NANOS as i64);
        assert_eq!(
            profile.time_unix_nano,
            test_fixture::START_SECS * 1_000_000_000
        );
        assert_eq!(profile.duration_nano, 10_000_000_000);
        let scope = request.resource_profiles[0].scope_profiles[0]
            .scope
            .as_ref()
            .unwrap();
        assert_eq!(scope.name, "selfops");
        // Six distinct frames, three distinct stacks (plus the zero entries).
        assert_eq!(d.location_table.len(), 7);
        assert_eq!(d.stack_table.len(), 4);
        assert_eq!(d.mapping_table.len(), 3);

        let samples = check_dictionary(&request);
        assert_eq!(samples.len(), 3);
        let shopd = &samples[0];
        assert_eq!(
            shopd.resource,
            pairs(&[
                ("process.pid", "4242"),
                ("service.name", "shop"),
                ("process.executable.name", "shopd"),
                ("container.id", "c0ffee1234567890"),
            ])
        );
        assert_eq!(shopd.attributes, pairs(&[("thread.name", "worker-1")]));
        assert_eq!(shopd.count, 30);
        assert_eq!(shopd.frames[0].functions, ["validate_sku", "parse_order"]);
        assert_eq!(shopd.frames[0].build_id.as_deref(), Some(APP_BUILD_ID));
        assert_eq!(shopd.frames[0].kind, "native");
        assert_eq!(shopd.frames[2].functions, ["main"]);

        // Frames without symbols keep mapping (build-id) and address.
        let syscall = &samples[1];
        assert!(syscall.frames[0].functions.is_empty());
        assert_eq!(syscall.frames[0].kind, "kernel");
        assert_eq!(syscall.frames[0].address, 0xffff_ffff_8120_0042);
        assert_eq!(syscall.frames[0].build_id, None);
        assert_eq!(syscall.frames[1].functions, ["do_syscall_64"]);
        assert!(syscall.frames[2].functions.is_empty());
        assert_eq!(syscall.frames[2].address, 0x7f00_0001_2340);
        assert_eq!(syscall.frames[2].build_id.as_deref(), Some(LIBC_BUILD_ID));

        let batch = &samples[2];
        assert_eq!(
            batch.resource,
            pairs(&[
                ("process.pid", "777"),
                ("service.name", "batchjob"),
                ("process.executable.name", "batchjob"),
            ])
        );
        assert!(batch.attributes.is_empty(), "no thread name, no attribute");
    }

    #[test]
    fn shared_entries_are_not_duplicated() {
        let request = build_request(&test_fixture::large_interval(500)).unwrap();
        check_dictionary(&request);
        let d = request.dictionary.unwrap();
        let unique = |v: Vec<Vec<u8>>| {
            let n = v.len();
            let set: std::collections::HashSet<Vec<u8>> = v.into_iter().collect();
            assert_eq!(set.len(), n);
        };
        unique(
            d.location_table
                .iter()
                .map(Message::encode_to_vec)
                .collect(),
        );
        unique(
            d.function_table
                .iter()
                .map(Message::encode_to_vec)
                .collect(),
        );
        unique(d.stack_table.iter().map(Message::encode_to_vec).collect());
        unique(
            d.attribute_table
                .iter()
                .map(Message::encode_to_vec)
                .collect(),
        );
        unique(
            d.string_table
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        );
    }
}
