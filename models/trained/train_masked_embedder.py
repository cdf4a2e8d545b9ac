#!/usr/bin/env python3
"""Distils the primary embedder into a mask-robust student (issue 4, models/trained/README.md).

The student starts as a copy of the primary MobileFaceNet (the ONNX graph is run by a small
interpreter below, its float initialisers as trainable parameters). It sees aligned faces with a
synthetic mask (and clean ones), and learns to reproduce the frozen teacher's embedding of the same
photo *unmasked*: no identity labels are used. The trained weights are written back into a copy of
the teacher's ONNX graph, so the runtime contract (input, output, alignment) is unchanged, and the
result is checked against onnxruntime.

Data: the output of `lobby-maskdata` (clean.u8, masked.u8, index.csv) made from LFW folds 0-2 only;
validation on folds 3-4 (other identities) made the same way.

    python3 models/trained/train_masked_embedder.py --teacher ../shared/models/face_embedding_mobilefacenet_sirius_192.onnx \
        --train /tmp/maskdata/train --val /tmp/maskdata/val --pairs ../shared/data/lfw/pairs.txt \
        --out models/trained/face_embedding_mobilefacenet_masked_192.onnx
"""
import argparse
import copy
import csv
import hashlib
import os
import time

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

SIZE = 112


class OnnxNet(torch.nn.Module):
    """Runs the embedder's ONNX graph (Conv, Relu, Min, Mul, Add, Reshape) with torch ops."""

    def __init__(self, model):
        super().__init__()
        self.nodes = list(model.graph.node)
        self.names = {}
        params = {}
        for i, t in enumerate(model.graph.initializer):
            a = numpy_helper.to_array(t)
            key = f"p{i}"
            self.names[t.name] = key
            params[key] = torch.nn.Parameter(torch.from_numpy(a.astype(np.float32).copy()), requires_grad=a.dtype == np.float32 and a.ndim > 0)
        self.params = torch.nn.ParameterDict(params)
        self.input = model.graph.input[0].name
        self.output = model.graph.output[0].name

    def value(self, env, name):
        if name in env:
            return env[name]
        return self.params[self.names[name]]

    def forward(self, x):
        env = {self.input: x}
        for n in self.nodes:
            ins = [self.value(env, i) for i in n.input]
            at = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type == "Conv":
                pads = at.get("pads", [0, 0, 0, 0])
                h = F.pad(ins[0], (pads[1], pads[3], pads[0], pads[2]))
                y = F.conv2d(h, ins[1], ins[2] if len(ins) > 2 else None, stride=at["strides"], groups=at.get("group", 1))
            elif n.op_type == "Relu":
                y = F.relu(ins[0])
            elif n.op_type == "Min":
                y = torch.minimum(ins[0], ins[1])
            elif n.op_type == "Mul":
                y = ins[0] * ins[1]
            elif n.op_type == "Add":
                y = ins[0] + ins[1]
            elif n.op_type == "Reshape":
                y = ins[0].reshape(ins[0].shape[0], -1)
            else:
                raise ValueError(f"unsupported op {n.op_type}")
            env[n.output[0]] = y
        return env[self.output]

    def write_back(self, model):
        out = copy.deepcopy(model)
        for t in out.graph.initializer:
            p = self.params[self.names[t.name]]
            if p.requires_grad:
                t.CopyFrom(numpy_helper.from_array(p.detach().numpy().astype(np.float32), t.name))
        return out


def load_crops(folder):
    rows = list(csv.DictReader(open(os.path.join(folder, "index.csv"))))
    n = len(rows)
    clean = np.fromfile(os.path.join(folder, "clean.u8"), dtype=np.uint8).reshape(n, SIZE, SIZE, 3)
    masked = np.fromfile(os.path.join(folder, "masked.u8"), dtype=np.uint8)
    k = masked.size // (n * SIZE * SIZE * 3)
    return rows, clean, masked.reshape(n, k, SIZE, SIZE, 3)


def to_input(u8):
    """N x 112 x 112 x 3 RGB uint8 -> N x 3 x 112 x 112, (x - 127.5) / 128: the embedder's contract."""
    x = torch.from_numpy(np.ascontiguousarray(u8)).float()
    return ((x - 127.5) / 128.0).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def embed(net, u8, batch=128):
    out = [F.normalize(net(to_input(u8[i:i + batch])), dim=1) for i in range(0, len(u8), batch)]
    return torch.cat(out).numpy()


def lfw_val_pairs(pairs_txt, rows, folds):
    """Pairs of the validation folds whose two images are both in the validation crops."""
    where = {r["image"]: int(r["row"]) for r in rows}
    lines = [l.split() for l in open(pairs_txt) if l.strip()]
    nfolds, n = int(lines[0][0]), int(lines[0][1])
    out = []
    for k, t in enumerate(lines[1:]):
        fold = k // (2 * n)
        if fold >= nfolds or fold not in folds:
            continue
        if len(t) == 3:
            a, b, same = f"{t[0]}_{int(t[1]):04}.jpg", f"{t[0]}_{int(t[2]):04}.jpg", True
        else:
            a, b, same = f"{t[0]}_{int(t[1]):04}.jpg", f"{t[2]}_{int(t[3]):04}.jpg", False
        if a in where and b in where:
            out.append((where[a], where[b], same, fold))
    return out


def pair_columns(pairs):
    """The (row a, row b, same, fold) tuples of `lfw_val_pairs` as four arrays."""
    return tuple(np.array([p[k] for p in pairs]) for k in range(4))


def cv_accuracy(scores, labels, folds):
    """Each fold's threshold chosen on the other folds, as lobby-eval does."""
    accs = []
    for f in sorted(set(folds)):
        tr = folds != f
        cands = np.unique(scores[tr])
        best = max(cands, key=lambda t: ((scores[tr] >= t) == labels[tr]).mean())
        accs.append(((scores[~tr] >= best) == labels[~tr]).mean())
    return float(np.mean(accs))


def validate(net, val, pairs):
    rows, clean, masked = val
    ec, em = embed(net, clean), embed(net, masked[:, 0])
    a, b, labels, folds = pair_columns(pairs)
    clean_s = (ec[a] * ec[b]).sum(1)
    masked_s = (ec[a] * em[b]).sum(1)
    return cv_accuracy(clean_s, labels, folds), cv_accuracy(masked_s, labels, folds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--masked-share", type=float, default=0.75)
    ap.add_argument("--freeze-first", type=int, default=10, help="leave the first N conv layers as they are")
    ap.add_argument("--seed", type=int, default=20261121)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clean-tolerance", type=float, default=0.005,
                    help="keep an epoch only if unmasked validation accuracy is at most this far below the teacher's")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)

    model = onnx.load(args.teacher)
    teacher = OnnxNet(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = OnnxNet(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for n in convs[: args.freeze_first]:
        for name in n.input[1:]:
            student.params[student.names[name]].requires_grad_(False)

    rows, clean, masked = load_crops(args.train)
    val = load_crops(args.val)
    pairs = lfw_val_pairs(args.pairs, val[0], {int(r["fold"]) for r in val[0]})
    n, k = masked.shape[0], masked.shape[1]
    print(f"train: {n} faces x {k} masks; val: {len(val[0])} faces, {len(pairs)} pairs")
    t0 = time.time()
    # Targets: the teacher's embedding of the unmasked photo, and of its mirror image.
    cache = os.path.join(args.train, "teacher_targets.npy")
    if os.path.exists(cache):
        target, target_flip = (torch.from_numpy(a) for a in np.load(cache))
    else:
        target = torch.from_numpy(embed(teacher, clean))
        target_flip = torch.from_numpy(embed(teacher, clean[:, :, ::-1]))
        np.save(cache, np.stack([target.numpy(), target_flip.numpy()]))
    print(f"teacher targets in {time.time() - t0:.0f}s")
    base_cache = os.path.join(args.val, "teacher_val.npy")
    base = tuple(np.load(base_cache)) if os.path.exists(base_cache) else validate(teacher, val, pairs)
    np.save(base_cache, np.array(base))
    print(f"teacher: val LFW clean {base[0]:.4f}, one masked {base[1]:.4f}")

    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    steps = args.epochs * (n // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    step = 0
    best, best_state = None, None
    for epoch in range(args.epochs):
        student.train()
        order = rng.permutation(n)
        t0 = time.time()
        losses = []
        for s in range(n // args.batch):
            idx = order[s * args.batch:(s + 1) * args.batch]
            use_mask = rng.random(len(idx)) < args.masked_share
            variant = rng.integers(0, k, len(idx))
            flip = rng.random(len(idx)) < 0.5
            imgs = np.where(use_mask[:, None, None, None], masked[idx, variant], clean[idx])
            imgs = np.where(flip[:, None, None, None], imgs[:, :, ::-1], imgs)
            tgt = torch.where(torch.from_numpy(flip)[:, None], target_flip[idx], target[idx])
            out = F.normalize(student(to_input(imgs)), dim=1)
            loss = (1.0 - (out * tgt).sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
        student.eval()
        v = validate(student, val, pairs)
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f} ({time.time() - t0:.0f}s); val LFW clean {v[0]:.4f}, one masked {v[1]:.4f}", flush=True)
        # Keep the epoch with the best masked accuracy among those that keep clean accuracy within
        # the tolerance of the teacher's.
        if v[0] >= base[0] - args.clean_tolerance and (best is None or v[1] > best[1]):
            best = v
            trained = student.write_back(model)
            onnx.checker.check_model(trained)
            onnx.save(trained, args.out)
            print(f"  kept epoch {epoch + 1}: wrote {args.out}", flush=True)
    if best is None:
        raise SystemExit("no epoch kept unmasked accuracy; nothing written")
    student = OnnxNet(onnx.load(args.out)).eval()
    # The written graph must compute what was trained.
    import onnxruntime as ort

    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    x = to_input(val[2][:8, 0])
    ref = student(x).detach().numpy()
    got = np.concatenate([sess.run(None, {model.graph.input[0].name: x[i:i + 1].numpy()})[0] for i in range(len(x))])
    print(f"onnxruntime vs torch: max |diff| {np.abs(ref - got).max():.2e}")
    digest = hashlib.sha256(open(args.out, "rb").read()).hexdigest()
    print(f"wrote {args.out}: {os.path.getsize(args.out)} bytes, sha256 {digest}; final val clean {best[0]:.4f}, masked {best[1]:.4f}")


if __name__ == "__main__":
    main()
