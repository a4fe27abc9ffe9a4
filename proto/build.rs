//! Generates the Rust types of `profile.proto` and the OpAMP schema
//! (`opamp.proto`, `anyvalue.proto`) with prost. The schemas are parsed by
//! protox (pure Rust), so no `protoc` is needed to build.

const PROTOS: [&str; 3] = ["profile.proto", "anyvalue.proto", "opamp.proto"];

fn main() {
    for file in PROTOS {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = match protox::compile(PROTOS, ["."]) {
        Ok(descriptors) => descriptors,
        Err(e) => {
            eprintln!("protobuf schema: {e:?}");
            std::process::exit(1);
        }
    };
    if let Err(e) = prost_build::Config::new().compile_fds(descriptors) {
        eprintln!("generating Rust from the protobuf schemas: {e}");
        std::process::exit(1);
    }
}
