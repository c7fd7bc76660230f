#!/usr/bin/env python3
"""The GPU layer table of docs/BENCHMARKS.md from one device call's JSON files:
  report.py VLLM_PEER.json MOE_CUDA.json [MOE_CUDA_2.json ...]
VLLM_PEER.json is .peers/vllm_triton/run_peer.py's output (its ceilings and its bf16 / fp8-block
graph times, measured in the same call); each MOE_CUDA.json is `mxmoe bench --json` (the first one
gives the "mxmoe" column, later ones extra columns named by their file). The MXFP8 weight floor is
the peer's (weight bytes of the touched experts over its measured copy bandwidth)."""
import json
import os
import sys

SHAPE_ALIAS = {"dsv3": "dsv3s"}  # mxmoe's DeepSeek-V3 slice is the peer's dsv3s


def load_moe(path):
    d = json.load(open(path))
    return {(SHAPE_ALIAS.get(r["shape"], r["shape"]), r["T"]): r for r in d["results"]}, d


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    peer = json.load(open(sys.argv[1]))
    runs = [load_moe(p) for p in sys.argv[2:]]
    names = ["mxmoe"] + [os.path.splitext(os.path.basename(p))[0] for p in sys.argv[3:]]
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


if __name__ == "__main__":
    main()
