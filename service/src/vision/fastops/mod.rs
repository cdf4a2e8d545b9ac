//! Load-time replacements for the tract operators our models spend their time in: 3x3 depthwise
//! convolutions (channels first, or last as in YuNet's heads), 1x1 convolutions (with a channels-last
//! output too, as in YuNet's heads), the first layer's 3x3 convolution over the colour channels, and
//! 2x2/stride-2 max-pools, each on one f32 image. The
//! activation that follows a convolution (ReLU, or PRelu in either spelling our graphs use) and the
//! per-channel `Mul` / `Add` after a 1x1 convolution are fused into it.
//!
//! The models are still parsed, decluttered, optimized and run by tract: between decluttering and
//! optimizing, each matching node is swapped for one of the ops below (tract's own `TypedOp` /
//! `EvalOp` traits), which tract then schedules like any other. Anything that does not match
//! exactly (another kernel size, dilation, padding wider than 1, a batch of more than one, quantised
//! types, a tensor also read as a model output) keeps tract's op. The 1x1 and full 3x3 kernels are
//! written for AVX-512 and swapped in only on CPUs that have it; the depthwise and pooling kernels
//! are plain Rust compiled for AVX2/AVX-512 (chosen at run time) or the baseline, and on AVX-512 the
//! stride-1 depthwise convolutions (with a following 2x2 max-pool fused) and the stride-2 first
//! layer run hand-written kernels that read the input rows directly, with no bordered copies.
//!
//! The arithmetic is the same as tract's (the same products and sums per output; only their order
//! may differ), so outputs agree to float rounding: unit tests on small graphs (`tests.rs`), and
//! `tests/tests/e2e/fastops.rs` runs the whole pipeline both ways on real photos. What each swap buys is
//! in `bench/RESULTS-log.md` ("Performance"); `lobby-stages --tract-only` measures tract alone.
//!
//! The files: this one holds the ops and [`rewrite`]; `matching.rs` finds the nodes to swap;
//! `dispatch.rs` picks a kernel at run time; `portable.rs` holds the plain-Rust kernels (the only ones
//! off x86-64) and `avx512.rs` the AVX-512 ones (compiled only for x86-64); `tests.rs` the unit tests.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;
mod matching;
mod portable;
#[cfg(test)]
mod tests;

use dispatch::{conv1x1, conv3x3, depthwise, depthwise_pooled, has_avx512, maxpool};
use matching::{activation_after, conv1x1_op, conv3x3_op, depthwise_op, is_maxpool_2x2, rank4, sole_successor, swap};
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// f32 values compared by bits, so an op holding weights can be `Eq` (tract's graph needs it).
#[derive(Debug, Clone)]
pub struct Values(Arc<Vec<f32>>);

impl PartialEq for Values {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.len() == other.0.len()
                && self
                    .0
                    .iter()
                    .zip(other.0.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()))
    }
}
impl Eq for Values {}

/// What follows a convolution, fused into it: nothing, a ReLU, or a per-channel PRelu in either of
/// the two spellings our models' graphs use: `Add(Max(x, p), Mul(Min(x, q), a))` (PRelu spelled out
/// with `p = q = 0`; in our distilled embedder `q` was trained too and is ~0.004) and `Max(x, Mul(x,
/// a))` (the load-time rewrite of PRelu where every `a <= 1`). Each is computed with the operations
/// tract runs, in the same order, so the values are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    Linear,
    Relu,
    SplitPrelu { pos: Values, neg: Values, slope: Values },
    MaxMul(Values),
}

impl Act {
    /// Applies the activation to one row of output channel `ch`.
    #[inline(always)]
    fn row(&self, ch: usize, row: &mut [f32]) {
        match self {
            Act::Linear => {}
            Act::Relu => row.iter_mut().for_each(|v| *v = v.max(0.0)),
            Act::SplitPrelu { pos, neg, slope } => {
                let (p, q, a) = (pos.0[ch], neg.0[ch], slope.0[ch]);
                row.iter_mut().for_each(|v| *v = v.max(p) + v.min(q) * a);
            }
            Act::MaxMul(a) => {
                let a = a.0[ch];
                row.iter_mut().for_each(|v| *v = v.max(*v * a));
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Act::Linear => "linear",
            Act::Relu => "relu",
            Act::SplitPrelu { .. } => "prelu",
            Act::MaxMul(_) => "max-mul",
        }
    }
}

/// The channels-first image geometry the ops accept: `[1, C, H, W]` or `[C, H, W]`, as (C, H, W).
fn chw(shape: &[usize]) -> Option<(usize, usize, usize)> {
    match *shape {
        [1, c, h, w] | [c, h, w] => Some((c, h, w)),
        _ => None,
    }
}

fn out_shape(with_n: bool, c: usize, h: usize, w: usize) -> TVec<usize> {
    if with_n {
        tvec![1, c, h, w]
    } else {
        tvec![c, h, w]
    }
}

/// An f32 tensor of `shape` filled by `write`, which must write every element (each kernel here
/// does; the tests compare every output element with tract's).
fn written(shape: &[usize], write: impl FnOnce(&mut [f32])) -> TractResult<TVec<TValue>> {
    // SAFETY: f32 has no invalid bit patterns, and `write` sets every element before anything reads
    // the tensor, which is how tract's own kernels use `Tensor::uninitialized`. It spares the
    // zero-fill of every output (~0.7 ms of the detector's 9).
    let mut t = unsafe { Tensor::uninitialized::<f32>(shape)? };
    write(t.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
    Ok(tvec![t.into_tvalue()])
}

/// `x` read as `rows x cols`, written as `cols x rows`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    transpose_into(x, rows, cols, &mut out);
    out
}

/// [`transpose`] into `out` (`rows * cols` values; any beyond are left as they are).
fn transpose_into(x: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    for (r, row) in x.chunks_exact(cols).enumerate().take(rows) {
        for (c, v) in row.iter().enumerate() {
            if let Some(o) = out.get_mut(c * rows + r) {
                *o = *v;
            }
        }
    }
}

fn concrete(fact: &TypedFact) -> Option<Vec<usize>> {
    fact.shape.as_concrete().map(|s| s.to_vec())
}

/// What each op here provides; [`tract_op!`] turns it into tract's `Op`, `EvalOp` and `TypedOp`.
trait FastOp {
    const NAME: &'static str;
    /// One line for tract's dumps.
    fn describe(&self) -> String;
    /// The output shape for an input of `shape`, `None` when the op does not take such an input.
    fn output_shape(&self, shape: &[usize]) -> Option<TVec<usize>>;
    /// Computes the output into `out` (of [`FastOp::output_shape`]), writing every element (zeros
    /// for an input `output_shape` refuses, which eval never passes).
    fn write(&self, x: &[f32], shape: &[usize], out: &mut [f32]);
}

macro_rules! tract_op {
    ($($t:ty),*) => {$(
        impl Op for $t {
            fn name(&self) -> StaticName {
                <$t as FastOp>::NAME.into()
            }
            fn info(&self) -> TractResult<Vec<String>> {
                Ok(vec![self.describe()])
            }
            fn validation(&self) -> Validation {
                Validation::Rounding
            }
            fn as_typed(&self) -> Option<&dyn TypedOp> {
                Some(self)
            }
        }

        impl EvalOp for $t {
            fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
                Ok(Some(EvalOp::eval(self, &EvalContext::out_of_plan(), inputs)?))
            }

            fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                let input = &inputs[0];
                let Some(shape) = self.output_shape(input.shape()) else {
                    bail!("{}: unexpected input {:?}", <$t as FastOp>::NAME, input.shape())
                };
                let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
                written(&shape, |out| self.write(x, input.shape(), out))
            }
        }

        impl TypedOp for $t {
            fn as_op(&self) -> &dyn Op {
                self
            }
            fn as_op_mut(&mut self) -> &mut dyn Op {
                self
            }
            fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
                let shape = concrete(inputs[0]);
                let Some(out) = shape.as_deref().and_then(|s| self.output_shape(s)) else {
                    bail!("{}: unexpected input {:?}", <$t as FastOp>::NAME, inputs[0])
                };
                Ok(tvec![f32::fact(out)])
            }
        }
    )*};
}

tract_op!(Depthwise3x3, MaxPool2x2, Conv1x1, Conv3x3);

/// The output geometry of a 3x3 kernel with `stride` and `pad` (top, left, bottom, right) on `h x w`.
fn geometry(h: usize, w: usize, stride: usize, pad: [usize; 4]) -> Option<Geometry> {
    let (hp, wp) = (h + pad[0] + pad[2], w + pad[1] + pad[3]);
    if hp < 3 || wp < 3 {
        return None;
    }
    let (ho, wo) = ((hp - 3) / stride + 1, (wp - 3) / stride + 1);
    Some(Geometry {
        h,
        w,
        ho,
        wo,
        stride,
        top: pad[0],
        left: pad[1],
    })
}

/// A 3x3 depthwise convolution (one filter per channel), stride 1 or 2, zero padding of 0 or 1 on
/// each side, bias, and the activation after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Depthwise3x3 {
    channels: usize,
    stride: usize,
    /// top, left, bottom, right
    pad: [usize; 4],
    weights: Values,
    bias: Values,
    act: Act,
    /// Whether the output is `[1, C, H, W]` rather than `[C, H, W]` (what the replaced nodes gave).
    with_n: bool,
    /// Channels last (`[1, H, W, C]` / `[H, W, C]`, where tract's declutter moved a detection head's
    /// layout): the image is transposed to channels first and back around the kernel.
    nhwc: bool,
    /// The 2x2/stride-2 max-pool after it fused (channels first only).
    pool: bool,
}

impl Depthwise3x3 {
    /// (C, H, W) of an input of this op's layout.
    fn dims(&self, shape: &[usize]) -> Option<(usize, usize, usize)> {
        if !self.nhwc {
            return chw(shape);
        }
        match *shape {
            [1, h, w, c] | [h, w, c] => Some((c, h, w)),
            _ => None,
        }
    }
}

impl FastOp for Depthwise3x3 {
    const NAME: &'static str = "LobbyDepthwise3x3";

    fn describe(&self) -> String {
        format!(
            "c={} stride={} pad={:?} {} nhwc={}{}",
            self.channels,
            self.stride,
            self.pad,
            self.act.name(),
            self.nhwc,
            if self.pool { " + max-pool 2x2" } else { "" }
        )
    }

    fn output_shape(&self, shape: &[usize]) -> Option<TVec<usize>> {
        let (c, h, w) = self.dims(shape).filter(|d| d.0 == self.channels)?;
        let g = geometry(h, w, self.stride, self.pad)?;
        let (ho, wo) = if self.pool { (g.ho / 2, g.wo / 2) } else { (g.ho, g.wo) };
        if ho == 0 || wo == 0 {
            return None;
        }
        Some(match (self.nhwc, self.with_n) {
            (false, n) => out_shape(n, c, ho, wo),
            (true, true) => tvec![1, g.ho, g.wo, c],
            (true, false) => tvec![g.ho, g.wo, c],
        })
    }

    fn write(&self, x: &[f32], shape: &[usize], out: &mut [f32]) {
        let Some((c, h, w)) = self.dims(shape) else {
            return out.fill(0.0);
        };
        let Some(g) = geometry(h, w, self.stride, self.pad) else {
            return out.fill(0.0);
        };
        let (weights, bias) = (&self.weights.0[..], &self.bias.0[..]);
        if self.nhwc {
            let mut chw_out = vec![0f32; out.len()];
            depthwise(&transpose(x, h * w, c), &mut chw_out, &g, weights, bias, &self.act);
            transpose_into(&chw_out, c, g.ho * g.wo, out);
        } else if self.pool {
            depthwise_pooled(x, out, &g, weights, bias, &self.act);
        } else {
            depthwise(x, out, &g, weights, bias, &self.act);
        }
    }
}

/// A 2x2 max-pool with stride 2 and no padding (floor mode), per channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxPool2x2;

impl FastOp for MaxPool2x2 {
    const NAME: &'static str = "LobbyMaxPool2x2";

    fn describe(&self) -> String {
        String::new()
    }

    fn output_shape(&self, shape: &[usize]) -> Option<TVec<usize>> {
        let (c, h, w) = chw(shape)?;
        Some(out_shape(shape.len() == 4, c, h / 2, w / 2))
    }

    fn write(&self, x: &[f32], shape: &[usize], out: &mut [f32]) {
        match chw(shape) {
            Some((c, h, w)) => maxpool(x, out, c, h, w),
            None => out.fill(0.0),
        }
    }
}

/// A 1x1 convolution (a matrix product over channels at every pixel), stride 1, no padding, with
/// bias and the activation after it. Only planned where the CPU has AVX-512 (its kernel keeps an
/// 8-channel x 32-pixel block of outputs in registers, with no packing pass); elsewhere tract's own
/// convolution stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conv1x1 {
    cin: usize,
    cout: usize,
    /// The weights in blocks of 8 output channels: `[cout.div_ceil(8)][cin][8]`, zero-padded.
    packed: Values,
    bias: Values,
    act: Act,
    /// Whether the output is `[1, C, H, W]` rather than `[C, H, W]` (tract's declutter moves the batch
    /// axis of a batch of one in and out of its einsums).
    with_n: bool,
    /// Channels last out (`[1, H, W, C]`: YuNet's heads, whose layout tract's declutter moved): the
    /// kernel's channels-first result is transposed into it.
    nhwc_out: bool,
}

const CO_BLOCK: usize = 8;

impl Conv1x1 {
    fn new(cin: usize, cout: usize, weights: &[f32], bias: Vec<f32>) -> Conv1x1 {
        let mut packed = vec![0f32; cout.div_ceil(CO_BLOCK) * cin * CO_BLOCK];
        for co in 0..cout {
            for ci in 0..cin {
                packed[((co / CO_BLOCK) * cin + ci) * CO_BLOCK + co % CO_BLOCK] = weights[co * cin + ci];
            }
        }
        let (packed, bias) = (Values(Arc::new(packed)), Values(Arc::new(bias)));
        Conv1x1 {
            cin,
            cout,
            packed,
            bias,
            act: Act::Linear,
            with_n: true,
            nhwc_out: false,
        }
    }
}

impl FastOp for Conv1x1 {
    const NAME: &'static str = "LobbyConv1x1";

    fn describe(&self) -> String {
        let layout = if self.nhwc_out { " nhwc out" } else { "" };
        format!("{} -> {} {}{layout}", self.cin, self.cout, self.act.name())
    }

    fn output_shape(&self, shape: &[usize]) -> Option<TVec<usize>> {
        let (_, h, w) = chw(shape).filter(|d| d.0 == self.cin)?;
        Some(if self.nhwc_out {
            tvec![1, h, w, self.cout]
        } else {
            out_shape(self.with_n, self.cout, h, w)
        })
    }

    fn write(&self, x: &[f32], shape: &[usize], out: &mut [f32]) {
        let Some((_, h, w)) = chw(shape) else {
            return out.fill(0.0);
        };
        if self.nhwc_out {
            let mut chw_out = vec![0f32; out.len()];
            conv1x1(x, &mut chw_out, self, h * w);
            transpose_into(&chw_out, self.cout, h * w, out);
        } else {
            conv1x1(x, out, self, h * w);
        }
    }
}

/// A full 3x3 convolution over a few input channels (a network's first layer, on the colour
/// channels), stride 1 or 2, zero padding of 0 or 1, with bias and activation. Like [`Conv1x1`] it is
/// only planned where the CPU has AVX-512: 8 output channels x 16 pixels are accumulated in
/// registers over the `9 * cin` taps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conv3x3 {
    cin: usize,
    cout: usize,
    stride: usize,
    /// top, left, bottom, right
    pad: [usize; 4],
    /// `[cout.div_ceil(8)][cin * 9][8]`, zero-padded.
    packed: Values,
    bias: Values,
    act: Act,
    with_n: bool,
}

/// The most input channels [`Conv3x3`] takes (its taps are gathered per output row).
const CONV3X3_MAX_CIN: usize = 4;

impl FastOp for Conv3x3 {
    const NAME: &'static str = "LobbyConv3x3";

    fn describe(&self) -> String {
        format!(
            "{} -> {} stride={} pad={:?} {}",
            self.cin,
            self.cout,
            self.stride,
            self.pad,
            self.act.name()
        )
    }

    fn output_shape(&self, shape: &[usize]) -> Option<TVec<usize>> {
        let (_, h, w) = chw(shape).filter(|d| d.0 == self.cin)?;
        let g = geometry(h, w, self.stride, self.pad)?;
        Some(out_shape(self.with_n, self.cout, g.ho, g.wo))
    }

    fn write(&self, x: &[f32], shape: &[usize], out: &mut [f32]) {
        let Some((c, h, w)) = chw(shape) else {
            return out.fill(0.0);
        };
        let Some(g) = geometry(h, w, self.stride, self.pad) else {
            return out.fill(0.0);
        };
        conv3x3(x, c, out, self, &g);
    }
}

/// The geometry of a 3x3 kernel's input and output planes (see [`geometry`]).
struct Geometry {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    top: usize,
    left: usize,
}

/// Swaps every matching depthwise convolution, 1x1 convolution (each with a following ReLU fused)
/// and 2x2 max-pool of a decluttered model for the ops above. Returns the rewritten model and how
/// many nodes were swapped.
pub fn rewrite(mut model: TypedModel) -> TractResult<(TypedModel, usize)> {
    let mut swapped = 0;
    let conv1x1_too = has_avx512();
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(&input) = node.inputs.first() else { continue };
        let name = node.name.clone();
        let done = if let Some(mut op) = depthwise_op(&model, node) {
            // Per-channel constants are matched in the channels-first layout only.
            let (act, mut last) = match activation_after(&model, node, op.channels) {
                (act, last) if !op.nhwc || matches!(act, Act::Linear | Act::Relu) => (act, last),
                _ => (Act::Linear, id),
            };
            op.act = act;
            if let Some((next, _)) = sole_successor(&model, model.node(last)).filter(|_| !op.nhwc) {
                if is_maxpool_2x2(&model, model.node(next)) {
                    op.pool = true;
                    last = next;
                }
            }
            op.with_n = rank4(&model, last);
            swap(&mut model, input, last, &name, op)?
        } else if let Some((mut op, end)) = conv1x1_op(&model, node).filter(|_| conv1x1_too) {
            let (act, last) = match activation_after(&model, model.node(end), op.cout) {
                (act, last) if !op.nhwc_out || matches!(act, Act::Linear | Act::Relu) => (act, last),
                _ => (Act::Linear, end),
            };
            op.act = act;
            op.with_n = rank4(&model, last);
            swap(&mut model, input, last, &name, op)?
        } else if let Some(mut op) = conv3x3_op(&model, node).filter(|_| has_avx512()) {
            let (act, last) = activation_after(&model, node, op.cout);
            op.act = act;
            op.with_n = rank4(&model, last);
            swap(&mut model, input, last, &name, op)?
        } else if is_maxpool_2x2(&model, node) {
            swap(&mut model, input, id, &name, MaxPool2x2)?
        } else {
            false
        };
        swapped += usize::from(done);
    }
    Ok((model.into_compact()?, swapped))
}
