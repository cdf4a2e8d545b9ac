//! The AVX-512 kernels: x86-64 only (`mod.rs` declares this module under
//! `#[cfg(target_arch = "x86_64")]`, and every call into it, all in `dispatch.rs`, sits under the same
//! cfg and a run-time check that the CPU has AVX-512F).
//!
//! The public kernels are `#[target_feature(enable = "avx512f")]`; the helpers they call are
//! `#[inline(always)]` without a `#[target_feature]` of their own (stable Rust allows no both), so they
//! are `unsafe fn`s whose contract includes the CPU's AVX-512F, and are always inlined into a kernel
//! compiled for it. Loads and stores take raw pointers: each `unsafe` block says why the lanes it
//! reads or writes lie inside the buffer it was given. Lanes a mask leaves out are neither read nor
//! written: AVX-512's masked loads and stores do not touch (nor fault on) them, so a masked load may
//! start before a row or run past its end, with `wrapping_*` pointer arithmetic for such addresses.

use super::portable::TapPlane;
use super::{Act, Conv1x1, Conv3x3, Geometry, CO_BLOCK};
use std::arch::x86_64::*;

/// Pixels per block of the 1x1 kernel's outer loop: the block of every input channel stays in cache
/// while all the output channels are computed from it.
const PX_CHUNK: usize = 512;

/// The activation `act` of output channel `co` on 16 values.
///
/// # Safety
/// The CPU must have AVX-512F.
#[inline(always)]
unsafe fn epilogue(act: &Act, co: usize, y: __m512) -> __m512 {
    // SAFETY: the CPU has AVX-512F (this function's contract); these intrinsics only compute on
    // registers, and the per-channel constants are read by checked indexing.
    unsafe {
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
/// The CPU must have AVX-512F. Nothing else: only the whole planes that fit `x`, `out` and `weights`
/// are computed, so any slices are sound (a zero `g.h * g.w` panics).
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
        // SAFETY: `ch < planes <= x.len() / (h * w)` and `<= out.len() / oplane`: channel `ch`'s
        // plane starts inside (or one past the end of) each slice.
        let (xp, op) = unsafe { (xs.add(ch * h * w), os.add(ch * oplane)) };
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
                    // SAFETY: `iy < h` and `j0 < w`: column `j0` of row `iy` of channel `ch`'s plane.
                    let row = unsafe { xp.add(iy * w + j0) };
                    for kx in 0..3 {
                        // SAFETY: AVX-512F (contract). The lanes `tap_mask[kx]` lets through read
                        // columns `j0 + kx - 1 + lane` that lie in `0..w` (lane 0 of `kx = 0` is
                        // dropped at `j0 == 0`; `m` and the `kx = 2` mask stop at the row's end): all
                        // inside row `iy` of the plane. Masked-off lanes are not read.
                        let v = unsafe { _mm512_maskz_loadu_ps(tap_mask[kx], row.wrapping_add(kx).wrapping_sub(1)) };
                        if r < 3 {
                            a0 = _mm512_fmadd_ps(k[r * 3 + kx], v, a0);
                        }
                        if two && r >= 1 {
                            a1 = _mm512_fmadd_ps(k[(r - 1) * 3 + kx], v, a1);
                        }
                    }
                }
                // SAFETY: AVX-512F (contract).
                let (y0, y1) = unsafe { (epilogue(act, ch, a0), epilogue(act, ch, a1)) };
                if pool {
                    // SAFETY: `j0` is a multiple of 16 below `w`, so `pair_max` (`w` rounded up to
                    // a multiple of 16 values) holds `j0..j0 + 16`.
                    unsafe { _mm512_storeu_ps(pair_max.as_mut_ptr().add(j0), _mm512_max_ps(y0, y1)) };
                } else {
                    // SAFETY: row `oy < rows = h` of channel `ch`'s output plane (`h x w`), lanes `m`
                    // = columns `j0..w`; row `oy + 1` only when it is `< h` too.
                    unsafe {
                        _mm512_mask_storeu_ps(op.add(oy * w + j0), m, y0);
                        if two {
                            _mm512_mask_storeu_ps(op.add((oy + 1) * w + j0), m, y1);
                        }
                    }
                }
                j0 += 16;
            }
            if pool {
                // SAFETY: `oy < rows = h / 2 * 2`, so pooled row `oy / 2 < h / 2` of channel `ch`'s
                // pooled plane (`(h / 2) x (w / 2)`): `w / 2` values inside `out`, reached only
                // through `os` (the `out` borrow is not used while `prow` lives).
                let prow = unsafe { std::slice::from_raw_parts_mut(op.add(oy / 2 * (w / 2)), w / 2) };
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
///
/// # Safety
/// The CPU must have AVX-512F; `x` points at `cin` planes of `p` values and `out` at planes of `p`
/// values including `co0..co0 + NCO`; `w` points at `cin * CO_BLOCK` packed weights and
/// `NCO <= CO_BLOCK`; `p0 + np <= p` and `np <= 32`. (`bias` is indexed with checks.)
#[inline(always)]
#[allow(clippy::too_many_arguments)]
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
    // SAFETY: AVX-512F (contract); register-only intrinsics.
    let mut acc = unsafe { [[_mm512_setzero_ps(); 2]; NCO] };
    for (j, a) in acc.iter_mut().enumerate() {
        // SAFETY: AVX-512F (contract); `bias` is indexed with checks.
        let b = unsafe { _mm512_set1_ps(bias[co0 + j]) };
        *a = [b, b];
    }
    for ci in 0..cin {
        // SAFETY: AVX-512F (contract). `xp` is pixel `p0 < p` of input plane `ci < cin`; lanes `m0`
        // read pixels `p0..p0 + min(np, 16)` and lanes `m1` pixels `p0 + 16..p0 + np`, all below
        // `p`. (`p0 + 16` may lie past the end of `x` when `np <= 16`: then `m1` is empty, and the
        // address is only formed with `wrapping_add`.) `wp + j` is weight `ci * CO_BLOCK + j` of the
        // `cin * CO_BLOCK` in the block, `j < NCO <= CO_BLOCK`.
        unsafe {
            let xp = x.add(ci * p + p0);
            let x0 = _mm512_maskz_loadu_ps(m0, xp);
            let x1 = _mm512_maskz_loadu_ps(m1, xp.wrapping_add(16));
            let wp = w.add(ci * CO_BLOCK);
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*wp.add(j));
                a[0] = _mm512_fmadd_ps(wv, x0, a[0]);
                a[1] = _mm512_fmadd_ps(wv, x1, a[1]);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let (y0, y1) = (a[0], a[1]);
        // SAFETY: AVX-512F (contract). `op` is pixel `p0` of output plane `co0 + j` (one of `out`'s,
        // by the contract); the stores write the same pixels the loads above read (`m0`, `m1`), all
        // below `p`, with `wrapping_add` for an address past the end when `m1` is empty.
        unsafe {
            let (y0, y1) = (epilogue(act, co0 + j, y0), epilogue(act, co0 + j, y1));
            let op = out.add((co0 + j) * p + p0);
            _mm512_mask_storeu_ps(op, m0, y0);
            _mm512_mask_storeu_ps(op.wrapping_add(16), m1, y1);
        }
    }
}

/// [`Conv1x1`] on `p` pixels: 8 output channels x 32 pixels of accumulators in registers, over
/// blocks of [`PX_CHUNK`] pixels.
///
/// # Safety
/// The CPU must have AVX-512F; `x` holds `op.cin * p` values, `out` `op.cout * p` and `op.packed`
/// `op.cout.div_ceil(CO_BLOCK) * op.cin * CO_BLOCK` (what [`Conv1x1::new`] makes).
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
            // SAFETY: block `b` of the `cout.div_ceil(CO_BLOCK)` blocks of `cin * CO_BLOCK` weights in
            // `op.packed` (contract).
            let wb = unsafe { w.add(b * cin * CO_BLOCK) };
            let mut p0 = c0;
            while p0 < c0 + chunk {
                let np = (c0 + chunk - p0).min(32);
                // SAFETY: `block`'s contract: AVX-512F and `x`, `out` of `cin`, `cout` planes of `p`
                // (this function's contract); `wb` a block of `cin * CO_BLOCK` weights;
                // `co0 + nco <= cout`, `nco <= CO_BLOCK`; `p0 + np <= c0 + chunk <= p`, `np <= 32`.
                unsafe {
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
                }
                p0 += 32;
            }
        }
        c0 += chunk;
    }
}

/// Output channels `co0..co0 + NCO` of output row `oy` at columns `ox0..ox0 + n` (n <= 16), from
/// the `taps` (one pointer per tap, each to the tap of column 0).
///
/// # Safety
/// The CPU must have AVX-512F; every tap points at `ox0 + n` or more values; `w` points at
/// `taps.len() * CO_BLOCK` packed weights and `NCO <= CO_BLOCK`; `out` holds planes of `plane`
/// values including `co0..co0 + NCO`, and `row + ox0 + n <= plane`; `n <= 16`.
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
    // SAFETY: AVX-512F (contract); register-only intrinsics, the bias read with checks.
    let mut acc = unsafe { [_mm512_setzero_ps(); NCO] };
    for (j, a) in acc.iter_mut().enumerate() {
        // SAFETY: as above.
        *a = unsafe { _mm512_set1_ps(op.bias.0[co0 + j]) };
    }
    for (t, tap) in taps.iter().enumerate() {
        // SAFETY: AVX-512F (contract). Lanes `m` read values `ox0..ox0 + n` of the tap, which holds
        // that many; `wt + j` is weight `t * CO_BLOCK + j < taps.len() * CO_BLOCK` of the block.
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, tap.add(ox0));
            let wt = w.add(t * CO_BLOCK);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*wt.add(j)), v, *a);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: AVX-512F (contract); lanes `m` write values `row + ox0..row + ox0 + n` of output
        // plane `co0 + j`, inside it (contract).
        unsafe {
            let y = epilogue(&op.act, co0 + j, *a);
            _mm512_mask_storeu_ps(out.add((co0 + j) * plane + row + ox0), m, y);
        }
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
/// The CPU must have AVX-512F; `x` holds `op.cin * g.h * g.w` values, `out`
/// `op.cout * g.ho * g.wo` and `op.packed` `op.cout.div_ceil(CO_BLOCK) * op.cin * 9 * CO_BLOCK`.
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
                // SAFETY: `block3s2`'s contract: this function's, plus `oy < g.ho`, `ox0 < g.wo`,
                // rows `< g.h` (filtered above), `co0` a multiple of `CO_BLOCK` (every step but
                // the last is 16 or 8) and `co0 + nco <= cout`, with 16 only where two whole
                // blocks remain.
                unsafe {
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
///
/// # Safety
/// The CPU must have AVX-512F; `x` holds `op.cin * g.h * g.w` values, `out`
/// `op.cout * g.ho * g.wo` and `op.packed` the op's blocks of `cin * 9 * CO_BLOCK` weights;
/// `oy < g.ho`, `ox0 < g.wo`, every row in `rows` `< g.h`; `co0 + NCO <= op.cout`, and `NCO <= 16`
/// (more than `CO_BLOCK` only where the next block is a whole one).
#[inline(always)]
unsafe fn block3s2<const NCO: usize>((x, out, op, g, rows, oy, co0, ox0): Block3s2) {
    let (h, w, cin) = (g.h, g.w, op.cin);
    let m = lanes(g.wo - ox0);
    // SAFETY: AVX-512F (contract); register-only.
    let even = unsafe { _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0) };
    // The packed weights of co0's block of 8 and of the next one (read only when NCO > 8).
    let blk = op.packed.0.as_ptr().wrapping_add(co0 / CO_BLOCK * cin * 9 * CO_BLOCK);
    let next = blk.wrapping_add(cin * 9 * CO_BLOCK);
    // SAFETY: AVX-512F (contract); register-only intrinsics, the bias read with checks.
    let mut acc = unsafe { [_mm512_setzero_ps(); NCO] };
    for (j, a) in acc.iter_mut().enumerate() {
        // SAFETY: as above.
        *a = unsafe { _mm512_set1_ps(op.bias.0[co0 + j]) };
    }
    for ci in 0..cin {
        // SAFETY: input plane `ci < cin` of `x` (contract).
        let xp = unsafe { x.as_ptr().add(ci * h * w) };
        for (ky, iy) in rows.iter().enumerate() {
            let Some(iy) = *iy else { continue };
            // SAFETY: row `iy < h` of that plane (contract).
            let r = unsafe { xp.add(iy * w) };
            for kx in 0..3 {
                let start = (2 * ox0 + kx) as isize - g.left as isize;
                // SAFETY: AVX-512F (contract). `cols_inside` lets through only the lanes whose
                // column (`start + lane`, `start + 16 + lane`) lies in `0..w`: inside row `iy`.
                // The rest are not read; their addresses are only formed with `wrapping_offset`.
                let v = unsafe {
                    let lo = _mm512_maskz_loadu_ps(cols_inside(start, w), r.wrapping_offset(start));
                    let hi = _mm512_maskz_loadu_ps(cols_inside(start + 16, w), r.wrapping_offset(start + 16));
                    _mm512_permutex2var_ps(lo, even, hi)
                };
                let t = (ci * 3 + ky) * 3 + kx;
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: AVX-512F (contract). Tap `t < cin * 9`, lane `j` of block `co0 / 8`
                    // (`j < 8`) or of the next one (`8 <= j < NCO`, only when that block is whole):
                    // inside `op.packed` (contract).
                    unsafe {
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
    }
    let plane = g.ho * g.wo;
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: AVX-512F (contract); lanes `m` write columns `ox0..g.wo` (at most 16) of row
        // `oy < g.ho` of output plane `co0 + j < cout`: inside `out` (contract).
        unsafe {
            let y = epilogue(&op.act, co0 + j, *a);
            _mm512_mask_storeu_ps(out.as_mut_ptr().add((co0 + j) * plane + oy * g.wo + ox0), m, y);
        }
    }
}

/// [`Conv3x3`] from [`TapPlane`]s (any stride): 8 output channels x 16 pixels accumulate in
/// registers over the `9 * cin` taps.
///
/// # Safety
/// The CPU must have AVX-512F; `planes` are the op's `cin` input channels (`planes.len() == op.cin`),
/// each with tap slices of at least `g.wo` values ([`TapPlane::columns`]); `out` holds
/// `op.cout * g.ho * g.wo` values and `op.packed` `op.cout.div_ceil(CO_BLOCK) * op.cin * 9 * CO_BLOCK`.
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
            // SAFETY: block `b` of the op's `cout.div_ceil(CO_BLOCK)` blocks in `op.packed` (contract).
            let w = unsafe { op.packed.0.as_ptr().add(b * op.cin * 9 * CO_BLOCK) };
            let mut ox0 = 0;
            while ox0 < g.wo {
                let n = (g.wo - ox0).min(16);
                let row = oy * g.wo;
                // SAFETY: `block3`'s contract: AVX-512F; `cin * 9` taps (one plane per input
                // channel), each of at least `g.wo >= ox0 + n` values; `w` a block of
                // `cin * 9 * CO_BLOCK` weights; output planes of `ho * wo` including
                // `co0..co0 + NCO <= cout`, `row + ox0 + n <= ho * wo` as `oy < ho`; `n <= 16`.
                unsafe {
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
                }
                ox0 += 16;
            }
        }
    }
}
