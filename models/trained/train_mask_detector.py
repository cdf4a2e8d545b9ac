#!/usr/bin/env python3
"""Trains the mask detector: a logistic probe on the embedder's last feature map (issue 4; README.md).

The probe reads the embedder's last feature map before pooling (`FEATURE`, 512 x 7 x 7), which the
service gets from the inference it runs anyway (tract is asked for that node as a second output),
averaged over each row (512 x 7: the rows keep where on the face a feature fires). (A probe on the
final embedding of the distilled embedder reached only 82 % on synthetic masks: it was trained to
hide them.) `--embedder` is a scratch copy of the embedder: this script adds `FEATURE` to the
copy's outputs so onnxruntime returns it.

Training data: `lobby-maskdata` output from LFW folds 0-2 (every clean face a negative, every
synthetically masked copy a positive, both classes weighted equally); validation on folds 3-4. No
real masked face is used: MFR2 and RWMFD are the test (`lobby-eval` reports `mask_detector.*`).

    python3 train_mask_detector.py --embedder face_embedding_mobilefacenet_masked_192.onnx \
        --train /tmp/maskdata/train --val /tmp/maskdata/val --out mask_detector_probe.onnx
"""
import argparse
import hashlib
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from train_masked_embedder import load_crops

FEATURE = "MobileFaceNet/MobileFaceNet/Conv2d_7/add"
OUTPUT = "mask_features"


def with_feature_output(path):
    """Rewrites the embedder in place with `FEATURE` also exposed as output `OUTPUT` (an Identity)."""
    m = onnx.load(path)
    if any(o.name == OUTPUT for o in m.graph.output):
        return
    m.graph.node.append(helper.make_node("Identity", [FEATURE], [OUTPUT]))
    m.graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 512, 7, 7]))
    onnx.checker.check_model(m)
    onnx.save(m, path)


def row_pooled(path, u8):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = []
    for img in u8:
        x = ((img.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        f = sess.run([OUTPUT], {"input": x})[0][0]  # 512 x 7 x 7
        out.append(f.mean(axis=2).reshape(-1))  # mean over each row -> 512 x 7
    return np.stack(out)


def features(path, folder):
    cache = os.path.join(folder, "mask_features.npz")
    if os.path.exists(cache) and os.path.getmtime(cache) > os.path.getmtime(path):
        z = np.load(cache)
        return z["x"], z["y"], z["w"]
    rows, clean, masked = load_crops(folder)
    n, k = masked.shape[:2]
    x = np.concatenate([row_pooled(path, clean), row_pooled(path, masked.reshape(n * k, 112, 112, 3))])
    y = np.concatenate([np.zeros(n), np.ones(n * k)])
    w = np.concatenate([np.full(n, 0.5 / n), np.full(n * k, 0.5 / (n * k))])
    np.savez(cache, x=x, y=y, w=w)
    return x, y, w


def fit(x, y, w, l2=1e-3, steps=500):
    """Weighted, L2-regularised logistic regression (full batch, L-BFGS in torch)."""
    import torch

    x, y, w = (torch.tensor(v, dtype=torch.float32) for v in (x, y, w))
    a = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logit = x @ a + b
        loss = (w * torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")).sum()
        loss = loss + 0.5 * l2 * (a * a).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return a.detach().double().numpy(), float(b.detach()[0])


def report(name, x, y, w, a, b):
    p = 1.0 / (1.0 + np.exp(-np.clip(x @ a + b, -50, 50)))
    acc = (((p >= 0.5) == (y == 1)) * w).sum()
    print(f"{name}: balanced accuracy {acc:.4f} (clean right {((p < 0.5) & (y == 0)).sum()}/{(y == 0).sum()}, masked right {((p >= 0.5) & (y == 1)).sum()}/{(y == 1).sum()})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--embedder", required=True, help="rewritten in place with the extra output")
    ap.add_argument("--train", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with_feature_output(args.embedder)
    x, y, w = features(args.embedder, args.train)
    # Standardise on the training set; folded into the weights below.
    mu, sd = x.mean(0), x.std(0) + 1e-6
    a, b = fit((x - mu) / sd, y, w)
    a_raw = a / sd
    b_raw = b - (mu * a / sd).sum()
    report("train", x, y, w, a_raw, b_raw)
    xv, yv, wv = features(args.embedder, args.val)
    report("val", xv, yv, wv, a_raw, b_raw)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["features"], ["rows"], axes=[3], keepdims=0),
            helper.make_node("Flatten", ["rows"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logit"], transB=1),
            helper.make_node("Sigmoid", ["logit"], ["p_masked"]),
        ],
        "mask_detector_probe",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 512, 7, 7])],
        [helper.make_tensor_value_info("p_masked", TensorProto.FLOAT, [1, 1])],
        [
            numpy_helper.from_array(a_raw.astype(np.float32).reshape(1, -1), "w"),
            numpy_helper.from_array(np.array([b_raw], dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="lobby train_mask_detector.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, args.out)
    for path in [args.embedder, args.out]:
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        print(f"{path}: {os.path.getsize(path)} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
