//! Generates the Rust types of `profile.proto` with prost. The schema is
//! parsed by protox (pure Rust), so no `protoc` is needed to build.

fn main() {
    println!("cargo:rerun-if-changed=profile.proto");
    let descriptors = match protox::compile(["profile.proto"], ["."]) {
        Ok(descriptors) => descriptors,
        Err(e) => {
            eprintln!("profile.proto: {e:?}");
            std::process::exit(1);
        }
    };
    if let Err(e) = prost_build::Config::new().compile_fds(descriptors) {
        eprintln!("generating Rust from profile.proto: {e}");
        std::process::exit(1);
    }
}
