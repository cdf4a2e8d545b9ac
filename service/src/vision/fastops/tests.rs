//! Unit tests: each op against tract's own on small graphs (planned both ways), and the portable
//! kernels against the definitions and the AVX-512 ones. A test with an AVX-512 half says so on a CPU
//! without AVX-512F, where that half is skipped.

use super::dispatch::conv3x3_planes;
use super::portable::{conv1x1_generic, conv3x3_generic, conv3x3_weight, TapPlane};
use super::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Whether the AVX-512 kernels run here (the half of `test` that checks them); if not, says that
/// `test` skips that half.
fn avx512_half(test: &str) -> bool {
    let yes = has_avx512();
    if !yes {
        let why = if cfg!(target_arch = "x86_64") {
            "this CPU lacks avx512f"
        } else {
            "this target is not x86_64"
        };
        eprintln!("{test}: skipping the AVX-512 half: {why}");
    }
    yes
}

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
    let avx512 = avx512_half("pointwise_conv_with_channels_last_output_matches_tract");
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
        if avx512 {
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
    let avx512 = avx512_half("pointwise_conv_matches_tract");
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
            if cout > 1 && avx512 {
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
    // Without AVX-512F the portable kernels compute the same cases (still checked against tract).
    avx512_half("stride_one_rows_of_any_width_match_tract");
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
    let avx512 = avx512_half("both_prelu_spellings_are_fused_with_the_same_values");
    for act in [TAct::SplitPrelu, TAct::MaxMul] {
        for (kind, cout) in [(Kind::Depthwise, 6), (Kind::Pointwise, 12)] {
            let (stride, pad) = match kind {
                Kind::Depthwise | Kind::Full3x3 | Kind::DepthwiseNhwc => (2, [1, 1, 1, 1]),
                Kind::Pointwise => (1, [0; 4]),
            };
            let (a, b, swapped, binops) = both_ways_conv(kind, 6, cout, 10, 14, stride, pad, act, false);
            assert_close(&a, &b);
            if matches!(kind, Kind::Depthwise) || avx512 {
                assert_eq!((swapped, binops), (1, 0), "{act:?}: the activation is fused");
            }
        }
    }
}

#[test]
fn first_layer_conv_matches_tract() {
    let avx512 = avx512_half("first_layer_conv_matches_tract");
    for (cin, cout) in [(3, 16), (1, 5), (4, 9), (3, 27)] {
        for (stride, pad) in [(2, [1, 1, 1, 1]), (1, [1, 1, 1, 1]), (2, [0, 0, 1, 1]), (1, [0; 4])] {
            for (h, w) in [(12, 20), (7, 33), (3, 3), (9, 70)] {
                for act in [TAct::Linear, TAct::Relu, TAct::SplitPrelu] {
                    let (a, b, swapped, binops) =
                        both_ways_conv(Kind::Full3x3, cin, cout, h, w, stride, pad, act, false);
                    assert_close(&a, &b);
                    if avx512 {
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
    // Without AVX-512F `conv3x3_planes` runs the portable kernel too: only the spot check is left.
    avx512_half("the_portable_3x3_kernel_matches_the_vector_one");
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
    conv3x3_planes(&planes, &mut b, &op, &g);
    assert_close(&a, &b);
    // Spot check one output against the definition.
    let (co, oy, ox) = (4, 2, 3);
    let mut want = op.bias.0[co];
    for ci in 0..cin {
        for ky in 0..3 {
            for kx in 0..3 {
                let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                    want +=
                        conv3x3_weight(&op, co, ci * 9 + ky * 3 + kx) * x[ci * h * w + iy as usize * w + ix as usize];
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
