//! The one place that talks to tract: loading ONNX files into optimized plans and running them.

use super::VisionError;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::prelude::*;

pub type Plan = Arc<TypedRunnableModel>;

/// An operator kind's share of a run: (operator, nodes of that kind, ms per run).
pub type OpTime = (String, usize, f64);

fn load_err(path: &Path, e: impl std::fmt::Display) -> VisionError {
    VisionError::ModelLoad {
        file: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Parses an ONNX file without fixing its input shape (for models planned per input size), with the
/// load-time graph rewrites of [`rewrite_prelu`] applied.
pub fn parse(path: &Path) -> Result<InferenceModel, VisionError> {
    let onnx = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true);
    let mut proto = onnx.proto_model_for_path(path).map_err(|e| load_err(path, e))?;
    if let Some(g) = proto.graph.as_mut() {
        rewrite_prelu(g);
    }
    onnx.model_for_proto_model(&proto).map_err(|e| load_err(path, e))
}

/// The float values of an initializer (`None` if it is not a float tensor held in the file).
fn float_initializer(g: &pb::GraphProto, name: &str) -> Option<Vec<f32>> {
    let t = g.initializer.iter().find(|t| t.name == name)?;
    if t.data_type != pb::tensor_proto::DataType::Float as i32 {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    (t.raw_data.len() % 4 == 0).then(|| {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

/// Rewrites `PRelu(x, a)` as `Max(x, Mul(x, a))` where every slope is at most 1 (then `a*x <= x`
/// exactly when `x >= 0`, so the two are equal). tract runs PRelu as a compare, a select and a
/// multiply (three passes over the tensor); Mul + Max is one fused pass. Returns the nodes rewritten.
pub fn rewrite_prelu(g: &mut pb::GraphProto) -> usize {
    let mut nodes = Vec::with_capacity(g.node.len());
    let mut rewritten = 0;
    for n in std::mem::take(&mut g.node) {
        let ok = n.op_type == "PRelu"
            && n.input.len() == 2
            && n.output.len() == 1
            && float_initializer(g, &n.input[1]).is_some_and(|a| !a.is_empty() && a.iter().all(|v| *v <= 1.0));
        if !ok {
            nodes.push(n);
            continue;
        }
        let (x, a, y) = (n.input[0].clone(), n.input[1].clone(), n.output[0].clone());
        let ax = format!("{y}__prelu_ax");
        nodes.push(pb::NodeProto {
            input: vec![x.clone(), a],
            output: vec![ax.clone()],
            name: format!("{}__mul", n.name),
            op_type: "Mul".into(),
            ..Default::default()
        });
        nodes.push(pb::NodeProto {
            input: vec![x, ax],
            output: vec![y],
            name: format!("{}__max", n.name),
            op_type: "Max".into(),
            ..Default::default()
        });
        rewritten += 1;
    }
    g.node = nodes;
    rewritten
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

/// A constant f32 input of `shape`, for timing a plan (its cost does not depend on the values).
fn constant_input(shape: &[usize]) -> Result<TValue, VisionError> {
    let n: usize = shape.iter().product();
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, vec![0.5f32; n])
        .map_err(|e| VisionError::Inference(e.to_string()))?
        .into_tensor()
        .into_tvalue())
}

/// Milliseconds of each of `runs` runs of `plan` on a constant input of `shape`, after one warm-up
/// run: the model alone, without pre- or post-processing.
pub fn time_plan(plan: &Plan, shape: &[usize], runs: usize) -> Result<Vec<f64>, VisionError> {
    let input = constant_input(shape)?;
    let mut times = Vec::with_capacity(runs);
    for k in 0..=runs {
        let t = std::time::Instant::now();
        plan.run(tvec!(input.clone()))
            .map_err(|e| VisionError::Inference(e.to_string()))?;
        if k > 0 {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(times)
}

/// Where `plan`'s time goes: milliseconds per run spent in each operator kind (summed over its nodes,
/// averaged over `runs` runs after a warm-up), largest first, with the node count.
pub fn profile_plan(plan: &Plan, shape: &[usize], runs: usize) -> Result<Vec<OpTime>, VisionError> {
    use std::collections::HashMap;
    use tract_onnx::tract_core::plan::{eval, SimpleState};
    let input = constant_input(shape)?;
    let mut state = SimpleState::new(plan).map_err(|e| VisionError::Inference(e.to_string()))?;
    let mut by_op: HashMap<String, (std::collections::HashSet<usize>, f64)> = HashMap::new();
    for k in 0..=runs {
        state
            .run_plan_with_eval(tvec!(input.clone()), |ctx, st, node, inputs| {
                let t = std::time::Instant::now();
                let r = eval(ctx, st, node, inputs);
                if k > 0 {
                    let e = by_op.entry(node.op().name().to_string()).or_default();
                    e.0.insert(node.id);
                    e.1 += t.elapsed().as_secs_f64() * 1000.0;
                }
                r
            })
            .map_err(|e| VisionError::Inference(e.to_string()))?;
    }
    let mut out: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (nodes, ms))| (op, nodes.len(), ms / runs.max(1) as f64))
        .collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(out)
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
