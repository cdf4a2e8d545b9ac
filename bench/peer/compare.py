"""Ratios of Lobby to the Python peer from one compare.sh run; the latency-vs-concurrency plot.

  compare.py OUT_DIR PNG RESULTS_LOG_MD   (compare.sh passes bench/RESULTS-log.md; the figures are appended)
"""
import json
import os
import platform
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(p):
    with open(p) as f:
        return json.load(f)


def main():
    out, png, results = sys.argv[1:4]
    sl, sp = load(f"{out}/stages-lobby.json"), load(f"{out}/stages-peer.json")
    mp = load(f"{out}/models-peer.json")
    ll, lp = load(f"{out}/load-lobby.json"), load(f"{out}/load-peer.json")
    lines = ["Lobby (Rust, tract) and the Python peer (onnxruntime " + mp["onnxruntime"] + "), same run, same models and frames.", ""]
    lines += ["| one thread, p50 ms | Lobby | peer | Lobby / peer |", "|---|---|---|---|"]
    names = {"1 decode": "decode", "2 detect": "detect", "3 align": "align", "4 quality": "quality",
             "5 liveness": "liveness", "6 embed+mask": "embed+mask", "7 search": "search", "7b second stage": "second stage", "8 decide": "decide",
             "9 record": "record", "total": "total"}
    for ours, theirs in names.items():
        a, b = sl["stages"][ours]["p50"], sp["stages"][theirs]["p50"]
        lines.append(f"| {theirs} | {a:.2f} | {b:.2f} | {a / b:.2f} |" if b > 0 else f"| {theirs} | {a:.2f} | {b:.2f} | - |")
    a, b = sl["stages"]["total"]["p99"], sp["stages"]["total"]["p99"]
    lines.append(f"| total p99 | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    lines += ["", "| model alone, p50 ms | input | tract | onnxruntime | tract / onnxruntime |", "|---|---|---|---|---|"]
    for m_ours, m_peer in zip(sl["models"], mp["models"]):
        a, b = m_ours["ms"]["p50"], m_peer["ms"]["p50"]
        lines.append(f"| {m_ours['model']} | {m_ours['shape']} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    lines += ["", "| kiosks | Lobby check-ins/s | Lobby p99 ms | peer check-ins/s | peer p99 ms |", "|---|---|---|---|---|"]
    for x, y in zip(ll["levels"], lp["levels"]):
        lines.append(f"| {x['concurrency']} | {x['throughput']:.1f} | {x['p99_ms']:.0f} | {y['throughput']:.1f} | {y['p99_ms']:.0f} |")
    bl, bp = ll.get("best"), lp.get("best")
    if not (bl and bp):
        top = lambda d: max(d["levels"], key=lambda x: x["throughput"])
        tl, tp = top(ll), top(lp)
        lines += ["", f"Highest throughput at p99 <= {ll['p99_limit_ms']:.0f} ms: Lobby "
                  + (f"{bl['throughput']:.1f}/s" if bl else "none (no level kept p99 under the limit)") + ", peer "
                  + (f"{bp['throughput']:.1f}/s" if bp else "none") + f". Highest at any latency: Lobby {tl['throughput']:.1f}/s, "
                  f"peer {tp['throughput']:.1f}/s: ratio {tl['throughput'] / tp['throughput']:.2f}x."]
    else:
        lines += ["", f"Highest throughput at p99 <= {ll['p99_limit_ms']:.0f} ms: Lobby **{bl['throughput']:.1f}/s** ({bl['concurrency']} kiosks), "
                  f"peer **{bp['throughput']:.1f}/s** ({bp['concurrency']} kiosks): ratio **{bl['throughput'] / bp['throughput']:.2f}x**."]
    text = "\n".join(lines)
    print(text)

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for d, style, name in ((ll, "o-", "Lobby (Rust, tract)"), (lp, "s--", "Python peer (onnxruntime)")):
        c = [x["concurrency"] for x in d["levels"]]
        ax.plot(c, [x["p50_ms"] for x in d["levels"]], style, label=f"{name} p50")
        ax.plot(c, [x["p99_ms"] for x in d["levels"]], style, alpha=0.5, label=f"{name} p99")
    ax.axhline(ll["p99_limit_ms"], color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent kiosks (closed loop)")
    ax.set_ylabel("check-in latency, ms")
    ax.set_title(f"Check-in latency vs concurrency, 640x480 frames, {os.cpu_count()} cores")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    print(f"plot: {png}")
    with open(results, "a") as f:
        f.write(f"\n### bench/peer/compare.sh ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)\n\n{text}\n\nPlot: `{png}`.\n")


if __name__ == "__main__":
    main()
