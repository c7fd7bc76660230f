#!/usr/bin/env python3
"""Oracle test of mxm_route (SPEC section 3) against a vectorized numpy routing written the way the
model code reads (vLLM/HF style: sigmoid/softmax over the row, stable argsort of the negated key,
DeepSeek-V3 group scores = sum of the top-2 per group, masked groups, renormalize, scale).

Keys are float32 with C's expf (as the spec defines them); ids must match exactly, weights (float64
from the fp32 keys) within 1 fp32 ulp, or 1 bf16 ulp in the trtllm profile.
The mxm_moe_config layout is read from include/mxmoe.h so that this file follows the header.
Exit status: 0 pass, 1 failure, 77 skipped (numpy/ml_dtypes or MXM_LIB missing).
"""
import ctypes
import ctypes.util
import os
import sys
import time

import ml_dtypes
import numpy as np

from oracle_common import Checks, Config, lib

lib.mxm_route.restype = ctypes.c_int32
lib.mxm_route.argtypes = [ctypes.POINTER(Config), ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32,
                          ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p]
lib.mxm_routing_method_name.restype = ctypes.c_char_p
lib.mxm_routing_method_name.argtypes = [ctypes.c_int32]

DT_F32, DT_BF16 = 0, 1
TRTLLM, EXACT = 0, 1
BF16 = ml_dtypes.bfloat16
f32 = np.float32

check = Checks("test_route_oracle")


# The spec defines softmax/sigmoid with C's expf; numpy's float32 exp differs from glibc's by up to
# 2 ulps in ~40% of inputs, enough to flip near-ties of the keys. Use the C library's expf.
_libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
_libm.expf.restype = ctypes.c_float
_libm.expf.argtypes = [ctypes.c_float]
_expf_u = np.frompyfunc(_libm.expf, 1, 1)


def expf(x):
    x = np.asarray(x, f32)
    return np.asarray(_expf_u(x), dtype=f32).reshape(x.shape)


def sigmoid32(z):
    z = z.astype(f32)
    return (f32(1) / (f32(1) + expf(-z))).astype(f32)


def oracle(method, z, bias, K, n_group, topk_group, S, norm, profile):
    """z [T, E] float32 (decoded logits), bias [E] float32 or None -> ids [T, K], weights [T, K]."""
    T, E = z.shape
    grouped = method == 2 and n_group > 1
    with np.errstate(over="ignore", invalid="ignore"):
        if method in (0, 4):
            m = z.max(axis=1, keepdims=True)
            e = expf((z - m).astype(f32))
            key = (e.astype(np.float64) / e.astype(np.float64).sum(axis=1, keepdims=True)).astype(f32)
        elif method in (6, 8):
            key = sigmoid32(z)
        elif method in (2, 7):
            s = sigmoid32(z)
            b = np.zeros(E, f32) if bias is None else bias
            if grouped and profile == TRTLLM:
                b = b.astype(BF16).astype(f32)
            key = (s + b).astype(f32)
        else:
            key = z.copy()
    sel_key = key.copy()
    if grouped:
        g = key.reshape(T, n_group, E // n_group)
        top2 = -np.sort(-g, axis=2)[:, :, :2]
        gscore = top2.sum(axis=2, dtype=f32) if E // n_group > 1 else top2[:, :, 0]
        gorder = np.argsort(-gscore, axis=1, kind="stable")[:, :topk_group]
        gmask = np.zeros((T, n_group), bool)
        np.put_along_axis(gmask, gorder, True, axis=1)
        sel_key = np.where(np.repeat(gmask, E // n_group, axis=1), key, -np.inf).astype(f32)
    ids = np.argsort(-sel_key, axis=1, kind="stable")[:, :K].astype(np.int32)
    kz = np.take_along_axis(z, ids, axis=1).astype(np.float64)
    kk = np.take_along_axis(key, ids, axis=1).astype(np.float64)
    if method in (0, 5, 8):
        w = kk
    elif method == 1:
        e = expf((kz - kz[:, :1]).astype(f32)).astype(np.float64)
        w = e / e.sum(axis=1, keepdims=True)
    elif method == 4:
        w = kk / kk.sum(axis=1, keepdims=True)
    elif method == 6:
        w = kk / np.maximum(kk.sum(axis=1, keepdims=True), 1e-20) if norm else kk
    elif method in (2, 7):
        s = np.take_along_axis(sigmoid32(z), ids, axis=1).astype(np.float64)
        w = float(S) * s / (s.sum(axis=1, keepdims=True) + 1e-20)
    else:  # 3, 9
        w = sigmoid32(kz.astype(f32)).astype(np.float64)
    w = w.astype(f32)
    if profile == TRTLLM:
        w = w.astype(BF16).astype(f32)
    return ids, w


def run(method, E, K, T, ldt, bias_mode, profile, n_group=0, topk_group=0, S=1.0, norm=1, rng=None):
    z = (rng.standard_normal((T, E)) * rng.choice([0.5, 2.0, 6.0])).astype(f32)
    z[:, 1::5] = z[:, 0:1]  # exact ties inside every row
    if ldt == DT_BF16:
        zraw = z.astype(BF16)
        z = zraw.astype(f32)
    else:
        zraw = z
    bias = braw = None
    bdt = 0
    if bias_mode:
        bias = (rng.standard_normal(E) * 0.3).astype(f32)
        if bias_mode == 2:
            braw = bias.astype(BF16)
            bias = braw.astype(f32)
            bdt = DT_BF16
        else:
            braw = bias
            bdt = DT_F32
    cfg = Config()
    for name, _ in Config._fields_:
        setattr(cfg, name, 0)
    cfg.num_experts, cfg.top_k, cfg.routing_method = E, K, method
    cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor = n_group, topk_group, S
    cfg.norm_topk_prob, cfg.profile, cfg.shared_activation = norm, profile, -1
    ids = np.full((T, K), -7, np.int32)
    w = np.full((T, K), np.nan, f32)
    zraw = np.ascontiguousarray(zraw)
    st = lib.mxm_route(ctypes.byref(cfg), T, zraw.ctypes.data, ldt,
                       None if braw is None else braw.ctypes.data, bdt, ids.ctypes.data, w.ctypes.data)
    name = lib.mxm_routing_method_name(method).decode()
    what = f"{name} E={E} K={K} T={T} ldt={ldt} bias={bias_mode} prof={profile} G={n_group}/{topk_group}"
    if st != 0:
        check(False, f"{what}: status {st} {lib.mxm_last_error().decode()}")
        return
    rids, rw = oracle(method, z, bias if method in (2, 7) else None, K, n_group, topk_group, S, norm,
                      profile)
    bad = np.nonzero((ids != rids).any(axis=1))[0]
    check(bad.size == 0, f"{what}: ids differ in rows {bad[:5]} got {ids[bad[:1]]} want {rids[bad[:1]]}")
    if bad.size:
        return
    if profile == TRTLLM:
        ulp = np.abs(w.view(np.int32).astype(np.int64) - rw.view(np.int32).astype(np.int64)) >> 16
        check(ulp.max() <= 1, f"{what}: weights differ by {ulp.max()} bf16 ulps")
    else:
        ok = np.abs(w.astype(np.float64) - rw) <= np.spacing(np.abs(rw)) + 1e-45
        check(ok.all(), f"{what}: weights differ, max rel {np.max(np.abs(w / rw - 1))}")


def main():
    t0 = time.time()
    seed = int(os.environ.get("MXM_TEST_SEED", time.time_ns() % (1 << 32)))
    print(f"[seed] MXM_TEST_SEED={seed}")
    rng = np.random.default_rng(seed)
    n = 0
    for method in range(10):
        for E in (8, 64, 256):
            for K in (1, 2, 8, E):
                if K > E or (method == 3 and K != 1) or (K == E and E == 8 and K != 8):
                    continue
                for profile in (TRTLLM, EXACT):
                    n += 1
                    run(method, E, K, [1, 7, 100][n % 3], n % 2, (n // 2) % 3, profile,
                        S=2.5 if n % 4 == 0 else 1.0, norm=(n // 3) % 2, rng=rng)
    for profile in (TRTLLM, EXACT):
        for bias_mode in (0, 1, 2):
            run(2, 256, 8, 200, DT_F32, bias_mode, profile, n_group=8, topk_group=4, S=2.5, rng=rng)
            run(2, 64, 8, 50, DT_BF16, bias_mode, profile, n_group=4, topk_group=2, rng=rng)
            run(2, 8, 3, 50, DT_F32, bias_mode, profile, n_group=8, topk_group=3, rng=rng)
    check.finish(time.time() - t0)


if __name__ == "__main__":
    sys.exit(main())
