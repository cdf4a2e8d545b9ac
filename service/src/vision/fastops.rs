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
//! may differ), so outputs agree to float rounding: unit tests on small graphs below, and
//! `tests/tests/fastops.rs` runs the whole pipeline both ways on real photos. What each swap buys is
//! in `bench/RESULTS.md` ("Performance"); `lobby-stages --tract-only` measures tract alone.

use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;

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
        #[cfg(target_arch = "x86_64")]
        let sizes_fit = x.len() >= self.cin * h * w && out.len() >= self.cout * g.ho * g.wo;
        if has_avx512() && g.stride == 2 && g.top <= 1 && g.left <= 1 && sizes_fit {
            // SAFETY: the CPU has AVX-512F and the buffers hold `cin x h x w` inputs and
            // `cout x ho x wo` outputs (both checked just above).
            return unsafe { avx512::conv3x3_stride2(x, out, self, &g) };
        }
        let mut planes: Vec<TapPlane> = (0..c).map(|_| TapPlane::new(&g)).collect();
        for (tp, xp) in planes.iter_mut().zip(x.chunks_exact(h * w)) {
            tp.load(xp, &g);
        }
        conv3x3(&planes, out, self, &g);
    }
}

/// The weight of output channel `co`, tap `t` (`ci * 9 + ky * 3 + kx`) in [`Conv3x3::packed`].
fn conv3x3_weight(op: &Conv3x3, co: usize, t: usize) -> f32 {
    op.packed.0[((co / CO_BLOCK) * op.cin * 9 + t) * CO_BLOCK + co % CO_BLOCK]
}

/// The portable 3x3 convolution (only if a plan made on an AVX-512 machine runs without it).
fn conv3x3_generic(planes: &[TapPlane], out: &mut [f32], op: &Conv3x3, g: &Geometry) {
    for co in 0..op.cout {
        for (oy, orow) in out[co * g.ho * g.wo..(co + 1) * g.ho * g.wo]
            .chunks_exact_mut(g.wo)
            .enumerate()
        {
            orow.fill(op.bias.0[co]);
            for (ci, tp) in planes.iter().enumerate() {
                for (k, tap) in tp.nine(oy).iter().enumerate() {
                    let wv = conv3x3_weight(op, co, ci * 9 + k);
                    orow.iter_mut().zip(tap.iter()).for_each(|(o, v)| *o += wv * v);
                }
            }
            op.act.row(co, orow);
        }
    }
}

fn conv3x3(planes: &[TapPlane], out: &mut [f32], op: &Conv3x3, g: &Geometry) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512F (checked just above); the sizes are the op's (checked by eval).
        return unsafe { avx512::conv3x3(planes, out, op, g) };
    }
    conv3x3_generic(planes, out, op, g)
}

// ---------------------------------------------------------------------------------------------
// Kernels. Each is written once, generic over `FMA`, and compiled twice on x86-64: with AVX2+FMA
// (picked at run time when the CPU has them) and for the baseline target.

struct Geometry {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    top: usize,
    left: usize,
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `out[i] = b + sum of k[t] * taps[t][i]` over the nine taps (each a row slice of `out.len()`).
#[inline(always)]
fn nine_taps<const FMA: bool>(out: &mut [f32], taps: [&[f32]; 9], k: &[f32], b: f32) {
    let n = out.len();
    let [t0, t1, t2, t3, t4, t5, t6, t7, t8] = taps.map(|t| &t[..n]);
    for i in 0..n {
        let mut acc = madd::<FMA>(k[0], t0[i], b);
        acc = madd::<FMA>(k[1], t1[i], acc);
        acc = madd::<FMA>(k[2], t2[i], acc);
        acc = madd::<FMA>(k[3], t3[i], acc);
        acc = madd::<FMA>(k[4], t4[i], acc);
        acc = madd::<FMA>(k[5], t5[i], acc);
        acc = madd::<FMA>(k[6], t6[i], acc);
        acc = madd::<FMA>(k[7], t7[i], acc);
        out[i] = madd::<FMA>(k[8], t8[i], acc);
    }
}

/// One channel laid out so that the three taps of every kernel row are contiguous slices: copied into
/// a zero-bordered plane (so every output sees nine in-bounds taps) and, with stride 2, split into
/// its even and odd columns.
struct TapPlane {
    plane: Vec<f32>,
    split: Vec<f32>,
    /// padded width; even and odd column counts of a split row
    wp: usize,
    we: usize,
    wod: usize,
    stride: usize,
}

thread_local! {
    /// Scratch buffers of this thread's earlier [`TapPlane`]s, reused so that a run does not pay
    /// fresh (page-faulting) allocations for them. At most [`POOL_BUFFERS`] are kept per thread.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

const POOL_BUFFERS: usize = 8;

/// A buffer of `n` values, from this thread's pool when it has one. Its old contents are left in
/// place (not zeroed again): [`TapPlane::load`] writes every element before any is read.
fn scratch(n: usize) -> Vec<f32> {
    let mut v = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    v.resize(n, 0.0);
    v
}

impl Drop for TapPlane {
    fn drop(&mut self) {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            for v in [std::mem::take(&mut self.plane), std::mem::take(&mut self.split)] {
                if p.len() < POOL_BUFFERS && v.capacity() > 0 {
                    p.push(v);
                }
            }
        });
    }
}

impl TapPlane {
    fn new(g: &Geometry) -> TapPlane {
        let (hp, wp) = ((g.ho - 1) * g.stride + 3, (g.wo - 1) * g.stride + 3);
        let (we, wod) = (wp.div_ceil(2), wp / 2);
        let split = if g.stride == 2 {
            scratch(hp * (we + wod))
        } else {
            Vec::new()
        };
        TapPlane {
            plane: if g.stride == 1 { scratch(hp * wp) } else { Vec::new() },
            split,
            wp,
            we,
            wod,
            stride: g.stride,
        }
    }

    /// Lays out channel `xp` (`g.h x g.w`).
    #[inline(always)]
    fn load(&mut self, xp: &[f32], g: &Geometry) {
        let n = g.w.min(self.wp.saturating_sub(g.left));
        let row_of = |py: usize| {
            py.checked_sub(g.top)
                .filter(|iy| *iy < g.h)
                .map(|iy| &xp[iy * g.w..iy * g.w + n])
        };
        if self.stride == 1 {
            for (py, prow) in self.plane.chunks_exact_mut(self.wp).enumerate() {
                let Some(src) = row_of(py) else {
                    prow.fill(0.0);
                    continue;
                };
                prow[..g.left].fill(0.0);
                prow[g.left..g.left + n].copy_from_slice(src);
                prow[g.left + n..].fill(0.0);
            }
            return;
        }
        // Stride 2: padded column j = left + ix goes to even[j / 2] or odd[j / 2] (left is 0 or 1).
        for (py, srow) in self.split.chunks_exact_mut(self.we + self.wod).enumerate() {
            srow.fill(0.0);
            let Some(src) = row_of(py).filter(|s| !s.is_empty()) else {
                continue;
            };
            let (even, odd) = srow.split_at_mut(self.we);
            let (rest, base) = if g.left == 1 {
                odd[0] = src[0];
                (&src[1..], 1)
            } else {
                (src, 0)
            };
            let pairs = rest.chunks_exact(2);
            if let [last] = pairs.remainder() {
                even[base + rest.len() / 2] = *last;
            }
            for ((e, o), pair) in even[base..].iter_mut().zip(odd[base..].iter_mut()).zip(pairs) {
                *e = pair[0];
                *o = pair[1];
            }
        }
    }

    /// The taps `kx = 0, 1, 2` of padded row `y`, each a slice whose element `ox` is the tap of output
    /// column `ox`.
    #[inline(always)]
    fn taps(&self, y: usize) -> [&[f32]; 3] {
        if self.stride == 1 {
            let r = &self.plane[y * self.wp..(y + 1) * self.wp];
            [r, &r[1..], &r[2..]]
        } else {
            let w = self.we + self.wod;
            let (even, odd) = self.split[y * w..(y + 1) * w].split_at(self.we);
            [even, odd, &even[1..]]
        }
    }

    /// The nine taps of output row `oy`, row-major over the kernel.
    #[inline(always)]
    fn nine(&self, oy: usize) -> [&[f32]; 9] {
        let y = oy * self.stride;
        let ([t0, t1, t2], [t3, t4, t5], [t6, t7, t8]) = (self.taps(y), self.taps(y + 1), self.taps(y + 2));
        [t0, t1, t2, t3, t4, t5, t6, t7, t8]
    }
}

#[inline(always)]
fn depthwise_impl<const FMA: bool>(x: &[f32], out: &mut [f32], g: &Geometry, weights: &[f32], bias: &[f32], act: &Act) {
    let mut tp = TapPlane::new(g);
    for (ch, (xp, op)) in x
        .chunks_exact(g.h * g.w)
        .zip(out.chunks_exact_mut(g.ho * g.wo))
        .enumerate()
    {
        tp.load(xp, g);
        let k = &weights[ch * 9..ch * 9 + 9];
        let b = bias.get(ch).copied().unwrap_or(0.0);
        for (oy, orow) in op.chunks_exact_mut(g.wo).enumerate() {
            nine_taps::<FMA>(orow, tp.nine(oy), k, b);
            act.row(ch, orow);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_avx2(x: &[f32], out: &mut [f32], g: &Geometry, weights: &[f32], bias: &[f32], act: &Act) {
    depthwise_impl::<true>(x, out, g, weights, bias, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn depthwise_avx512(x: &[f32], out: &mut [f32], g: &Geometry, weights: &[f32], bias: &[f32], act: &Act) {
    depthwise_impl::<true>(x, out, g, weights, bias, act)
}

/// Stride 1 and one pixel of zero padding on every side: the output is as large as the input.
fn same_padding_stride_1(g: &Geometry) -> bool {
    g.stride == 1 && g.top == 1 && g.left == 1 && g.ho == g.h && g.wo == g.w
}

fn depthwise(x: &[f32], out: &mut [f32], g: &Geometry, weights: &[f32], bias: &[f32], act: &Act) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && same_padding_stride_1(g) {
        // SAFETY: the CPU has AVX-512 (checked just above).
        return unsafe { avx512::depthwise_same(x, out, g, weights, bias, act, false) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has the features the function is compiled for (checked just above).
        return unsafe { depthwise_avx512(x, out, g, weights, bias, act) };
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for (checked just above).
        return unsafe { depthwise_avx2(x, out, g, weights, bias, act) };
    }
    depthwise_impl::<false>(x, out, g, weights, bias, act)
}

/// [`depthwise`] followed by a 2x2/stride-2 max-pool: fused on AVX-512 for stride 1 and padding 1
/// (YuNet's backbone), otherwise the two kernels one after the other.
fn depthwise_pooled(x: &[f32], out: &mut [f32], g: &Geometry, weights: &[f32], bias: &[f32], act: &Act) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && same_padding_stride_1(g) {
        // SAFETY: the CPU has AVX-512 (checked just above).
        return unsafe { avx512::depthwise_same(x, out, g, weights, bias, act, true) };
    }
    let c = x.len() / (g.h * g.w);
    let mut full = vec![0f32; c * g.ho * g.wo];
    depthwise(x, &mut full, g, weights, bias, act);
    maxpool(&full, out, c, g.ho, g.wo);
}

#[inline(always)]
fn maxpool_impl(x: &[f32], out: &mut [f32], c: usize, h: usize, w: usize) {
    let (ho, wo) = (h / 2, w / 2);
    if ho == 0 || wo == 0 {
        return;
    }
    let mut pair = vec![0f32; 2 * wo];
    for (xp, op) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(ho * wo)).take(c) {
        for (oy, orow) in op.chunks_exact_mut(wo).enumerate() {
            let r0 = &xp[2 * oy * w..2 * oy * w + 2 * wo];
            let r1 = &xp[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * wo];
            for ((p, a), b) in pair.iter_mut().zip(r0).zip(r1) {
                *p = if a < b { *b } else { *a };
            }
            for (o, q) in orow.iter_mut().zip(pair.chunks_exact(2)) {
                *o = if q[0] < q[1] { q[1] } else { q[0] };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn maxpool_avx2(x: &[f32], out: &mut [f32], c: usize, h: usize, w: usize) {
    maxpool_impl(x, out, c, h, w)
}

fn maxpool(x: &[f32], out: &mut [f32], c: usize, h: usize, w: usize) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { maxpool_avx2(x, out, c, h, w) };
    }
    maxpool_impl(x, out, c, h, w)
}

/// Pixels per block of the 1x1 kernel's outer loop: the block of every input channel stays in cache
/// while all the output channels are computed from it.
const PX_CHUNK: usize = 512;

/// The portable 1x1 convolution (used only if a plan made on an AVX-512 machine runs without it).
fn conv1x1_generic(x: &[f32], out: &mut [f32], op: &Conv1x1, p: usize) {
    for co in 0..op.cout {
        let orow = &mut out[co * p..(co + 1) * p];
        orow.fill(op.bias.0[co]);
        for ci in 0..op.cin {
            let wv = op.packed.0[((co / CO_BLOCK) * op.cin + ci) * CO_BLOCK + co % CO_BLOCK];
            for (o, v) in orow.iter_mut().zip(&x[ci * p..(ci + 1) * p]) {
                *o += wv * v;
            }
        }
        op.act.row(co, orow);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Act, Conv1x1, Conv3x3, Geometry, TapPlane, CO_BLOCK, PX_CHUNK};
    use std::arch::x86_64::*;

    /// The activation `act` of output channel `co` on 16 values.
    #[inline(always)]
    unsafe fn epilogue(act: &Act, co: usize, y: __m512) -> __m512 {
        let zero = _mm512_setzero_ps();
        match act {
            Act::Linear => y,
            Act::Relu => _mm512_max_ps(y, zero),
            Act::SplitPrelu { pos, neg, slope } => {
                let (pv, nv, sv) = (
                    _mm512_set1_ps(pos.0[co]),
                    _mm512_set1_ps(neg.0[co]),
                    _mm512_set1_ps(slope.0[co]),
                );
                _mm512_add_ps(_mm512_max_ps(y, pv), _mm512_mul_ps(_mm512_min_ps(y, nv), sv))
            }
            Act::MaxMul(s) => _mm512_max_ps(y, _mm512_mul_ps(y, _mm512_set1_ps(s.0[co]))),
        }
    }

    /// A depthwise 3x3 convolution with stride 1 and one pixel of zero padding on every side (every
    /// one in YuNet's backbone and MobileFaceNet), straight from the input rows with no bordered copy
    /// of the plane: two output rows at a time (the four input rows they
    /// share are loaded once per block of 16 columns), the padding handled by masked loads (a lane
    /// whose column is outside the row is neither read nor added), the activation fused.
    ///
    /// With `pool`, the 2x2/stride-2 max-pool after it is fused (floor mode, as
    /// [`super::MaxPool2x2`]): each pair of rows is reduced to its maximum in a row buffer, and
    /// adjacent columns of that to the pooled row; the full-size output is never written.
    ///
    /// # Safety
    /// The CPU must have AVX-512F. (Only whole planes that fit `x` and `out` are computed.)
    #[target_feature(enable = "avx512f")]
    pub unsafe fn depthwise_same(
        x: &[f32],
        out: &mut [f32],
        g: &Geometry,
        weights: &[f32],
        bias: &[f32],
        act: &Act,
        pool: bool,
    ) {
        let (h, w) = (g.h, g.w);
        let (xs, os) = (x.as_ptr(), out.as_mut_ptr());
        let oplane = if pool { (h / 2) * (w / 2) } else { h * w };
        let planes = (x.len() / (h * w))
            .min(out.len() / oplane.max(1))
            .min(weights.len() / 9);
        let rows = if pool { h / 2 * 2 } else { h };
        let mut pair_max = vec![0f32; if pool { w.next_multiple_of(16) } else { 0 }];
        for ch in 0..planes {
            let xp = xs.add(ch * h * w);
            let op = os.add(ch * oplane);
            let k: [__m512; 9] = std::array::from_fn(|t| _mm512_set1_ps(weights[ch * 9 + t]));
            let b = _mm512_set1_ps(bias.get(ch).copied().unwrap_or(0.0));
            let mut oy = 0;
            while oy < rows {
                let two = oy + 1 < h;
                let mut j0 = 0;
                while j0 < w {
                    let m = lanes(w - j0);
                    // Tap kx reads column j0 + kx - 1 + lane: lane 0 of kx = 0 is padding at the
                    // left edge, lanes past the row's end at the right edge.
                    let tap_mask = [
                        if j0 == 0 { m & !1 } else { m },
                        m,
                        lanes((w - j0).saturating_sub(1)) & m,
                    ];
                    let (mut a0, mut a1) = (b, b);
                    for r in 0..4 {
                        let Some(iy) = (oy + r).checked_sub(1).filter(|iy| *iy < h) else {
                            continue;
                        };
                        let row = xp.add(iy * w + j0);
                        for kx in 0..3 {
                            let v = _mm512_maskz_loadu_ps(tap_mask[kx], row.wrapping_add(kx).wrapping_sub(1));
                            if r < 3 {
                                a0 = _mm512_fmadd_ps(k[r * 3 + kx], v, a0);
                            }
                            if two && r >= 1 {
                                a1 = _mm512_fmadd_ps(k[(r - 1) * 3 + kx], v, a1);
                            }
                        }
                    }
                    let (y0, y1) = (epilogue(act, ch, a0), epilogue(act, ch, a1));
                    if pool {
                        _mm512_storeu_ps(pair_max.as_mut_ptr().add(j0), _mm512_max_ps(y0, y1));
                    } else {
                        _mm512_mask_storeu_ps(op.add(oy * w + j0), m, y0);
                        if two {
                            _mm512_mask_storeu_ps(op.add((oy + 1) * w + j0), m, y1);
                        }
                    }
                    j0 += 16;
                }
                if pool {
                    let prow = std::slice::from_raw_parts_mut(op.add(oy / 2 * (w / 2)), w / 2);
                    for (o, pair) in prow.iter_mut().zip(pair_max.chunks_exact(2)) {
                        *o = pair[0].max(pair[1]);
                    }
                }
                oy += 2;
            }
        }
    }

    /// Lanes `0..n` of a 16-lane mask (all when `n >= 16`).
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// Output channels `co0..co0 + NCO` at pixels `p0..p0 + np` (np <= 32): 2 x NCO accumulators.
    #[inline(always)]
    unsafe fn block<const NCO: usize>(
        x: *const f32,
        out: *mut f32,
        w: *const f32,
        bias: &[f32],
        cin: usize,
        p: usize,
        co0: usize,
        p0: usize,
        np: usize,
        act: &Act,
    ) {
        let (m0, m1) = (lanes(np), lanes(np.saturating_sub(16)));
        let mut acc = [[_mm512_setzero_ps(); 2]; NCO];
        for (j, a) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(bias[co0 + j]);
            *a = [b, b];
        }
        for ci in 0..cin {
            let xp = x.add(ci * p + p0);
            let x0 = _mm512_maskz_loadu_ps(m0, xp);
            let x1 = _mm512_maskz_loadu_ps(m1, xp.add(16));
            let wp = w.add(ci * CO_BLOCK);
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*wp.add(j));
                a[0] = _mm512_fmadd_ps(wv, x0, a[0]);
                a[1] = _mm512_fmadd_ps(wv, x1, a[1]);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let (y0, y1) = (a[0], a[1]);
            let (y0, y1) = (epilogue(act, co0 + j, y0), epilogue(act, co0 + j, y1));
            let op = out.add((co0 + j) * p + p0);
            _mm512_mask_storeu_ps(op, m0, y0);
            _mm512_mask_storeu_ps(op.add(16), m1, y1);
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F; `x` holds `op.cin * p` values and `out` `op.cout * p`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn conv1x1(x: &[f32], out: &mut [f32], op: &Conv1x1, p: usize) {
        let (xp, outp, w, bias) = (x.as_ptr(), out.as_mut_ptr(), op.packed.0.as_ptr(), &op.bias.0[..]);
        let cin = op.cin;
        let mut c0 = 0;
        while c0 < p {
            let chunk = (p - c0).min(PX_CHUNK);
            for b in 0..op.cout.div_ceil(CO_BLOCK) {
                let co0 = b * CO_BLOCK;
                let nco = (op.cout - co0).min(CO_BLOCK);
                let wb = w.add(b * cin * CO_BLOCK);
                let mut p0 = c0;
                while p0 < c0 + chunk {
                    let np = (c0 + chunk - p0).min(32);
                    match nco {
                        8 => block::<8>(xp, outp, wb, bias, cin, p, co0, p0, np, &op.act),
                        7 => block::<7>(xp, outp, wb, bias, cin, p, co0, p0, np, &op.act),
                        6 => block::<6>(xp, outp, wb, bias, cin, p, co0, p0, np, &op.act),
                        5 => block::<5>(xp, outp, wb, bias, cin, p, co0, p0, np, &op.act),
                        4 => block::<4>(xp, outp, wb, bias, cin, p, co0, p0, np, &op.act),
                        3 => block::<3>(xp, outp, wb, bias, cin, p, co0, p0, np, &op.act),
                        2 => block::<2>(xp, outp, wb, bias, cin, p, co0, p0, np, &op.act),
                        _ => block::<1>(xp, outp, wb, bias, cin, p, co0, p0, np, &op.act),
                    }
                    p0 += 32;
                }
            }
            c0 += chunk;
        }
    }

    /// Output channels `co0..co0 + NCO` of output row `oy` at columns `ox0..ox0 + n` (n <= 16), from
    /// the `taps` (one pointer per tap, each to the tap of column 0).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block3<const NCO: usize>(
        taps: &[*const f32],
        w: *const f32,
        op: &Conv3x3,
        out: *mut f32,
        plane: usize,
        row: usize,
        co0: usize,
        ox0: usize,
        n: usize,
    ) {
        let m = lanes(n);
        let mut acc = [_mm512_setzero_ps(); NCO];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm512_set1_ps(op.bias.0[co0 + j]);
        }
        for (t, tap) in taps.iter().enumerate() {
            let v = _mm512_maskz_loadu_ps(m, tap.add(ox0));
            let wt = w.add(t * CO_BLOCK);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*wt.add(j)), v, *a);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let y = epilogue(&op.act, co0 + j, *a);
            _mm512_mask_storeu_ps(out.add((co0 + j) * plane + row + ox0), m, y);
        }
    }

    /// Lanes `l` of a 16-lane load starting at column `start` that fall inside a row of `w`.
    #[inline(always)]
    fn cols_inside(start: isize, w: usize) -> __mmask16 {
        let first = (-start).clamp(0, 16) as usize;
        let end = (w as isize - start).clamp(0, 16) as usize;
        lanes(end) & !lanes(first)
    }

    /// [`Conv3x3`] with stride 2 (YuNet's first layer) straight from the input rows, with no tap
    /// planes: each tap's 16 inputs (every other column) are two masked loads (columns outside the
    /// row, the zero padding, are neither read nor added) and one even-lane permute; 16 output
    /// channels (or 8 and fewer for the rest) accumulate in registers.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `x` holds `op.cin * g.h * g.w` values and `out`
    /// `op.cout * g.ho * g.wo`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn conv3x3_stride2(x: &[f32], out: &mut [f32], op: &Conv3x3, g: &Geometry) {
        for oy in 0..g.ho {
            let rows: [Option<usize>; 3] =
                std::array::from_fn(|ky| (2 * oy + ky).checked_sub(g.top).filter(|iy| *iy < g.h));
            let mut co0 = 0;
            while co0 < op.cout {
                let nco = if op.cout - co0 >= 16 {
                    16
                } else {
                    (op.cout - co0).min(CO_BLOCK)
                };
                let mut ox0 = 0;
                while ox0 < g.wo {
                    let a = (x, &mut *out, op, g, rows, oy, co0, ox0);
                    match nco {
                        16 => block3s2::<16>(a),
                        8 => block3s2::<8>(a),
                        7 => block3s2::<7>(a),
                        6 => block3s2::<6>(a),
                        5 => block3s2::<5>(a),
                        4 => block3s2::<4>(a),
                        3 => block3s2::<3>(a),
                        2 => block3s2::<2>(a),
                        _ => block3s2::<1>(a),
                    }
                    ox0 += 16;
                }
                co0 += nco;
            }
        }
    }

    type Block3s2<'a> = (
        &'a [f32],
        &'a mut [f32],
        &'a Conv3x3,
        &'a Geometry,
        [Option<usize>; 3],
        usize,
        usize,
        usize,
    );

    /// Output channels `co0..co0 + NCO` (`co0` a multiple of 8) at columns `ox0..ox0 + 16` of row `oy`.
    #[inline(always)]
    unsafe fn block3s2<const NCO: usize>((x, out, op, g, rows, oy, co0, ox0): Block3s2) {
        let (h, w, cin) = (g.h, g.w, op.cin);
        let m = lanes(g.wo - ox0);
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        // The packed weights of co0's block of 8 and of the next one (read only when NCO > 8).
        let blk = op.packed.0.as_ptr().wrapping_add(co0 / CO_BLOCK * cin * 9 * CO_BLOCK);
        let next = blk.wrapping_add(cin * 9 * CO_BLOCK);
        let mut acc = [_mm512_setzero_ps(); NCO];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm512_set1_ps(op.bias.0[co0 + j]);
        }
        for ci in 0..cin {
            let xp = x.as_ptr().add(ci * h * w);
            for (ky, iy) in rows.iter().enumerate() {
                let Some(iy) = *iy else { continue };
                let r = xp.add(iy * w);
                for kx in 0..3 {
                    let start = (2 * ox0 + kx) as isize - g.left as isize;
                    let lo = _mm512_maskz_loadu_ps(cols_inside(start, w), r.wrapping_offset(start));
                    let hi = _mm512_maskz_loadu_ps(cols_inside(start + 16, w), r.wrapping_offset(start + 16));
                    let v = _mm512_permutex2var_ps(lo, even, hi);
                    let t = (ci * 3 + ky) * 3 + kx;
                    for (j, a) in acc.iter_mut().enumerate() {
                        let wt = if j < CO_BLOCK {
                            blk.add(t * CO_BLOCK + j)
                        } else {
                            next.add(t * CO_BLOCK + j - CO_BLOCK)
                        };
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*wt), v, *a);
                    }
                }
            }
        }
        let plane = g.ho * g.wo;
        for (j, a) in acc.iter().enumerate() {
            let y = epilogue(&op.act, co0 + j, *a);
            _mm512_mask_storeu_ps(out.as_mut_ptr().add((co0 + j) * plane + oy * g.wo + ox0), m, y);
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F; `planes` are the op's `cin` input channels laid out for `g`, and
    /// `out` holds `op.cout * g.ho * g.wo` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn conv3x3(planes: &[TapPlane], out: &mut [f32], op: &Conv3x3, g: &Geometry) {
        let outp = out.as_mut_ptr();
        let plane = g.ho * g.wo;
        let mut taps: Vec<*const f32> = Vec::with_capacity(op.cin * 9);
        for oy in 0..g.ho {
            taps.clear();
            for tp in planes {
                taps.extend(tp.nine(oy).iter().map(|t| t.as_ptr()));
            }
            for b in 0..op.cout.div_ceil(CO_BLOCK) {
                let co0 = b * CO_BLOCK;
                let w = op.packed.0.as_ptr().add(b * op.cin * 9 * CO_BLOCK);
                let mut ox0 = 0;
                while ox0 < g.wo {
                    let n = (g.wo - ox0).min(16);
                    let row = oy * g.wo;
                    match (op.cout - co0).min(CO_BLOCK) {
                        8 => block3::<8>(&taps, w, op, outp, plane, row, co0, ox0, n),
                        7 => block3::<7>(&taps, w, op, outp, plane, row, co0, ox0, n),
                        6 => block3::<6>(&taps, w, op, outp, plane, row, co0, ox0, n),
                        5 => block3::<5>(&taps, w, op, outp, plane, row, co0, ox0, n),
                        4 => block3::<4>(&taps, w, op, outp, plane, row, co0, ox0, n),
                        3 => block3::<3>(&taps, w, op, outp, plane, row, co0, ox0, n),
                        2 => block3::<2>(&taps, w, op, outp, plane, row, co0, ox0, n),
                        _ => block3::<1>(&taps, w, op, outp, plane, row, co0, ox0, n),
                    }
                    ox0 += 16;
                }
            }
        }
    }
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx512f");
    #[allow(unreachable_code)]
    false
}

fn conv1x1(x: &[f32], out: &mut [f32], op: &Conv1x1, p: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512F (checked just above); the sizes are the op's (checked by eval).
        return unsafe { avx512::conv1x1(x, out, op, p) };
    }
    conv1x1_generic(x, out, op, p)
}

// ---------------------------------------------------------------------------------------------
// The rewrite.

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
fn activation_after(model: &TypedModel, node: &TypedNode, c: usize) -> (Act, usize) {
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

fn depthwise_op(model: &TypedModel, node: &TypedNode) -> Option<Depthwise3x3> {
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

fn conv3x3_op(model: &TypedModel, node: &TypedNode) -> Option<Conv3x3> {
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
fn sole_successor(model: &TypedModel, node: &TypedNode) -> Option<(usize, usize)> {
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
fn conv1x1_op(model: &TypedModel, node: &TypedNode) -> Option<(Conv1x1, usize)> {
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

fn is_maxpool_2x2(model: &TypedModel, node: &TypedNode) -> bool {
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
fn swap<O: Into<Box<dyn TypedOp>>>(
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
fn rank4(model: &TypedModel, node: usize) -> bool {
    model.outlet_fact(OutletId::new(node, 0)).is_ok_and(|f| f.rank() == 4)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A model: input -> depthwise conv (given stride, padding) -> [ReLU] -> max-pool 2x2 -> output,
    /// built with tract's own ops, planned once as tract plans it and once with the rewrite.
    fn both_ways(
        c: usize,
        h: usize,
        w: usize,
        stride: usize,
        pad: [usize; 4],
        relu: bool,
        pool: bool,
    ) -> (Vec<f32>, Vec<f32>, usize, usize) {
        let act = if relu { TAct::Relu } else { TAct::Linear };
        both_ways_conv(Kind::Depthwise, c, c, h, w, stride, pad, act, pool)
    }

    #[derive(Clone, Copy)]
    enum Kind {
        Depthwise,
        Pointwise,
        Full3x3,
        /// depthwise, channels last
        DepthwiseNhwc,
    }

    /// The activation after the convolution, spelled as in our models' graphs.
    #[derive(Clone, Copy, Debug)]
    enum TAct {
        Linear,
        Relu,
        /// `Add(Max(x, 0), Mul(Min(x, 0.004), a))`
        SplitPrelu,
        /// `Max(x, Mul(x, a))`
        MaxMul,
    }

    #[allow(clippy::too_many_arguments)]
    fn both_ways_conv(
        kind: Kind,
        c: usize,
        cout: usize,
        h: usize,
        w: usize,
        stride: usize,
        pad: [usize; 4],
        act: TAct,
        pool: bool,
    ) -> (Vec<f32>, Vec<f32>, usize, usize) {
        use tract_onnx::tract_core::ops::cnn::PoolSpec;
        let mut m = TypedModel::default();
        let nhwc = matches!(kind, Kind::DepthwiseNhwc);
        let ishape = if nhwc { [1, h, w, c] } else { [1, c, h, w] };
        let x = m.add_source("x", f32::fact(ishape)).unwrap();
        let (kshape, group, ksize) = match kind {
            Kind::Depthwise => (vec![c, 1, 3, 3], c, 3),
            Kind::Pointwise => (vec![cout, c, 1, 1], 1, 1),
            Kind::Full3x3 => (vec![cout, c, 3, 3], 1, 3),
            Kind::DepthwiseNhwc => (vec![c, 1, 3, 3], c, 3),
        };
        let kn = kshape.iter().product();
        let k = m
            .add_const(
                "k",
                tract_ndarray::ArrayD::from_shape_vec(kshape, values(kn, 1))
                    .unwrap()
                    .into_tensor(),
            )
            .unwrap();
        let b = m
            .add_const(
                "b",
                tract_ndarray::ArrayD::from_shape_vec(vec![cout], values(cout, 2))
                    .unwrap()
                    .into_tensor(),
            )
            .unwrap();
        let spec = PoolSpec {
            data_format: if nhwc { DataFormat::NHWC } else { DataFormat::NCHW },
            kernel_shape: tvec![ksize, ksize],
            padding: PaddingSpec::Explicit(tvec![pad[0], pad[1]], tvec![pad[2], pad[3]]),
            dilations: None,
            strides: Some(tvec![stride, stride]),
            input_channels: c,
            output_channels: cout,
        };
        let mut y = m
            .wire_node(
                "conv",
                Conv {
                    pool_spec: spec,
                    kernel_fmt: KernelFormat::OIHW,
                    group,
                    q_params: None,
                },
                &[x, k, b],
            )
            .unwrap()[0];
        let c = cout;
        use tract_onnx::tract_core::ops::math;
        let zero = m
            .add_const("zero", tensor0(0f32).broadcast_into_rank(4).unwrap())
            .unwrap();
        // Slopes from -2 to 2: some above 1, where Max(x, a*x) is not PRelu but still what the graph says.
        let slope: Vec<f32> = values(c, 4).iter().map(|v| v * 2.0).collect();
        let a = m
            .add_const(
                "a",
                tract_ndarray::ArrayD::from_shape_vec(vec![1, c, 1, 1], slope)
                    .unwrap()
                    .into_tensor(),
            )
            .unwrap();
        y = match act {
            TAct::Linear => y,
            TAct::Relu => m.wire_node("relu", math::max(), &[y, zero]).unwrap()[0],
            TAct::SplitPrelu => {
                let pos = m.wire_node("pos", math::max(), &[y, zero]).unwrap()[0];
                // The distilled embedder's Min constant is ~0.004, not 0.
                let q = m
                    .add_const("q", tensor0(0.004f32).broadcast_into_rank(4).unwrap())
                    .unwrap();
                let neg = m.wire_node("neg", math::min(), &[y, q]).unwrap()[0];
                let neg = m.wire_node("scaled", math::mul(), &[neg, a]).unwrap()[0];
                m.wire_node("prelu", math::add(), &[pos, neg]).unwrap()[0]
            }
            TAct::MaxMul => {
                let ax = m.wire_node("ax", math::mul(), &[y, a]).unwrap()[0];
                m.wire_node("maxmul", math::max(), &[y, ax]).unwrap()[0]
            }
        };
        if pool {
            let spec = PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![2, 2],
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: Some(tvec![2, 2]),
                input_channels: c,
                output_channels: c,
            };
            y = m
                .wire_node(
                    "pool",
                    MaxPool {
                        pool_spec: spec,
                        with_index_outputs: None,
                    },
                    &[y],
                )
                .unwrap()[0];
        }
        m.select_output_outlets(&[y]).unwrap();
        let ishape = m.input_fact(0).unwrap().shape.as_concrete().unwrap().to_vec();
        let n = ishape.iter().product();
        let input = tract_ndarray::ArrayD::from_shape_vec(ishape, values(n, 3))
            .unwrap()
            .into_tensor();
        let run = |m: TypedModel| -> Vec<f32> {
            let out = m
                .into_optimized()
                .unwrap()
                .into_runnable()
                .unwrap()
                .run(tvec![input.clone().into_tvalue()])
                .unwrap();
            out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
        };
        let decluttered = m.into_decluttered().unwrap();
        let (fast, swapped) = rewrite(decluttered.clone()).unwrap();
        let binops = fast.nodes.iter().filter(|n| n.op_as::<TypedBinOp>().is_some()).count();
        (run(decluttered), run(fast), swapped, binops)
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "max |diff| {worst}");
    }

    /// A 1x1 convolution whose output is moved to channels last (as YuNet's heads are: Conv then
    /// Transpose); tract's declutter folds the move into the einsum (`..->NHWO`), which is swapped
    /// for a [`Conv1x1`] writing channels last — one output channel (a `[I]` kernel) and several.
    #[test]
    fn pointwise_conv_with_channels_last_output_matches_tract() {
        use tract_onnx::tract_core::ops::cnn::PoolSpec;
        for (c, cout, h, w) in [(64, 1, 12, 15), (64, 4, 9, 7), (16, 10, 5, 33), (3, 13, 1, 1)] {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
            let arr = |shape: Vec<usize>, seed| {
                let n = shape.iter().product();
                tract_ndarray::ArrayD::from_shape_vec(shape, values(n, seed))
                    .unwrap()
                    .into_tensor()
            };
            let k = m.add_const("k", arr(vec![cout, c, 1, 1], 1)).unwrap();
            let b = m.add_const("b", arr(vec![cout], 2)).unwrap();
            let spec = PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![1, 1],
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: Some(tvec![1, 1]),
                input_channels: c,
                output_channels: cout,
            };
            let conv = Conv {
                pool_spec: spec,
                kernel_fmt: KernelFormat::OIHW,
                group: 1,
                q_params: None,
            };
            let y = m.wire_node("conv", conv, &[x, k, b]).unwrap()[0];
            let y = m.wire_node("nhwc", AxisOp::Move(1, 3), &[y]).unwrap()[0];
            m.select_output_outlets(&[y]).unwrap();
            let input = arr(vec![1, c, h, w], 3);
            let run = |m: TypedModel| -> Vec<f32> {
                let out = m.into_optimized().unwrap().into_runnable().unwrap();
                let out = out.run(tvec![input.clone().into_tvalue()]).unwrap();
                out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
            };
            let decluttered = m.into_decluttered().unwrap();
            let (fast, swapped) = rewrite(decluttered.clone()).unwrap();
            if has_avx512() {
                let nhwc = fast
                    .nodes
                    .iter()
                    .filter_map(|n| n.op_as::<Conv1x1>())
                    .filter(|o| o.nhwc_out)
                    .count();
                assert_eq!(
                    (swapped, nhwc),
                    (1, 1),
                    "{c} -> {cout} on {h}x{w}: swapped for a channels-last 1x1"
                );
            }
            assert_close(&run(decluttered), &run(fast));
        }
    }

    #[test]
    fn pointwise_conv_matches_tract() {
        // Channel counts off the 8-channel block and pixel counts off the 32-pixel block.
        for (c, cout, h, w) in [
            (16, 16, 12, 20),
            (3, 10, 7, 9),
            (64, 1, 5, 5),
            (32, 64, 33, 17),
            (5, 13, 1, 1),
        ] {
            for act in [TAct::Linear, TAct::Relu, TAct::SplitPrelu, TAct::MaxMul] {
                let (a, b, swapped, binops) = both_ways_conv(Kind::Pointwise, c, cout, h, w, 1, [0; 4], act, false);
                // (tract declutters a single output channel into another einsum, left to tract)
                if cout > 1 && has_avx512() {
                    assert_eq!(
                        (swapped, binops),
                        (1, 0),
                        "{c}->{cout} {h}x{w} {act:?}: swapped, activation fused"
                    );
                }
                assert_close(&a, &b);
            }
        }
    }

    #[test]
    fn the_portable_pointwise_kernel_matches_tract() {
        let (c, cout, p) = (6, 11, 37);
        let w = values(c * cout, 1);
        let op = Conv1x1::new(c, cout, &w, values(cout, 2));
        let x = values(c * p, 3);
        let mut out = vec![0f32; cout * p];
        conv1x1_generic(&x, &mut out, &op, p);
        for co in 0..cout {
            for q in 0..p {
                let want = values(cout, 2)[co] + (0..c).map(|ci| w[co * c + ci] * x[ci * p + q]).sum::<f32>();
                assert!((out[co * p + q] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn depthwise_relu_and_pool_match_tract() {
        for (stride, pad) in [
            (1, [1, 1, 1, 1]),
            (2, [1, 1, 1, 1]),
            (2, [0, 0, 1, 1]),
            (1, [0, 0, 0, 0]),
            (2, [1, 0, 0, 1]),
        ] {
            for (h, w) in [(8, 8), (7, 9), (12, 5), (3, 3)] {
                let (a, b, swapped, binops) = both_ways(5, h, w, stride, pad, true, stride == 1 && h >= 4);
                assert_eq!(binops, 0, "the ReLU is fused");
                assert!(swapped >= 1, "nothing swapped for stride {stride} pad {pad:?} {h}x{w}");
                assert_close(&a, &b);
                let (a, b, _, _) = both_ways(3, h, w, stride, pad, false, false);
                assert_close(&a, &b);
            }
        }
    }

    /// The stride-1, padding-1 kernel works in blocks of 16 columns and pairs of rows with masked
    /// edges: rows narrower, as wide as and wider than a block (and not a multiple of it), odd and
    /// even heights, one row and one column, with every activation, with the max-pool after it fused,
    /// and in both layouts.
    #[test]
    fn stride_one_rows_of_any_width_match_tract() {
        for (h, w) in [(9, 37), (6, 16), (5, 17), (4, 32), (1, 20), (7, 1), (2, 2), (11, 63)] {
            for act in [TAct::Linear, TAct::Relu, TAct::SplitPrelu, TAct::MaxMul] {
                let (a, b, swapped, _) = both_ways_conv(Kind::Depthwise, 5, 5, h, w, 1, [1; 4], act, false);
                assert!(swapped >= 1, "nothing swapped for {h}x{w}");
                assert_close(&a, &b);
            }
            if h >= 2 && w >= 2 {
                let (a, b, swapped, _) = both_ways_conv(Kind::Depthwise, 5, 5, h, w, 1, [1; 4], TAct::Relu, true);
                assert_eq!(swapped, 1, "{h}x{w}: the pool is fused");
                assert_close(&a, &b);
            }
            let (a, b, swapped, _) = both_ways_conv(Kind::DepthwiseNhwc, 3, 3, h, w, 1, [1; 4], TAct::Linear, false);
            assert!(swapped >= 1, "nothing swapped for {h}x{w}, channels last");
            assert_close(&a, &b);
        }
    }

    #[test]
    fn the_rewrite_fuses_the_relu_and_the_pool() {
        let (a, b, swapped, binops) = both_ways(4, 16, 20, 1, [1, 1, 1, 1], true, true);
        assert_eq!(binops, 0);
        assert_eq!(swapped, 1, "the depthwise conv, with its ReLU and the pool after it");
        assert_close(&a, &b);
        assert!(b.iter().all(|v| *v >= 0.0));
    }

    #[test]
    fn both_prelu_spellings_are_fused_with_the_same_values() {
        for act in [TAct::SplitPrelu, TAct::MaxMul] {
            for (kind, cout) in [(Kind::Depthwise, 6), (Kind::Pointwise, 12)] {
                let (stride, pad) = match kind {
                    Kind::Depthwise | Kind::Full3x3 | Kind::DepthwiseNhwc => (2, [1, 1, 1, 1]),
                    Kind::Pointwise => (1, [0; 4]),
                };
                let (a, b, swapped, binops) = both_ways_conv(kind, 6, cout, 10, 14, stride, pad, act, false);
                assert_close(&a, &b);
                if matches!(kind, Kind::Depthwise) || has_avx512() {
                    assert_eq!((swapped, binops), (1, 0), "{act:?}: the activation is fused");
                }
            }
        }
    }

    #[test]
    fn first_layer_conv_matches_tract() {
        for (cin, cout) in [(3, 16), (1, 5), (4, 9), (3, 27)] {
            for (stride, pad) in [(2, [1, 1, 1, 1]), (1, [1, 1, 1, 1]), (2, [0, 0, 1, 1]), (1, [0; 4])] {
                for (h, w) in [(12, 20), (7, 33), (3, 3), (9, 70)] {
                    for act in [TAct::Linear, TAct::Relu, TAct::SplitPrelu] {
                        let (a, b, swapped, binops) =
                            both_ways_conv(Kind::Full3x3, cin, cout, h, w, stride, pad, act, false);
                        assert_close(&a, &b);
                        if has_avx512() {
                            assert_eq!(
                                (swapped, binops),
                                (1, 0),
                                "{cin}->{cout} s{stride} {pad:?} {h}x{w} {act:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_portable_3x3_kernel_matches_the_vector_one() {
        let (cin, cout, h, w) = (3, 11, 9, 21);
        let op = Conv3x3 {
            cin,
            cout,
            stride: 2,
            pad: [1, 1, 1, 1],
            packed: Values(Arc::new(values(cout.div_ceil(CO_BLOCK) * cin * 9 * CO_BLOCK, 5))),
            bias: Values(Arc::new(values(cout, 6))),
            act: Act::Relu,
            with_n: true,
        };
        let g = geometry(h, w, op.stride, op.pad).unwrap();
        let x = values(cin * h * w, 7);
        let mut planes: Vec<TapPlane> = (0..cin).map(|_| TapPlane::new(&g)).collect();
        for (tp, xp) in planes.iter_mut().zip(x.chunks_exact(h * w)) {
            tp.load(xp, &g);
        }
        let (mut a, mut b) = (vec![0f32; cout * g.ho * g.wo], vec![1f32; cout * g.ho * g.wo]);
        conv3x3_generic(&planes, &mut a, &op, &g);
        conv3x3(&planes, &mut b, &op, &g);
        assert_close(&a, &b);
        // Spot check one output against the definition.
        let (co, oy, ox) = (4, 2, 3);
        let mut want = op.bias.0[co];
        for ci in 0..cin {
            for ky in 0..3 {
                for kx in 0..3 {
                    let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                        want += conv3x3_weight(&op, co, ci * 9 + ky * 3 + kx)
                            * x[ci * h * w + iy as usize * w + ix as usize];
                    }
                }
            }
        }
        assert!((a[co * g.ho * g.wo + oy * g.wo + ox] - want.max(0.0)).abs() < 1e-5);
    }

    #[test]
    fn channels_last_depthwise_matches_tract() {
        for c in [1, 4, 10] {
            for act in [TAct::Linear, TAct::Relu] {
                let (a, b, swapped, _) = both_ways_conv(Kind::DepthwiseNhwc, c, c, 12, 15, 1, [1, 1, 1, 1], act, false);
                assert_close(&a, &b);
                assert_eq!(swapped, 1, "{c} channels {act:?}");
            }
        }
    }
}
