//! Loading an ONNX model with tract and checking it against the detector's
//! configuration, so a model that cannot serve the configured window fails
//! at start, naming the key, instead of at the first inference.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid as _;

use super::{OnnxConfig, Output};
use crate::detect::ConfigError;

/// Largest model file accepted: the design budgets a few MB, and a file this
/// size is read into memory whole.
pub const MAX_MODEL_BYTES: usize = 64 << 20;

type Plan = Arc<TypedRunnableModel>;

/// A model ready to run on one window.
pub struct Model {
    plan: Plan,
    shape: TVec<usize>,
    /// Values the output holds.
    output_len: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("shape", &self.shape)
            .field("output_len", &self.output_len)
            .finish()
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl Model {
    /// Reads and checks the model named by `cfg.model`.
    pub fn load(cfg: &OnnxConfig) -> Result<Model, ConfigError> {
        let path = &cfg.model;
        let meta = std::fs::metadata(path)
            .map_err(|e| invalid("onnx.model", format!("{}: {e}", path.display())))?;
        if meta.len() > MAX_MODEL_BYTES as u64 {
            return Err(invalid(
                "onnx.model",
                format!(
                    "{} is {} bytes, more than the {MAX_MODEL_BYTES} accepted",
                    path.display(),
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| invalid("onnx.model", format!("{}: {e}", path.display())))?;
        Self::from_bytes(&bytes, cfg)
    }

    /// Parses and checks a model held in memory. Refuses, never panics: a
    /// panic inside the parser or optimiser becomes an error too.
    pub fn from_bytes(bytes: &[u8], cfg: &OnnxConfig) -> Result<Model, ConfigError> {
        if bytes.len() > MAX_MODEL_BYTES {
            return Err(invalid("onnx.model", "model larger than accepted"));
        }
        match catch_unwind(AssertUnwindSafe(|| build(bytes, cfg))) {
            Ok(result) => result,
            Err(_) => Err(invalid(
                "onnx.model",
                "the model could not be loaded (malformed)",
            )),
        }
    }

    /// Values one input holds.
    pub fn input_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Runs the model on `input` (`input_len()` values, oldest first) and
    /// returns its output values.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, String> {
        let tensor = Tensor::from_shape(&self.shape, input).map_err(|e| e.to_string())?;
        let out = self
            .plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(|e| e.to_string())?;
        let first = out.first().ok_or("the model gave no output")?;
        let view = first
            .to_plain_array_view::<f32>()
            .map_err(|e| e.to_string())?;
        Ok(view.iter().copied().collect())
    }
}

fn build(bytes: &[u8], cfg: &OnnxConfig) -> Result<Model, ConfigError> {
    let onnx = tract_onnx::onnx();
    let mut reader = bytes;
    let proto = onnx
        .proto_model_for_read(&mut reader)
        .map_err(|e| invalid("onnx.model", format!("not an ONNX model: {e}")))?;
    super::graph::check(&proto).map_err(|e| invalid("onnx.model", e.to_string()))?;
    let mut model = onnx
        .model_for_proto_model(&proto)
        .map_err(|e| invalid("onnx.model", format!("unsupported model: {e:#}")))?;

    let inputs = model
        .input_outlets()
        .map_err(|e| invalid("onnx.model", e.to_string()))?
        .to_vec();
    let names: Vec<String> = inputs
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    if inputs.len() != 1 {
        return Err(invalid(
            "onnx.input",
            format!(
                "the model takes {} inputs {names:?}; one is supported",
                inputs.len()
            ),
        ));
    }
    if let Some(want) = &cfg.input
        && names.first() != Some(want)
    {
        return Err(invalid(
            "onnx.input",
            format!("the model has no input {want:?} (it has {names:?})"),
        ));
    }

    let configured = cfg
        .input_len()
        .ok_or_else(|| invalid("onnx.window", "window × signals overflows"))?;
    let fact = model
        .input_fact(0)
        .map_err(|e| invalid("onnx.model", e.to_string()))?
        .clone();
    if let Some(dt) = fact.datum_type.concretize()
        && dt != f32::datum_type()
    {
        return Err(invalid(
            "onnx.input",
            format!("input {:?} is {dt:?}; float32 is supported", names[0]),
        ));
    }
    let declared = fact
        .shape
        .as_concrete_finite()
        .map_err(|e| invalid("onnx.input", e.to_string()))?;
    let signals = cfg.signals.max(1) as usize;
    let shape: TVec<usize> = match (declared, configured) {
        (Some(dims), configured) => {
            let len: usize = dims.iter().product();
            let fits = match configured {
                Some(want) => len == want,
                None => len > 0 && len.is_multiple_of(signals),
            };
            if !fits {
                return Err(invalid(
                    "onnx.window",
                    format!(
                        "input {:?} has shape {dims:?} ({len} values), which window × signals ({}) does not fill",
                        names[0],
                        configured.map_or_else(|| format!("? × {signals}"), |w| w.to_string())
                    ),
                ));
            }
            dims
        }
        (None, None) => {
            return Err(invalid(
                "onnx.window",
                format!(
                    "input {:?} has no fixed shape: the window must be given",
                    names[0]
                ),
            ));
        }
        // Symbolic dimensions (a batch axis, say): fixed from the config.
        (None, Some(want)) => match fact.shape.rank().concretize() {
            Some(1) => tvec![want],
            Some(3) => tvec![1, want / signals, signals],
            _ => tvec![1, want],
        },
    };
    let want_len: usize = shape.iter().product();
    model
        .set_input_fact(0, f32::fact(shape.clone()).into())
        .map_err(|e| invalid("onnx.input", e.to_string()))?;

    if let Some(out) = &cfg.output {
        model
            .select_outputs_by_name([out.as_str()])
            .map_err(|_| invalid("onnx.output", format!("the model has no output {out:?}")))?;
    }
    let outputs = model
        .output_outlets()
        .map_err(|e| invalid("onnx.model", e.to_string()))?
        .len();
    if outputs == 0 {
        return Err(invalid("onnx.output", "the model has no output"));
    }
    if outputs > 1 {
        // Only the first output is read: no work spent on the others.
        let first = model
            .output_outlets()
            .map_err(|e| invalid("onnx.model", e.to_string()))?[0];
        model
            .select_output_outlets(&[first])
            .map_err(|e| invalid("onnx.output", e.to_string()))?;
    }

    let typed = model.into_optimized().map_err(|e| {
        invalid(
            "onnx.model",
            format!("the model does not run on shape {shape:?}: {e:#}"),
        )
    })?;
    let out_fact = typed
        .output_fact(0)
        .map_err(|e| invalid("onnx.output", e.to_string()))?;
    if out_fact.datum_type != f32::datum_type() {
        return Err(invalid(
            "onnx.output",
            format!("output is {:?}; float32 is supported", out_fact.datum_type),
        ));
    }
    let out_dims = out_fact.shape.as_concrete().ok_or_else(|| {
        invalid(
            "onnx.output",
            "output shape is not fixed by the input shape",
        )
    })?;
    let output_len: usize = out_dims.iter().product();
    match cfg.output_is {
        Output::Score if output_len != 1 => {
            return Err(invalid(
                "onnx.output",
                format!("output has shape {out_dims:?}; a score model gives one value"),
            ));
        }
        Output::Reconstruction if output_len != want_len => {
            return Err(invalid(
                "onnx.output",
                format!(
                    "output has shape {out_dims:?}; a reconstruction gives {want_len} values, as the input"
                ),
            ));
        }
        _ => {}
    }
    let plan = typed
        .into_runnable()
        .map_err(|e| invalid("onnx.model", e.to_string()))?;
    Ok(Model {
        plan,
        shape,
        output_len,
    })
}
