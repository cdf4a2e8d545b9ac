//! Which kernel runs. On x86-64: the AVX-512 kernels ([`super::avx512`]) where the CPU has AVX-512F,
//! else the portable kernels' AVX2+FMA builds where it has those, else their baseline builds. On every
//! other target: the portable kernels, and the rewrite plans no op that needs AVX-512.
//!
//! Every call into [`super::avx512`] and into a `#[target_feature]` build is here, each under
//! `#[cfg(target_arch = "x86_64")]` and a run-time check of the CPU's features (and, for the kernels
//! that take raw pointers, of the buffers' sizes) just before it: that check is what each `SAFETY:`
//! comment below rests on.

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::portable::{conv1x1_generic, conv3x3_generic, depthwise_impl, maxpool_impl, TapPlane};
#[cfg(target_arch = "x86_64")]
use super::portable::{depthwise_avx2, depthwise_avx512, maxpool_avx2};
#[cfg(target_arch = "x86_64")]
use super::CO_BLOCK;
use super::{Act, Conv1x1, Conv3x3, Geometry};

/// Whether the CPU has AVX-512F (never off x86-64). The 1x1 and full 3x3 convolutions are planned
/// only where it does.
pub(super) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Stride 1 and one pixel of zero padding on every side: the output is as large as the input.
#[cfg(target_arch = "x86_64")]
fn same_padding_stride_1(g: &Geometry) -> bool {
    g.stride == 1 && g.top == 1 && g.left == 1 && g.ho == g.h && g.wo == g.w
}

pub(super) fn depthwise(x: &[f32], out: &mut [f32], g: &Geometry, weights: &[f32], bias: &[f32], act: &Act) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && same_padding_stride_1(g) {
        // SAFETY: the CPU has AVX-512F (checked just above), all `depthwise_same` asks: it computes
        // only the whole planes that fit `x`, `out` and `weights`.
        return unsafe { avx512::depthwise_same(x, out, g, weights, bias, act, false) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above), the features the function
        // is compiled for; its body is safe code.
        return unsafe { depthwise_avx512(x, out, g, weights, bias, act) };
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above), the features the function is
        // compiled for; its body is safe code.
        return unsafe { depthwise_avx2(x, out, g, weights, bias, act) };
    }
    depthwise_impl::<false>(x, out, g, weights, bias, act)
}

/// [`depthwise`] followed by a 2x2/stride-2 max-pool: fused on AVX-512 for stride 1 and padding 1
/// (YuNet's backbone), otherwise the two kernels one after the other.
pub(super) fn depthwise_pooled(x: &[f32], out: &mut [f32], g: &Geometry, weights: &[f32], bias: &[f32], act: &Act) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && same_padding_stride_1(g) {
        // SAFETY: the CPU has AVX-512F (checked just above), all `depthwise_same` asks (see
        // `depthwise`).
        return unsafe { avx512::depthwise_same(x, out, g, weights, bias, act, true) };
    }
    let c = x.len() / (g.h * g.w);
    let mut full = vec![0f32; c * g.ho * g.wo];
    depthwise(x, &mut full, g, weights, bias, act);
    maxpool(&full, out, c, g.ho, g.wo);
}

pub(super) fn maxpool(x: &[f32], out: &mut [f32], c: usize, h: usize, w: usize) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), the feature the function is compiled for;
        // its body is safe code.
        return unsafe { maxpool_avx2(x, out, c, h, w) };
    }
    maxpool_impl(x, out, c, h, w)
}

/// Whether `x` (`op.cin x p`), `out` (`op.cout x p`) and the op's packed weights hold all that the
/// AVX-512 1x1 kernel reads and writes. (Eval passes only such buffers; this makes it local.)
#[cfg(target_arch = "x86_64")]
fn conv1x1_fits(x: &[f32], out: &[f32], op: &Conv1x1, p: usize) -> bool {
    x.len() >= op.cin * p
        && out.len() >= op.cout * p
        && op.packed.0.len() >= op.cout.div_ceil(CO_BLOCK) * op.cin * CO_BLOCK
}

/// Whether `out` (`op.cout x g.ho x g.wo`) and the op's packed weights hold all that the AVX-512 3x3
/// kernels write and read.
#[cfg(target_arch = "x86_64")]
fn conv3x3_fits(out: &[f32], op: &Conv3x3, g: &Geometry) -> bool {
    out.len() >= op.cout * g.ho * g.wo && op.packed.0.len() >= op.cout.div_ceil(CO_BLOCK) * op.cin * 9 * CO_BLOCK
}

pub(super) fn conv1x1(x: &[f32], out: &mut [f32], op: &Conv1x1, p: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && conv1x1_fits(x, out, op, p) {
        // SAFETY: the CPU has AVX-512F, and `x`, `out` and the packed weights hold the op's sizes for
        // `p` pixels (both checked just above).
        return unsafe { avx512::conv1x1(x, out, op, p) };
    }
    conv1x1_generic(x, out, op, p)
}

/// [`Conv3x3`] on `x`, `c` channels of `g.h x g.w`: on AVX-512 with stride 2 straight from the input
/// rows, otherwise from [`TapPlane`]s.
pub(super) fn conv3x3(x: &[f32], c: usize, out: &mut [f32], op: &Conv3x3, g: &Geometry) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512()
        && g.stride == 2
        && g.top <= 1
        && g.left <= 1
        && x.len() >= op.cin * g.h * g.w
        && conv3x3_fits(out, op, g)
    {
        // SAFETY: the CPU has AVX-512F, `x` holds `cin x h x w` inputs, `out` holds `cout x ho x wo`
        // outputs and the packed weights the op's blocks (all checked just above).
        return unsafe { avx512::conv3x3_stride2(x, out, op, g) };
    }
    let mut planes: Vec<TapPlane> = (0..c).map(|_| TapPlane::new(g)).collect();
    for (tp, xp) in planes.iter_mut().zip(x.chunks_exact(g.h * g.w)) {
        tp.load(xp, g);
    }
    conv3x3_planes(&planes, out, op, g);
}

/// [`Conv3x3`] from the tap planes of its `cin` input channels.
pub(super) fn conv3x3_planes(planes: &[TapPlane], out: &mut [f32], op: &Conv3x3, g: &Geometry) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512()
        && planes.len() == op.cin
        && planes.iter().all(|tp| tp.columns() >= g.wo)
        && conv3x3_fits(out, op, g)
    {
        // SAFETY: the CPU has AVX-512F; there is one plane per input channel, each of whose tap
        // slices covers `g.wo` columns; `out` and the packed weights hold the op's sizes (all
        // checked just above).
        return unsafe { avx512::conv3x3(planes, out, op, g) };
    }
    conv3x3_generic(planes, out, op, g)
}
