//! Each model's inference time alone and where it goes, at the shapes a kiosk check-in gives it
//! (`Vision::kiosk_plans`): for `lobby-stages` and the comparison with onnxruntime (`bench/peer`).

use anyhow::Result;
use lobby_service::vision::{PerModel, Plan, Vision};
use tract_onnx::prelude::*;

/// An operator kind's share of a run: (operator, nodes of that kind, ms per run).
pub type OpTime = (String, usize, f64);

fn constant_input(shape: &[usize]) -> Result<TValue> {
    let n: usize = shape.iter().product();
    Ok(tract_ndarray::ArrayD::from_shape_vec(shape, vec![0.5f32; n])
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_tensor()
        .into_tvalue())
}

/// Milliseconds of each of `runs` runs of `plan` on a constant input of `shape`, after one warm-up
/// run: the model alone, without pre- or post-processing.
pub fn time_plan(plan: &Plan, shape: &[usize], runs: usize) -> Result<Vec<f64>> {
    let input = constant_input(shape)?;
    let mut times = Vec::with_capacity(runs);
    for k in 0..=runs {
        let t = std::time::Instant::now();
        plan.run(tvec!(input.clone())).map_err(|e| anyhow::anyhow!("{e}"))?;
        if k > 0 {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(times)
}

/// Where `plan`'s time goes: milliseconds per run spent in each operator kind (summed over its nodes,
/// averaged over `runs` runs after a warm-up), largest first, with the node count; with `per_node`,
/// one row per node instead (its id, operator, parameters and input shape).
pub fn profile_plan(plan: &Plan, shape: &[usize], runs: usize, per_node: bool) -> Result<Vec<OpTime>> {
    use std::collections::HashMap;
    use tract_onnx::tract_core::plan::{eval, SimpleState};
    let input = constant_input(shape)?;
    let mut state = SimpleState::new(plan).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut by_op: HashMap<String, (std::collections::HashSet<usize>, f64)> = HashMap::new();
    for k in 0..=runs {
        state
            .run_plan_with_eval(tvec!(input.clone()), |ctx, st, node, inputs| {
                let key = if per_node {
                    let info = node.op().info().unwrap_or_default().join(", ");
                    let shape = inputs.first().map(|i| i.shape().to_vec()).unwrap_or_default();
                    format!("#{:03} {} {info} on {shape:?}", node.id, node.op().name())
                } else {
                    node.op().name().to_string()
                };
                let t = std::time::Instant::now();
                let r = eval(ctx, st, node, inputs);
                if k > 0 {
                    let e = by_op.entry(key).or_default();
                    e.0.insert(node.id);
                    e.1 += t.elapsed().as_secs_f64() * 1000.0;
                }
                r
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut out: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (nodes, ms))| (op, nodes.len(), ms / runs.max(1) as f64))
        .collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(out)
}

/// Each model's inference time alone (ms per run, `runs` runs after a warm-up) at the shapes a
/// kiosk check-in uses: (name, input shape, times). For comparing runtimes on the same model.
pub fn model_latency(vision: &Vision, runs: usize) -> Result<Vec<PerModel<Vec<f64>>>> {
    vision
        .kiosk_plans()?
        .into_iter()
        .map(|(name, shape, plan)| Ok((name, shape.clone(), time_plan(&plan, &shape, runs)?)))
        .collect()
}

/// Per-operator profile of each model at the shapes of [`model_latency`]: (name, input shape,
/// [(operator, nodes, ms per run)] largest first); with `per_node`, one row per node (its id,
/// operator, parameters and input shape) instead of one per operator.
pub fn model_profile(vision: &Vision, runs: usize, per_node: bool) -> Result<Vec<PerModel<Vec<OpTime>>>> {
    vision
        .kiosk_plans()?
        .into_iter()
        .map(|(name, shape, plan)| Ok((name, shape.clone(), profile_plan(&plan, &shape, runs, per_node)?)))
        .collect()
}
