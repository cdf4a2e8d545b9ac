//! The load-time rewrite's pattern matching: which tract nodes (with the activation and per-channel
//! `Mul` / `Add` nodes after them) one of the ops in `mod.rs` replaces, with the weights it takes
//! from them, and the patch that swaps it in.

use super::{chw, concrete, Act, Conv1x1, Conv3x3, Depthwise3x3, Values, CONV3X3_MAX_CIN, CO_BLOCK};
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Zero padding of at most 1 on each side, as (top, left, bottom, right).
fn small_padding(p: &PaddingSpec) -> Option<[usize; 4]> {
    let (b, a) = match p {
        PaddingSpec::Valid => return Some([0; 4]),
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, false) => (b, a),
        _ => return None,
    };
    (b.len() == 2 && a.len() == 2 && b.iter().chain(a.iter()).all(|v| *v <= 1)).then(|| [b[0], b[1], a[0], a[1]])
}

fn plain_2d(spec: &PoolSpec) -> bool {
    matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW) && spec.dilations().iter().all(|d| *d == 1)
}

fn const_f32(model: &TypedModel, outlet: OutletId) -> Option<Vec<f32>> {
    let k = model.outlet_fact(outlet).ok()?.konst.clone()?;
    (k.datum_type() == f32::datum_type())
        .then(|| k.try_as_plain_ram().ok()?.as_slice::<f32>().ok().map(<[f32]>::to_vec))?
}

/// `next` as `op(x, k)` (either operand order) for a binary operator named `op` and a constant `k`
/// (`x` read on `slot`): `k`'s values, spread to `c` when `k` is a scalar. Per-channel constants are
/// `[1, c, 1, 1]` or `[c, 1, 1]` (channels last: `[1, 1, 1, c]`, `[1, 1, c]` or `[c]`).
fn with_const(model: &TypedModel, next: &TypedNode, slot: usize, op: &str, c: usize) -> Option<Vec<f32>> {
    with_const_in(model, next, slot, op, c, false)
}

fn with_const_in(
    model: &TypedModel,
    next: &TypedNode,
    slot: usize,
    op: &str,
    c: usize,
    channels_last: bool,
) -> Option<Vec<f32>> {
    let bin = next.op_as::<TypedBinOp>()?;
    if bin.0.name() != op || next.inputs.len() != 2 || bin.1.is_some() {
        return None;
    }
    let k = model.outlet_fact(next.inputs[1 - slot]).ok()?.konst.clone()?;
    let shape = k.shape();
    let per_channel = if channels_last {
        matches!(shape, [1, 1, 1, n] | [1, 1, n] | [n] if *n == c)
    } else {
        matches!(shape, [1, n, 1, 1] | [n, 1, 1] if *n == c)
    };
    if k.datum_type() != f32::datum_type() || !(per_channel || (k.len() == 1 && shape.len() <= 4)) {
        return None;
    }
    let v = k.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec();
    Some(if per_channel { v } else { vec![v[0]; c] })
}

fn is_zero(v: &[f32]) -> bool {
    v.iter().all(|x| *x == 0.0)
}

/// The activation that reads `node`'s output (of `c` channels) and nothing else does, if any, with
/// the last node it spans: a ReLU (`Max(x, 0)`), a spelled-out PRelu (`Add(Max(x, p), Mul(Min(x, q),
/// a))`) or `Max(x, Mul(x, a))` (see [`Act`]).
pub(super) fn activation_after(model: &TypedModel, node: &TypedNode, c: usize) -> (Act, usize) {
    let linear = (Act::Linear, node.id);
    let Some(out) = node.outputs.first() else { return linear };
    if model
        .output_outlets()
        .is_ok_and(|o| o.contains(&OutletId::new(node.id, 0)))
    {
        return linear;
    }
    let succ: Vec<(usize, usize)> = out.successors.iter().map(|s| (s.node, s.slot)).collect();
    let node_of = |id: usize| model.node(id);
    let zero_const =
        |id: usize, slot: usize, op: &str| with_const(model, node_of(id), slot, op, c).is_some_and(|k| is_zero(&k));
    let is_bin = |id: usize, op: &str| node_of(id).op_as::<TypedBinOp>().is_some_and(|o| o.0.name() == op);
    match succ[..] {
        [(m, slot)] if zero_const(m, slot, "Max") => (Act::Relu, m),
        [(p, ps), (q, qs)] => {
            for ((a, aslot), (b, bslot)) in [((p, ps), (q, qs)), ((q, qs), (p, ps))] {
                // Add(Max(x, p), Mul(Min(x, q), a))
                let (pos, neg) = (
                    with_const(model, node_of(a), aslot, "Max", c),
                    with_const(model, node_of(b), bslot, "Min", c),
                );
                if let (Some(pos), Some(neg)) = (pos, neg) {
                    let (Some((mul, mslot)), Some((add, _))) =
                        (sole_successor(model, node_of(b)), sole_successor(model, node_of(a)))
                    else {
                        continue;
                    };
                    let Some(slope) = with_const(model, node_of(mul), mslot, "Mul", c) else {
                        continue;
                    };
                    let joins = sole_successor(model, node_of(mul)).is_some_and(|(n, _)| n == add);
                    if joins && is_bin(add, "Add") && rank4(model, add) == rank4(model, node.id) {
                        let (pos, neg, slope) = (Values(Arc::new(pos)), Values(Arc::new(neg)), Values(Arc::new(slope)));
                        return (Act::SplitPrelu { pos, neg, slope }, add);
                    }
                }
                // Max(x, Mul(x, a))
                if let Some(slope) = with_const(model, node_of(a), aslot, "Mul", c) {
                    let joins = sole_successor(model, node_of(a)).is_some_and(|(n, _)| n == b);
                    if joins && is_bin(b, "Max") && node_of(b).inputs.len() == 2 {
                        return (Act::MaxMul(Values(Arc::new(slope))), b);
                    }
                }
            }
            linear
        }
        _ => linear,
    }
}

pub(super) fn depthwise_op(model: &TypedModel, node: &TypedNode) -> Option<Depthwise3x3> {
    let conv = node.op_as::<Conv>()?;
    let spec = &conv.pool_spec;
    let fact = model.outlet_fact(node.inputs[0]).ok()?;
    let shape = concrete(fact)?;
    let nhwc = matches!(spec.data_format, DataFormat::NHWC | DataFormat::HWC);
    let (c, _, _) = if nhwc {
        match shape[..] {
            [1, h, w, c] | [h, w, c] => (c, h, w),
            _ => return None,
        }
    } else {
        chw(&shape)?
    };
    let stride = spec.strides();
    let ok = conv.q_params.is_none()
        && fact.datum_type == f32::datum_type()
        && (plain_2d(spec) || (nhwc && spec.dilations().iter().all(|d| *d == 1)))
        && conv.group == c
        && spec.input_channels == c
        && spec.output_channels == c
        && spec.kernel_shape[..] == [3, 3]
        && stride.len() == 2
        && stride[0] == stride[1]
        && (stride[0] == 1 || stride[0] == 2)
        && node.inputs.len() == 3;
    if !ok {
        return None;
    }
    let pad = small_padding(&spec.padding)?;
    let kernel = model.outlet_fact(node.inputs[1]).ok()?;
    let weights = const_f32(model, node.inputs[1])?;
    // OIHW with one input channel per group and HWIO/OHWI are all [c, 1, 3, 3] in memory only for OIHW.
    if conv.kernel_fmt != KernelFormat::OIHW || concrete(kernel)?[..] != [c, 1, 3, 3] {
        return None;
    }
    let bias = const_f32(model, node.inputs[2])?;
    if !(bias.len() == c || bias.len() == 1) {
        return None;
    }
    let bias = if bias.len() == 1 { vec![bias[0]; c] } else { bias };
    Some(Depthwise3x3 {
        channels: c,
        stride: stride[0],
        pad,
        weights: Values(Arc::new(weights)),
        bias: Values(Arc::new(bias)),
        act: Act::Linear,
        with_n: true,
        nhwc,
        pool: false,
    })
}

pub(super) fn conv3x3_op(model: &TypedModel, node: &TypedNode) -> Option<Conv3x3> {
    let conv = node.op_as::<Conv>()?;
    let spec = &conv.pool_spec;
    let fact = model.outlet_fact(node.inputs[0]).ok()?;
    let (cin, _, _) = chw(&concrete(fact)?)?;
    let stride = spec.strides();
    let cout = spec.output_channels;
    let ok = conv.q_params.is_none()
        && fact.datum_type == f32::datum_type()
        && plain_2d(spec)
        && conv.group == 1
        && cin <= CONV3X3_MAX_CIN
        && spec.input_channels == cin
        && spec.kernel_shape[..] == [3, 3]
        && stride.len() == 2
        && stride[0] == stride[1]
        && (stride[0] == 1 || stride[0] == 2)
        && conv.kernel_fmt == KernelFormat::OIHW
        && node.inputs.len() == 3;
    if !ok || concrete(model.outlet_fact(node.inputs[1]).ok()?)?[..] != [cout, cin, 3, 3] {
        return None;
    }
    let pad = small_padding(&spec.padding)?;
    let weights = const_f32(model, node.inputs[1])?;
    let bias = const_f32(model, node.inputs[2])?;
    let bias = match bias.len() {
        1 => vec![bias[0]; cout],
        n if n == cout => bias,
        _ => return None,
    };
    let mut packed = vec![0f32; cout.div_ceil(CO_BLOCK) * cin * 9 * CO_BLOCK];
    for co in 0..cout {
        for t in 0..cin * 9 {
            packed[((co / CO_BLOCK) * cin * 9 + t) * CO_BLOCK + co % CO_BLOCK] = weights[co * cin * 9 + t];
        }
    }
    Some(Conv3x3 {
        cin,
        cout,
        stride: stride[0],
        pad,
        packed: Values(Arc::new(packed)),
        bias: Values(Arc::new(bias)),
        act: Act::Linear,
        with_n: true,
    })
}

/// The sole reader of `node`'s output, with the input slot it reads, unless that output is also a
/// model output.
pub(super) fn sole_successor(model: &TypedModel, node: &TypedNode) -> Option<(usize, usize)> {
    let [only] = node.outputs.first()?.successors.as_slice() else {
        return None;
    };
    let visible = model.output_outlets().ok()?.contains(&OutletId::new(node.id, 0));
    (!visible).then_some((only.node, only.slot))
}

/// `next` as `x * s` or `x + s` for a constant `s` (see [`with_const`]): the operator and `s`.
fn per_channel(
    model: &TypedModel,
    next: &TypedNode,
    slot: usize,
    c: usize,
    channels_last: bool,
) -> Option<(&'static str, Vec<f32>)> {
    ["Mul", "Add"]
        .into_iter()
        .find_map(|op| Some((op, with_const_in(model, next, slot, op, c, channels_last)?)))
}

/// A 1x1 convolution as tract declutters it — `EinSum` `NIHW,OI->NOHW` (or `IHW,OI->OHW`) with a
/// constant `[O, I]` kernel, or with a channels-last output (`..->NHWO`, YuNet's heads; a kernel of
/// one output channel is then `[I]`) — with the per-channel `Mul` / `Add` nodes after it (its bias, a
/// folded batch norm) folded into its weights and bias. Returns the op and the last node it replaces.
pub(super) fn conv1x1_op(model: &TypedModel, node: &TypedNode) -> Option<(Conv1x1, usize)> {
    let es = node.op_as::<EinSum>()?;
    let axes = es.axes.to_string();
    let layouts = ["NIHW,OI->NOHW", "IHW,OI->NOHW", "NIHW,OI->OHW", "IHW,OI->OHW"];
    let nhwc_layouts = ["NIHW,OI->NHWO", "IHW,OI->NHWO", "NIHW,I->NHWO", "IHW,I->NHWO"];
    let nhwc_out = nhwc_layouts.contains(&axes.as_str());
    if !(nhwc_out || layouts.contains(&axes.as_str())) || es.q_params.is_some() || node.inputs.len() != 2 {
        return None;
    }
    let fact = model.outlet_fact(node.inputs[0]).ok()?;
    let (cin, _, _) = chw(&concrete(fact)?)?;
    let kshape = concrete(model.outlet_fact(node.inputs[1]).ok()?)?;
    let (cout, kin) = match kshape[..] {
        [cout, kin] => (cout, kin),
        [kin] if axes.contains(",I->") => (1, kin),
        _ => return None,
    };
    if fact.datum_type != f32::datum_type() || kin != cin {
        return None;
    }
    let mut weights = const_f32(model, node.inputs[1])?;
    let mut bias = vec![0f32; cout];
    let mut last = node.id;
    while let Some((next, slot)) = sole_successor(model, model.node(last)) {
        let Some((op, v)) = per_channel(model, model.node(next), slot, cout, nhwc_out) else {
            break;
        };
        if op == "Mul" {
            for co in 0..cout {
                weights[co * cin..(co + 1) * cin].iter_mut().for_each(|w| *w *= v[co]);
                bias[co] *= v[co];
            }
        } else {
            bias.iter_mut().zip(&v).for_each(|(b, x)| *b += x);
        }
        last = next;
    }
    let mut op = Conv1x1::new(cin, cout, &weights, bias);
    op.nhwc_out = nhwc_out;
    Some((op, last))
}

pub(super) fn is_maxpool_2x2(model: &TypedModel, node: &TypedNode) -> bool {
    let Some(mp) = node.op_as::<MaxPool>() else {
        return false;
    };
    let spec = &mp.pool_spec;
    let fact = model.outlet_fact(node.inputs[0]).ok();
    mp.with_index_outputs.is_none()
        && plain_2d(spec)
        && spec.kernel_shape[..] == [2, 2]
        && spec.strides()[..] == [2, 2]
        && small_padding(&spec.padding) == Some([0; 4])
        && fact.is_some_and(|f| f.datum_type == f32::datum_type() && concrete(f).and_then(|s| chw(&s)).is_some())
}

/// Wires `op` on `input` in place of the node `last` (the node matched, or the last one fused into
/// it), provided the op gives exactly the shape `last` gave; returns whether it did.
pub(super) fn swap<O: Into<Box<dyn TypedOp>>>(
    model: &mut TypedModel,
    input: OutletId,
    last: usize,
    name: &str,
    op: O,
) -> TractResult<bool> {
    let want = model.outlet_fact(OutletId::new(last, 0))?.clone();
    let mut patch = TypedModelPatch::new(format!("lobby-{name}"));
    let x = patch.tap_model(model, input)?;
    let y = patch.wire_node(name, op, &[x])?[0];
    let got = patch.outlet_fact(y)?;
    if got.shape != want.shape || got.datum_type != want.datum_type {
        return Ok(false);
    }
    patch.shunt_outside(model, OutletId::new(last, 0), y)?;
    patch.apply(model)?;
    Ok(true)
}

/// The rank of `node`'s output is 4 (`[1, C, H, W]`), not 3.
pub(super) fn rank4(model: &TypedModel, node: usize) -> bool {
    model.outlet_fact(OutletId::new(node, 0)).is_ok_and(|f| f.rank() == 4)
}
