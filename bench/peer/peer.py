"""The Python peer: Lobby's check-in pipeline as a team would otherwise deploy it (onnxruntime, numpy,
OpenCV, Faiss, grpcio), with the same models, the same pre- and post-processing and the same photos.

  peer.py models --models DIR [--runs N]                  each model alone, one thread (JSON)
  peer.py stages --models DIR --data DATA --frames DIR    per-stage latency, one thread (JSON)
  peer.py serve  --models DIR --data DATA --port P        KioskService.CheckIn over gRPC (lobby.v1)

Same as the Rust service: YuNet with the same resize policy (480 px pass, a 640 px pass when it finds nothing, then a bordered pass), sqrt(cls*obj) scores and greedy NMS; the same quality measures (a second face
counts when comparable to the guest's and near the centre); MiniFASNetV2 (x2.7) and V1SE (x4.0) on
BGR 0-255 80x80 crops of the face box clipped to the photo (faces over 240 px scaled down first),
softmax, geometric mean; 5-point similarity alignment (Umeyama) to the ArcFace template,
(x-127.5)/128; the embedder's last feature map read as a second output for the mask probe; an
inner-product Faiss index per property; the cascade's second stage (teacher on the face and its
mirror, dlib on its 150x150 chip) for an unmasked probe whose score falls in the band; the same
thresholds; every decision written to SQLite (WAL, synchronous=FULL) with a sha256 hash chain. Each onnxruntime session uses one thread,
as each of the service's analyses does. The peer does not authenticate callers (it is a yardstick,
not a product); that costs it nothing the service pays little for (a sha256 per call).
"""
import argparse
import csv
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
import tomllib
from concurrent import futures

import cv2
import faiss
import numpy as np
import onnx
import onnxruntime as ort

cv2.setNumThreads(1)
faiss.omp_set_num_threads(1)

FILES = {
    "detector": "face_detection_yunet_s_dynamic.onnx",
    "embedder": "face_embedding_mobilefacenet_masked_192.onnx",
    "liveness_v2": "antispoof_MiniFASNetV2_scale2.7_80x80.onnx",
    "liveness_v1se": "antispoof_MiniFASNetV1SE_scale4.0_80x80.onnx",
    "mask": "mask_detector_probe.onnx",
    "teacher": "face_embedding_mobilefacenet_sirius_192.onnx",
    "dlib": "face_embedding_dlib_resnet_v1_128.onnx",
}
FEATURE_NODE = "MobileFaceNet/MobileFaceNet/Conv2d_7/add"
ARCFACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                    [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
DLIB = np.array([[47.452, 44.078], [101.530, 44.574], [74.425, 77.113],
                 [50.679, 102.706], [97.308, 103.114]], dtype=np.float64)
STRIDES = (8, 16, 32)
SCORE_THRESHOLD, NMS_IOU, MODEL_MAX_FACE = 0.6, 0.3, 300.0
FIRST_PASS_LONG_SIDE = 480.0
# Thresholds: read from the service's own defaults, so the two decide alike.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "service", "config", "defaults.toml"), "rb") as _f:
    _DEFAULTS = tomllib.load(_f)
_POLICY, _CASCADE = _DEFAULTS["policy"], _DEFAULTS["cascade"]
MATCH_1N, MATCH_1N_MASKED = _POLICY["match_threshold_1n"], _POLICY["match_threshold_1n_masked"]
REVIEW_BAND, MARGIN, LIVENESS = _POLICY["review_band"], _POLICY["margin"], _POLICY["liveness_threshold"]
LIVENESS_MAX_FACE = _POLICY["liveness_max_face_px"]
MIN_FACE, MIN_BRIGHT, MAX_BRIGHT, MIN_SHARP = 60, 40, 225, 20


def session(path):
    """An onnxruntime session on one thread; `path` is a file name or the model's bytes."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class Models:
    def __init__(self, folder):
        p = lambda k: os.path.join(folder, FILES[k])
        self.det = session(p("detector"))
        self.det_in = self.det.get_inputs()[0].name
        self.det_out = [o.name for o in self.det.get_outputs()]
        # The embedder with its last feature map as a second output (the mask probe reads it).
        m = onnx.load(p("embedder"))
        m.graph.output.append(onnx.helper.make_tensor_value_info(FEATURE_NODE, onnx.TensorProto.FLOAT, None))
        self.emb = session(m.SerializeToString())
        self.emb_in = self.emb.get_inputs()[0].name
        self.emb_out = [m.graph.output[0].name, FEATURE_NODE]
        self.live = [session(p("liveness_v2")), session(p("liveness_v1se"))]
        self.mask = session(p("mask"))
        self.teacher = session(p("teacher"))
        self.dlib = session(p("dlib"))


def detect_pass(models, img, scale, border):
    h, w = img.shape[:2]
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    off = round(border)
    cw = -(-(off * 2 + nw) // 32) * 32
    ch = -(-(off * 2 + nh) // 32) * 32
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(img, (nw, nh), interpolation=interp)  # img is BGR
    canvas = np.zeros((ch, cw, 3), np.uint8)
    canvas[off:off + nh, off:off + nw] = resized[: ch - off, : cw - off]
    x = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None].astype(np.float32))
    out = dict(zip(models.det_out, models.det.run(None, {models.det_in: x})))
    faces = []
    for s in STRIDES:
        cls = out[f"cls_{s}"].reshape(-1)
        obj = out[f"obj_{s}"].reshape(-1)
        bb = out[f"bbox_{s}"].reshape(-1, 4)
        kp = out[f"kps_{s}"].reshape(-1, 10)
        cols = cw // s
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        for idx in np.nonzero(score >= SCORE_THRESHOLD)[0]:
            r, c = divmod(int(idx), cols)
            b = bb[idx]
            cx, cy = (c + b[0]) * s, (r + b[1]) * s
            bw, bh = np.exp(b[2]) * s, np.exp(b[3]) * s
            if not (np.isfinite(bw) and np.isfinite(bh)):
                continue
            k = kp[idx].reshape(5, 2)
            lm = ((k + [c, r]) * s - off) / scale
            box = np.array([cx - bw / 2 - off, cy - bh / 2 - off, bw, bh]) / scale
            faces.append((float(score[idx]), box, lm))
    faces.sort(key=lambda f: -f[0])
    keep = []
    for f in faces:
        if all(iou(f[1], k[1]) <= NMS_IOU for k in keep):
            keep.append(f)
    return keep


def iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def size(f):
    return min(f[1][2], f[1][3])


def detect(models, img):
    long = max(img.shape[:2])
    scale = FIRST_PASS_LONG_SIDE / long
    first = detect_pass(models, img, scale, 0)
    if not first:
        scale = 640.0 / long
        first = detect_pass(models, img, scale, 0)
    if not first or any(size(f) * scale > MODEL_MAX_FACE for f in first):
        scale = 640.0 / (long * 2.0)
        second = detect_pass(models, img, scale, 0.5 * long * scale)
        if second:
            return second
    return first


def primary_face(faces, w, h):
    if not faces:
        return None
    largest = max(size(f) for f in faces)
    comparable = [f for f in faces if size(f) >= 0.6 * largest]
    c = np.array([w / 2, h / 2])
    return min(comparable, key=lambda f: np.linalg.norm(f[1][:2] + f[1][2:] / 2 - c))


def umeyama(src, dst):
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sgn = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sgn[1, 1] = -1
    r = u @ sgn @ vt
    scale = (sig * np.diag(sgn)).sum() / (s ** 2).sum() * len(src)
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def crop_box(w, h, box, scale):
    bx, by, bw, bh = box
    bw, bh = max(bw, 1.0), max(bh, 1.0)
    s = max(0.0, min(scale, (h - 1) / bh, (w - 1) / bw))
    nw, nh = bw * s, bh * s
    cx, cy = bx + bw / 2, by + bh / 2
    lx, ly, rx, ry = cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2
    if lx < 0:
        rx -= lx; lx = 0
    if ly < 0:
        ry -= ly; ly = 0
    if rx > w - 1:
        lx -= rx - w + 1; rx = w - 1
    if ry > h - 1:
        ly -= ry - h + 1; ry = h - 1
    l, t = int(max(lx, 0)), int(max(ly, 0))
    r, b = int(min(int(rx) + 1, w)), int(min(int(ry) + 1, h))
    return l, t, max(r, l + 1), max(b, t + 1)


def liveness(models, img, box):
    if LIVENESS_MAX_FACE > 0 and min(box[2], box[3]) > LIVENESS_MAX_FACE:
        k = LIVENESS_MAX_FACE / min(box[2], box[3])
        h, w = img.shape[:2]
        nw, nh = max(1, round(w * k)), max(1, round(h * k))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        box = np.array(box) * [nw / w, nh / h, nw / w, nh / h]
    h, w = img.shape[:2]
    # The face box clipped to the photo before scaling (as the service).
    x0, y0 = max(box[0], 0.0), max(box[1], 0.0)
    x1, y1 = min(box[0] + box[2], w), min(box[1] + box[3], h)
    box = (x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0))
    p = []
    for sess, scale in zip(models.live, (2.7, 4.0)):
        l, t, r, b = crop_box(w, h, box, scale)
        crop = cv2.resize(img[t:b, l:r], (80, 80), interpolation=cv2.INTER_LINEAR)
        x = np.ascontiguousarray(crop.transpose(2, 0, 1)[None].astype(np.float32))
        logits = sess.run(None, {sess.get_inputs()[0].name: x})[0].reshape(-1)
        e = np.exp(logits - logits.max())
        p.append(float(e[1] / e.sum()))
    return float(np.sqrt(p[0] * p[1]))


def quality(img_aligned, face, faces, w, h):
    luma = cv2.cvtColor(img_aligned, cv2.COLOR_BGR2GRAY).astype(np.float32)
    centre = luma[56 - 28 - 1:56 + 36 + 1, 56 - 32 - 1:56 + 32 + 1]
    lap = cv2.Laplacian(centre, cv2.CV_32F, ksize=1)[1:-1, 1:-1]

    def beside(f):  # comparable to the guest, centre in the middle half of the photo
        cx, cy = f[1][0] + f[1][2] / 2, f[1][1] + f[1][3] / 2
        return size(f) >= 0.6 * size(face) and w / 4 <= cx <= 3 * w / 4 and h / 4 <= cy <= 3 * h / 4

    return {
        "size": size(face),
        "sharpness": float(lap.var()),
        "brightness": float(centre[1:-1, 1:-1].mean()),
        "comparable": 1 + sum(1 for f in faces if f is not face and beside(f)),
    }


def embed(models, aligned_bgr):
    rgb = aligned_bgr[:, :, ::-1].astype(np.float32)
    x = np.ascontiguousarray(((rgb - 127.5) / 128.0).transpose(2, 0, 1)[None])
    e, feat = models.emb.run(models.emb_out, {models.emb_in: x})
    e = e.reshape(-1)
    p_masked = float(models.mask.run(None, {models.mask.get_inputs()[0].name: feat})[0].reshape(-1)[0])
    return e / np.linalg.norm(e), p_masked >= 0.5


def analyze(models, img, t):
    """Detect, primary face, align, quality, liveness, embed + mask; stage times into t (ms)."""
    h, w = img.shape[:2]
    s = time.perf_counter()
    faces = detect(models, img)
    t["detect"] = (time.perf_counter() - s) * 1e3
    face = primary_face(faces, w, h)
    if face is None:
        return None
    s = time.perf_counter()
    m = umeyama(face[2].astype(np.float64), ARCFACE)
    aligned = cv2.warpAffine(img, m, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0)
    t["align"] = (time.perf_counter() - s) * 1e3
    s = time.perf_counter()
    q = quality(aligned, face, faces, w, h)
    t["quality"] = (time.perf_counter() - s) * 1e3
    s = time.perf_counter()
    live = liveness(models, img, face[1])
    t["liveness"] = (time.perf_counter() - s) * 1e3
    s = time.perf_counter()
    e, masked = embed(models, aligned)
    t["embed+mask"] = (time.perf_counter() - s) * 1e3
    return {"q": q, "live": live, "embedding": e, "masked": masked, "img": img, "lm": face[2], "aligned": aligned}


def second_stage(models, a):
    """The cascade's second stage: the teacher on the face and its mirror (summed, normalised),
    dlib on its chip (flip as configured)."""
    flip_t, flip_d = _CASCADE["flip"]

    def run(sess, x):
        v = sess.run(None, {sess.get_inputs()[0].name: x})[0].reshape(-1)
        return v / np.linalg.norm(v)

    def views(img, flip):
        return [img, cv2.flip(img, 1)] if flip else [img]

    rgb = lambda bgr: bgr[:, :, ::-1].astype(np.float32)
    t = sum(run(models.teacher, np.ascontiguousarray(((rgb(v) - 127.5) / 128.0).transpose(2, 0, 1)[None]))
            for v in views(a["aligned"], flip_t))
    m = umeyama(a["lm"].astype(np.float64), DLIB)
    chip = cv2.warpAffine(a["img"], m, (150, 150), flags=cv2.INTER_LINEAR, borderValue=0)
    d = sum(run(models.dlib, np.ascontiguousarray(rgb(v).transpose(2, 0, 1)[None])) for v in views(chip, flip_d))
    return t / np.linalg.norm(t), d / np.linalg.norm(d)


def cascade_accepts(score, second, template):
    """The service's matching::judge for an unmasked 1:N probe: the student alone above the band,
    the weighted z-normalised cosines inside it."""
    lo, hi = _CASCADE["one_to_n"]["band"]
    if score >= hi:
        return True
    if score < lo or second is None or template is None:
        return False
    w, mu, sd = _CASCADE["weights"], _CASCADE["impostor_mean"], _CASCADE["impostor_sd"]
    cos = [score, float(second[0] @ template[0]), float(second[1] @ template[1])]
    fused = sum(w[k] * (cos[k] - mu[k]) / sd[k] for k in range(3))
    return fused >= _CASCADE["one_to_n"]["threshold"]


class Peer:
    """Enrolled guests (one photo each), a Faiss index, the decision log."""

    def __init__(self, models, data, db_path):
        self.models = models
        self.index = faiss.IndexFlatIP(192)
        self.guests, self.second = [], []
        for path, identity in enrol_split(data)[0]:
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            a = analyze(models, img, {}) if img is not None else None
            if a is not None:
                self.index.add(a["embedding"][None].astype(np.float32))
                self.guests.append(identity)
                self.second.append(second_stage(models, a))
        self.db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                              "CREATE TABLE IF NOT EXISTS decisions (id INTEGER PRIMARY KEY, at_ms INTEGER, outcome TEXT,"
                              " guest TEXT, score REAL, live REAL, masked INTEGER, prev_hash TEXT, hash TEXT);")
        self.lock = threading.Lock()
        self.last_hash = "0" * 64

    def check_in(self, photo, t):
        s = time.perf_counter()
        img = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
        t["decode"] = (time.perf_counter() - s) * 1e3
        if img is None:
            raise ValueError("the image cannot be decoded")
        a = analyze(self.models, img, t)
        s = time.perf_counter()
        guest, score, second, best = None, -1.0, -1.0, None
        if a is not None:
            k = min(2, self.index.ntotal)
            d, i = self.index.search(a["embedding"][None].astype(np.float32), k)
            best = int(i[0][0])
            score, guest = float(d[0][0]), self.guests[best]
            second = float(d[0][1]) if k > 1 else -1.0
        t["search"] = (time.perf_counter() - s) * 1e3
        s = time.perf_counter()
        lo, hi = _CASCADE["one_to_n"]["band"]
        in_band = a is not None and not a["masked"] and _CASCADE["enabled"] and lo <= score < hi
        probe_second = second_stage(self.models, a) if in_band else None
        t["second stage"] = (time.perf_counter() - s) * 1e3
        s = time.perf_counter()
        if a is None:
            outcome = "RETRY"
        else:
            q = a["q"]
            if a["masked"] or not _CASCADE["enabled"]:
                matched = score >= (MATCH_1N_MASKED if a["masked"] else MATCH_1N)
            else:
                matched = cascade_accepts(score, probe_second, self.second[best] if best is not None else None)
            if q["size"] < MIN_FACE or not MIN_BRIGHT <= q["brightness"] <= MAX_BRIGHT or q["sharpness"] < MIN_SHARP or q["comparable"] > 1:
                outcome = "RETRY"
            elif not matched or score - second < MARGIN:
                outcome = "RETRY"  # not confident: the kiosk is asked to lower the mask or show the code
            elif a["live"] < LIVENESS:
                outcome = "REVIEW"
            else:
                outcome = "REVIEW"  # matched; health code unknown -> the front desk, as the service
        t["decide"] = (time.perf_counter() - s) * 1e3
        s = time.perf_counter()
        with self.lock:
            at = int(time.time() * 1000)
            row = f"{at}|{outcome}|{guest}|{score:.4f}"
            h = hashlib.sha256((self.last_hash + row).encode()).hexdigest()
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO decisions (at_ms, outcome, guest, score, live, masked, prev_hash, hash)"
                            " VALUES (?,?,?,?,?,?,?,?)",
                            (at, outcome, guest, score, a["live"] if a else 0.0, int(bool(a and a["masked"])), self.last_hash, h))
            self.db.execute("COMMIT")
            self.last_hash = h
        t["record"] = (time.perf_counter() - s) * 1e3
        return outcome, score, bool(a and a["masked"])


def enrol_split(data):
    """The same split as lobby-bench's kiosk.rs: first photo of each identity enrolled."""
    root = os.path.join(data, "uncropped_identities")
    seen, enrol, probes = set(), [], []
    with open(os.path.join(root, "manifest.csv")) as f:
        for r in csv.DictReader(f):
            item = (os.path.join(root, r["image"]), r["identity"])
            (probes if r["identity"] in seen else enrol).append(item)
            seen.add(r["identity"])
    return enrol, probes


def read_frames(folder):
    with open(os.path.join(folder, "frames.csv")) as f:
        return [open(os.path.join(folder, r["file"]), "rb").read() for r in csv.DictReader(f)]


def pct(v, p):
    v = sorted(v)
    return v[max(0, min(len(v) - 1, int(np.ceil(p / 100 * len(v))) - 1))]


def stats(v):
    return {"p50": round(pct(v, 50), 3), "p99": round(pct(v, 99), 3), "mean": round(float(np.mean(v)), 3), "n": len(v)}


def cmd_models(a):
    m = Models(a.models)
    shapes = [("detector", m.det, (1, 3, 480, 640)), ("detector_first_pass", m.det, (1, 3, 384, 480)),
              ("embedder", m.emb, (1, 3, 112, 112)), ("liveness_v2", m.live[0], (1, 3, 80, 80)),
              ("liveness_v1se", m.live[1], (1, 3, 80, 80)), ("teacher", m.teacher, (1, 3, 112, 112)),
              ("dlib", m.dlib, (1, 3, 150, 150))]
    out = []
    for name, sess, shape in shapes:
        x = np.full(shape, 0.5, np.float32)
        feed = {sess.get_inputs()[0].name: x}
        sess.run(None, feed)
        times = []
        for _ in range(a.runs):
            s = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - s) * 1e3)
        out.append({"model": name, "shape": list(shape), "ms": stats(times)})
    print(json.dumps({"onnxruntime": ort.__version__, "models": out}, indent=1))


def cmd_stages(a):
    m = Models(a.models)
    db = os.path.join(a.scratch, "peer-stages.sqlite3")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    peer = Peer(m, a.data, db)
    frames = read_frames(a.frames)
    times, outcomes = {}, {}
    for p in range(a.passes + 1):
        for f in frames:
            t = {}
            s = time.perf_counter()
            outcome, _, _ = peer.check_in(f, t)
            t["total"] = (time.perf_counter() - s) * 1e3
            if p == 0:
                continue
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            for k, v in t.items():
                times.setdefault(k, []).append(v)
    print(json.dumps({"enrolled": len(peer.guests), "outcomes": outcomes,
                      "stages": {k: stats(v) for k, v in times.items()}}, indent=1))


def cmd_serve(a):
    sys.path.insert(0, a.gen)
    import grpc
    from lobby.v1 import lobby_pb2 as pb, lobby_pb2_grpc as pbg

    m = Models(a.models)
    db = os.path.join(a.scratch, f"peer-serve-{os.getpid()}.sqlite3")
    peer = Peer(m, a.data, db)
    names = {"APPROVED": pb.OUTCOME_APPROVED, "REVIEW": pb.OUTCOME_REVIEW, "DENIED": pb.OUTCOME_DENIED,
             "RETRY": pb.OUTCOME_RETRY}

    class Kiosk(pbg.KioskServiceServicer):
        def CheckIn(self, request, context):
            if not request.photo:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "photo is required")
            try:
                outcome, score, masked = peer.check_in(request.photo, {})
            except ValueError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return pb.CheckInResponse(outcome=names[outcome], masked=masked)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=a.workers),
                         options=[("grpc.max_receive_message_length", 12 * 1024 * 1024)])
    pbg.add_KioskServiceServicer_to_server(Kiosk(), server)
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    server.start()
    print(f"peer serving on 127.0.0.1:{a.port} ({len(peer.guests)} guests, {a.workers} workers)", flush=True)
    server.wait_for_termination()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("models", "stages", "serve"):
        s = sub.add_parser(name)
        s.add_argument("--models", required=True)
        s.add_argument("--data", default="../shared/data")
        s.add_argument("--frames", default="bench/out/frames")
        s.add_argument("--scratch", default="bench/out")
        s.add_argument("--runs", type=int, default=50)
        s.add_argument("--passes", type=int, default=5)
        s.add_argument("--port", type=int, default=50071)
        s.add_argument("--workers", type=int, default=2)
        s.add_argument("--gen", default="bench/out/peer-gen")
    a = ap.parse_args()
    {"models": cmd_models, "stages": cmd_stages, "serve": cmd_serve}[a.cmd](a)


if __name__ == "__main__":
    main()
