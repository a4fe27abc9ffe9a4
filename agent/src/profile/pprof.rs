//! Encodes an interval as a pprof `Profile` (gzip on disk), readable by
//! `go tool pprof`.
//!
//! Two sample types, `samples/count` and `cpu/nanoseconds` (count times the
//! period), the latter the default. Each distinct frame is one Location;
//! inlined functions are several Lines of it, callees first. Frames without
//! symbols keep their mapping (with build-id) and address, so a back-end
//! can symbolize them later. Per-sample labels carry the process model's
//! labels (`process.pid` numeric, the rest strings; empty ones omitted).

use std::{collections::HashMap, io::Write, sync::Arc};

use flate2::{Compression, write::GzEncoder};
use selfops_proto::pprof;

use super::{
    model::{Frame, IntervalProfile, Mapping, ProcessLabels},
    names,
    strings::StringTable,
};

/// Builds the pprof message of one interval.
pub fn encode(profile: &IntervalProfile) -> pprof::Profile {
    let mut b = Builder::default();
    let samples_count = value_type(&mut b.strings, "samples", "count");
    let cpu_nanos = value_type(&mut b.strings, "cpu", "nanoseconds");
    let period = i64::try_from(profile.period_nanos).unwrap_or(i64::MAX);
    let keys = LabelKeys::new(&mut b.strings);
    let mut labels_of: HashMap<*const ProcessLabels, Vec<pprof::Label>> = HashMap::new();
    let mut samples = Vec::with_capacity(profile.stacks.len());
    for stack in &profile.stacks {
        let location_id = stack.frames.iter().map(|f| b.location(f)).collect();
        let label = labels_of
            .entry(Arc::as_ptr(&stack.labels))
            .or_insert_with(|| keys.labels(&mut b.strings, &stack.labels))
            .clone();
        let count = i64::try_from(stack.count).unwrap_or(i64::MAX);
        samples.push(pprof::Sample {
            location_id,
            value: vec![count, count.saturating_mul(period)],
            label,
        });
    }
    let default_sample_type = cpu_nanos.r#type;
    let time_nanos = profile
        .start
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let duration_nanos = i64::try_from(profile.duration.as_nanos()).unwrap_or(i64::MAX);
    pprof::Profile {
        sample_type: vec![samples_count, cpu_nanos],
        sample: samples,
        mapping: b.finish_mappings(),
        location: b.locations,
        function: b.functions,
        string_table: b.strings.into_strings(),
        drop_frames: 0,
        keep_frames: 0,
        time_nanos,
        duration_nanos,
        period_type: Some(cpu_nanos),
        period,
        comment: Vec::new(),
        default_sample_type,
    }
}

/// The gzip-compressed encoding, as `go tool pprof` expects on disk.
pub fn encode_gzip(profile: &IntervalProfile) -> std::io::Result<Vec<u8>> {
    let message = prost::Message::encode_to_vec(&encode(profile));
    // Fast compression: a few percent larger, several times quicker.
    let mut gz = GzEncoder::new(Vec::with_capacity(message.len() / 4), Compression::fast());
    gz.write_all(&message)?;
    gz.finish()
}

fn value_type(strings: &mut StringTable, kind: &str, unit: &str) -> pprof::ValueType {
    pprof::ValueType {
        r#type: index(strings.intern(kind)),
        unit: index(strings.intern(unit)),
    }
}

fn index(i: usize) -> i64 {
    // A table can never outgrow memory, let alone i64.
    i64::try_from(i).unwrap_or(i64::MAX)
}

fn id(position: usize) -> u64 {
    // Ids are 1-based: 0 means "none" in pprof.
    position as u64 + 1
}

struct LabelKeys {
    pid: i64,
    thread: i64,
    executable: i64,
    container: i64,
    service: i64,
}

impl LabelKeys {
    fn new(strings: &mut StringTable) -> Self {
        Self {
            pid: index(strings.intern(names::PROCESS_PID)),
            thread: index(strings.intern(names::THREAD_NAME)),
            executable: index(strings.intern(names::EXECUTABLE_NAME)),
            container: index(strings.intern(names::CONTAINER_ID)),
            service: index(strings.intern(names::SERVICE_NAME)),
        }
    }

    fn labels(&self, strings: &mut StringTable, l: &ProcessLabels) -> Vec<pprof::Label> {
        let mut labels = vec![pprof::Label {
            key: self.pid,
            num: i64::from(l.pid),
            ..Default::default()
        }];
        let texts = [
            (self.thread, l.thread_name.as_str()),
            (self.executable, l.executable_name.as_str()),
            (self.container, l.container_id.as_deref().unwrap_or("")),
            (self.service, l.service_name.as_str()),
        ];
        for (key, value) in texts {
            if !value.is_empty() {
                labels.push(pprof::Label {
                    key,
                    str: index(strings.intern(value)),
                    ..Default::default()
                });
            }
        }
        for (key, value) in &l.k8s {
            labels.push(pprof::Label {
                key: index(strings.intern(key)),
                str: index(strings.intern(value)),
                ..Default::default()
            });
        }
        labels
    }
}

#[derive(Default)]
struct Builder<'a> {
    strings: StringTable,
    mapping_ids: HashMap<&'a Mapping, u64>,
    mappings: Vec<pprof::Mapping>,
    location_ids: HashMap<&'a Frame, u64>,
    locations: Vec<pprof::Location>,
    function_ids: HashMap<(&'a str, Option<&'a str>), u64>,
    functions: Vec<pprof::Function>,
}

impl<'a> Builder<'a> {
    fn location(&mut self, frame: &'a Frame) -> u64 {
        if let Some(&id) = self.location_ids.get(frame) {
            return id;
        }
        let mapping_id = frame.mapping.as_deref().map_or(0, |m| self.mapping(m));
        let line = frame
            .symbols
            .iter()
            .map(|symbol| pprof::Line {
                function_id: self.function(&symbol.function, symbol.file.as_deref()),
                line: symbol.line.map_or(0, i64::from),
                column: 0,
            })
            .collect();
        let location_id = id(self.locations.len());
        self.locations.push(pprof::Location {
            id: location_id,
            mapping_id,
            address: frame.address,
            line,
            is_folded: false,
        });
        self.location_ids.insert(frame, location_id);
        location_id
    }

    fn mapping(&mut self, mapping: &'a Mapping) -> u64 {
        if let Some(&id) = self.mapping_ids.get(mapping) {
            return id;
        }
        let mapping_id = id(self.mappings.len());
        self.mappings.push(pprof::Mapping {
            id: mapping_id,
            memory_start: mapping.start,
            memory_limit: mapping.end,
            file_offset: mapping.file_offset,
            filename: index(self.strings.intern(&mapping.path)),
            build_id: index(
                self.strings
                    .intern(mapping.build_id.as_deref().unwrap_or("")),
            ),
            ..Default::default()
        });
        self.mapping_ids.insert(mapping, mapping_id);
        mapping_id
    }

    fn function(&mut self, name: &'a str, file: Option<&'a str>) -> u64 {
        if let Some(&id) = self.function_ids.get(&(name, file)) {
            return id;
        }
        let function_id = id(self.functions.len());
        let name_index = index(self.strings.intern(name));
        self.functions.push(pprof::Function {
            id: function_id,
            name: name_index,
            system_name: name_index,
            filename: index(self.strings.intern(file.unwrap_or(""))),
            start_line: 0,
        });
        self.function_ids.insert((name, file), function_id);
        function_id
    }

    /// Sets each mapping's symbolization flags from its locations. pprof
    /// symbolizes (from the local file) only mappings whose
    /// `has_functions` is false, so it is set only when every location of
    /// the mapping has symbols.
    fn finish_mappings(&mut self) -> Vec<pprof::Mapping> {
        let mut mappings = std::mem::take(&mut self.mappings);
        let mut unsymbolized = vec![false; mappings.len()];
        for location in &self.locations {
            let Some(i) = usize::try_from(location.mapping_id)
                .ok()
                .and_then(|id| id.checked_sub(1))
                .filter(|&i| i < mappings.len())
            else {
                continue;
            };
            let mapping = &mut mappings[i];
            if location.line.is_empty() {
                unsymbolized[i] = true;
                continue;
            }
            mapping.has_filenames |= location.line.iter().any(|l| {
                usize::try_from(l.function_id.saturating_sub(1))
                    .ok()
                    .and_then(|f| self.functions.get(f))
                    .is_some_and(|f| f.filename != 0)
            });
            mapping.has_line_numbers |= location.line.iter().any(|l| l.line != 0);
            mapping.has_inline_frames |= location.line.len() > 1;
            mapping.has_functions = true;
        }
        for (mapping, unsymbolized) in mappings.iter_mut().zip(unsymbolized) {
            mapping.has_functions &= !unsymbolized;
        }
        mappings
    }
}

/// Every rule of the format the encoder promises; panics naming the broken
/// one. Shared by the tests of the files and the pipeline.
#[cfg(test)]
pub fn check_invariants(p: &pprof::Profile) {
    use std::collections::HashSet;

    let strings = &p.string_table;
    assert_eq!(strings.first().map(String::as_str), Some(""), "string 0");
    let unique: HashSet<&String> = strings.iter().collect();
    assert_eq!(unique.len(), strings.len(), "strings are deduplicated");
    let string = |i: i64| -> &str {
        let s = usize::try_from(i).ok().and_then(|i| strings.get(i));
        s.unwrap_or_else(|| panic!("string index {i} out of range"))
    };
    fn ids<'a>(what: &str, ids: impl Iterator<Item = &'a u64>) -> HashSet<u64> {
        let mut seen = HashSet::new();
        for &id in ids {
            assert_ne!(id, 0, "{what} id 0");
            assert!(seen.insert(id), "{what} id {id} twice");
        }
        seen
    }
    let mappings = ids("mapping", p.mapping.iter().map(|m| &m.id));
    let locations = ids("location", p.location.iter().map(|l| &l.id));
    let functions = ids("function", p.function.iter().map(|f| &f.id));
    for m in &p.mapping {
        string(m.filename);
        string(m.build_id);
        assert!(m.memory_start < m.memory_limit, "mapping range");
    }
    for f in &p.function {
        string(f.name);
        string(f.system_name);
        string(f.filename);
    }
    for l in &p.location {
        assert!(
            l.mapping_id == 0 || mappings.contains(&l.mapping_id),
            "location {} -> mapping {}",
            l.id,
            l.mapping_id
        );
        if let Some(m) = p.mapping.iter().find(|m| m.id == l.mapping_id) {
            assert!(
                (m.memory_start..m.memory_limit).contains(&l.address),
                "location {} outside its mapping",
                l.id
            );
        }
        for line in &l.line {
            assert!(functions.contains(&line.function_id), "line -> function");
        }
    }
    for vt in p.sample_type.iter().chain(p.period_type.iter()) {
        string(vt.r#type);
        string(vt.unit);
    }
    string(p.default_sample_type);
    for s in &p.sample {
        assert_eq!(s.value.len(), p.sample_type.len(), "values per sample");
        for id in &s.location_id {
            assert!(locations.contains(id), "sample -> location {id}");
        }
        for label in &s.label {
            string(label.key);
            string(label.str);
            string(label.num_unit);
        }
    }
}

#[cfg(test)]
pub mod tests {
    use std::{io::Read, process::Command};

    use prost::Message;

    use super::*;
    use crate::profile::test_fixture::{self, APP_BUILD_ID, LIBC_BUILD_ID, PERIOD_NANOS};

    fn decode_gzip(bytes: &[u8]) -> pprof::Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .unwrap();
        pprof::Profile::decode(raw.as_slice()).unwrap()
    }

    fn function_names(p: &pprof::Profile, location: &pprof::Location) -> Vec<String> {
        location
            .line
            .iter()
            .map(|line| {
                let f = p
                    .function
                    .iter()
                    .find(|f| f.id == line.function_id)
                    .unwrap();
                p.string_table[f.name as usize].clone()
            })
            .collect()
    }

    #[test]
    fn round_trip_keeps_every_table_invariant() {
        let interval = test_fixture::interval();
        let p = decode_gzip(&encode_gzip(&interval).unwrap());
        assert_eq!(p, encode(&interval), "gzip file holds the message");
        check_invariants(&p);
        let s = |i: i64| p.string_table[i as usize].as_str();

        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!(s(p.default_sample_type), "cpu");
        let period = p.period_type.unwrap();
        assert_eq!((s(period.r#type), s(period.unit)), ("cpu", "nanoseconds"));
        assert_eq!(p.period, PERIOD_NANOS as i64);
        assert_eq!(
            p.time_nanos,
            test_fixture::START_SECS as i64 * 1_000_000_000
        );
        assert_eq!(p.duration_nanos, 10_000_000_000);

        // Totals: 42 samples, each one period of CPU time.
        assert_eq!(p.sample.len(), 3);
        assert_eq!(p.sample.iter().map(|x| x.value[0]).sum::<i64>(), 42);
        assert_eq!(
            p.sample.iter().map(|x| x.value[1]).sum::<i64>(),
            42 * PERIOD_NANOS as i64
        );

        // Shared frames are one location; 6 distinct frames in all.
        assert_eq!(p.location.len(), 6);
        assert_eq!(p.mapping.len(), 2);
        assert_eq!(p.sample[0].location_id[0], p.sample[2].location_id[0]);

        // The inlined frame: callee first, then the function it is in.
        let leaf = p
            .location
            .iter()
            .find(|l| l.id == p.sample[0].location_id[0])
            .unwrap();
        assert_eq!(function_names(&p, leaf), ["validate_sku", "parse_order"]);
        assert_eq!(leaf.line[0].line, 31);
        assert_eq!(leaf.address, 0x5555_0000_2345);

        // Frames without symbols keep mapping (build-id) and address.
        let second = &p.sample[1];
        let unknown_kernel = p
            .location
            .iter()
            .find(|l| l.id == second.location_id[0])
            .unwrap();
        assert!(unknown_kernel.line.is_empty());
        assert_eq!(
            unknown_kernel.mapping_id, 0,
            "kernel frames have no mapping"
        );
        assert_eq!(unknown_kernel.address, 0xffff_ffff_8120_0042);
        let syscall = p
            .location
            .iter()
            .find(|l| l.id == second.location_id[1])
            .unwrap();
        assert_eq!(function_names(&p, syscall), ["do_syscall_64"]);
        let libc_frame = p
            .location
            .iter()
            .find(|l| l.id == second.location_id[2])
            .unwrap();
        assert!(libc_frame.line.is_empty());
        assert_eq!(libc_frame.address, 0x7f00_0001_2340);
        let libc = p
            .mapping
            .iter()
            .find(|m| m.id == libc_frame.mapping_id)
            .unwrap();
        assert_eq!(s(libc.build_id), LIBC_BUILD_ID);
        assert_eq!(s(libc.filename), "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert!(
            !libc.has_functions,
            "left for pprof or a back-end to symbolize"
        );
        let app = p.mapping.iter().find(|m| m.id == leaf.mapping_id).unwrap();
        assert_eq!(s(app.build_id), APP_BUILD_ID);
        assert_eq!(app.file_offset, 0x1000);
        assert!(app.has_functions && app.has_filenames && app.has_line_numbers);
        assert!(app.has_inline_frames);

        // Labels.
        let labels = |sample: &pprof::Sample| -> Vec<(String, String)> {
            sample
                .label
                .iter()
                .map(|l| {
                    let value = if l.str != 0 {
                        s(l.str).to_owned()
                    } else {
                        l.num.to_string()
                    };
                    (s(l.key).to_owned(), value)
                })
                .collect()
        };
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            labels(&p.sample[0]),
            pairs(&[
                ("process.pid", "4242"),
                ("thread.name", "worker-1"),
                ("process.executable.name", "shopd"),
                ("container.id", "c0ffee1234567890"),
                ("service.name", "shop"),
            ])
        );
        assert_eq!(
            labels(&p.sample[2]),
            pairs(&[
                ("process.pid", "777"),
                ("process.executable.name", "batchjob"),
                ("service.name", "batchjob"),
            ]),
            "empty labels are left out"
        );
    }

    #[test]
    fn empty_interval_is_a_valid_profile() {
        let mut interval = test_fixture::interval();
        interval.stacks.clear();
        let p = decode_gzip(&encode_gzip(&interval).unwrap());
        check_invariants(&p);
        assert!(p.sample.is_empty() && p.location.is_empty());
    }

    /// `go tool pprof` is what people read these files with; it must take
    /// them and name the functions.
    #[test]
    fn go_tool_pprof_reads_the_file() {
        let Some(go) = go_binary() else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("selfops-pprof-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("interval.pb.gz");
        std::fs::write(&file, encode_gzip(&test_fixture::interval()).unwrap()).unwrap();
        let top = go_pprof_top(&go, &file);
        for name in [
            "validate_sku",
            "parse_order",
            "handle_request",
            "main",
            "do_syscall_64",
        ] {
            assert!(top.contains(name), "{name} missing from:\n{top}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The `go` binary, or `None` (test skipped, with the reason) when it is
    /// not installed; under CI it must be.
    pub fn go_binary() -> Option<std::path::PathBuf> {
        let found = Command::new("go")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return Some("go".into());
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`go` is required under CI for the pprof compatibility tests (apt-get install golang-go)"
        );
        eprintln!("skipped: `go` not installed (apt-get install golang-go) to run `go tool pprof`");
        None
    }

    /// `go tool pprof -top` of `file`; fails the test on any error.
    pub fn go_pprof_top(go: &std::path::Path, file: &std::path::Path) -> String {
        let output = Command::new(go)
            .args(["tool", "pprof", "-top"])
            .arg(file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "go tool pprof failed on {}:\n{stderr}\n{stdout}",
            file.display()
        );
        stdout
    }
}
