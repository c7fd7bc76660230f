#!/usr/bin/env python3
"""The short path of mxmoe.trtllm_fp8_block_scale_moe and mxmoe.Fp8BlockScaleMoE (a per-thread
site per layer: plan, structs and ctypes arguments made once, the weights checked once):

1. a repeated call takes the short path (the full path, _flashinfer._moe, is not entered) and gives
   the bits of the full path;
2. the site is not used once a weight tensor, a weight's shape or dtype (changed in place), a
   torch weight's data pointer, or a scalar argument changes: results follow the new arguments (the
   full path's, which test_flashinfer compares with the C API), and weights that became invalid
   raise the full path's exceptions;
3. a call on a site still rejects bad per-call inputs with the full path's exceptions (dtype,
   shape, contiguity, kind, device, FP8 scales), and T = 0 still works; FP8 hidden states with
   their scales (MxFp8, DeepSeekFp8) take the short path with the full path's bits;
4. a site dies with its weights; threads calling one layer at once get their own results;
5. the same on torch CPU tensors when torch is importable.
Exit status 0 pass, 1 failure."""
import threading
import time

import ml_dtypes
import numpy as np

from pkgtest import Checks, mxmoe, seed, torch
from mxmoe import _flashinfer as F

check = Checks("test_call_cache")
F8 = ml_dtypes.float8_e4m3fn
H, I, E, K = 128, 64, 8, 2
KW = dict(fp8_quantization_type=2, activation_type=3, num_threads=1)


class Count:
    """Counts the calls that go the full path."""

    def __init__(self):
        self.n, self.real = 0, F._moe

    def __call__(self, *a, **k):
        self.n += 1
        return self.real(*a, **k)


full = Count()
F._moe = full


def layer(rng):
    q1, s1 = mxmoe.quantize_mxfp8((rng.standard_normal((E, 2 * I, H)) / np.sqrt(H)).astype(np.float32))
    q2, s2 = mxmoe.quantize_mxfp8((rng.standard_normal((E, H, I)) / np.sqrt(I)).astype(np.float32))
    return [q1, s1, q2, s2]


def call(lg, x, w, *scalars, **kw):
    sc = scalars or (E, K, None, None, I, 0, E, None, 1)
    return mxmoe.trtllm_fp8_block_scale_moe(lg, None, x, None, *w, *sc, **dict(KW, **kw))


def reference(lg, x, w, *scalars, **kw):
    """The full path (routing_replay_out given: never the short path)."""
    T, k = x.shape[0], (scalars[1] if scalars else K)
    replay = np.empty((T, k), np.int16) if isinstance(x, np.ndarray) else torch.empty((T, k), dtype=torch.int16)
    n = full.n
    out = call(lg, x, w, *scalars, routing_replay_out=replay, **kw)
    assert full.n == n + 1
    return out


def bits(a):
    return a.view(np.uint16) if isinstance(a, np.ndarray) else a.view(torch.int16).numpy()


def same(a, b):
    return a.shape == b.shape and np.array_equal(bits(a), bits(b))


def short(what, fn):
    """fn() on the short path: (result, whether the full path stayed unused)."""
    n = full.n
    out = fn()
    return out, full.n == n


def expect(what, fn, exc, *needles):
    try:
        fn()
    except exc as e:
        check(all(s in str(e) for s in needles), f"{what}: message '{e}' lacks {needles}")
        print(f"error {what}: {type(e).__name__}: {e}")
        return
    except Exception as e:  # noqa: BLE001
        check(False, f"{what}: raised {type(e).__name__} ({e}), expected {exc.__name__}")
        return
    check(False, f"{what}: no exception")


def numpy_cases(rng):
    w = layer(rng)
    T = 5
    x = rng.standard_normal((T, H)).astype(np.float32)
    lg = rng.standard_normal((T, E)).astype(np.float32)
    first = call(lg, x, w)
    ref = reference(lg, x, w)
    out, was_short = short("repeat", lambda: call(lg, x, w))
    check(was_short and same(out, first) and same(out, ref), "repeated call: short path, same bits")
    # bf16 hidden states and logits, other T (a larger plan), routing bias: still short, same bits
    for name, xx, ll in (("bf16", x.astype(ml_dtypes.bfloat16), lg.astype(ml_dtypes.bfloat16)),
                         ("T=40", rng.standard_normal((40, H)).astype(np.float32),
                          rng.standard_normal((40, E)).astype(np.float32))):
        out, was_short = short(name, lambda: call(ll, xx, w))
        check(was_short and same(out, reference(ll, xx, w)), f"{name}: short path, same bits as the full path")
    print("numpy: repeated calls on the short path, bit-identical to the full path")

    # a new weight tensor, same shape: results follow it
    w_new = layer(rng)
    for i, name in enumerate(("gemm1_weights", "gemm1_weights_scale", "gemm2_weights", "gemm2_weights_scale")):
        ww = list(w)
        ww[i] = w_new[i]
        got = call(lg, x, ww)
        check(same(got, reference(lg, x, ww)) and not same(got, ref), f"new {name}: result does not follow it")
        check(same(call(lg, x, w), ref), f"back to the old {name}: result differs")
    # weights changed in place (values): read through the pointers on every call
    w2 = [a.copy() for a in w]
    call(lg, x, w2)
    w2[2][...] = w_new[2]
    check(same(call(lg, x, w2), reference(lg, x, w2)), "weight values changed in place: result does not follow")
    # a scalar argument: top_k, routing method, local expert slice, act_quant
    for name, sc, kw in (("top_k", (E, 3, None, None, I, 0, E, None, 1), {}),
                         ("routing_method_type", (E, K, None, None, I, 0, E, None, 0), {}),
                         ("local_expert_offset", (2 * E, K, None, None, I, E, E, None, 1), {}),
                         ("act_quant", (), {"act_quant": "none"})):
        lg2 = rng.standard_normal((T, 2 * E)).astype(np.float32) if name == "local_expert_offset" else lg
        got = call(lg2, x, w, *sc, **kw)
        check(same(got, reference(lg2, x, w, *sc, **kw)) and not same(got, ref),
              f"{name} changed: result does not follow it")
        check(same(call(lg, x, w), ref), f"{name} back: result differs")
    # routed_scaling_factor alone (DeepSeekV3 routing applies it)
    a = call(lg, x, w, E, K, None, None, I, 0, E, 1.0, 2)
    b = call(lg, x, w, E, K, None, None, I, 0, E, 2.5, 2)
    check(same(a, reference(lg, x, w, E, K, None, None, I, 0, E, 1.0, 2)) and not same(a, b)
          and same(b, reference(lg, x, w, E, K, None, None, I, 0, E, 2.5, 2)),
          "routed_scaling_factor changed: result does not follow it")
    # SwiGLU-OAI arrays: repeated, values changed in place, a new array, a reshaped one
    oa = {k: rng.uniform(lo, hi, E).astype(np.float32)
          for k, lo, hi in (("gemm1_alpha", 0.5, 2), ("gemm1_beta", 0, 1), ("gemm1_clamp_limit", 1, 8))}
    r = reference(lg, x, w, **oa)
    call(lg, x, w, **oa)
    out, was_short = short("OA repeat", lambda: call(lg, x, w, **oa))
    check(was_short and same(out, r) and not same(r, ref), "OA arrays: repeat not short, or differs")
    oa["gemm1_alpha"] *= 1.5
    r2 = reference(lg, x, w, **oa)
    check(same(call(lg, x, w, **oa), r2) and not same(r2, r), "OA values changed in place: not followed")
    oa["gemm1_beta"] = rng.uniform(0, 1, E).astype(np.float32)
    got = call(lg, x, w, **oa)
    check(same(got, reference(lg, x, w, **oa)) and not same(got, r2), "new OA array: not followed")
    oa["gemm1_clamp_limit"].shape = (2, E // 2)
    expect("OA reshaped in place", lambda: call(lg, x, w, **oa), ValueError, "gemm1_clamp_limit", f"[{E}]")
    # a weight's shape changed in place: the full path's checks again
    w3 = [a.copy() for a in w]
    call(lg, x, w3)
    w3[3].shape = (-1,)  # an MXFP8 scale of any shape with the right size is accepted
    out, was_short = short("scale reshaped", lambda: call(lg, x, w3))
    check(not was_short and same(out, ref), "scale reshaped in place: not re-checked, or result differs")
    w3[2].shape = (E, I, H)
    expect("weight reshaped in place", lambda: call(lg, x, w3), ValueError, "gemm2_weights", "expected shape")
    # a weight's dtype changed in place: uint8 codes are accepted, int8 ones are not
    w4 = [a.copy() for a in w]
    call(lg, x, w4)
    w4[0].dtype = np.uint8
    out, was_short = short("uint8 codes", lambda: call(lg, x, w4))
    check(not was_short and same(out, ref), "weight dtype changed in place to uint8: not re-checked, or differs")
    w4[0].dtype = np.int8
    expect("weight dtype int8 in place", lambda: call(lg, x, w4), TypeError, "gemm1_weights", "uint8")
    print("numpy: new weights, in-place values/shape/dtype and scalar changes followed")

    # bad per-call inputs on a site: the full path's exceptions
    bound = mxmoe.Fp8BlockScaleMoE(*w, E, K, None, None, I, 0, E, None, 1, **KW)
    check(same(bound(lg, x), ref), "bound call differs")
    fn = mxmoe.trtllm_fp8_block_scale_moe
    for who, f in (("function", lambda lg_, x_, routing_bias=None: fn(lg_, routing_bias, x_, None, *w, E, K, None, None,
                                                                         I, 0, E, None, 1, **KW)),
                   ("bound", lambda lg_, x_, **k: bound(lg_, x_, **k))):
        call(lg, x, w)
        expect(f"{who} x dtype", lambda: f(lg, x.astype(np.int64)), TypeError, "hidden_states", "bfloat16")
        expect(f"{who} x f16", lambda: f(lg, x.astype(np.float16)), TypeError, "hidden_states", "float32")
        expect(f"{who} x 1-D", lambda: f(lg, x[0]), ValueError, "hidden_states", "2 dimensions")
        expect(f"{who} x H", lambda: f(lg, x[:, : H // 2].copy()), ValueError, "gemm1_weights", "expected shape")
        expect(f"{who} x non-contiguous", lambda: f(lg, np.repeat(x, 2, axis=1)[:, ::2]), ValueError,
               "hidden_states", "contiguous")
        expect(f"{who} logits T", lambda: f(lg[:2].copy(), x), ValueError, "routing_logits", f"[{T}, {E}]")
        expect(f"{who} logits E", lambda: f(lg[:, :4].copy(), x), ValueError, "routing_logits", f"[{T}, {E}]")
        expect(f"{who} logits dtype", lambda: f(lg.astype(np.float64), x), TypeError, "routing_logits", "float32")
        expect(f"{who} logits non-contiguous", lambda: f(np.repeat(lg, 2, axis=1)[:, ::2], x), ValueError,
               "routing_logits", "contiguous")
        expect(f"{who} logits list", lambda: f(lg.tolist(), x), TypeError, "routing_logits", "numpy array")
        expect(f"{who} x list", lambda: f(lg, x.tolist()), TypeError, "hidden_states", "numpy array")
        expect(f"{who} bias shape", lambda: f(lg, x, routing_bias=np.zeros(E + 1, np.float32)), ValueError,
               "routing_bias", f"[{E}]")
        expect(f"{who} bias dtype", lambda: f(lg, x, routing_bias=np.zeros(E, np.int32)), TypeError,
               "routing_bias", "float32")
        empty = f(lg[:0], x[:0])
        check(empty.shape == (0, H) and empty.dtype == ml_dtypes.bfloat16, f"{who}: T = 0 gives {empty.shape}")
        check(same(f(lg, x), ref), f"{who}: good call after the bad ones differs")
    # bias on the short path: same bits as the full path
    bias = rng.standard_normal(E).astype(np.float32)
    rb = mxmoe.trtllm_fp8_block_scale_moe(lg, bias, x, None, *w, E, K, None, None, I, 0, E, None, 1,
                                          routing_replay_out=np.empty((T, K), np.int16), **KW)
    got = [mxmoe.trtllm_fp8_block_scale_moe(lg, bias, x, None, *w, E, K, None, None, I, 0, E, None, 1, **KW)
           for _ in range(2)] + [bound(lg, x, routing_bias=bias)]
    check(all(same(g, rb) for g in got), "routing_bias on the short path differs")
    print("numpy: bad per-call inputs rejected on the short path as on the full one")

    fp8_cases(rng, w, bound)
    # a site dies with its weights; ids of new weights may repeat: results follow
    tmp = [a.copy() for a in w]
    call(lg, x, tmp)
    n = len(F._tls.fn)
    del tmp
    check(len(F._tls.fn) == n - 1, "a site outlived its weights")
    for _ in range(3):
        tmp = layer(rng)
        got = call(lg, x, tmp)
        check(same(got, reference(lg, x, tmp)), "new weights (ids maybe reused): result does not follow")
        del tmp
    # threads: one layer, the function and the bound call, at once
    xs = [rng.standard_normal((T, H)).astype(np.float32) for _ in range(4)]
    refs = [reference(lg, xx, w) for xx in xs]
    bad = []

    def worker(j):
        for _ in range(30):
            if not same(call(lg, xs[j], w), refs[j]) or not same(bound(lg, xs[j]), refs[j]):
                bad.append(j)
    th = [threading.Thread(target=worker, args=(j,)) for j in range(4)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    check(not bad, f"threads: {len(bad)} wrong results")
    print("numpy: sites die with their weights; 4 threads at once give their own results")


def fp8_cases(rng, w, bound):
    """FP8 hidden states with their scales (FlashInfer's usual call) on the short path: MxFp8 (uint8
    E8M0, T * H/32) and DeepSeekFp8 (float32 [H/128, T]); scale errors as on the full path."""
    T = 4
    q, sc = mxmoe.quantize_mxfp8(rng.standard_normal((T, H)).astype(np.float32))
    lg = rng.standard_normal((T, E)).astype(np.float32)
    fn = mxmoe.trtllm_fp8_block_scale_moe
    sc_args = (E, K, None, None, I, 0, E, None, 1)

    def f(x_, xs_, **k):
        return fn(lg, None, x_, xs_, *w, *sc_args, **dict(KW, **k))
    ref = f(q, sc, routing_replay_out=np.empty((T, K), np.int16))
    f(q, sc)
    for name, qq, ss in (("e4m3", q, sc), ("uint8 codes", q.view(np.uint8), sc), ("flat scales", q, sc.reshape(-1))):
        out, was_short = short(name, lambda: f(qq, ss))
        check(was_short and same(out, ref), f"MxFp8 x ({name}): not short, or differs from the full path")
    check(same(bound(lg, q, hidden_states_scale=sc), ref), "bound MxFp8 x differs")
    for who, g in (("function", f), ("bound", lambda x_, xs_: bound(lg, x_, hidden_states_scale=xs_))):
        expect(f"{who} scale missing", lambda: g(q, None), ValueError, "hidden_states_scale", "required")
        expect(f"{who} scale for f32 x", lambda: g(q.astype(np.float32), sc), ValueError, "hidden_states_scale",
               "must be None")
        expect(f"{who} scale size", lambda: g(q, sc[:, :-1].copy()), ValueError, "hidden_states_scale", "elements")
        expect(f"{who} scale dtype", lambda: g(q, sc.astype(np.int8)), TypeError, "hidden_states_scale", "uint8")
        expect(f"{who} scale non-contiguous", lambda: g(q, np.repeat(sc, 2, axis=1)[:, ::2]), ValueError,
               "hidden_states_scale", "contiguous")
        check(same(g(q, sc), ref), f"{who}: good FP8 call after the bad ones differs")
    # DeepSeek FP8: block-scaled weights, activations' scales float32 [H/128, T]
    M1, cb = 2 * I, lambda n: -(-n // 128)  # noqa: E731
    wd = [np.clip(rng.standard_normal((E, M1, H)) * 8, -448, 448).astype(F8),
          rng.uniform(0.002, 0.03, (E, cb(M1), cb(H))).astype(np.float32),
          np.clip(rng.standard_normal((E, H, I)) * 8, -448, 448).astype(F8),
          rng.uniform(0.002, 0.03, (E, cb(H), cb(I))).astype(np.float32)]
    qd = np.clip(rng.standard_normal((T, H)) * 8, -448, 448).astype(F8)
    sd = rng.uniform(0.05, 0.2, (cb(H), T)).astype(np.float32)
    kw = dict(num_threads=1, fp8_quantization_type=1, activation_type=3)
    ref = fn(lg, None, qd, sd, *wd, *sc_args, routing_replay_out=np.empty((T, K), np.int16), **kw)
    fn(lg, None, qd, sd, *wd, *sc_args, **kw)
    out, was_short = short("DeepSeekFp8", lambda: fn(lg, None, qd, sd, *wd, *sc_args, **kw))
    check(was_short and same(out, ref), "DeepSeekFp8 x: not short, or differs from the full path")
    expect("DeepSeek scale transposed", lambda: fn(lg, None, qd, sd.T.copy(), *wd, *sc_args, **kw), ValueError,
           "hidden_states_scale", f"[{cb(H)}, {T}]")
    expect("DeepSeek scale dtype", lambda: fn(lg, None, qd, sd.view(np.uint8), *wd, *sc_args, **kw), (TypeError,
           ValueError), "hidden_states_scale")
    print("numpy: FP8 hidden states with scales (MxFp8, DeepSeekFp8) on the short path, scale errors as before")


def torch_cases(rng):
    T = 3
    wn = layer(rng)
    w = [torch.from_numpy(a.view(np.uint8)).view(torch.float8_e4m3fn) if a.dtype == F8 else torch.from_numpy(a)
         for a in wn]
    x = torch.from_numpy(rng.standard_normal((T, H)).astype(np.float32))
    lg = torch.from_numpy(rng.standard_normal((T, E)).astype(np.float32))
    ref = reference(lg, x, w)
    call(lg, x, w)
    out, was_short = short("torch repeat", lambda: call(lg, x, w))
    check(was_short and same(out, ref), "torch: repeated call not short, or differs")
    # a new storage behind the same tensor object (set_): the data pointer is compared
    new = torch.from_numpy(layer(rng)[2].view(np.uint8)).view(torch.float8_e4m3fn)
    w[2].set_(new.untyped_storage(), 0, new.shape, new.stride())
    got = call(lg, x, w)
    check(same(got, reference(lg, x, w)) and not same(got, ref), "torch: set_ on a weight not followed")
    # .data replaced with another dtype: uint8 accepted, int8 not
    w[0].data = w[0].data.view(torch.uint8)
    check(same(call(lg, x, w), reference(lg, x, w)), "torch: uint8 weight differs")
    w[0].data = w[0].data.view(torch.int8)
    expect("torch weight dtype int8", lambda: call(lg, x, w), TypeError, "gemm1_weights", "uint8")
    w[0].data = w[0].data.view(torch.float8_e4m3fn)
    call(lg, x, w)
    expect("torch x dtype", lambda: call(lg, x.to(torch.float16), w), TypeError, "hidden_states", "float32")
    expect("torch x meta", lambda: call(lg, x.to("meta"), w), ValueError, "hidden_states", "meta")
    expect("torch logits meta", lambda: call(lg.to("meta"), x, w), ValueError, "routing_logits", "meta")
    expect("torch logits non-contiguous", lambda: call(lg.repeat(1, 2)[:, ::2], x, w), ValueError, "routing_logits",
           "contiguous")
    expect("torch logits shape", lambda: call(lg[:, :4].contiguous(), x, w), ValueError, "routing_logits",
           f"[{T}, {E}]")
    bound = mxmoe.Fp8BlockScaleMoE(*w, E, K, None, None, I, 0, E, None, 1, **KW)
    r = reference(lg, x, w)
    check(same(bound(lg, x), r) and same(call(lg, x, w), r), "torch: bound or function differs from the full path")
    expect("torch bound x non-contiguous", lambda: bound(lg, x.repeat(1, 2)[:, ::2]), ValueError, "hidden_states",
           "contiguous")
    # FP8 hidden states with MxFp8 scales
    qn, sn = mxmoe.quantize_mxfp8(rng.standard_normal((T, H)).astype(np.float32))
    qt, st = torch.from_numpy(qn.view(np.uint8)).view(torch.float8_e4m3fn), torch.from_numpy(sn)
    fr = mxmoe.trtllm_fp8_block_scale_moe(lg, None, qt, st, *w, E, K, None, None, I, 0, E, None, 1,
                                          routing_replay_out=torch.empty((T, K), dtype=torch.int16), **KW)
    got = [mxmoe.trtllm_fp8_block_scale_moe(lg, None, qt, st, *w, E, K, None, None, I, 0, E, None, 1, **KW)
           for _ in range(2)] + [bound(lg, qt, hidden_states_scale=st)]
    check(all(same(g, fr) for g in got), "torch FP8 x: differs from the full path")
    expect("torch scale dtype", lambda: bound(lg, qt, hidden_states_scale=st.float()), TypeError,
           "hidden_states_scale", "uint8")
    expect("torch scale meta", lambda: bound(lg, qt, hidden_states_scale=st.to("meta")), ValueError,
           "hidden_states_scale", "meta")
    # numpy and torch weights mixed (the full path accepts them: all on the host)
    wn2 = layer(rng)
    mixed = [wn2[0]] + [torch.from_numpy(a.view(np.uint8) if a.dtype == F8 else a) for a in wn2[1:]]
    r = reference(lg, x, mixed)
    check(same(call(lg, x, mixed), r) and same(call(lg, x, mixed), r), "mixed numpy/torch weights differ")
    new = torch.from_numpy(layer(rng)[3])
    mixed[3].set_(new.untyped_storage(), 0, new.shape, new.stride())
    got = call(lg, x, mixed)
    check(same(got, reference(lg, x, mixed)) and not same(got, r), "mixed weights: set_ on a scale not followed")
    # SwiGLU-OAI arrays (torch): values, a new array, a replaced storage
    oa = {k: torch.from_numpy(rng.uniform(lo, hi, E).astype(np.float32))
          for k, lo, hi in (("gemm1_alpha", 0.5, 2), ("gemm1_beta", 0, 1), ("gemm1_clamp_limit", 1, 8))}
    r = reference(lg, x, wn2, **oa)
    check(same(call(lg, x, wn2, **oa), r) and same(call(lg, x, wn2, **oa), r), "torch OA arrays: repeat differs")
    oa["gemm1_alpha"].mul_(1.5)
    r2 = reference(lg, x, wn2, **oa)
    check(same(call(lg, x, wn2, **oa), r2) and not same(r2, r), "torch OA values changed in place: not followed")
    oa["gemm1_beta"].data = torch.from_numpy(rng.uniform(0, 1, E).astype(np.float32))
    got = call(lg, x, wn2, **oa)
    check(same(got, reference(lg, x, wn2, **oa)) and not same(got, r2), "torch OA .data replaced: not followed")
    oa["gemm1_clamp_limit"].data = torch.ones(E + 1)
    expect("torch OA shape", lambda: call(lg, x, wn2, **oa), ValueError, "gemm1_clamp_limit", f"[{E}]")
    print("torch: short path, set_/.data changes followed (weights, mixed kinds, OA arrays), bad inputs rejected")


def main():
    t0 = time.time()
    rng = np.random.default_rng(seed())
    numpy_cases(rng)
    if torch is not None:
        torch_cases(rng)
    else:
        print("torch: not importable, torch-tensor cases skipped")
    check.finish(time.time() - t0)


if __name__ == "__main__":
    main()
