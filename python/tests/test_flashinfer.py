#!/usr/bin/env python3
"""mxmoe.trtllm_fp8_block_scale_moe / _routed_moe (FlashInfer v0.6.13's call) on random layers:

1. against the numpy float64 reference of tests/oracle (test_route_oracle.oracle for the routing,
   test_moe_oracle's quantizer, activations and interval bounds for the experts): every output
   element inside the interval of results an fp32 implementation may give (profile "exact",
   MXFP8 W8A8 and weight-only, DeepSeek FP8 weight-only), hidden states given as FP8 codes + scales
   or as bf16/f32;
2. against the C API called directly (mxm_moe_forward with the checkpoint layout [gate ; up], each
   expert in its own buffers), bit for bit: every routing method, every activation FlashInfer
   defines that mxmoe runs, SwiGLU-OAI per-expert parameters, both FP8 formats, W8A8 and
   weight-only, the routed variant with FlashInfer's packed top-k, and expert-parallel slices
   summing to the whole layer;
3. argument errors: an exception naming the argument and the accepted values, library messages
   passed through;
4. with torch importable: the same calls on torch CPU tensors give the numpy results.
Exit status 0 pass, 1 failure."""
import ctypes
import time

import ml_dtypes
import numpy as np

from pkgtest import Checks, mxmoe, seed, torch
import test_moe_oracle as mo
import test_route_oracle as ro
from mxmoe import _capi, ActivationType as AT, Fp8QuantizationType as QT, RoutingMethodType as RM

check = Checks("test_flashinfer")
F8, BF = ml_dtypes.float8_e4m3fn, ml_dtypes.bfloat16
GATED = {AT.Swiglu: True, AT.Geglu: True, AT.Relu2: False, AT.Silu: False, AT.Gelu: False, AT.Identity: False}
MXM_ACT = {AT.Swiglu: mo.SILU, AT.Geglu: mo.GELU, AT.Relu2: mo.RELU2}
EN = _capi.ENUMS


class Layer:
    """Random FP8 weights in FlashInfer's layout (W13 = [up ; gate]) and their float64 values."""

    def __init__(self, rng, H, I, E, act, qt):
        self.H, self.I, self.E, self.qt = H, I, E, qt
        M1 = 2 * I if GATED[act] else I
        w1 = rng.standard_normal((E, M1, H)) / np.sqrt(H) * 2.0 ** rng.integers(-2, 3, (E, M1, 1))
        w2 = rng.standard_normal((E, H, I)) / np.sqrt(I)
        if qt == QT.MxFp8:
            (q1, s1), (q2, s2) = mo.mx_quantize(w1.astype(np.float32)), mo.mx_quantize(w2.astype(np.float32))
            self.d1, self.d2 = mo.mx_dequantize(q1, s1), mo.mx_dequantize(q2, s2)
        else:  # DeepSeek FP8: codes and one random fp32 scale per 128x128 block
            q1, q2 = (np.clip(w * 8, -448, 448).astype(F8).view(np.uint8) for w in (w1, w2))
            s1 = rng.uniform(0.02, 0.3, (E, -(-M1 // 128), -(-H // 128))).astype(np.float32)
            s2 = rng.uniform(0.02, 0.3, (E, -(-H // 128), -(-I // 128))).astype(np.float32)
            rep = lambda q, s: q.view(F8).astype(np.float64) * np.repeat(np.repeat(s, 128, 1), 128, 2)[  # noqa: E731
                :, :q.shape[1], :q.shape[2]]
            self.d1, self.d2 = rep(q1, s1), rep(q2, s2)
        self.w1, self.w2 = q1.view(F8), q2.view(F8)
        self.s1, self.s2 = s1, s2
        self.M1 = M1


def expert_bounds(kind, W1, W2, xv, aq):
    """One expert on one token, with bounds (test_moe_oracle's rules; W1 rows [gate ; up])."""
    I = W2.shape[1]
    h, hl, hh = mo.dot_bounds(W1, xv, xv, xv)
    a = mo.act(kind, h, I)
    gated = kind != mo.RELU2
    corners = [mo.act(kind, np.concatenate([g, u]) if gated else g, I)
               for g in (hl[:I], hh[:I]) for u in ((hl[I:], hh[I:]) if gated else (None,))]
    gu = np.abs(h[:I] * h[I:]) if gated else np.abs(h)
    fn = mo.EPS_FN * (np.abs(a) + gu)
    al, ah = np.minimum.reduce(corners) - fn, np.maximum.reduce(corners) + fn
    if aq == "mxfp8":
        a, al, ah = mo.requant_bounds(a, al, ah)
    return mo.dot_bounds(W2, a, al, ah)


def gate_up(d1, I):
    """[up ; gate] rows -> [gate ; up] (the oracle's and the checkpoints' order)."""
    return np.concatenate([d1[:, I:], d1[:, :I]], axis=1)


def oracle_case(rng, H, I, E, K, T, act, qt, aq, x_kind):
    L = Layer(rng, H, I, E, act, qt)
    x = (rng.standard_normal((T, H)) * 2).astype(np.float32)
    logits = (rng.standard_normal((T, E)) * 2).astype(np.float32)
    method = int(rng.choice([RM.Renormalize, RM.Default, RM.SigmoidRenorm]))
    args = dict(hidden_states=x, hidden_states_scale=None)
    if x_kind == "bf16":
        args["hidden_states"] = x.astype(BF)
        xv = x.astype(BF).astype(np.float64)
    elif x_kind == "fp8":  # pre-quantized: FlashInfer's MxFp8 input, uint8 E8M0 [T, H/32]
        q, s = mo.mx_quantize(x)
        args = dict(hidden_states=q.view(F8), hidden_states_scale=s)
        xv = mo.mx_dequantize(q, s)
    else:
        xv = x.astype(np.float64)
    if aq == "mxfp8" and x_kind != "fp8":
        xv = mo.mx_dequantize(*mo.mx_quantize(xv.astype(np.float32)))
    out = mxmoe.trtllm_fp8_block_scale_moe(
        logits, None, args["hidden_states"], args["hidden_states_scale"], L.w1, L.s1, L.w2, L.s2, E, K, None, None,
        I, 0, E, None, method, fp8_quantization_type=qt, activation_type=act, profile="exact", act_quant=aq)
    # the routed variant with float32 weights (mxmoe extension) for fp32 output and bounds
    ids, w = ro.oracle(method, logits, None, K, 0, 0, 1.0, 1, ro.EXACT)
    out32 = np.full((T, H), np.nan, np.float32)
    mxmoe.trtllm_fp8_block_scale_routed_moe(
        ids, None, args["hidden_states"], args["hidden_states_scale"], L.w1, L.s1, L.w2, L.s2, E, K, None, None, I,
        0, E, None, method, output=out32, fp8_quantization_type=qt, activation_type=act, expert_weights=w,
        profile="exact", act_quant=aq)
    kind = MXM_ACT[act]
    W1 = gate_up(L.d1, I) if GATED[act] else L.d1
    ref, lo, hi, mag = (np.zeros((T, H)) for _ in range(4))
    for t in range(T):
        for k in range(K):
            y, yl, yh = expert_bounds(kind, W1[ids[t, k]], L.d2[ids[t, k]], xv[t], aq)
            wk = float(w[t, k])
            ref[t] += wk * y
            lo[t] += wk * yl
            hi[t] += wk * yh
            mag[t] += wk * np.maximum(np.abs(yl), np.abs(yh))
    lo -= mo.EPS_COMBINE * mag
    hi += mo.EPS_COMBINE * mag
    got = out32.astype(np.float64)
    outside = int(np.count_nonzero(~((got >= lo) & (got <= hi))))
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    width = np.linalg.norm((hi - lo) / 2) / np.linalg.norm(ref)
    # the bf16 output of the logits call: the fp32 result rounded once (same math; the library's
    # routing weights may differ from the oracle's by an fp32 ulp, hence 1 bf16 ulp)
    b16 = lambda a: a.view(np.int16).astype(np.int64)  # noqa: E731
    bf_err = int(np.abs(b16(out) - b16(out32.astype(BF))).max())
    ok = outside == 0 and width <= 0.5 and bf_err <= 1 and (aq == "mxfp8" or err <= 1e-5)
    name = f"oracle {act.name:7} {qt.name:11} {aq:5} x={x_kind:4} H={H} I={I} E={E} K={K} T={T}"
    print(f"{name} err={err:.2e} width={width:.1e} outside={outside} bf16-vs-f32={bf_err}ulp {'PASS' if ok else 'FAIL'}")
    check(ok, f"{name}: {outside} outside, width {width:.1e}, err {err:.1e}, bf16 {bf_err} ulp")


# ---- 2. against the C API --------------------------------------------------------------------------

def c_forward(L, act_enum, x, logits, bias, K, method, n_group, topk_group, S, aq, fmt, norm, off, E_glob,
              oa=None):
    """mxm_moe_forward called directly, one buffer per expert: MXFP8 W13 rearranged as [gate ; up]
    (checkpoint order); DeepSeek FP8 W13 kept [up ; gate] (its 128-row scale blocks straddle the
    halves when I % 128 != 0)."""
    cfg = _capi.Config()
    _capi.lib.mxm_moe_config_default(ctypes.byref(cfg))
    T, H = x.shape
    cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.top_k = H, L.I, E_glob, K
    cfg.routing_method, cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor = method, n_group, topk_group, S
    cfg.norm_topk_prob, cfg.local_expert_offset, cfg.local_num_experts = norm, off, L.E
    cfg.activation, cfg.weight_format = act_enum, fmt
    cfg.act_quant = EN["MXM_ACT_QUANT_MXFP8"] if aq == "mxfp8" else EN["MXM_ACT_QUANT_NONE"]
    swap = L.M1 == 2 * L.I and fmt == EN["MXM_WFMT_MXFP8"]
    cfg.w13_layout = EN["MXM_W13_GATE_UP"] if swap else EN["MXM_W13_UP_GATE"]
    if oa is not None:
        cfg.swiglu_alpha, cfg.swiglu_beta, cfg.swiglu_limit = 1.0, 0.0, float("inf")
    keep = []
    ex = (_capi.ExpertWeights * L.E)()
    for e in range(L.E):
        w1, s1 = L.w1[e].view(np.uint8), L.s1[e]
        if fmt == EN["MXM_WFMT_MXFP8"]:
            s1 = s1.reshape(L.M1, -1)
        if swap:  # FlashInfer [up ; gate] -> [gate ; up]
            w1 = np.ascontiguousarray(np.concatenate([w1[L.I:], w1[:L.I]]))
            s1 = np.ascontiguousarray(np.concatenate([s1[L.I:], s1[:L.I]]))
        else:
            w1, s1 = np.ascontiguousarray(w1), np.ascontiguousarray(s1)
        w2, s2 = np.ascontiguousarray(L.w2[e].view(np.uint8)), np.ascontiguousarray(L.s2[e])
        keep += [w1, s1, w2, s2]
        ex[e] = _capi.ExpertWeights(w1.ctypes.data, s1.ctypes.data, w2.ctypes.data, s2.ctypes.data)
    mw = _capi.MoEWeights()
    mw.experts = ctypes.addressof(ex)
    if oa is not None:
        for name, arr in oa.items():
            setattr(mw, name, arr.ctypes.data)
    inp = _capi.Inputs()
    inp.num_tokens, inp.x, inp.x_dtype = T, x.ctypes.data, EN["MXM_DT_F32"]
    inp.router_logits, inp.logits_dtype = logits.ctypes.data, EN["MXM_DT_F32"]
    if bias is not None:
        inp.routing_bias, inp.bias_dtype = bias.ctypes.data, EN["MXM_DT_F32"]
    out = np.full((T, H), np.nan, BF)
    ids = np.zeros((T, K), np.int32)
    wts = np.zeros((T, K), np.float32)
    outs = _capi.Outputs()
    outs.out, outs.out_dtype = out.ctypes.data, EN["MXM_DT_BF16"]
    outs.topk_ids, outs.topk_weights = ids.ctypes.data, wts.ctypes.data
    plan = ctypes.c_void_p()
    _capi.check(_capi.lib.mxm_moe_plan_create(ctypes.byref(cfg), T, ctypes.byref(plan)), "plan")
    wsb = _capi.lib.mxm_moe_plan_workspace_size(plan.value)
    ws = np.empty(wsb + 64, np.uint8)
    st = _capi.lib.mxm_moe_forward(plan.value, ctypes.byref(mw), ctypes.byref(inp), ctypes.byref(outs),
                                   (ws.ctypes.data + 63) // 64 * 64, wsb, None)
    _capi.lib.mxm_moe_plan_destroy(plan.value)
    _capi.check(st, "forward")
    return out, ids, wts


ACT_C = {AT.Swiglu: "MXM_ACT_SILU", AT.Geglu: "MXM_ACT_GELU", AT.Relu2: "MXM_ACT_RELU2_NO_MUL",
         AT.Silu: "MXM_ACT_SILU_NO_MUL", AT.Gelu: "MXM_ACT_GELU_NO_MUL", AT.Identity: "MXM_ACT_IDENTITY"}


def capi_case(rng, method, act, qt, aq, with_oa=False, ep=False):
    H = int(rng.choice([64, 96, 256])) if qt == QT.MxFp8 else int(rng.choice([128, 160, 256]))
    I = int(rng.choice([32, 64, 96]))
    E = int(rng.choice([8, 16]))
    K = 1 if method == RM.Llama4 else int(rng.integers(1, min(E, 6) + 1))
    T = int(rng.choice([1, 5, 33]))
    n_group = topk_group = None
    if method == RM.DeepSeekV3 and rng.random() < 0.5:
        n_group, topk_group = 4, 2
        K = min(K, 2 * E // 4)
    S = float(rng.choice([1.0, 2.5])) if method in (RM.DeepSeekV3, RM.MiniMax2) else None
    norm = bool(rng.random() < 0.7)
    L = Layer(rng, H, I, E, act, qt)
    x = (rng.standard_normal((T, H)) * 1.5).astype(np.float32)
    logits = (rng.standard_normal((T, E)) * 2).astype(np.float32)
    bias = (rng.standard_normal(E) * 0.3).astype(np.float32) if method in (RM.DeepSeekV3, RM.MiniMax2) else None
    oa = None
    if with_oa:
        oa = {"gemm1_alpha": rng.uniform(0.5, 2.0, E).astype(np.float32),
              "gemm1_beta": rng.uniform(0, 1, E).astype(np.float32),
              "gemm1_clamp_limit": rng.uniform(1, 8, E).astype(np.float32)}
    fmt = EN["MXM_WFMT_MXFP8"] if qt == QT.MxFp8 else EN["MXM_WFMT_FP8_BLOCK"]
    act_c = EN["MXM_ACT_SWIGLUOAI"] if with_oa else EN[ACT_C[act]]
    name = (f"capi {RM(method).name:16} {act.name:8}{'+oa' if with_oa else '   '} {qt.name:11} {aq:5} "
            f"H={H} I={I} E={E} K={K} T={T} G={n_group}/{topk_group}")
    ref, rids, rw = c_forward(L, act_c, x, logits, bias, K, int(method), n_group or 0, topk_group or 0,
                              1.0 if S is None else S, aq, fmt, int(norm), 0, E, oa)
    kw = oa or {}
    got = mxmoe.trtllm_fp8_block_scale_moe(logits, bias, x, None, L.w1, L.s1, L.w2, L.s2, E, K, n_group, topk_group,
                                           I, 0, E, S, method, fp8_quantization_type=qt, activation_type=act,
                                           norm_topk_prob=norm, act_quant=aq, **kw)
    ok = got.dtype == BF and got.shape == (T, H) and np.array_equal(got.view(np.uint16), ref.view(np.uint16))
    # routed, FlashInfer's packed format: the C call's routing, weights as bf16 (the trtllm profile's
    # rounding point, so the result is the same bits)
    packed = mxmoe.pack_topk(rids, rw)
    uid, uw = mxmoe.unpack_topk(packed)
    ok_pack = np.array_equal(uid, rids) and np.array_equal(uw, rw.astype(BF).astype(np.float32))
    got_r = mxmoe.trtllm_fp8_block_scale_routed_moe(packed, None, x, None, L.w1, L.s1, L.w2, L.s2, E, K, n_group,
                                                    topk_group, I, 0, E, S, method, fp8_quantization_type=qt,
                                                    activation_type=act, act_quant=aq, **kw)
    ok_r = np.array_equal(got_r.view(np.uint16), ref.view(np.uint16))
    replay = np.full((T + 3, K), -1, np.int16)
    mxmoe.trtllm_fp8_block_scale_moe(logits, bias, x, None, L.w1, L.s1, L.w2, L.s2, E, K, n_group, topk_group, I, 0,
                                     E, S, method, routing_replay_out=replay, fp8_quantization_type=qt,
                                     activation_type=act, norm_topk_prob=norm, act_quant=aq, **kw)
    ok_replay = np.array_equal(replay[:T], rids) and (replay[T:] == -1).all()
    ok_ep = True
    if ep:  # two expert-parallel ranks: f32 partial sums add up to the whole layer's f32 output
        full = np.zeros((T, H), np.float32)
        ids_f32, w_f32 = rids, rw
        mxmoe.trtllm_fp8_block_scale_routed_moe(ids_f32, None, x, None, L.w1, L.s1, L.w2, L.s2, E, K, None, None, I,
                                                0, E, None, method, output=full, fp8_quantization_type=qt,
                                                activation_type=act, act_quant=aq, expert_weights=w_f32, **kw)
        parts = np.zeros((T, H), np.float64)
        h = E // 2
        for off in (0, h):
            part = np.full((T, H), np.nan, np.float32)
            sl = slice(off, off + h)
            mxmoe.trtllm_fp8_block_scale_routed_moe(
                ids_f32, None, x, None, L.w1[sl], L.s1[sl], L.w2[sl], L.s2[sl], E, K, None, None, I, off, h, None,
                method, output=part, fp8_quantization_type=qt, activation_type=act, act_quant=aq,
                expert_weights=w_f32, **({k: v[sl] for k, v in kw.items()}))
            parts += part
        d = np.abs(parts - full).max() / max(np.abs(full).max(), 1e-30)
        ok_ep = d <= 4 * 2.0 ** -24 * K
        name += f" ep-diff={d:.1e}"
    # the bound form: same bits, on the short path (f32 x, logits) and the general one (bias)
    moe = mxmoe.Fp8BlockScaleMoE(L.w1, L.s1, L.w2, L.s2, E, K, n_group, topk_group, I, 0, E, S, method,
                                 fp8_quantization_type=qt, activation_type=act, norm_topk_prob=norm, act_quant=aq, **kw)
    ok_bound = all(np.array_equal(moe(logits, x, routing_bias=bias).view(np.uint16), ref.view(np.uint16))
                   for _ in range(2))
    if bias is None:
        ok_bound &= np.array_equal(moe(logits, x).view(np.uint16), ref.view(np.uint16))
    ok_bound &= np.array_equal(moe(None, x, topk=(rids, rw), routing_bias=bias).view(np.uint16),
                               mxmoe.trtllm_fp8_block_scale_routed_moe(
                                   rids, None, x, None, L.w1, L.s1, L.w2, L.s2, E, K, n_group, topk_group, I, 0, E, S,
                                   method, fp8_quantization_type=qt, activation_type=act, act_quant=aq,
                                   expert_weights=rw, **kw).view(np.uint16))
    allok = ok and ok_pack and ok_r and ok_replay and ok_ep and ok_bound
    print(f"{name} logits={'=' if ok else '!='} packed={'=' if ok_r else '!='} replay={'=' if ok_replay else '!='} "
          f"{'PASS' if allok else 'FAIL'}")
    check(allok, f"{name}: logits {ok} pack {ok_pack} routed {ok_r} replay {ok_replay} ep {ok_ep} bound {ok_bound}")
    return L, x, logits, bias, got, (E, K, n_group, topk_group, I, S, method, qt, act, norm, aq)


# ---- 3. errors -------------------------------------------------------------------------------------

def expect_error(what, fn, exc, *needles):
    try:
        fn()
    except exc as e:
        msg = str(e)
        ok = all(n in msg for n in needles)
        print(f"error {what}: {type(e).__name__}: {msg}")
        check(ok, f"{what}: message '{msg}' lacks {needles}")
        return
    except Exception as e:  # noqa: BLE001
        check(False, f"{what}: raised {type(e).__name__} ({e}), expected {exc.__name__}")
        return
    check(False, f"{what}: no exception")


def errors(rng):
    H, I, E, K, T = 64, 32, 8, 2, 3
    L = Layer(rng, H, I, E, AT.Swiglu, QT.MxFp8)
    x = rng.standard_normal((T, H)).astype(np.float32)
    lg = rng.standard_normal((T, E)).astype(np.float32)
    base = dict(routing_logits=lg, routing_bias=None, hidden_states=x, hidden_states_scale=None, gemm1_weights=L.w1,
                gemm1_weights_scale=L.s1, gemm2_weights=L.w2, gemm2_weights_scale=L.s2, num_experts=E, top_k=K,
                n_group=None, topk_group=None, intermediate_size=I, local_expert_offset=0, local_num_experts=E,
                routed_scaling_factor=None, routing_method_type=1, fp8_quantization_type=QT.MxFp8)

    def call(**kw):
        return lambda: mxmoe.trtllm_fp8_block_scale_moe(**dict(base, **kw))
    expect_error("dtype", call(hidden_states=x.astype(np.int64)), TypeError, "hidden_states", "float8_e4m3fn", "bfloat16")
    expect_error("weight dtype", call(gemm1_weights=L.d1.astype(np.float32)), TypeError, "gemm1_weights", "uint8")
    expect_error("shape", call(gemm2_weights=L.w2[:, :, :16]), ValueError, "gemm2_weights", "expected shape")
    expect_error("non-contiguous", call(routing_logits=rng.standard_normal((T, 2 * E)).astype(np.float32)[:, ::2]),
                 ValueError, "routing_logits", "contiguous")
    expect_error("logits shape", call(routing_logits=lg[:, :4].copy()), ValueError, "routing_logits", f"[{T}, {E}]")
    expect_error("activation", call(activation_type=AT.Relu), ValueError, "activation_type", "Relu", "Swiglu", "Relu2")
    expect_error("activation unknown", call(activation_type=42), ValueError, "activation_type", "supported")
    expect_error("routing", call(routing_method_type=9), ValueError, "routing_method_type", "Unspecified", "DeepSeekV3")
    expect_error("quant type", call(fp8_quantization_type=QT.NoneFp8), ValueError, "fp8_quantization_type", "MxFp8")
    expect_error("shuffled", call(use_shuffled_weight=True), NotImplementedError, "use_shuffled_weight", "MajorK")
    expect_error("layout", call(weight_layout=2), ValueError, "weight_layout", "MajorK")
    expect_error("finalize", call(do_finalize=False), NotImplementedError, "do_finalize")
    expect_error("scale missing", call(hidden_states=mo.mx_quantize(x)[0].view(F8)), ValueError, "hidden_states_scale")
    expect_error("profile", call(profile="fast"), ValueError, "profile", "trtllm", "exact")
    expect_error("oa on DeepSeek", call(fp8_quantization_type=QT.DeepSeekFp8, gemm1_alpha=np.ones(E, np.float32)),
                 ValueError, "gemm1_alpha", "MxFp8")
    expect_error("not a tensor", call(routing_bias=[0.0] * E), TypeError, "routing_bias", "numpy array")
    # the library's own checks, message passed through
    expect_error("top_k > E", call(top_k=E + 1, gemm1_weights=L.w1), mxmoe.MxmError, "top_k", "invalid")
    expect_error("n_group", call(routing_method_type=2, n_group=3, topk_group=1), mxmoe.MxmError, "n_group")
    expect_error("I not /32", call(intermediate_size=I + 8), ValueError, "gemm1_weights")


def torch_cases(saved):
    """The C-API cases again on torch CPU tensors: same bits as numpy."""
    for L, x, logits, bias, got, (E, K, ng, tg, I, S, method, qt, act, norm, aq) in saved:
        T = torch
        w1 = T.from_numpy(L.w1.view(np.uint8)).view(T.float8_e4m3fn)
        w2 = T.from_numpy(L.w2.view(np.uint8)).view(T.float8_e4m3fn)
        out = mxmoe.trtllm_fp8_block_scale_moe(
            T.from_numpy(logits), None if bias is None else T.from_numpy(bias), T.from_numpy(x), None, w1, T.from_numpy(L.s1), w2, T.from_numpy(L.s2), E, K, ng, tg, I, 0, E,
            S, method, fp8_quantization_type=qt, activation_type=act, norm_topk_prob=norm, act_quant=aq)
        ok = out.dtype == T.bfloat16 and np.array_equal(out.view(T.int16).numpy().view(np.uint16), got.view(np.uint16))
        check(ok, f"torch {RM(method).name} {act.name} {qt.name}: differs from numpy")
        if bias is None:  # the bound form's torch short path
            moe = mxmoe.Fp8BlockScaleMoE(w1, T.from_numpy(L.s1), w2, T.from_numpy(L.s2), E, K, ng, tg, I, 0, E, S, method,
                                         fp8_quantization_type=qt, activation_type=act, norm_topk_prob=norm,
                                         act_quant=aq)
            ob = moe(T.from_numpy(logits), T.from_numpy(x))
            check(np.array_equal(ob.view(T.int16).numpy().view(np.uint16), got.view(np.uint16)),
                  f"torch bound {RM(method).name} {act.name}: differs from numpy")
    print(f"torch: {len(saved)} cases on torch CPU tensors, bit-identical to numpy")
    L, x, logits, bias, got, (E, K, ng, tg, I, S, method, qt, act, norm, aq) = saved[0]
    expect_error("device", lambda: mxmoe.trtllm_fp8_block_scale_moe(
        torch.from_numpy(logits), None, torch.from_numpy(x).to("meta"), None, torch.from_numpy(L.w1.view(np.uint8)),
        torch.from_numpy(L.s1), torch.from_numpy(L.w2.view(np.uint8)), torch.from_numpy(L.s2), E, K, ng, tg, I, 0, E, S,
        method, fp8_quantization_type=qt, activation_type=act), ValueError, "hidden_states", "meta", "cpu, cuda")
    expect_error("mixed devices", lambda: mxmoe.trtllm_fp8_block_scale_moe(
        torch.from_numpy(logits).to("meta"), None, torch.from_numpy(x), None, torch.from_numpy(L.w1.view(np.uint8)),
        torch.from_numpy(L.s1), torch.from_numpy(L.w2.view(np.uint8)), torch.from_numpy(L.s2), E, K, ng, tg, I, 0, E, S,
        method, fp8_quantization_type=qt, activation_type=act), ValueError, "routing_logits", "meta", "cpu")


def main():
    t0 = time.time()
    rng = np.random.default_rng(seed())
    for act in (AT.Swiglu, AT.Relu2, AT.Geglu):
        for aq in ("mxfp8", "none"):
            kinds = ["f32", "bf16", "fp8"] if aq == "mxfp8" else ["f32", "bf16"]  # FP8 x needs W8A8
            oracle_case(rng, 96, 64, 6, 2, 7, act, QT.MxFp8, aq, kinds[int(rng.integers(len(kinds)))])
    oracle_case(rng, 224, 96, 12, 5, 17, AT.Swiglu, QT.MxFp8, "mxfp8", "fp8")
    oracle_case(rng, 160, 96, 6, 3, 9, AT.Swiglu, QT.DeepSeekFp8, "none", "f32")
    oracle_case(rng, 256, 128, 8, 2, 5, AT.Relu2, QT.DeepSeekFp8, "none", "bf16")
    saved = []
    n = 0
    for method in [m for m in RM if m != RM.Unspecified]:
        for act in GATED:
            qt = (QT.MxFp8, QT.DeepSeekFp8)[n % 2]
            aq = ("mxfp8", "none")[(n // 2) % 2]
            r = capi_case(rng, method, act, qt, aq, ep=(n % 5 == 0))
            if n % 7 == 0:
                saved.append(r)
            n += 1
    for method in (RM.Renormalize, RM.DeepSeekV3):
        for aq in ("mxfp8", "none"):
            capi_case(rng, method, AT.Swiglu, QT.MxFp8, aq, with_oa=True, ep=True)
    errors(rng)
    if torch is not None:
        torch_cases(saved)
    else:
        print("torch: not importable, torch-tensor cases skipped")
    check.finish(time.time() - t0)


if __name__ == "__main__":
    main()
