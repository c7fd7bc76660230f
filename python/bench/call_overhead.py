#!/usr/bin/env python3
"""Host overhead of the Python call over the C call, on the CPU.

The same small MXFP8 layer is run by:
  - C, in this process: co_time_forward() of call_overhead.c (built as a shared library against the
    installed package's libmxmoe.so), mxm_moe_forward back to back on the plan, weights, structs and
    workspace that the Python calls use: the baseline;
  - C, in a process of its own: call_overhead.c as a program with its own copy of the layer (run
    before and after; a second reference);
  - Python: a bare ctypes call of mxm_moe_forward with prebuilt structs (with the binding's argtypes,
    and without argtypes on prebuilt ctypes arguments); mxmoe.trtllm_fp8_block_scale_moe
    and mxmoe.Fp8BlockScaleMoE (weights bound once) on numpy arrays and, when torch is importable,
    on torch CPU tensors, and torch.ops.mxmoe (the torch.library op);
  - the Python side alone: those calls with the library's forward replaced by a no-op.
The short path runs in the extension module mxmoe._fastcall where it is built, else through ctypes
(MXMOE_FASTCALL=0 forces the latter); the first line of the output says which.
Method: --rounds rounds; in each, every caller (in an order rotated from round to round) makes
--iters/--rounds calls, each timed alone (perf_counter_ns around the call; clock_gettime in C), so
that the machine's load falls on all callers alike. Per caller: the minimum and the median of all
its calls; "over C": the minimum minus C's minimum, and the median over rounds of (the caller's
median in the round minus C's median in the same round). One library thread (--threads; also
OMP_NUM_THREADS, for the op); --cpu N pins the process to one core.

    python python/bench/call_overhead.py [--tokens 1] [--iters 40000] [--rounds 40] [--cpu -1]"""
import argparse
import ctypes
import os
import platform
import subprocess
import tempfile
import time

import numpy as np

# The torch.library op has no num_threads argument: the library then runs its default, all OpenMP
# threads. OMP_NUM_THREADS = --threads (set before the library or torch starts OpenMP) makes it the
# same forward as the other callers'.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=1)
os.environ.setdefault("OMP_NUM_THREADS", str(_pre.parse_known_args()[0].threads))

try:  # before mxmoe: a libmxmoe built with NCCL, loaded first, can keep torch's own NCCL from loading
    import torch
except ImportError:
    torch = None
import mxmoe  # noqa: E402
from mxmoe import _capi, _flashinfer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def timed(fn, a, k, n):
    """n calls of fn(*a, **k), each timed alone: ns, float64 [n]."""
    t = np.empty(n)
    pc = time.perf_counter_ns
    for i in range(n):
        t0 = pc()
        fn(*a, **k)
        t[i] = pc() - t0
    return t


def interleaved(callers, rounds, per_round, warm=200):
    """callers: {name: (fn, args, kwargs) or a function n -> float64 [n] of ns}; returns {name:
    [per-round sample arrays]}."""
    run = {name: (c if callable(c) else (lambda n, c=c: timed(c[0], c[1], c[2], n))) for name, c in callers.items()}
    for f in run.values():
        f(warm)
    names = list(run)
    got = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            got[name].append(run[name](per_round))
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--inter", type=int, default=128)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--iters", type=int, default=40000, help="timed calls per caller, over all rounds")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", type=int, default=-1, help="pin the process to this core (-1: no pinning)")
    a = ap.parse_args()
    if a.cpu >= 0:
        os.sched_setaffinity(0, {a.cpu})
    H, I, E, K, T = a.hidden, a.inter, a.experts, a.topk, a.tokens
    per_round = max(1, a.iters // a.rounds)
    d = tempfile.mkdtemp()
    exe, so = os.path.join(d, "call_overhead"), os.path.join(d, "call_overhead.so")
    libdir = os.path.dirname(mxmoe.LIBRARY_PATH)
    cc = [os.environ.get("CC", "cc"), "-O2", "-std=c11", "-I", os.path.dirname(mxmoe.HEADER_PATH)]
    src = os.path.join(HERE, "call_overhead.c")
    subprocess.run(cc + [src, "-o", exe, mxmoe.LIBRARY_PATH, f"-Wl,-rpath,{libdir}"], check=True)
    subprocess.run(cc + ["-DCO_LIB", "-shared", "-fPIC", src, "-o", so, mxmoe.LIBRARY_PATH, f"-Wl,-rpath,{libdir}"],
                   check=True)

    def c_process():
        out = subprocess.run([exe, str(H), str(I), str(E), str(K), str(T), str(a.iters), str(a.threads), "1"],
                             capture_output=True, text=True, check=True).stdout.split()
        return float(out[0]), float(out[1])

    c1 = c_process()
    rng = np.random.default_rng(1)
    q1, s1 = mxmoe.quantize_mxfp8(rng.uniform(-0.1, 0.1, (E, 2 * I, H)).astype(np.float32))
    q2, s2 = mxmoe.quantize_mxfp8(rng.uniform(-0.1, 0.1, (E, H, I)).astype(np.float32))
    x = rng.uniform(-1, 1, (T, H)).astype(np.float32)
    lg = rng.uniform(-2, 2, (T, E)).astype(np.float32)
    args = (lg, None, x, None, q1, s1, q2, s2, E, K, None, None, I, 0, E, None, 1)
    kw = dict(fp8_quantization_type=2, activation_type=3, num_threads=a.threads)
    fi = mxmoe.trtllm_fp8_block_scale_moe
    ref = fi(*args, **kw)
    # the plan and expert table the call above made, reused by the bare ctypes call and by C
    plan = next(iter(_capi.thread_state()["plans"].values()))
    mw = next(iter(_flashinfer._prep_cache.values())).mw
    inp = _capi.Inputs()
    inp.num_tokens, inp.x, inp.x_dtype, inp.router_logits, inp.logits_dtype = T, x.ctypes.data, 0, lg.ctypes.data, 0
    out = np.empty((T, H), np.uint16)
    outs = _capi.Outputs()
    outs.out, outs.out_dtype = out.ctypes.data, 1
    fwd = _capi.lib.mxm_moe_forward
    bare = (plan.ptr, ctypes.byref(mw), ctypes.byref(inp), ctypes.byref(outs), plan.ws_ptr, plan.ws_bytes, None)
    co = ctypes.CDLL(so).co_time_forward
    co.restype = ctypes.c_int
    co.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]

    def c_inproc(n):
        t = np.empty(n)
        st = co(*bare[:6], n, t.ctypes.data)
        if st:
            raise _capi.MxmError(st, "co_time_forward")
        return t

    c_inproc(1)
    assert np.array_equal(out, ref.view(np.uint16)), "the C baseline computes something else than the Python call"
    bound = mxmoe.Fp8BlockScaleMoE(*args[4:], **kw)
    # the same call through a function object without argtypes, its arguments prebuilt ctypes objects
    # (what the binding's short path does)
    raw = _capi.lib["mxm_moe_forward"]
    raw.restype = ctypes.c_int32
    raw_args = (ctypes.c_void_p(plan.ptr),) + bare[1:4] + (ctypes.c_void_p(plan.ws_ptr), ctypes.c_int64(plan.ws_bytes),
                                                             None)
    callers = {"C mxm_moe_forward (in process)": c_inproc,
               "ctypes mxm_moe_forward (prebuilt structs)": (fwd, bare, {}),
               "ctypes, no argtypes, prebuilt ctypes arguments": (raw, raw_args, {}),
               "mxmoe.trtllm_fp8_block_scale_moe (numpy)": (fi, args, kw),
               "mxmoe.Fp8BlockScaleMoE bound call (numpy)": (bound, (lg, x), {})}
    stubbed = {"function, numpy": (fi, args, kw), "bound, numpy": (bound, (lg, x), {})}
    if torch is not None:
        import mxmoe.ops as _ops  # noqa: F401  (registers torch.ops.mxmoe)

        def tt(v):
            if not isinstance(v, np.ndarray):
                return v
            if v.dtype == q1.dtype:
                return torch.from_numpy(v.view(np.uint8)).view(torch.float8_e4m3fn)
            return torch.from_numpy(v)
        ta = tuple(tt(v) for v in args)
        tbound = mxmoe.Fp8BlockScaleMoE(*ta[4:], **kw)
        op = torch.ops.mxmoe.trtllm_fp8_block_scale_moe
        callers.update({"mxmoe.trtllm_fp8_block_scale_moe (torch CPU)": (fi, ta, kw),
                        "mxmoe.Fp8BlockScaleMoE bound call (torch CPU)": (tbound, (ta[0], ta[2]), {}),
                        "torch.ops.mxmoe.trtllm_fp8_block_scale_moe": (op, ta + (2, 3), {})})
        stubbed.update({"function, torch CPU": (fi, ta, kw), "bound, torch CPU": (tbound, (ta[0], ta[2]), {})})
    callers["(timer and an empty Python call)"] = (lambda: None, (), {})
    got = interleaved(callers, a.rounds, per_round)
    # the Python side alone: the library's forward replaced by a no-op (both function objects, and
    # the extension's, by co_noop_forward of call_overhead.c)
    real = {n: getattr(_flashinfer, n) for n in ("_forward", "_fwd_fast") if hasattr(_flashinfer, n)}
    for n in real:
        setattr(_flashinfer, n, lambda *args: 0)
    ext = getattr(_flashinfer, "_ext", None)  # None: the ctypes short path (or a package before it)
    if ext is not None:
        _flashinfer._ext_setup(ctypes.cast(ctypes.CDLL(so).co_noop_forward, ctypes.c_void_p).value)
    try:
        got_stub = interleaved(stubbed, a.rounds, per_round)
    finally:
        for n, f in real.items():
            setattr(_flashinfer, n, f)
        if ext is not None:
            _flashinfer._ext_setup()
    c2 = c_process()
    cname = "C mxm_moe_forward (in process)"
    c_all = np.concatenate(got[cname])
    c_rmed = np.array([np.median(t) for t in got[cname]])
    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores, pinned to {a.cpu if a.cpu >= 0 else 'none'}; layer H={H} "
          f"I={I} E={E} K={K} MXFP8 W8A8, T={T}, {a.threads} library thread(s); {a.rounds} interleaved rounds of "
          f"{per_round} calls per caller; load average {os.getloadavg()[0]:.1f}; short path: "
          f"{'ctypes (_fast)' if ext is None else 'C extension (mxmoe._fastcall)'}")
    print(f"{'caller':50} {'median us':>9} {'min us':>7} {'median over C':>13} {'min over C':>10}")
    for name, rs in got.items():
        t = np.concatenate(rs)
        over_med = np.median([np.median(r) - c for r, c in zip(rs, c_rmed)])
        print(f"{name:50} {np.median(t) / 1e3:9.2f} {t.min() / 1e3:7.2f} {over_med / 1e3:13.2f} "
              f"{(t.min() - c_all.min()) / 1e3:10.2f}")
    print(f"{'C program, own process (before / after)':50} {c1[0] / 1e3:4.2f}/{c2[0] / 1e3:4.2f} "
          f"{min(c1[1], c2[1]) / 1e3:7.2f}")
    print("the Python side alone (forward stubbed):")
    for name, rs in got_stub.items():
        t = np.concatenate(rs)
        print(f"  {name:48} {np.median(t) / 1e3:9.2f} {t.min() / 1e3:7.2f}")


if __name__ == "__main__":
    main()
