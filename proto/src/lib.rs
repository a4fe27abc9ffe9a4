//! Protobuf definitions selfops owns, generated with prost at build time.
//! OTLP itself comes from the opentelemetry-proto crate.
//!
//! `pprof`: the pprof profile format (`profile.proto`), written as gzip
//! files by the CPU profiler and readable by `go tool pprof`.
//!
//! `opamp`: the OpAMP agent-management protocol (`opamp.proto.v1`), spoken
//! by the agent's control plane and the fleet server.

/// `perftools.profiles`: the pprof schema.
pub mod pprof {
    #![allow(clippy::doc_markdown, clippy::derive_partial_eq_without_eq)]
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

/// `opamp.proto.v1`: OpAMP messages.
pub mod opamp {
    #![allow(
        clippy::doc_markdown,
        clippy::derive_partial_eq_without_eq,
        clippy::enum_variant_names,
        clippy::large_enum_variant
    )]
    include!(concat!(env!("OUT_DIR"), "/opamp.proto.v1.rs"));
}

#[cfg(test)]
mod opamp_tests;

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::pprof::*;

    /// Field number and wire type of the first key in `bytes`.
    fn first_key(bytes: &[u8]) -> (u64, u8) {
        let mut value = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        (value >> 3, (value & 7) as u8)
    }

    /// Each field alone on the wire: pins the numbers and types to
    /// upstream pprof's, which other tools decode by.
    #[test]
    fn field_numbers_match_pprof() {
        const VARINT: u8 = 0;
        const LEN: u8 = 2;
        let vt = ValueType { r#type: 1, unit: 2 };
        let cases: Vec<(&str, Vec<u8>, u64, u8)> = vec![
            (
                "Profile.sample_type",
                Profile {
                    sample_type: vec![vt],
                    ..Default::default()
                }
                .encode_to_vec(),
                1,
                LEN,
            ),
            (
                "Profile.sample",
                Profile {
                    sample: vec![Sample::default()],
                    ..Default::default()
                }
                .encode_to_vec(),
                2,
                LEN,
            ),
            (
                "Profile.mapping",
                Profile {
                    mapping: vec![Mapping::default()],
                    ..Default::default()
                }
                .encode_to_vec(),
                3,
                LEN,
            ),
            (
                "Profile.location",
                Profile {
                    location: vec![Location::default()],
                    ..Default::default()
                }
                .encode_to_vec(),
                4,
                LEN,
            ),
            (
                "Profile.function",
                Profile {
                    function: vec![Function::default()],
                    ..Default::default()
                }
                .encode_to_vec(),
                5,
                LEN,
            ),
            (
                "Profile.string_table",
                Profile {
                    string_table: vec![String::new()],
                    ..Default::default()
                }
                .encode_to_vec(),
                6,
                LEN,
            ),
            (
                "Profile.drop_frames",
                Profile {
                    drop_frames: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                7,
                VARINT,
            ),
            (
                "Profile.keep_frames",
                Profile {
                    keep_frames: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                8,
                VARINT,
            ),
            (
                "Profile.time_nanos",
                Profile {
                    time_nanos: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                9,
                VARINT,
            ),
            (
                "Profile.duration_nanos",
                Profile {
                    duration_nanos: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                10,
                VARINT,
            ),
            (
                "Profile.period_type",
                Profile {
                    period_type: Some(vt),
                    ..Default::default()
                }
                .encode_to_vec(),
                11,
                LEN,
            ),
            (
                "Profile.period",
                Profile {
                    period: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                12,
                VARINT,
            ),
            (
                "Profile.comment",
                Profile {
                    comment: vec![1],
                    ..Default::default()
                }
                .encode_to_vec(),
                13,
                LEN,
            ),
            (
                "Profile.default_sample_type",
                Profile {
                    default_sample_type: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                14,
                VARINT,
            ),
            (
                "ValueType.type",
                ValueType { r#type: 1, unit: 0 }.encode_to_vec(),
                1,
                VARINT,
            ),
            (
                "ValueType.unit",
                ValueType { r#type: 0, unit: 1 }.encode_to_vec(),
                2,
                VARINT,
            ),
            (
                "Sample.location_id",
                Sample {
                    location_id: vec![1],
                    ..Default::default()
                }
                .encode_to_vec(),
                1,
                LEN,
            ),
            (
                "Sample.value",
                Sample {
                    value: vec![1],
                    ..Default::default()
                }
                .encode_to_vec(),
                2,
                LEN,
            ),
            (
                "Sample.label",
                Sample {
                    label: vec![Label::default()],
                    ..Default::default()
                }
                .encode_to_vec(),
                3,
                LEN,
            ),
            (
                "Label.key",
                Label {
                    key: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                1,
                VARINT,
            ),
            (
                "Label.str",
                Label {
                    str: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                2,
                VARINT,
            ),
            (
                "Label.num",
                Label {
                    num: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                3,
                VARINT,
            ),
            (
                "Label.num_unit",
                Label {
                    num_unit: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                4,
                VARINT,
            ),
            (
                "Mapping.id",
                Mapping {
                    id: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                1,
                VARINT,
            ),
            (
                "Mapping.memory_start",
                Mapping {
                    memory_start: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                2,
                VARINT,
            ),
            (
                "Mapping.memory_limit",
                Mapping {
                    memory_limit: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                3,
                VARINT,
            ),
            (
                "Mapping.file_offset",
                Mapping {
                    file_offset: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                4,
                VARINT,
            ),
            (
                "Mapping.filename",
                Mapping {
                    filename: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                5,
                VARINT,
            ),
            (
                "Mapping.build_id",
                Mapping {
                    build_id: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                6,
                VARINT,
            ),
            (
                "Mapping.has_functions",
                Mapping {
                    has_functions: true,
                    ..Default::default()
                }
                .encode_to_vec(),
                7,
                VARINT,
            ),
            (
                "Mapping.has_filenames",
                Mapping {
                    has_filenames: true,
                    ..Default::default()
                }
                .encode_to_vec(),
                8,
                VARINT,
            ),
            (
                "Mapping.has_line_numbers",
                Mapping {
                    has_line_numbers: true,
                    ..Default::default()
                }
                .encode_to_vec(),
                9,
                VARINT,
            ),
            (
                "Mapping.has_inline_frames",
                Mapping {
                    has_inline_frames: true,
                    ..Default::default()
                }
                .encode_to_vec(),
                10,
                VARINT,
            ),
            (
                "Location.id",
                Location {
                    id: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                1,
                VARINT,
            ),
            (
                "Location.mapping_id",
                Location {
                    mapping_id: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                2,
                VARINT,
            ),
            (
                "Location.address",
                Location {
                    address: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                3,
                VARINT,
            ),
            (
                "Location.line",
                Location {
                    line: vec![Line::default()],
                    ..Default::default()
                }
                .encode_to_vec(),
                4,
                LEN,
            ),
            (
                "Location.is_folded",
                Location {
                    is_folded: true,
                    ..Default::default()
                }
                .encode_to_vec(),
                5,
                VARINT,
            ),
            (
                "Line.function_id",
                Line {
                    function_id: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                1,
                VARINT,
            ),
            (
                "Line.line",
                Line {
                    line: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                2,
                VARINT,
            ),
            (
                "Line.column",
                Line {
                    column: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                3,
                VARINT,
            ),
            (
                "Function.id",
                Function {
                    id: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                1,
                VARINT,
            ),
            (
                "Function.name",
                Function {
                    name: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                2,
                VARINT,
            ),
            (
                "Function.system_name",
                Function {
                    system_name: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                3,
                VARINT,
            ),
            (
                "Function.filename",
                Function {
                    filename: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                4,
                VARINT,
            ),
            (
                "Function.start_line",
                Function {
                    start_line: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
                5,
                VARINT,
            ),
        ];
        for (field, bytes, number, wire_type) in cases {
            assert_eq!(first_key(&bytes), (number, wire_type), "{field}");
        }
    }
}
