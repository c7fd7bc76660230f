#!/usr/bin/env python3
"""Host overhead of the Python call over the C call, on the CPU: the same small MXFP8 layer run by
call_overhead.c (mxm_moe_forward back to back) and from Python by (a) a bare ctypes call of
mxm_moe_forward with prebuilt structs, (b) mxmoe.trtllm_fp8_block_scale_moe on numpy arrays,
(c) the same on torch CPU tensors (when torch is importable), (d) torch.ops.mxmoe (the
torch.library op), (e) mxmoe.Fp8BlockScaleMoE (weights bound once) on numpy and torch, and (f) the Python side alone: (b) and (c) with the library's forward
and (e) with the library's forward replaced by a no-op. Median per-call wall time of each, single-threaded, T tokens; the C run goes
first and last, and its faster median is used.

    python python/bench/call_overhead.py [--tokens 1] [--iters 20000] [--threads 1]"""
import argparse
import ctypes
import os
import platform
import subprocess
import tempfile
import time

import numpy as np

import mxmoe
from mxmoe import _capi

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def per_call(fn, iters):
    for _ in range(200):
        fn()
    t = np.empty(iters)
    pc = time.perf_counter_ns
    for i in range(iters):
        t0 = pc()
        fn()
        t[i] = pc() - t0
    return float(np.median(t)), float(t.min())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--inter", type=int, default=128)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    H, I, E, K, T = a.hidden, a.inter, a.experts, a.topk, a.tokens
    d = tempfile.mkdtemp()
    exe = os.path.join(d, "call_overhead")
    libdir = os.path.dirname(mxmoe.LIBRARY_PATH)
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-std=c11", "-I", os.path.dirname(mxmoe.HEADER_PATH),
                    os.path.join(HERE, "call_overhead.c"), "-o", exe, mxmoe.LIBRARY_PATH, f"-Wl,-rpath,{libdir}"],
                   check=True)

    def c_run():
        out = subprocess.run([exe, str(H), str(I), str(E), str(K), str(T), str(a.iters), str(a.threads), "1"],
                             capture_output=True, text=True, check=True).stdout.split()
        return float(out[0]), float(out[1])

    c1 = c_run()
    rng = np.random.default_rng(1)
    q1, s1 = mxmoe.quantize_mxfp8(rng.uniform(-0.1, 0.1, (E, 2 * I, H)).astype(np.float32))
    q2, s2 = mxmoe.quantize_mxfp8(rng.uniform(-0.1, 0.1, (E, H, I)).astype(np.float32))
    x = rng.uniform(-1, 1, (T, H)).astype(np.float32)
    lg = rng.uniform(-2, 2, (T, E)).astype(np.float32)
    args = (lg, None, x, None, q1, s1, q2, s2, E, K, None, None, I, 0, E, None, 1)
    kw = dict(fp8_quantization_type=2, activation_type=3, num_threads=a.threads)
    fi = lambda: mxmoe.trtllm_fp8_block_scale_moe(*args, **kw)  # noqa: E731
    fi()
    # bare ctypes: the plan and structs the call above made, reused
    plan = next(iter(_capi.thread_state()["plans"].values()))
    mw = next(iter(mxmoe._flashinfer._prep_cache.values())).mw
    inp = _capi.Inputs()
    inp.num_tokens, inp.x, inp.x_dtype, inp.router_logits, inp.logits_dtype = T, x.ctypes.data, 0, lg.ctypes.data, 0
    out = np.empty((T, H), np.uint16)
    outs = _capi.Outputs()
    outs.out, outs.out_dtype = out.ctypes.data, 1
    fwd, pp, bw, bi, bo, wsp, wsb = (_capi.lib.mxm_moe_forward, plan.ptr, ctypes.byref(mw), ctypes.byref(inp),
                                     ctypes.byref(outs), plan.ws_ptr, plan.ws_bytes)
    rows = [("ctypes mxm_moe_forward (prebuilt structs)", per_call(lambda: fwd(pp, bw, bi, bo, wsp, wsb, None), a.iters)),
            ("mxmoe.trtllm_fp8_block_scale_moe (numpy)", per_call(fi, a.iters))]
    bound = mxmoe.Fp8BlockScaleMoE(*args[4:], **kw)
    bd = lambda: bound(lg, x)  # noqa: E731
    rows.append(("mxmoe.Fp8BlockScaleMoE bound call (numpy)", per_call(bd, a.iters)))
    try:
        import torch
        import mxmoe.ops as _ops  # noqa: F401  (registers torch.ops.mxmoe)
        def tt(v):
            if not isinstance(v, np.ndarray):
                return v
            if v.dtype == q1.dtype:
                return torch.from_numpy(v.view(np.uint8)).view(torch.float8_e4m3fn)
            return torch.from_numpy(v)
        ta = tuple(tt(v) for v in args)
        rows.append(("mxmoe.trtllm_fp8_block_scale_moe (torch CPU)",
                     per_call(lambda: mxmoe.trtllm_fp8_block_scale_moe(*ta, **kw), a.iters)))
        tbound = mxmoe.Fp8BlockScaleMoE(*ta[4:], **kw)
        tb = lambda: tbound(ta[0], ta[2])  # noqa: E731
        rows.append(("mxmoe.Fp8BlockScaleMoE bound call (torch CPU)", per_call(tb, a.iters)))
        op = torch.ops.mxmoe.trtllm_fp8_block_scale_moe
        rows.append(("torch.ops.mxmoe.trtllm_fp8_block_scale_moe", per_call(lambda: op(*ta, 2, 3), a.iters)))
    except ImportError:
        pass
    # the Python side alone: the same calls with the library's forward replaced by a no-op
    real = mxmoe._flashinfer._forward
    mxmoe._flashinfer._forward = lambda *args: 0
    try:
        rows.append(("  Python side only, numpy (forward stubbed)", per_call(fi, a.iters)))
        rows.append(("  Python side only, bound, numpy (stubbed)", per_call(bd, a.iters)))
        if len(rows) > 4:
            rows.append(("  Python side only, torch CPU (forward stubbed)",
                         per_call(lambda: mxmoe.trtllm_fp8_block_scale_moe(*ta, **kw), a.iters)))
            rows.append(("  Python side only, bound, torch CPU (stubbed)", per_call(tb, a.iters)))
    finally:
        mxmoe._flashinfer._forward = real
    c2 = c_run()
    c = min(c1[0], c2[0])
    print(f"CPU: {cpu_name()}; layer H={H} I={I} E={E} K={K} MXFP8 W8A8, T={T}, {a.threads} thread(s), "
          f"{a.iters} calls each, median per call")
    print(f"{'caller':48} {'median us':>10} {'min us':>8} {'over C us':>10}  (stubbed rows: the Python work alone)")
    print(f"{'C mxm_moe_forward (call_overhead.c)':48} {c / 1e3:10.2f} {min(c1[1], c2[1]) / 1e3:8.2f} {0:10.2f}")
    for name, (med, mn) in rows:
        over = f"{(med - c) / 1e3:10.2f}" if "stubbed" not in name else f"{'':10}"
        print(f"{name:48} {med / 1e3:10.2f} {mn / 1e3:8.2f} {over}")


if __name__ == "__main__":
    main()
