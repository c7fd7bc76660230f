#!/usr/bin/env python3
"""Tables (markdown) and the time-vs-T plot for docs/BENCHMARKS.md from one GPU run's JSON:
  report.py MOE_CUDA.json PEERS.json PLOT.png
The vLLM columns are PEERS.md's figures (same card model, measured by the CEO on 2026-11-30),
not this run's; everything else comes from the run."""
import json
import sys

VLLM = {  # PEERS.md: vLLM bf16, vLLM fp8-block, MXFP8 weight floor (us)
    ("nano", 1): (47.1, 46.7, 14.5), ("nano", 8): (217.4, 149.2, 99.6), ("nano", 32): (486.7, 291.1, 243.5),
    ("nano", 64): (600.1, 348.8, 296.2), ("nano", 256): (657.6, 458.0, 310.1), ("nano", 1024): (776.6, 580.2, 310.1),
    ("nano", 4096): (1371.4, 1546.6, 310.1), ("nano", 16384): (4769.4, 5292.0, 310.1),
    ("qwen3", 1): (35.6, 35.1, 9.2), ("qwen3", 8): (136.8, 98.9, 59.0), ("qwen3", 32): (272.3, 165.7, 127.3),
    ("qwen3", 64): (305.9, 183.5, 143.7), ("qwen3", 256): (338.7, 230.6, 146.7), ("qwen3", 1024): (404.7, 341.7, 146.7),
    ("qwen3", 4096): (808.9, 985.8, 146.7), ("qwen3", 16384): (2825.4, 3383.8, 146.7),
    ("dsv3", 1): (194.2, 102.2, 77.5), ("dsv3", 8): (580.8, 322.1, 294.1), ("dsv3", 32): (663.7, 374.7, 342.2),
    ("dsv3", 64): (677.1, 400.7, 342.2), ("dsv3", 256): (845.8, 545.1, 342.2), ("dsv3", 1024): (1680.2, 1491.0, 342.2),
    ("dsv3", 4096): (6170.9, 5535.5, 342.2), ("dsv3", 16384): (22953.1, 21929.9, 342.2),
}


def main():
    moe = json.load(open(sys.argv[1]))
    peers = json.load(open(sys.argv[2]))
    c = peers["ceilings"]
    pk = {(r["shape"], r["T"]): r for r in peers["layers"]}
    print(f"Ceilings in this run: copy {c['copy_tbs']:.2f} TB/s (read + write), bf16 matmul {c['bf16_tflops']:.0f} TFLOP/s,"
          f" fp8 matmul {c['fp8_tflops']:.0f} TFLOP/s.\n")
    print("| shape | T | mxmoe us | weight GB/s (% copy) | TFLOP/s (% bf16) | torch bf16 us | torch fp8 rw us "
          "| mxmoe / torch bf16 | vLLM bf16 us* | vLLM fp8-block us* |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for r in moe["results"]:
        key = (r["shape"], r["T"])
        p = pk.get(key, {})
        tb, tf = p.get("torch_bf16_us"), p.get("torch_fp8_rowwise_us")
        v = VLLM.get(key, (None, None, None))
        gbs, tfl = r["gbs"], r["gflops"] / 1e3
        ratio = f"{r['us'] / tb:.2f}" if tb else "-"
        print(f"| {r['shape']} | {r['T']} | {r['us']:.1f} | {gbs:.0f} ({100 * gbs / (c['copy_tbs'] * 1e3):.0f}%) "
              f"| {tfl:.1f} ({100 * tfl / c['bf16_tflops']:.0f}%) | {tb or float('nan'):.1f} | {tf or float('nan'):.1f} "
              f"| {ratio} | {v[0] or float('nan')} | {v[1] or float('nan')} |")
        rows.append((r["shape"], r["T"], r["us"], tb, tf, v[0]))
    if len(sys.argv) > 3:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, shape in zip(axes, ["nano", "qwen3", "dsv3"]):
            pts = sorted([x for x in rows if x[0] == shape], key=lambda x: x[1])
            Ts = [x[1] for x in pts]
            for idx, label, style in [(2, "mxmoe MXFP8 W8A8 (CUDA)", "o-"), (3, "torch bf16 grouped_mm", "s--"),
                                      (4, "torch fp8 row-wise", "^--"), (5, "vLLM bf16 (PEERS.md)", "x:")]:
                ys = [x[idx] for x in pts]
                if any(y is not None for y in ys):
                    ax.plot(Ts, [y if y is not None else float("nan") for y in ys], style, label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{shape}: MoE layer time on H200")
            ax.set_xlabel("tokens T")
            ax.set_ylabel("us")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(sys.argv[3], dpi=110)


if __name__ == "__main__":
    main()
