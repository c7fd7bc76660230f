#!/usr/bin/env python3
"""Oracle test of the MoE forward (SPEC section 5) against a numpy float64 implementation that
shares nothing with the library: its own MXFP8 quantizer (the integer scale rule of SPEC 2.2 on
the fp32 bits, E4M3 rounding by ml_dtypes after clipping to +-448), its own activations and
combine. Random layers (gated and non-gated, odd sizes, shared expert), random routing given as
top-k ids, both activation modes, exact profile.

Like tests/moe_ref.c (whose header explains the rules) the reference carries, per value, the
interval of every result an fp32 implementation may produce: fp32 dot products in any order,
fp32 activations, and both codes where a value straddles an E4M3 rounding boundary (both scales
where a block amax straddles a scale boundary). Every library output element must lie inside its
interval; the intervals must stay narrow enough that the output scaled by 1 + 2^-6 falls outside
for at least 90% of the elements over the run. Weight-only cases (exact profile: no rounding point
can flip) also keep SPEC 7's relative L2 bound of 1e-5.
Exit status: 0 pass, 1 failure, 77 skipped."""
import ctypes
import sys
import time

import ml_dtypes
import numpy as np

from oracle_common import Checks, Config, lib

vp, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64


class Expert(ctypes.Structure):
    _fields_ = [("w13", vp), ("w13_scale", vp), ("w2", vp), ("w2_scale", vp)]


class Weights(ctypes.Structure):
    _fields_ = [("experts", vp), ("shared", vp), ("gemm1_alpha", vp), ("gemm1_beta", vp), ("gemm1_clamp_limit", vp)]


class Inputs(ctypes.Structure):
    _fields_ = [("num_tokens", i64), ("x", vp), ("x_dtype", i32), ("x_scale", vp), ("x_scale_transposed", i32),
                ("router_logits", vp), ("logits_dtype", i32), ("routing_bias", vp), ("bias_dtype", i32),
                ("topk_ids", vp), ("topk_weights", vp)]


class Outputs(ctypes.Structure):
    _fields_ = [("out", vp), ("out_dtype", i32), ("out_routed", vp), ("topk_ids", vp), ("topk_weights", vp)]


lib.mxm_moe_plan_create.argtypes = [ctypes.POINTER(Config), i64, ctypes.POINTER(vp)]
lib.mxm_moe_plan_workspace_size.restype = i64
lib.mxm_moe_plan_workspace_size.argtypes = [vp]
lib.mxm_moe_forward.argtypes = [vp, ctypes.POINTER(Weights), ctypes.POINTER(Inputs), ctypes.POINTER(Outputs),
                                vp, i64, vp]
lib.mxm_moe_plan_destroy.argtypes = [vp]

SILU, RELU2, GELU = 0, 6, 1
DT_F32 = 0
MXFP8, NONE = 0, 1
EXACT = 1
check = Checks("moe oracle")


U = 2.0 ** -24  # fp32 unit roundoff
EPS_FN, EPS_COMBINE = 2.0 ** -18, 2.0 ** -20
MIN_MUTANT_CAUGHT = 0.9
tally = {"elements": 0, "caught": 0}


def mx_scale_bits(amax):
    """SPEC 2.2 RCEIL scale byte of block amax values (any float array), as int64."""
    d = (np.asarray(amax, np.float32) * np.float32(1.0 / 448.0)).astype(np.float32)
    bits = d.view(np.uint32)
    E, m = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    b = (E + ((m != 0) & ((E != 0) | (m > 0x400000))).astype(np.uint32)).astype(np.int64)
    b = np.minimum(b, 254)
    b[np.asarray(amax) == 0] = 0
    return b


def mx_codes_at(blocks, b):
    """E4M3 codes of blocks [N, 32] (float64 values) under scale bytes b [N]."""
    scaled = (blocks * np.ldexp(1.0, 127 - b)[:, None]).astype(np.float32)
    q = np.clip(scaled, -448, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    q[b == 0] = np.signbit(blocks[b == 0]).astype(np.uint8) << 7  # flushed to +-0
    return q


def mx_quantize(x):
    """MXFP8 RCEIL quantization of float32 rows (last dim % 32 == 0): codes (uint8), scale bytes."""
    x = np.asarray(x, np.float32)
    blocks = x.reshape(-1, 32).astype(np.float64)
    b = mx_scale_bits(np.abs(blocks).max(axis=1))
    q = mx_codes_at(blocks, b)
    return q.reshape(x.shape), b.astype(np.uint8).reshape(x.shape[:-1] + (x.shape[-1] // 32,))


def mx_fakequant_at(blocks, b):
    return mx_dequantize(mx_codes_at(blocks, b), b.astype(np.uint8)[:, None])


def requant_bounds(nom, lo, hi):
    """W8A8 requantization of a vector with bounds: quantized nominal and the bounds of every
    value an implementation may store (both codes of a straddled boundary, both scales of a
    straddled block amax; a tiny interval moves the amax across one power of two at most)."""
    nb, lb, hb = (np.asarray(v, np.float64).reshape(-1, 32) for v in (nom, lo, hi))
    al, ah = np.abs(lb), np.abs(hb)
    am_lo = np.where((lb > 0) | (hb < 0), np.minimum(al, ah), 0).max(axis=1)
    b, b_lo, b_hi = (mx_scale_bits(v) for v in (np.abs(nb).max(axis=1), am_lo, np.maximum(al, ah).max(axis=1)))
    q = mx_fakequant_at(nb, b)
    q_lo = np.minimum(mx_fakequant_at(lb, b_lo), mx_fakequant_at(lb, b_hi))
    q_hi = np.maximum(mx_fakequant_at(hb, b_lo), mx_fakequant_at(hb, b_hi))
    return q.reshape(-1), q_lo.reshape(-1), q_hi.reshape(-1)


def dot_bounds(W, nom, lo, hi):
    """W @ v for v in [lo, hi]: nominal, and bounds including fp32 accumulation in any order
    (4 ulps of sum |t| plus 8 sqrt(n) ulps of ||t||_2, as tests/moe_ref.h)."""
    m = np.maximum(np.abs(lo), np.abs(hi))
    slack = U * (4 * (np.abs(W) @ m) + 8 * np.sqrt(W.shape[1]) * np.sqrt((W * W) @ (m * m)))
    Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
    return W @ nom, Wp @ lo + Wn @ hi - slack, Wp @ hi + Wn @ lo + slack


def mx_dequantize(q, s):
    v = q.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    return v * np.repeat(np.ldexp(1.0, s.astype(np.int64) - 127), 32, axis=-1)


def act(kind, h, I):
    if kind == SILU:
        g, u = h[:I], h[I:]
        return g / (1 + np.exp(-g)) * u
    if kind == GELU:
        from math import erf
        g, u = h[:I], h[I:]
        return 0.5 * g * (1 + np.vectorize(erf)(g / np.sqrt(2))) * u
    r = np.maximum(h, 0)
    return r * r


def case(rng, H, I, E, K, T, kind, aq, shared_I):
    gated = kind in (SILU, GELU)
    M1 = 2 * I if gated else I
    n_exp = E + (1 if shared_I else 0)
    weights, deq = [], []
    for e in range(n_exp):
        Ie = shared_I if e == E else I
        M1e = 2 * Ie if gated else Ie
        w1 = (rng.standard_normal((M1e, H)) / np.sqrt(H)).astype(np.float32) * np.float32(2.0 ** rng.integers(-2, 3))
        w2 = (rng.standard_normal((H, Ie)) / np.sqrt(Ie)).astype(np.float32)
        q1, s1 = mx_quantize(w1)
        q2, s2 = mx_quantize(w2)
        weights.append([np.ascontiguousarray(a) for a in (q1, s1, q2, s2)])
        deq.append((mx_dequantize(q1, s1), mx_dequantize(q2, s2), Ie))
    x = rng.standard_normal((T, H)).astype(np.float32) * np.float32(2.0)
    ids = np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32)
    w = rng.uniform(0.1, 1.0, (T, K)).astype(np.float32)

    # reference: nominal output and its bounds
    xq = mx_dequantize(*mx_quantize(x)) if aq == MXFP8 else x.astype(np.float64)
    ref, lo, hi, mag = (np.zeros((T, H)) for _ in range(4))

    def expert(e, xv):
        W1, W2, Ie = deq[e]
        h, hl, hh = dot_bounds(W1, xv, xv, xv)
        a = act(kind, h, Ie)
        corners = [act(kind, np.concatenate([g, u]) if kind != RELU2 else g, Ie)
                   for g in (hl[:Ie], hh[:Ie]) for u in ((hl[Ie:], hh[Ie:]) if kind != RELU2 else (None,))]
        gu = np.abs(h[:Ie] * h[Ie:]) if kind != RELU2 else np.abs(h)
        fn = EPS_FN * (np.abs(a) + gu)
        al, ah = np.minimum.reduce(corners) - fn, np.maximum.reduce(corners) + fn
        if aq == MXFP8:
            a, al, ah = requant_bounds(a, al, ah)
        return dot_bounds(W2, a, al, ah)

    for t in range(T):
        terms = [(float(w[t, k]), ids[t, k]) for k in range(K)] + ([(1.0, E)] if shared_I else [])
        for wk, e in terms:
            y, yl, yh = expert(e, xq[t])
            ref[t] += wk * y
            lo[t] += wk * yl
            hi[t] += wk * yh
            mag[t] += wk * np.maximum(np.abs(yl), np.abs(yh))
    lo -= EPS_COMBINE * mag
    hi += EPS_COMBINE * mag

    # library
    cfg = Config()
    lib.mxm_moe_config_default(ctypes.byref(cfg))
    cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.top_k = H, I, E, K
    cfg.activation, cfg.act_quant, cfg.profile, cfg.shared_intermediate_size = kind, aq, EXACT, shared_I
    plan = vp()
    st = lib.mxm_moe_plan_create(ctypes.byref(cfg), T, ctypes.byref(plan))
    check(st == 0, f"plan_create {st}: {lib.mxm_last_error()}")
    if st:
        return
    wsb = lib.mxm_moe_plan_workspace_size(plan)
    ws = np.zeros(wsb + 64, np.uint8)
    ws_ptr = (ws.ctypes.data + 63) // 64 * 64
    experts = (Expert * n_exp)()
    for e, (q1, s1, q2, s2) in enumerate(weights):
        experts[e] = Expert(q1.ctypes.data, s1.ctypes.data, q2.ctypes.data, s2.ctypes.data)
    wts = Weights(ctypes.addressof(experts), ctypes.addressof(experts[E]) if shared_I else None, None, None, None)
    out = np.full((T, H), np.nan, np.float32)
    inp = Inputs(T, x.ctypes.data, DT_F32, None, 0, None, 0, None, 0, ids.ctypes.data, w.ctypes.data)
    outs = Outputs(out.ctypes.data, DT_F32, None, None, None)
    st = lib.mxm_moe_forward(plan, ctypes.byref(wts), ctypes.byref(inp), ctypes.byref(outs), ws_ptr, wsb, None)
    lib.mxm_moe_plan_destroy(plan)
    check(st == 0, f"forward {st}: {lib.mxm_last_error()}")
    got = out.astype(np.float64)
    outside = int(np.count_nonzero(~((got >= lo) & (got <= hi))))
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    width = np.linalg.norm((hi - lo) / 2) / np.linalg.norm(ref)
    mutant = got * (1 + 2.0 ** -6)
    tally["elements"] += got.size
    tally["caught"] += int(np.count_nonzero(~((mutant >= lo) & (mutant <= hi)) & (ref != 0)))
    ok = outside == 0 and width <= 0.5 and (aq == MXFP8 or err <= 1e-5)  # SPEC 7's L2 where nothing can flip
    name = {SILU: "silu", RELU2: "relu2_no_mul", GELU: "gelu"}[kind]
    print(f"moe-oracle {name:12} {'w8a8' if aq == MXFP8 else 'w8':4} H={H} I={I} E={E} K={K} T={T} shared={shared_I} "
          f"err={err:.2e} width={width:.1e} outside={outside} {'PASS' if ok else 'FAIL'}")
    check(ok, f"{name} aq={aq} H={H} I={I} T={T}: {outside} elements outside their bounds, width {width:.1e}")


def main():
    seed = int(time.time_ns() % (1 << 31))
    print(f"[seed] numpy seed {seed}")
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for kind in (SILU, RELU2, GELU):
        for aq in (MXFP8, NONE):
            case(rng, 96, 160, 6, 2, 7, kind, aq, 0)
    case(rng, 224, 96, 12, 5, 33, SILU, MXFP8, 64)
    case(rng, 64, 288, 8, 8, 1, RELU2, NONE, 96)
    caught = tally["caught"] / tally["elements"]
    print(f"mutants: {tally['caught']} of {tally['elements']} elements scaled by 1+2^-6 fall outside ({100 * caught:.1f}%)")
    check(caught >= MIN_MUTANT_CAUGHT, f"bounds too wide: only {100 * caught:.1f}% of mutants caught")
    check.finish(time.time() - t0)


if __name__ == "__main__":
    sys.exit(main())
