//! The portable kernels: plain Rust, written once. The depthwise and pooling kernels are generic over
//! `FMA` and compiled twice on x86-64, with AVX2+FMA (and once more with AVX-512F enabled, which lets
//! the compiler widen the same loops) and for the baseline target; `dispatch.rs` picks one at run
//! time. Off x86-64 only the baseline build exists. The 1x1 and full 3x3 kernels here are the
//! fallbacks for a plan made on an AVX-512 machine that runs without it (and the reference the AVX-512
//! kernels are tested against).
//!
//! No `unsafe` here but the `#[target_feature]` builds, which are `unsafe fn` only because the CPU must
//! have the features they are compiled for; their bodies are safe code.

use super::{Act, Conv1x1, Conv3x3, Geometry, CO_BLOCK};

/// The weight of output channel `co`, tap `t` (`ci * 9 + ky * 3 + kx`) in [`Conv3x3::packed`].
pub(super) fn conv3x3_weight(op: &Conv3x3, co: usize, t: usize) -> f32 {
    op.packed.0[((co / CO_BLOCK) * op.cin * 9 + t) * CO_BLOCK + co % CO_BLOCK]
}

/// The portable 3x3 convolution (only if a plan made on an AVX-512 machine runs without it).
pub(super) fn conv3x3_generic(planes: &[TapPlane], out: &mut [f32], op: &Conv3x3, g: &Geometry) {
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

// The depthwise kernel is written once, generic over `FMA` (fused multiply-adds, or a product and a
// sum: the two round differently, so each build keeps its own order of operations).

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
pub(super) struct TapPlane {
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
    pub(super) fn new(g: &Geometry) -> TapPlane {
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
    pub(super) fn load(&mut self, xp: &[f32], g: &Geometry) {
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
    pub(super) fn nine(&self, oy: usize) -> [&[f32]; 9] {
        let y = oy * self.stride;
        let ([t0, t1, t2], [t3, t4, t5], [t6, t7, t8]) = (self.taps(y), self.taps(y + 1), self.taps(y + 2));
        [t0, t1, t2, t3, t4, t5, t6, t7, t8]
    }

    /// How many output columns every tap slice of a row covers (the shortest of [`TapPlane::taps`]'
    /// three): at least `g.wo` for a plane made by `TapPlane::new(g)`. The AVX-512 3x3 kernel reads
    /// `g.wo` values from each tap, so its caller checks this first.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn columns(&self) -> usize {
        self.taps(0).iter().map(|t| t.len()).min().unwrap_or(0)
    }
}

#[inline(always)]
pub(super) fn depthwise_impl<const FMA: bool>(
    x: &[f32],
    out: &mut [f32],
    g: &Geometry,
    weights: &[f32],
    bias: &[f32],
    act: &Act,
) {
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

/// [`depthwise_impl`] with fused multiply-adds, compiled for AVX2+FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn depthwise_avx2(
    x: &[f32],
    out: &mut [f32],
    g: &Geometry,
    weights: &[f32],
    bias: &[f32],
    act: &Act,
) {
    depthwise_impl::<true>(x, out, g, weights, bias, act)
}

/// [`depthwise_impl`] with fused multiply-adds, compiled for AVX-512F (with AVX2 and FMA).
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn depthwise_avx512(
    x: &[f32],
    out: &mut [f32],
    g: &Geometry,
    weights: &[f32],
    bias: &[f32],
    act: &Act,
) {
    depthwise_impl::<true>(x, out, g, weights, bias, act)
}

#[inline(always)]
pub(super) fn maxpool_impl(x: &[f32], out: &mut [f32], c: usize, h: usize, w: usize) {
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

/// [`maxpool_impl`] compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn maxpool_avx2(x: &[f32], out: &mut [f32], c: usize, h: usize, w: usize) {
    maxpool_impl(x, out, c, h, w)
}

/// The portable 1x1 convolution (used only if a plan made on an AVX-512 machine runs without it).
pub(super) fn conv1x1_generic(x: &[f32], out: &mut [f32], op: &Conv1x1, p: usize) {
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
