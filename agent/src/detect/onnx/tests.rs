//! The models are made at test time with Python's `onnx` package, and the
//! scores checked against onnxruntime on the same windows (`cargo xtask
//! setup` installs both in a virtual environment under the target dir).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::detect::DetectorConfig;
use crate::detect::testing::noise;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A Python with `onnx` and `onnxruntime`, or None (a skip, said out loud;
/// under CI=true a failure).
fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SELFOPS_PYTHON").map(PathBuf::from),
        std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("python/bin/python3")),
        Some(workspace().join("target/python/bin/python3")),
        Some(PathBuf::from("python3")),
    ];
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .args(["-c", "import onnx, onnxruntime"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(p);
        }
    }
    let why = "no Python with onnx and onnxruntime: run `cargo xtask setup`";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("SKIP {why}");
    None
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("selfops-onnx-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn script() -> PathBuf {
    workspace().join("tests/python/onnx_models.py")
}

fn make_model(py: &Path, dir: &Path, kind: &str, window: u32, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("{kind}.onnx"));
    let status = Command::new(py)
        .arg(script())
        .args(["make", kind, &window.to_string()])
        .arg(&out)
        .args(extra)
        .status()
        .unwrap_or_else(|e| panic!("python: {e}"));
    assert!(status.success(), "making the {kind} model failed");
    out
}

/// onnxruntime's first output for every full window of `values`.
fn reference(py: &Path, dir: &Path, model: &Path, window: u32, values: &[f64]) -> Vec<Vec<f64>> {
    let series = dir.join("series.json");
    let spec = serde_json::json!({ "window": window, "values": values });
    std::fs::write(&series, spec.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(py)
        .arg(script())
        .arg("run")
        .arg(model)
        .arg(&series)
        .output()
        .unwrap_or_else(|e| panic!("python: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

fn series(n: usize) -> Vec<f64> {
    noise(n)
        .enumerate()
        .map(|(i, e)| (i as f64 * 0.3).sin() + 0.2 * e + if i == 150 { 4.0 } else { 0.0 })
        .collect()
}

#[test]
fn score_model_matches_onnxruntime() {
    let Some(py) = python() else { return };
    let dir = scratch("score");
    let path = make_model(&py, &dir, "score", 16, &[]);
    let values = series(200);
    let want = reference(&py, &dir, &path, 16, &values);
    let cfg = OnnxConfig {
        window: Some(16),
        input: Some("x".into()),
        output: Some("score".into()),
        ..OnnxConfig::for_model(&path)
    };
    let mut d = Onnx::new(cfg).unwrap_or_else(|e| panic!("{e}"));
    let mut k = 0;
    for (i, &v) in values.iter().enumerate() {
        let s = d.update(i as f64, v);
        if i + 1 >= 16 {
            let expect = want[k][0];
            assert!(
                (d.raw() - expect).abs() < 1e-5,
                "window {k}: {} vs {expect}",
                d.raw()
            );
            assert!((s - expect.clamp(0.0, 1.0)).abs() < 1e-5);
            k += 1;
        } else {
            assert_eq!(s, 0.0, "no score before the window is full");
        }
    }
    assert_eq!(k, want.len());
}

#[test]
fn reconstruction_error_matches_onnxruntime_with_a_symbolic_batch() {
    let Some(py) = python() else { return };
    let dir = scratch("recon");
    let path = make_model(&py, &dir, "recon", 16, &["--symbolic-batch"]);
    let values = series(120);
    let want = reference(&py, &dir, &path, 16, &values);
    let cfg = OnnxConfig {
        window: Some(16),
        output_is: Output::Reconstruction,
        map: ScoreMap::Ratio,
        scale: 0.5,
        ..OnnxConfig::for_model(&path)
    };
    let mut d = Onnx::new(cfg).unwrap_or_else(|e| panic!("{e}"));
    for (i, &v) in values.iter().enumerate() {
        let s = d.update(i as f64, v);
        if i + 1 < 16 {
            continue;
        }
        let input = &values[i + 1 - 16..=i];
        let recon = &want[i + 1 - 16];
        let mse = input
            .iter()
            .zip(recon)
            .map(|(&x, &y)| (f64::from(x as f32) - y).powi(2))
            .sum::<f64>()
            / 16.0;
        assert!(
            (d.raw() - mse).abs() < 1e-5,
            "row {i}: {} vs {mse}",
            d.raw()
        );
        assert!((s - mse / (mse + 0.5)).abs() < 1e-5);
    }
}

fn error_field(cfg: &OnnxConfig) -> String {
    match Onnx::new(cfg.clone()) {
        Ok(_) => panic!("{cfg:?} was accepted"),
        Err(ConfigError::Invalid { field, reason }) => {
            eprintln!("{field}: {reason}");
            field.to_string()
        }
    }
}

#[test]
fn mismatches_are_config_errors_naming_the_key() {
    let Some(py) = python() else { return };
    let dir = scratch("mismatch");
    let score = make_model(&py, &dir, "score", 16, &[]);
    let base = OnnxConfig::for_model(&score);
    let wrong_window = OnnxConfig {
        window: Some(8),
        ..base.clone()
    };
    assert_eq!(error_field(&wrong_window), "onnx.window");
    let wrong_input = OnnxConfig {
        input: Some("y".into()),
        ..base.clone()
    };
    assert_eq!(error_field(&wrong_input), "onnx.input");
    let wrong_output = OnnxConfig {
        output: Some("nope".into()),
        ..base.clone()
    };
    assert_eq!(error_field(&wrong_output), "onnx.output");
    let not_a_reconstruction = OnnxConfig {
        output_is: Output::Reconstruction,
        ..base.clone()
    };
    assert_eq!(error_field(&not_a_reconstruction), "onnx.output");
    let missing = OnnxConfig::for_model(dir.join("absent.onnx"));
    assert_eq!(error_field(&missing), "onnx.model");
    // The window comes from the model when not given.
    let d = Onnx::new(base).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.ring.len(), 16);

    let json = format!(
        r#"{{"kind":"onnx","model":{:?},"window":16}}"#,
        score.display()
    );
    let cfg: DetectorConfig = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.build().map(|d| d.name()).ok(), Some("onnx"));
    let unknown = format!(
        r#"{{"kind":"onnx","model":{:?},"windw":16}}"#,
        score.display()
    );
    assert!(serde_json::from_str::<DetectorConfig>(&unknown).is_err());
}

#[test]
fn corrupt_and_hostile_models_are_refused_without_panic() {
    let cfg = OnnxConfig::for_model("unused.onnx");
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not a model".to_vec(),
        vec![0xff; 4096],
        // A protobuf length prefix promising far more than there is.
        vec![0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01],
    ];
    if let Some(py) = python() {
        let dir = scratch("corrupt");
        let good = std::fs::read(make_model(&py, &dir, "score", 16, &[]))
            .unwrap_or_else(|e| panic!("{e}"));
        for cut in [1, good.len() / 3, good.len() / 2, good.len() - 1] {
            inputs.push(good[..cut].to_vec());
        }
        let mut flipped = good.clone();
        for b in flipped.iter_mut().skip(20).step_by(37) {
            *b ^= 0x5a;
        }
        inputs.push(flipped);
    }
    for bytes in inputs {
        if let Ok(model) = Model::from_bytes(&bytes, &cfg) {
            // Whatever loads must run or fail cleanly.
            let input = vec![0.0; model.input_len()];
            let _ = model.run(&input);
        }
    }
}

#[test]
fn scores_map_into_the_unit_interval() {
    for raw in [
        f64::NEG_INFINITY,
        -3.0,
        0.0,
        0.4,
        2.0,
        f64::INFINITY,
        f64::NAN,
    ] {
        for map in [ScoreMap::Clamp, ScoreMap::Logistic, ScoreMap::Ratio] {
            let s = map_score(map, 1.0, raw);
            assert!((0.0..=1.0).contains(&s), "{map:?} {raw} → {s}");
        }
    }
    assert_eq!(map_score(ScoreMap::Ratio, 1.0, 1.0), 0.5);
    assert_eq!(map_score(ScoreMap::Logistic, 2.0, 0.0), 0.5);
}

#[test]
fn window_normalisation_centres_each_series() {
    let mut w = [1.0f32, 10.0, 2.0, 20.0, 3.0, 30.0];
    normalize(&mut w, 2);
    let (a, b): (Vec<f32>, Vec<f32>) = (
        w.iter().step_by(2).copied().collect(),
        w.iter().skip(1).step_by(2).copied().collect(),
    );
    for col in [a, b] {
        assert!(col.iter().sum::<f32>().abs() < 1e-5);
        assert!((col[2] - col[0] - 2.449_49).abs() < 1e-3, "{col:?}");
    }
}

#[test]
fn a_jump_model_fires_on_a_step_and_not_on_a_flat_series() {
    let Some(py) = python() else { return };
    let dir = scratch("jump");
    let path = make_model(&py, &dir, "jump", 8, &[]);
    let cfg: DetectorConfig = serde_json::from_str(&format!(
        r#"{{"kind":"onnx","model":{:?},"window":8}}"#,
        path.display()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let mut d = cfg.build().unwrap_or_else(|e| panic!("{e}"));
    let flat = (0..20)
        .map(|i| d.update(f64::from(i), 0.001))
        .fold(0.0, f64::max);
    assert!(flat < 0.05, "flat {flat}");
    let step = (20..28)
        .map(|i| d.update(f64::from(i), 1.0))
        .fold(0.0, f64::max);
    assert!(step > 0.9, "step {step}");
}
