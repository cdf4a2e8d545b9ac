//! The one place that talks to tract: loading ONNX files into optimized plans and running them.

use super::VisionError;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

pub type Plan = Arc<TypedRunnableModel>;

fn load_err(path: &Path, e: impl std::fmt::Display) -> VisionError {
    VisionError::ModelLoad {
        file: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Parses an ONNX file without fixing its input shape (for models planned per input size).
pub fn parse(path: &Path) -> Result<InferenceModel, VisionError> {
    tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_path(path)
        .map_err(|e| load_err(path, e))
}

/// Makes an optimized plan of `model` for an f32 input of `shape`.
pub fn plan(model: &InferenceModel, shape: &[usize], what: &Path) -> Result<Plan, VisionError> {
    model
        .clone()
        .with_input_fact(0, f32::fact(shape).into())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| load_err(what, e))
}

/// Loads a fixed-shape model and plans it once.
pub fn load_fixed(path: &Path, shape: &[usize]) -> Result<Plan, VisionError> {
    plan(&parse(path)?, shape, path)
}

/// Loads a fixed-shape model with the outputs of the named nodes (in that order) and plans it once.
pub fn load_fixed_with_outputs(path: &Path, shape: &[usize], outputs: &[&str]) -> Result<Plan, VisionError> {
    let model = parse(path)?
        .with_outputs_by_name(outputs.iter().copied())
        .map_err(|e| load_err(path, e))?;
    plan(&model, shape, path)
}

/// Runs `plan` on one f32 input of `shape` and returns every output flattened, in output order.
pub fn run(plan: &Plan, shape: &[usize], input: Vec<f32>) -> Result<Vec<Vec<f32>>, VisionError> {
    let tensor = tract_ndarray::ArrayD::from_shape_vec(shape, input)
        .map_err(|e| VisionError::Inference(e.to_string()))?
        .into_tensor();
    let outputs = plan
        .run(tvec!(tensor.into_tvalue()))
        .map_err(|e| VisionError::Inference(e.to_string()))?;
    outputs
        .iter()
        .map(|t| {
            t.to_plain_array_view::<f32>()
                .map(|v| v.iter().copied().collect())
                .map_err(|e| VisionError::Inference(e.to_string()))
        })
        .collect()
}

/// Output names of a parsed model, in output order.
pub fn output_names(model: &InferenceModel) -> Result<Vec<String>, VisionError> {
    let outlets = model
        .output_outlets()
        .map_err(|e| VisionError::Inference(e.to_string()))?;
    Ok(outlets
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .map(str::to_string)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect())
}
