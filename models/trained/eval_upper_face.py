"""Two more ideas for masked matching, measured on the validation folds before building either.

Reads the `lobby-maskdata` folders (train: folds 0-2, 4 plain masks each; val: folds 3-4, one mask) and,
with onnxruntime, scores LFW's pairs of folds 3-4 clean-vs-masked (one synthetic mask on the second photo):

- a canonical occluder: the aligned crop's rows from `y0` down painted grey on *both* photos, so the
  two sides show the same upper face and nothing of the mask (teacher and student, untrained for it);
- a ridge-regression head for masked probes: the student's last feature map (512 x 7 x 7) reduced to
  the per-row terms of its global depthwise convolution (512 x 7, as the tail after it is linear),
  mapped linearly to the student's embedding of the same photo unmasked (masked copies of folds 0-2,
  optionally also their clean copies); the probe's head output against the clean template.

    python eval_upper_face.py --train /tmp/maskdata/train --val /tmp/maskdata/val \\
        --pairs ../../../shared/data/lfw/pairs.txt \\
        --teacher ../../../shared/models/face_embedding_mobilefacenet_sirius_192.onnx \\
        --student face_embedding_mobilefacenet_masked_192.onnx

Accuracy as `lobby-eval` computes it (each fold's threshold chosen on the other folds).
"""
import argparse

import numpy as np
import onnx
import onnxruntime as ort

from train_masked_embedder import cv_accuracy, lfw_val_pairs, load_crops, pair_columns

FEAT = "MobileFaceNet/MobileFaceNet/Conv2d_7/add"
GDCONV_W = "const_fold_opt__592"  # the global depthwise 7x7 convolution after FEAT


def session(model, threads=2):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(sess, u8, gw=None):
    """Unit embeddings, and (with gw) the per-row GD-conv terms of the last feature map."""
    emb, rows = [], []
    for face in u8:
        x = ((face.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None].copy()
        out = sess.run(None, {sess.get_inputs()[0].name: x})
        emb.append(out[0][0])
        if gw is not None:
            rows.append((out[1][0] * gw).sum(2).reshape(-1))
    e = np.stack(emb)
    return e / np.linalg.norm(e, axis=1, keepdims=True), (np.stack(rows) if rows else None)


def occlude(u8, y0):
    o = u8.copy()
    o[:, y0:] = 128
    return o


def main():
    ap = argparse.ArgumentParser()
    for a in ["--train", "--val", "--pairs", "--teacher", "--student"]:
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    rows, vc, vm = load_crops(args.val)
    vm = vm[:, 0]
    pairs = lfw_val_pairs(args.pairs, rows, {3, 4})
    a, b, labels, folds = pair_columns(pairs)
    acc = lambda s: 100 * cv_accuracy(s, labels, folds)

    for name, path in [("teacher", args.teacher), ("student", args.student)]:
        sess = session(onnx.load(path))
        c, m = run(sess, vc)[0], run(sess, vm)[0]
        base = (c[a] * m[b]).sum(1)
        print(f"{name}: unmasked {acc((c[a] * c[b]).sum(1)):.2f}, one mask {acc(base):.2f}")
        for y0 in [48, 54, 60]:
            oc, om = run(sess, occlude(vc, y0))[0], run(sess, occlude(vm, y0))[0]
            s = (oc[a] * om[b]).sum(1)
            print(f"  occluder from row {y0}: {acc(s):.2f}, mean with the plain score {acc((base + s) / 2):.2f}")

    model = onnx.load(args.student)
    model.graph.output.append(onnx.helper.make_tensor_value_info(FEAT, onnx.TensorProto.FLOAT, [1, 512, 7, 7]))
    gw = next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == GDCONV_W)[:, 0]
    sess = session(model)
    _, tc, tm = load_crops(args.train)
    tr_ce, tr_cg = run(sess, tc, gw)
    tr_mg = np.stack([run(sess, tm[:, k], gw)[1] for k in range(tm.shape[1])], 1)
    va_ce, _ = run(sess, vc, gw)
    va_me, va_mg = run(sess, vm, gw)
    base = (va_ce[a] * va_me[b]).sum(1)
    k = tr_mg.shape[1]
    for with_clean in [False, True]:
        x, y = tr_mg.reshape(-1, tr_mg.shape[-1]), np.repeat(tr_ce, k, 0)
        if with_clean:
            x, y = np.concatenate([x, tr_cg]), np.concatenate([y, tr_ce])
        mu, sd = x.mean(0), x.std(0) + 1e-6
        xs = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
        for lam in [1e3, 1e4, 1e5, 1e6]:
            w = np.linalg.solve(xs.T @ xs + lam * np.eye(xs.shape[1]), xs.T @ y)
            h = np.concatenate([(va_mg - mu) / sd, np.ones((len(va_mg), 1))], 1) @ w
            h /= np.linalg.norm(h, axis=1, keepdims=True)
            s = (va_ce[a] * h[b]).sum(1)
            print(f"head (clean copies too: {with_clean}), ridge {lam:g}: {acc(s):.2f}, "
                  f"mean with the plain score {acc((base + s) / 2):.2f}")


if __name__ == "__main__":
    main()
