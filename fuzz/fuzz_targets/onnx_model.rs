//! Loads arbitrary bytes as an ONNX model for the `onnx` detector: the
//! loader (protobuf parsing, graph translation, type and shape checks,
//! optimisation) must refuse what it cannot use, never panic, and whatever
//! it accepts must run on a window or fail cleanly.
//!
//! Seeds: small valid models (`tests/python/onnx_models.py make …`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use selfops_agent::detect::onnx::{Model, OnnxConfig};

fuzz_target!(|data: &[u8]| {
    let cfg = OnnxConfig::for_model("fuzz.onnx");
    let Ok(model) = Model::from_bytes(data, &cfg) else {
        return;
    };
    let input = vec![0.5f32; model.input_len().min(1 << 16)];
    let _ = model.run(&input);
});
