"""Two cheap ideas for masked matching, measured on the validation folds before building either.

Reads the `lobby-maskdata` folders of folds 3-4 (never trained on) and, with onnxruntime, scores LFW's
pairs of those folds clean-vs-clean and clean-vs-masked (one synthetic mask on the second photo):

- flip-averaged embeddings: each face embedded as is and mirrored, the two summed (both sides);
- the mean of the clean-template and the masked-template similarity (the varied folder's mask of the
  template photo standing in for the enrolment masks);
- fusion of the teacher's and the student's similarities.

    python eval_flip_and_fusion.py --val /tmp/maskdata/val --val-varied /tmp/maskdata-varied/val \\
        --pairs ../../../shared/data/lfw/pairs.txt \\
        --teacher ../../../shared/models/face_embedding_mobilefacenet_sirius_192.onnx \\
        --student face_embedding_mobilefacenet_masked_192.onnx

Accuracy as `lobby-eval` computes it (each fold's threshold chosen on the other folds).
"""
import argparse

import numpy as np
import onnxruntime as ort

from train_masked_embedder import cv_accuracy, lfw_val_pairs, load_crops, pair_columns


def embed(sess, u8, flip=False):
    name = sess.get_inputs()[0].name
    out = []
    for face in u8:
        x = face.astype(np.float32)
        if flip:
            x = x[:, ::-1]
        x = ((x - 127.5) / 128.0).transpose(2, 0, 1)[None].copy()
        out.append(sess.run(None, {name: x})[0][0])
    return np.stack(out)


def unit(e):
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser()
    for a in ["--val", "--val-varied", "--pairs", "--teacher", "--student"]:
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    rows, clean, masked = load_crops(args.val)
    tpl_masked = load_crops(args.val_varied)[2][:, 0]
    pairs = lfw_val_pairs(args.pairs, rows, {3, 4})
    a, b, labels, folds = pair_columns(pairs)
    acc = lambda s: 100 * cv_accuracy(s, labels, folds)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    masked_scores = {}
    for name, path in [("teacher", args.teacher), ("student", args.student)]:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        raw = [embed(sess, x, f) for f in (False, True) for x in (clean, masked[:, 0], tpl_masked)]
        c, m, v = (unit(e) for e in raw[:3])
        cf, mf, vf = (unit(e + ef) for e, ef in zip(raw[:3], raw[3:]))
        sim = lambda p, q: (p[a] * q[b]).sum(1)
        masked_scores[name] = sim(c, m)
        print(f"{name}: unmasked {acc(sim(c, c)):.2f} (flip-averaged {acc(sim(cf, cf)):.2f}); "
              f"one mask {acc(sim(c, m)):.2f} (flip-averaged {acc(sim(cf, mf)):.2f}); "
              f"mean with the masked template {acc((sim(c, m) + sim(v, m)) / 2):.2f} "
              f"(flip-averaged {acc((sim(cf, mf) + sim(vf, mf)) / 2):.2f})")
    for w in [0.2, 0.3, 0.5]:
        fused = w * masked_scores["teacher"] + (1 - w) * masked_scores["student"]
        print(f"one mask, {w:.1f} x teacher + {1 - w:.1f} x student: {acc(fused):.2f}")


if __name__ == "__main__":
    main()
