#!/usr/bin/env python3
"""The GPU layer table of docs/BENCHMARKS.md from one device call's JSON files:
  report.py [--plot OUT.png] VLLM_PEER.json MOE_CUDA.json [MOE_CUDA_2.json ...]
VLLM_PEER.json is .peers/vllm_triton/run_peer.py's output (its ceilings and its bf16 / fp8-block
graph times, measured in the same call); each MOE_CUDA.json is `mxmoe bench --json` (the first one
gives the "mxmoe" column, later ones extra columns named by their file). The MXFP8 weight floor is
the peer's (weight bytes of the touched experts over its measured copy bandwidth). --plot draws time
against T per shape (log-log; every column, both peers and the floor) with matplotlib."""
import json
import os
import sys

SHAPE_ALIAS = {"dsv3": "dsv3s"}  # mxmoe's DeepSeek-V3 slice is the peer's dsv3s


def load_moe(path):
    d = json.load(open(path))
    return {(SHAPE_ALIAS.get(r["shape"], r["shape"]), r["T"]): r for r in d["results"]}, d


def plot(path, title, rows, runs, names):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = sorted({k[0] for k in rows if k in runs[0][0]})
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        keys = sorted(k for k in rows if k[0] == shape and k in runs[0][0])
        ts = [k[1] for k in keys]
        for run, name in zip(runs, names):
            ax.plot(ts, [run[0][k]["us"] if k in run[0] else float("nan") for k in keys], "o-", label=name)
        for mode, label in (("bf16", "vLLM bf16"), ("fp8", "vLLM fp8-block")):
            ax.plot(ts, [rows[k].get(mode, {}).get("graph_us", float("nan")) for k in keys], "s--", label=label)
        ax.plot(ts, [(rows[k].get("bf16") or rows[k].get("fp8"))["mxfp8_floor_us"] for k in keys], "k:",
                label="MXFP8 weight floor")
        ax.set_xscale("log", base=2), ax.set_yscale("log")
        ax.set_title(shape), ax.set_xlabel("tokens T"), ax.set_ylabel("us per layer"), ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    args = sys.argv[1:]
    plot_path = None
    if args[:1] == ["--plot"] and len(args) > 1:
        plot_path, args = args[1], args[2:]
    if len(args) < 2:
        sys.exit(__doc__)
    peer = json.load(open(args[0]))
    runs = [load_moe(p) for p in args[1:]]
    names = ["mxmoe"] + [os.path.splitext(os.path.basename(p))[0] for p in args[2:]]
    c = peer["ceilings"]
    print(f"Device: {peer['meta']['device']} ({peer['meta'].get('nvidia_smi', '').strip()}); ceilings in this call: "
          f"copy {c['copy_GBs']:.0f} GB/s (read + written), bf16 matmul {c['bf16_TFs']:.0f} TFLOP/s, fp8 matmul "
          f"{c['fp8_TFs']:.0f} TFLOP/s; vLLM {peer['meta']['vllm_version']} Triton fused MoE.\n")
    rows = {}
    for r in peer["rows"]:
        if r.get("variant", "main") == "main":
            rows.setdefault((r["shape"], r["T"]), {})[r["mode"]] = r
    head = "| shape | T | " + " | ".join(f"{n} us" for n in names)
    head += " | vLLM bf16 us | vLLM fp8-block us | MXFP8 floor us | mxmoe / vLLM bf16 | mxmoe / vLLM fp8 | floor / mxmoe |"
    print(head)
    print("|---|---:|" + "---:|" * (len(names) + 6))
    for key in sorted(rows, key=lambda k: (k[0], k[1])):
        if key not in runs[0][0]:
            continue
        p = rows[key]
        bf, f8 = p.get("bf16", {}).get("graph_us"), p.get("fp8", {}).get("graph_us")
        floor = (p.get("bf16") or p.get("fp8"))["mxfp8_floor_us"]
        us = [run[0][key]["us"] if key in run[0] else None for run in runs]
        cells = [f"{u:.1f}" if u else "-" for u in us]
        m = us[0]
        ratio = lambda ref: f"{m / ref:.2f}" if ref else "-"  # noqa: E731
        print(f"| {key[0]} | {key[1]} | " + " | ".join(cells) +
              f" | {bf:.1f} | {f8:.1f} | {floor:.1f} | {ratio(bf)} | {ratio(f8)} | {floor / m:.0%} |")
    if plot_path:
        plot(plot_path, f"MoE layer, {peer['meta']['device']}: mxmoe (given ids) against vLLM's Triton fused MoE",
             rows, runs, names)


if __name__ == "__main__":
    main()
