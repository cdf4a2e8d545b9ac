//! The one place that talks to tract: loading ONNX files into optimized plans and running them.

use super::{fastops, VisionError};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::prelude::*;

pub type Plan = Arc<TypedRunnableModel>;

fn load_err(path: &Path, e: impl std::fmt::Display) -> VisionError {
    VisionError::ModelLoad {
        file: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Parses an ONNX file without fixing its input shape (for models planned per input size), with the
/// load-time graph rewrites of [`rewrite_prelu`] and [`rewrite_split_prelu`] applied.
pub fn parse(path: &Path) -> Result<InferenceModel, VisionError> {
    parse_keeping(path, &[])
}

/// [`parse`], for a model whose tensors named in `read` will be read as outputs (their values must not
/// change).
fn parse_keeping(path: &Path, read: &[&str]) -> Result<InferenceModel, VisionError> {
    let onnx = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true);
    let mut proto = onnx.proto_model_for_path(path).map_err(|e| load_err(path, e))?;
    if let Some(g) = proto.graph.as_mut() {
        rewrite_prelu(g);
        rewrite_split_prelu(g, read);
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

/// Replaces the float values of an initializer (same count), in the field that held them.
fn set_float_initializer(g: &mut pb::GraphProto, name: &str, values: &[f32]) {
    if let Some(t) = g.initializer.iter_mut().find(|t| t.name == name) {
        if t.float_data.is_empty() {
            t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        } else {
            t.float_data = values.to_vec();
        }
    }
}

fn initializer_dims(g: &pb::GraphProto, name: &str) -> Option<Vec<usize>> {
    let t = g.initializer.iter().find(|t| t.name == name)?;
    t.dims.iter().map(|d| usize::try_from(*d).ok()).collect()
}

fn int_attribute(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// A PRelu spelled out as `Add(Relu(x), Mul(Min(x, 0), a))`, between two convolutions, found by
/// [`rewrite_split_prelu`]: node indices and the tensors it touches.
struct SplitPrelu {
    nodes: [usize; 4],
    x: String,
    slope: String,
    y: String,
    producer: usize,
    consumers: Vec<usize>,
}

/// Rewrites a PRelu written as `Add(Relu(x), Mul(Min(x, 0), a))` (how the embedder's file spells it,
/// four passes over the tensor in tract) as `Max(x, Mul(x, a))`, exactly, also where slopes exceed 1.
/// `Max(x, a*x)` is PRelu only for channels with `a <= 1`; for a channel with `a > 1`, the convolution
/// that produces `x` gets that output channel's weights and bias negated (so it yields `-x`),
/// `Max(-x, -a*x) = -PRelu(x)`, and every convolution that reads the result gets that input
/// channel's weights negated, which cancels the sign. Sign flips are exact in floating point, so the
/// model computes the same values. Applied only where `x` comes from a Conv read by nothing else and
/// the result is read only by Convs, each with weights of its own; where `x` or the result is a graph
/// output or named in `read`, only when no channel needs a flip. Returns the PRelus rewritten.
pub fn rewrite_split_prelu(g: &mut pb::GraphProto, read: &[&str]) -> usize {
    use std::collections::HashMap;
    let mut producer: HashMap<&str, usize> = HashMap::new();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in &n.output {
            producer.insert(o, i);
        }
        for x in &n.input {
            consumers.entry(x).or_default().push(i);
            *uses.entry(x).or_default() += 1;
        }
    }
    let is_init = |name: &str| g.initializer.iter().any(|t| t.name == name);
    let own_weights = |i: usize| {
        let n = &g.node[i];
        n.op_type == "Conv"
            && n.input.len() >= 2
            && n.input[1..]
                .iter()
                .all(|w| is_init(w) && uses.get(w.as_str()) == Some(&1))
    };
    let mut found = Vec::new();
    for (ai, add) in g.node.iter().enumerate() {
        if add.op_type != "Add" || add.input.len() != 2 || add.output.len() != 1 {
            continue;
        }
        let find = |op: &str| {
            add.input
                .iter()
                .filter_map(|x| producer.get(x.as_str()).copied())
                .find(|&i| g.node[i].op_type == op)
        };
        let (Some(ri), Some(mi)) = (find("Relu"), find("Mul")) else {
            continue;
        };
        let (relu, mul) = (&g.node[ri], &g.node[mi]);
        let Some(ni) = mul.input.first().and_then(|x| producer.get(x.as_str()).copied()) else {
            continue;
        };
        let min = &g.node[ni];
        let x = relu.input.first().cloned().unwrap_or_default();
        let zero = min.input.get(1).and_then(|z| float_initializer(g, z));
        let Some(&pi) = producer.get(x.as_str()) else {
            continue;
        };
        let y = add.output[0].clone();
        let readers = consumers.get(y.as_str()).cloned().unwrap_or_default();
        let ok = min.op_type == "Min"
            && min.input.first() == Some(&x)
            && zero.is_some_and(|z| z.iter().all(|v| *v == 0.0))
            && mul.input.len() == 2
            && float_initializer(g, &mul.input[1]).is_some()
            && uses.get(mul.input[1].as_str()) == Some(&1)
            && [ri, mi, ni].iter().all(|&i| {
                let out = g.node[i].output.first().map_or("", String::as_str);
                consumers.get(out).map(Vec::len) == Some(1)
            })
            && consumers.get(x.as_str()).map(Vec::len) == Some(2)
            && own_weights(pi)
            && !readers.is_empty()
            && readers.iter().all(|&i| own_weights(i) && g.node[i].input[0] == y);
        if ok {
            found.push(SplitPrelu {
                nodes: [ri, ni, mi, ai],
                x,
                slope: mul.input[1].clone(),
                y,
                producer: pi,
                consumers: readers,
            });
        }
    }
    let outputs: Vec<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut drop = std::collections::HashSet::new();
    let mut rewritten = 0;
    let mut new_nodes: HashMap<usize, [pb::NodeProto; 2]> = HashMap::new();
    for p in &found {
        let visible = [&p.x, &p.y]
            .iter()
            .any(|t| read.contains(&t.as_str()) || outputs.contains(t));
        if flip_channels(g, p, visible).is_none() {
            continue;
        }
        new_nodes.insert(p.nodes[3], max_mul(&p.x, &p.slope, &p.y, &p.y));
        drop.extend(p.nodes);
        rewritten += 1;
    }
    let old = std::mem::take(&mut g.node);
    for (i, n) in old.into_iter().enumerate() {
        if let Some(pair) = new_nodes.remove(&i) {
            g.node.extend(pair);
        } else if !drop.contains(&i) {
            g.node.push(n);
        }
    }
    rewritten
}

/// Negates, for each channel of `p` whose slope exceeds 1, that output channel of the producing
/// convolution and that input channel of each reading convolution. `None` (nothing changed) when a
/// shape does not fit, or when a flip is needed and the result is `visible` outside the graph.
fn flip_channels(g: &mut pb::GraphProto, p: &SplitPrelu, visible: bool) -> Option<()> {
    let slope = float_initializer(g, &p.slope)?;
    let flip: Vec<usize> = (0..slope.len()).filter(|&c| slope[c] > 1.0).collect();
    if flip.is_empty() {
        return Some(());
    }
    if visible {
        return None;
    }
    let prod = &g.node[p.producer];
    let (pw, pb_) = (prod.input[1].clone(), prod.input.get(2).cloned());
    let dims = initializer_dims(g, &pw)?;
    let channels = *dims.first()?;
    if slope.len() != channels || dims.len() != 4 {
        return None;
    }
    // Check every reader first, so that nothing is changed unless everything fits.
    let mut reads = Vec::new();
    for &ci in &p.consumers {
        let n = &g.node[ci];
        let group = usize::try_from(int_attribute(n, "group").unwrap_or(1)).ok()?.max(1);
        let w = n.input[1].clone();
        let d = initializer_dims(g, &w)?;
        if d.len() != 4 || d[1] * group != channels || d[0] % group != 0 {
            return None;
        }
        reads.push((w, d, group));
    }
    let mut w = float_initializer(g, &pw)?;
    let mut bias = match &pb_ {
        Some(b) => Some(float_initializer(g, b).filter(|v| v.len() == channels)?),
        None => None,
    };
    let mut read_weights = Vec::new();
    for (name, d, group) in reads {
        let rw = float_initializer(g, &name)?;
        if rw.len() != d.iter().product::<usize>() {
            return None;
        }
        read_weights.push((name, d, group, rw));
    }
    if w.len() % channels != 0 {
        return None;
    }
    let per_out = w.len() / channels;
    for &c in &flip {
        w[c * per_out..(c + 1) * per_out].iter_mut().for_each(|v| *v = -*v);
        if let Some(b) = bias.as_mut() {
            b[c] = -b[c];
        }
    }
    set_float_initializer(g, &pw, &w);
    if let (Some(name), Some(b)) = (&pb_, &bias) {
        set_float_initializer(g, name, b);
    }
    for (name, d, group, mut w) in read_weights {
        let (outs, cin, k) = (d[0], d[1], d[2] * d[3]);
        let outs_per_group = outs / group;
        for &c in &flip {
            let (grp, ci) = (c / cin, c % cin);
            for o in grp * outs_per_group..(grp + 1) * outs_per_group {
                let at = (o * cin + ci) * k;
                w[at..at + k].iter_mut().for_each(|v| *v = -*v);
            }
        }
        set_float_initializer(g, &name, &w);
    }
    Some(())
}

/// The two nodes `y = Max(x, Mul(x, a))`, named after `name`.
fn max_mul(x: &str, a: &str, y: &str, name: &str) -> [pb::NodeProto; 2] {
    let ax = format!("{y}__prelu_ax");
    [
        pb::NodeProto {
            input: vec![x.into(), a.into()],
            output: vec![ax.clone()],
            name: format!("{name}__mul"),
            op_type: "Mul".into(),
            ..Default::default()
        },
        pb::NodeProto {
            input: vec![x.into(), ax],
            output: vec![y.into()],
            name: format!("{name}__max"),
            op_type: "Max".into(),
            ..Default::default()
        },
    ]
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
        nodes.extend(max_mul(&n.input[0], &n.input[1], &n.output[0], &n.name));
        rewritten += 1;
    }
    g.node = nodes;
    rewritten
}

/// Makes an optimized plan of `model` for an f32 input of `shape`: decluttered by tract, the
/// [`fastops`] rewrite applied (unless `fast_ops` is off, to measure tract alone), then optimized
/// and planned by tract.
pub fn plan(model: &InferenceModel, shape: &[usize], what: &Path, fast_ops: bool) -> Result<Plan, VisionError> {
    let typed = model
        .clone()
        .with_input_fact(0, f32::fact(shape).into())
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_decluttered())
        .map_err(|e| load_err(what, e))?;
    let typed = if fast_ops {
        fastops::rewrite(typed).map_err(|e| load_err(what, e))?.0
    } else {
        typed
    };
    typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| load_err(what, e))
}

/// Loads a fixed-shape model and plans it once.
pub fn load_fixed(path: &Path, shape: &[usize], fast_ops: bool) -> Result<Plan, VisionError> {
    plan(&parse(path)?, shape, path, fast_ops)
}

/// Loads a fixed-shape model with the outputs of the named nodes (in that order) and plans it once.
pub fn load_fixed_with_outputs(
    path: &Path,
    shape: &[usize],
    outputs: &[&str],
    fast_ops: bool,
) -> Result<Plan, VisionError> {
    let model = parse_keeping(path, outputs)?
        .with_outputs_by_name(outputs.iter().copied())
        .map_err(|e| load_err(path, e))?;
    plan(&model, shape, path, fast_ops)
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

#[cfg(test)]
mod tests {
    use super::*;
    use pb::attribute_proto::AttributeType;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn tensor(name: &str, dims: &[i64], v: Vec<f32>, raw: bool) -> pb::TensorProto {
        let mut t = pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            ..Default::default()
        };
        if raw {
            t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        } else {
            t.float_data = v;
        }
        t
    }

    fn node(op: &str, input: &[&str], output: &str, attrs: &[(&str, Vec<i64>)]) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: input.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs
                .iter()
                .map(|(n, v)| pb::AttributeProto {
                    name: n.to_string(),
                    r#type: if v.len() == 1 {
                        AttributeType::Int
                    } else {
                        AttributeType::Ints
                    } as i32,
                    i: v[0],
                    ints: if v.len() == 1 { vec![] } else { v.clone() },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The embedder's spelling of PRelu: Add(Relu(x), Mul(Min(x, 0), a)).
    fn split_prelu(x: &str, a: &str, y: &str) -> Vec<pb::NodeProto> {
        vec![
            node("Relu", &[x], &format!("{y}_pos"), &[]),
            node("Min", &[x, "zero"], &format!("{y}_neg"), &[]),
            node("Mul", &[&format!("{y}_neg"), a], &format!("{y}_negs"), &[]),
            node("Add", &[&format!("{y}_pos"), &format!("{y}_negs")], y, &[]),
        ]
    }

    /// conv 1x1 (4 -> 4) -> PRelu -> depthwise 3x3 -> PRelu -> conv 1x1 (4 -> 2), slopes on both sides
    /// of 1 and negative, weights held both as float_data and as raw_data.
    fn model() -> pb::ModelProto {
        let mut nodes = vec![node("Conv", &["x", "w1", "b1"], "c1", &[])];
        nodes.extend(split_prelu("c1", "a1", "p1"));
        nodes.push(node(
            "Conv",
            &["p1", "w2", "b2"],
            "c2",
            &[("group", vec![4]), ("pads", vec![1, 1, 1, 1])],
        ));
        nodes.extend(split_prelu("c2", "a2", "p2"));
        nodes.push(node("Conv", &["p2", "w3"], "y", &[]));
        let graph = pb::GraphProto {
            node: nodes,
            input: vec![pb::ValueInfoProto {
                name: "x".into(),
                r#type: Some(pb::TypeProto {
                    value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                        elem_type: pb::tensor_proto::DataType::Float as i32,
                        shape: Some(pb::TensorShapeProto {
                            dim: [1, 4, 6, 6]
                                .iter()
                                .map(|d| pb::tensor_shape_proto::Dimension {
                                    value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(*d)),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            output: vec![pb::ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            initializer: vec![
                tensor("w1", &[4, 4, 1, 1], values(16, 1), false),
                tensor("b1", &[4], values(4, 2), true),
                tensor("a1", &[4, 1, 1], vec![0.25, 2.5, -1.5, 8.9], false),
                tensor("w2", &[4, 1, 3, 3], values(36, 3), true),
                tensor("b2", &[4], values(4, 4), false),
                tensor("a2", &[4, 1, 1], vec![3.0, 0.5, 1.0, 1.5], true),
                tensor("w3", &[2, 4, 1, 1], values(8, 5), false),
                tensor("zero", &[], vec![0.0], false),
            ],
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 7,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    fn run_model(proto: &pb::ModelProto, outputs: &[&str]) -> Vec<Vec<f32>> {
        let model = tract_onnx::onnx()
            .model_for_proto_model(proto)
            .unwrap()
            .with_outputs_by_name(outputs.iter().copied())
            .unwrap();
        let plan = plan(&model, &[1, 4, 6, 6], Path::new("test"), true).unwrap();
        run(&plan, &[1, 4, 6, 6], values(144, 9).iter().map(|v| v * 4.0).collect()).unwrap()
    }

    #[test]
    fn split_prelu_becomes_max_mul_with_the_same_values() {
        let before = model();
        let mut after = model();
        let g = after.graph.as_mut().unwrap();
        assert_eq!(rewrite_split_prelu(g, &[]), 2);
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Conv", "Mul", "Max", "Conv", "Mul", "Max", "Conv"]);
        let (a, b) = (run_model(&before, &["y"]), run_model(&after, &["y"]));
        assert_eq!(a[0].len(), 72);
        assert!(a[0].iter().any(|v| *v < 0.0) && a[0].iter().any(|v| *v > 0.0));
        assert_same_outputs(&a, &b);
    }

    /// Every output of the rewritten model equals the original's (to float rounding).
    fn assert_same_outputs(a: &[Vec<f32>], b: &[Vec<f32>]) {
        assert_eq!(a.len(), b.len());
        for (k, (a, b)) in a.iter().zip(b).enumerate() {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + x.abs()), "output {k}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn a_prelu_read_as_an_output_keeps_its_signs() {
        let before = model();
        let mut after = model();
        let g = after.graph.as_mut().unwrap();
        // p1 needs flips (slopes 2.5 and 8.9) and is read: left as it is; p2 is rewritten.
        assert_eq!(rewrite_split_prelu(g, &["p1"]), 1);
        let (a, b) = (run_model(&before, &["y", "p1"]), run_model(&after, &["y", "p1"]));
        assert_same_outputs(&a, &b);
        // The same when the convolution's output before the PRelu is the one read.
        let mut after = model();
        assert_eq!(rewrite_split_prelu(after.graph.as_mut().unwrap(), &["c1"]), 1);
        let (a, b) = (run_model(&before, &["y", "c1"]), run_model(&after, &["y", "c1"]));
        assert_same_outputs(&a, &b);
    }
}
