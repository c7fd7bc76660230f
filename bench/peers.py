#!/usr/bin/env python3
"""Peers and ceilings for the CUDA MoE benchmark, measured in the same run on the same GPU.

Ceilings: device-to-device copy bandwidth (bytes read + written), bf16 and fp8 8192^3 matmul.
Peers (whole routed-expert layer from precomputed top-k ids and weights, what PEERS.md calls
the layer): PyTorch bf16 grouped GEMMs (torch._grouped_mm) on weights dequantized once (what
vLLM does with MXFP8 on Hopper), and torch._scaled_grouped_mm in FP8 row-wise mode. Each layer
is captured in a CUDA graph; median of replays; 8 routing/input sets rotated.
Writes JSON (argv[1], default bench/results/peers_h200.json) and prints a table; argv[2]: token
counts (comma-separated) or "none" for the ceilings alone.
"""
import json
import sys
import time

import torch

SHAPES = {  # H, I, E_loc, K, gated, E_global
    "nano": (2688, 1856, 128, 6, False, 128),
    "qwen3": (2048, 768, 128, 8, True, 128),
    "dsv3": (7168, 2048, 32, 8, True, 256),
}
TOKENS = [1, 8, 32, 64, 256, 1024, 4096, 16384]


def bench_graph(fn, reps=40):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    times.sort()
    return times[len(times) // 2]


def ceilings():
    # A plain device-to-device cudaMemcpyAsync of 2 GiB (eager: a copy captured in a graph ran as
    # a slower copy kernel, 2.76 TB/s against 4.2 on an H200), bytes read + written, best of 10.
    n = 1 << 31
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    best = float("inf")
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) * 1e3)
    copy = 2 * n / (best * 1e-6) / 1e12
    src = dst = None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    us = bench_graph(lambda: a @ b, 10)
    bf16 = 2 * 8192**3 / (us * 1e-6) / 1e12
    fp8 = None
    try:
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.to(torch.float8_e4m3fn).t().contiguous().t()
        one = torch.tensor(1.0, device="cuda")
        us = bench_graph(lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16), 10)
        fp8 = 2 * 8192**3 / (us * 1e-6) / 1e12
    except Exception as e:  # report, do not fail the run
        print("fp8 matmul ceiling unavailable:", e)
    return {"copy_tbs": copy, "bf16_tflops": bf16, "fp8_tflops": fp8}


def layer_peer(shape, T, mode):
    H, I, E, K, gated, Eg = SHAPES[shape]
    M1 = 2 * I if gated else I
    dev = "cuda"
    w1 = (torch.randn(E, M1, H, device=dev) * 0.02).to(torch.bfloat16)
    w2 = (torch.randn(E, H, I, device=dev) * 0.02).to(torch.bfloat16)
    sets = []
    for _ in range(8):
        x = torch.randn(T, H, device=dev, dtype=torch.bfloat16)
        ids = torch.randint(0, E, (T, K), device=dev)
        w = torch.rand(T, K, device=dev)
        sets.append((x, ids, w))
    if mode == "fp8":
        w1q = w1.to(torch.float8_e4m3fn)
        w2q = w2.to(torch.float8_e4m3fn)
        s1 = torch.ones(E, M1, device=dev)
        s2 = torch.ones(E, H, device=dev)
    state = {"i": 0}

    def run():
        x, ids, w = sets[state["i"] % 8]
        flat = ids.flatten()
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(E, dtype=torch.int64, device=dev).index_add_(0, flat, torch.ones_like(flat))
        offs = torch.cumsum(counts, 0).to(torch.int32)
        xs = x[order // K]
        if mode == "bf16":
            h = torch._grouped_mm(xs, w1.transpose(1, 2), offs=offs)
        else:
            xq = xs.to(torch.float8_e4m3fn)
            sx = torch.ones(xs.shape[0], device=dev)
            h = torch._scaled_grouped_mm(xq, w1q.transpose(1, 2), sx, s1, offs=offs, out_dtype=torch.bfloat16)
        if gated:
            a = torch.nn.functional.silu(h[:, :I]) * h[:, I:]
        else:
            a = torch.relu(h) ** 2
        if mode == "bf16":
            y = torch._grouped_mm(a, w2.transpose(1, 2), offs=offs)
        else:
            aq = a.to(torch.float8_e4m3fn)
            sa = torch.ones(a.shape[0], device=dev)
            y = torch._scaled_grouped_mm(aq, w2q.transpose(1, 2), sa, s2, offs=offs, out_dtype=torch.bfloat16)
        out = torch.zeros(T * K, H, device=dev, dtype=torch.float32)
        out[order] = y.float()
        return (out.view(T, K, H) * w.unsqueeze(-1)).sum(1)

    try:
        return bench_graph(run)
    except Exception as e:
        print(f"peer {mode} {shape} T={T} failed: {e}")
        return None


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/results/peers_h200.json"
    tokens = TOKENS if len(sys.argv) <= 2 else [] if sys.argv[2] == "none" else [int(t) for t in sys.argv[2].split(",")]
    torch.manual_seed(0)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "ceilings": ceilings(), "layers": []}
    c = res["ceilings"]
    print(f"device {res['device']}: copy {c['copy_tbs']:.2f} TB/s, bf16 {c['bf16_tflops']:.0f} TFLOP/s, "
          f"fp8 {c['fp8_tflops'] or 0:.0f} TFLOP/s")
    print(f"{'shape':6} {'T':>6} {'torch bf16 us':>14} {'torch fp8 us':>13}")
    for shape in SHAPES:
        for T in tokens:
            b = layer_peer(shape, T, "bf16")
            f = layer_peer(shape, T, "fp8")
            res["layers"].append({"shape": shape, "T": T, "torch_bf16_us": b, "torch_fp8_rowwise_us": f})
            print(f"{shape:6} {T:6d} {b or float('nan'):14.1f} {f or float('nan'):13.1f}", flush=True)
            torch.cuda.empty_cache()
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
