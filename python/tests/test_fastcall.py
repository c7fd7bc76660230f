#!/usr/bin/env python3
"""mxmoe._fastcall (the short path's per-call work in C) against _fast (the same work in Python,
through ctypes): both on one site, call by call, so that any difference is the extension's.

1. Every input of a battery gets the same answer from both: None (the caller then takes the full
   path, whose exceptions test_call_cache checks) or an output of the same kind, shape, dtype,
   strides and bits, with the same mxm_moe_inputs / mxm_moe_outputs handed to the library. The
   battery has good inputs (f32/bf16 hidden states and logits, FP8 codes with MxFp8 and DeepSeekFp8
   scales, routing bias, T beyond the site's plan) and, for every check of _fast, inputs that fail
   it alone (kind, subclass, dtype, byte order, an equal dtype object that is another object,
   dimensions, H, T, E, contiguity, device, scales' dtype / size / shape, bias).
2. The function's weight re-check (11 arguments): unchanged weights, a reshape or a dtype change
   in place, a new torch storage (set_), SwiGLU-OAI arrays: the same answer from both.
3. A failing forward raises the same MxmError from both, called with the same arguments.
4. The public calls take the extension on CPU sites.
With torch importable, the same on torch CPU tensors (and meta tensors for the device check).
Exit status 0 pass, 1 failure, 77 skipped (no extension: MXMOE_FASTCALL=0)."""
import ctypes
import os
import time

import ml_dtypes
import numpy as np

from pkgtest import Checks, mxmoe, seed, skip, torch
from mxmoe import _capi
from mxmoe import _flashinfer as F

check = Checks("test_fastcall")
F8, BF16 = ml_dtypes.float8_e4m3fn, ml_dtypes.bfloat16
H, I, E, K = 256, 64, 8, 2
KW = dict(num_threads=1, activation_type=3)


def answer(fn):
    """('none',) | ('out', result) | ('raise', type, message)"""
    try:
        r = fn()
    except Exception as e:  # noqa: BLE001
        return ("raise", type(e), str(e))
    return ("none",) if r is None else ("out", r)


def structs(s):
    o = _capi.Outputs.from_buffer_copy(s.outs)
    o.out = 0  # each call allocates its own output
    return bytes(s.inp), bytes(o)


def same_out(a, b):
    if type(a) is not type(b) or a.shape != b.shape or a.dtype != b.dtype:
        return False
    if isinstance(a, np.ndarray):
        return a.strides == b.strides and np.array_equal(a.view(np.uint16), b.view(np.uint16))
    return (a.stride() == b.stride() and a.device == b.device and a.requires_grad == b.requires_grad
            and torch.equal(a.view(torch.int16), b.view(torch.int16)))


counts = {"none": 0, "out": 0, "raise": 0}


def compare(what, s, *args):
    """_fast(s, *args) and s.call(*args): the same answer and structs."""
    py = answer(lambda: F._fast(s, *args))
    st_py = structs(s)
    c = answer(lambda: s.call(*args))
    st_c = structs(s)
    counts[py[0]] += 1
    if py[0] != c[0]:
        check(False, f"{what}: _fast gives {py[0]}, the extension {c[0]} ({py[1:]} / {c[1:]})")
    elif py[0] == "out":
        check(same_out(py[1], c[1]), f"{what}: the outputs differ")
        check(st_py == st_c, f"{what}: the structs handed to mxm_moe_forward differ")
    elif py[0] == "raise":
        check(py[1:] == c[1:], f"{what}: _fast raises {py[1:]}, the extension {c[1:]}")
    return py[0]


class Sub(np.ndarray):
    pass


def noncontig(a):
    """a's values in a non-contiguous view of the same shape"""
    if isinstance(a, np.ndarray):
        return np.repeat(a, 2, axis=-1)[..., ::2]
    return a.repeat_interleave(2, dim=-1)[..., ::2]


def numpy_battery(rng, mx):
    """Good and bad per-call inputs for a site of MxFp8 (mx) or DeepSeekFp8 weights."""
    cases = []
    for T in (1, 5, 40, 100):  # 40, 100: beyond the site's first plan (plan_for in between)
        x = rng.standard_normal((T, H)).astype(np.float32)
        lg = rng.standard_normal((T, E)).astype(np.float32)
        cases += [(f"T={T} f32", x, lg, None, None), (f"T={T} bf16", x.astype(BF16), lg.astype(BF16), None, None)]
    T = 6
    x = rng.standard_normal((T, H)).astype(np.float32)
    lg = rng.standard_normal((T, E)).astype(np.float32)
    b = rng.standard_normal(E).astype(np.float32)
    if mx:
        q, sc = mxmoe.quantize_mxfp8(x)
    else:
        q = np.clip(x * 8, -448, 448).astype(F8)
        sc = rng.uniform(0.05, 0.2, (H // 128, T)).astype(np.float32)
    ro = x.copy()
    ro.setflags(write=False)
    other_f32 = np.dtype(np.float32, metadata={"other": 1})  # == float32, another object
    cases += [
        ("f32 x, bf16 logits", x, lg.astype(BF16), None, None),
        ("read-only x", ro, lg, None, None),
        ("bias f32", x, lg, b, None), ("bias bf16", x, lg, b.astype(BF16), None),
        ("FP8 x + scales", q, lg, None, sc), ("uint8 codes + scales", q.view(np.uint8), lg, None, sc),
        ("FP8 x + scales + bias", q, lg, b, sc),
        ("scales flat", q, lg, None, sc.reshape(-1)), ("scales 3-D", q, lg, None, sc.reshape(sc.shape[0], 2, -1)),
        ("scales transposed", q, lg, None, sc.T.copy()), ("scales non-contiguous", q, lg, None, noncontig(sc)),
        ("scales int8", q, lg, None, sc.view(np.int8) if mx else sc.astype(np.int8)),
        ("scales uint8 / f32 swapped", q, lg, None,
         sc.view(np.float32) if mx and sc.size % 4 == 0 else sc.view(np.uint8)),
        ("scales list", q, lg, None, sc.tolist()), ("scales one short", q, lg, None, sc.reshape(-1)[:-1].copy()),
        ("scales for f32 x", x, lg, None, sc), ("no scales for FP8 x", q, lg, None, None),
        ("x subclass", x.view(Sub), lg, None, None), ("logits subclass", x, lg.view(Sub), None, None),
        ("x list", x.tolist(), lg, None, None), ("logits list", x, lg.tolist(), None, None),
        ("logits None", x, None, None, None),
        ("x f16", x.astype(np.float16), lg, None, None), ("x f64", x.astype(np.float64), lg, None, None),
        ("x int64", x.astype(np.int64), lg, None, None), ("x big-endian f32", x.astype(">f4"), lg, None, None),
        ("x f32 with metadata", x.view(other_f32), lg, None, None),
        ("logits f32 with metadata", x, lg.view(other_f32), None, None),
        ("logits f64", x, lg.astype(np.float64), None, None), ("logits FP8", x, lg.astype(F8), None, None),
        ("x 1-D", x[0], lg[:1], None, None), ("x 3-D", x[None], lg, None, None),
        ("x H/2", x[:, : H // 2].copy(), lg, None, None), ("x T=0", x[:0], lg[:0], None, None),
        ("x non-contiguous", noncontig(x), lg, None, None), ("x Fortran order", np.asfortranarray(x), lg, None, None),
        ("x broadcast", np.broadcast_to(x[:1], x.shape), lg, None, None),
        ("logits T-1", x, lg[:-1].copy(), None, None), ("logits E-1", x, lg[:, :-1].copy(), None, None),
        ("logits 1-D", x[:1], lg[0], None, None), ("logits non-contiguous", x, noncontig(lg), None, None),
        ("bias E+1", x, lg, np.zeros(E + 1, np.float32), None), ("bias [1, E]", x, lg, b[None], None),
        ("bias int32", x, lg, b.astype(np.int32), None), ("bias f64", x, lg, b.astype(np.float64), None),
        ("bias non-contiguous", x, lg, noncontig(b), None), ("bias list", x, lg, b.tolist(), None),
        ("bias subclass", x, lg, b.view(Sub), None),
    ]
    if torch is not None:
        cases += [("numpy x, torch logits", x, torch.from_numpy(lg), None, None),
                  ("torch bias", x, lg, torch.from_numpy(b), None),
                  ("torch scales", q, lg, None, torch.from_numpy(sc))]
    return cases


def torch_battery(rng, mx):
    """The same on torch CPU tensors (and meta ones)."""
    t = torch.from_numpy
    cases = []
    for T in (1, 5, 40, 100):
        x = t(rng.standard_normal((T, H)).astype(np.float32))
        lg = t(rng.standard_normal((T, E)).astype(np.float32))
        cases += [(f"torch T={T} f32", x, lg, None, None),
                  (f"torch T={T} bf16", x.bfloat16(), lg.bfloat16(), None, None)]
    T = 6
    xn = rng.standard_normal((T, H)).astype(np.float32)
    x, lg, b = t(xn), t(rng.standard_normal((T, E)).astype(np.float32)), t(rng.standard_normal(E).astype(np.float32))
    if mx:
        qn, scn = mxmoe.quantize_mxfp8(xn)
    else:
        qn = np.clip(xn * 8, -448, 448).astype(F8)
        scn = rng.uniform(0.05, 0.2, (H // 128, T)).astype(np.float32)
    q, sc = t(qn.view(np.uint8)).view(torch.float8_e4m3fn), t(scn)
    one = t(rng.standard_normal((H, 1)).astype(np.float32)).t()  # [1, H], strides (1, 1): contiguous
    cases += [
        ("torch x [1, H] of strides (1, 1)", one, lg[:1].clone(), None, None),
        ("torch x requires_grad", x.clone().requires_grad_(), lg, None, None),
        ("torch bias f32", x, lg, b, None), ("torch bias bf16", x, lg, b.bfloat16(), None),
        ("torch FP8 x + scales", q, lg, None, sc), ("torch uint8 codes + scales", q.view(torch.uint8), lg, None, sc),
        ("torch scales flat", q, lg, None, sc.reshape(-1)),
        ("torch scales transposed", q, lg, None, sc.t().contiguous()),
        ("torch scales non-contiguous", q, lg, None, noncontig(sc)),
        ("torch scales int8 / f64", q, lg, None, sc.view(torch.int8) if mx else sc.double()),
        ("torch scales meta", q, lg, None, sc.to("meta")), ("torch scales one short", q, lg, None, sc.reshape(-1)[:-1]),
        ("torch scales for f32 x", x, lg, None, sc), ("torch no scales for FP8 x", q, lg, None, None),
        ("torch scales numpy", q, lg, None, scn),
        ("torch x Parameter", torch.nn.Parameter(x, requires_grad=False), lg, None, None),
        ("torch logits Parameter", x, torch.nn.Parameter(lg, requires_grad=False), None, None),
        ("torch x f16", x.half(), lg, None, None), ("torch x f64", x.double(), lg, None, None),
        ("torch x int8", x.to(torch.int8), lg, None, None), ("torch logits f64", x, lg.double(), None, None),
        ("torch x 1-D", x[0], lg[:1], None, None), ("torch x 3-D", x[None], lg, None, None),
        ("torch x H/2", x[:, : H // 2].contiguous(), lg, None, None), ("torch T=0", x[:0], lg[:0], None, None),
        ("torch x non-contiguous", noncontig(x), lg, None, None),
        ("torch x transposed", x.t().contiguous().t(), lg, None, None),
        ("torch x expanded", x[:1].expand(T, H), lg, None, None),
        ("torch logits T-1", x, lg[:-1], None, None), ("torch logits E-1", x, lg[:, :-1].contiguous(), None, None),
        ("torch logits non-contiguous", x, noncontig(lg), None, None),
        ("torch x meta", x.to("meta"), lg, None, None), ("torch logits meta", x, lg.to("meta"), None, None),
        ("torch bias E+1", x, lg, torch.zeros(E + 1), None), ("torch bias [1, E]", x, lg, b[None], None),
        ("torch bias f64", x, lg, b.double(), None), ("torch bias non-contiguous", x, lg, noncontig(b), None),
        ("torch bias meta", x, lg, b.to("meta"), None), ("torch bias numpy", x, lg, b.numpy(), None),
        ("torch x, numpy logits", x, lg.numpy(), None, None), ("torch x list", x.tolist(), lg, None, None),
    ]
    return cases


def layer(rng, mx):
    if mx:
        q1, s1 = mxmoe.quantize_mxfp8((rng.standard_normal((E, 2 * I, H)) / np.sqrt(H)).astype(np.float32))
        q2, s2 = mxmoe.quantize_mxfp8((rng.standard_normal((E, H, I)) / np.sqrt(I)).astype(np.float32))
        return [q1, s1, q2, s2]
    cb = lambda n: -(-n // 128)  # noqa: E731
    return [np.clip(rng.standard_normal((E, 2 * I, H)) * 8, -448, 448).astype(F8),
            rng.uniform(0.002, 0.03, (E, cb(2 * I), cb(H))).astype(np.float32),
            np.clip(rng.standard_normal((E, H, I)) * 8, -448, 448).astype(F8),
            rng.uniform(0.002, 0.03, (E, cb(H), cb(I))).astype(np.float32)]


def scalars(mx):
    return (E, K, None, None, I, 0, E, None, 1), dict(KW, fp8_quantization_type=2 if mx else 1)


def per_call_cases(rng):
    for mx in (True, False):
        w = layer(rng, mx)
        sc, kw = scalars(mx)
        bound = mxmoe.Fp8BlockScaleMoE(*w, *sc, **kw)
        s = bound._site
        check(s.c_ready == 1, "a CPU site is not set up in the extension")
        batteries = [numpy_battery(rng, mx)]
        if torch is not None:
            tw = [torch.from_numpy(a.view(np.uint8)).view(torch.float8_e4m3fn) if a.dtype == F8 else torch.from_numpy(a)
                  for a in w]
            tbound = mxmoe.Fp8BlockScaleMoE(*tw, *sc, **kw)
            batteries.append(torch_battery(rng, mx))
            s_t = tbound._site
        for cases, site in zip(batteries, (s, s_t if torch is not None else None)):
            kinds = [compare(name, site, x, lg, b, xs) for name, x, lg, b, xs in cases]
            print(f"{'MxFp8' if mx else 'DeepSeekFp8'} {'numpy' if site is s else 'torch'}: {len(cases)} inputs, "
                  f"{kinds.count('out')} computed, {kinds.count('none')} to the full path, "
                  f"{kinds.count('raise')} raised; the extension agrees with _fast on each")
            check(kinds.count("out") >= 8 and kinds.count("none") >= 20, f"battery too one-sided: {kinds}")


def weight_cases(rng):
    """The function's site: the 11-argument call re-checks the weights against the site's meta."""
    T = 3
    x = rng.standard_normal((T, H)).astype(np.float32)
    lg = rng.standard_normal((T, E)).astype(np.float32)
    sc, kw = scalars(True)

    def site_of(w, oa=(None, None, None)):
        F._fn_sites().clear()
        for _ in range(2):
            mxmoe.trtllm_fp8_block_scale_moe(lg, None, x, None, *w, *sc, gemm1_alpha=oa[0], gemm1_beta=oa[1],
                                             gemm1_clamp_limit=oa[2], **kw)
        (s,) = F._fn_sites().values()
        return s

    w = layer(rng, True)
    s = site_of(w)
    args = (x, lg, None, None)
    check(compare("weights unchanged", s, *args, *w, None, None, None) == "out", "unchanged weights: not computed")
    w[3].shape = (-1,)
    check(compare("scale reshaped in place", s, *args, *w, None, None, None) == "none", "reshape not seen")
    w[3].shape = (E, H, I // 32)
    w[0].dtype = np.uint8
    check(compare("weight dtype changed in place", s, *args, *w, None, None, None) == "none", "dtype change not seen")
    w[0].dtype = F8
    oa = [rng.uniform(0.5, 2, E).astype(np.float32), rng.uniform(0, 1, E).astype(np.float32),
          rng.uniform(1, 8, E).astype(np.float32)]
    s = site_of(w, oa)
    check(compare("OA arrays unchanged", s, *args, *w, *oa) == "out", "OA arrays: not computed")
    oa[2].shape = (2, E // 2)
    check(compare("OA array reshaped", s, *args, *w, *oa) == "none", "OA reshape not seen")
    oa[2].shape = (E,)
    oa[1].dtype = np.int32
    check(compare("OA array dtype", s, *args, *w, *oa) == "none", "OA dtype change not seen")
    if torch is not None:
        tw = [torch.from_numpy(a.view(np.uint8)).view(torch.float8_e4m3fn) if a.dtype == F8 else torch.from_numpy(a)
              for a in layer(rng, True)]
        s = site_of(tw)
        targs = (torch.from_numpy(x), torch.from_numpy(lg), None, None)
        check(compare("torch weights unchanged", s, *targs, *tw, None, None, None) == "out", "torch: not computed")
        new = torch.from_numpy(layer(rng, True)[2].view(np.uint8)).view(torch.float8_e4m3fn)
        tw[2].set_(new.untyped_storage(), 0, new.shape, new.stride())
        check(compare("torch weight set_", s, *targs, *tw, None, None, None) == "none", "set_ not seen")
        s = site_of(tw)
        tw[1].data = tw[1].data.view(torch.int8)
        check(compare("torch weight .data dtype", s, *targs, *tw, None, None, None) == "none", ".data not seen")
        tw[1].data = tw[1].data.view(torch.uint8)
        pw = [torch.nn.Parameter(a, requires_grad=False) for a in tw]  # a subclass: attributes looked up
        s = site_of(pw)
        check(compare("torch Parameter weights", s, *targs, *pw, None, None, None) == "out", "Parameters: not computed")
        pw[3].data = pw[3].data.reshape(-1)
        check(compare("torch Parameter reshaped", s, *targs, *pw, None, None, None) == "none", "reshape not seen")
    print("function sites: weights unchanged, reshaped, dtype changed, torch set_/.data, OA arrays: same answers")


def forward_error_cases(rng):
    """A failing mxm_moe_forward (a stand-in of its type returning an error, and recording its
    arguments): the same MxmError from both, and the same arguments handed to it."""
    w = layer(rng, True)
    sc, kw = scalars(True)
    s = mxmoe.Fp8BlockScaleMoE(*w, *sc, **kw)._site
    x = rng.standard_normal((4, H)).astype(np.float32)
    lg = rng.standard_normal((4, E)).astype(np.float32)
    F._fast(s, x, lg, None, None)  # a plan
    status = _capi.ENUMS["MXM_ERR_INVALID_ARG"]
    seen = []
    proto = ctypes.CFUNCTYPE(ctypes.c_int32, *[ctypes.c_void_p] * 5, ctypes.c_int64, ctypes.c_void_p)

    @proto
    def failing(plan, weights, inputs, outputs, ws, wsb, stream):
        seen.append((plan, weights, inputs, outputs, ws, wsb, stream))
        return status
    real = F._fwd_fast
    F._fwd_fast = failing
    F._ext_setup(ctypes.cast(failing, ctypes.c_void_p).value)
    try:
        py = answer(lambda: F._fast(s, x, lg, None, None))
        c = answer(lambda: s.call(x, lg, None, None))
    finally:
        F._fwd_fast = real
        F._ext_setup()
    check(py[0] == "raise" and py[1] is mxmoe.MxmError and py[1:] == c[1:], f"failing forward: {py} / {c}")
    check(len(seen) == 2 and seen[0] == seen[1], f"the forward's arguments differ: {seen}")
    print(f"failing forward: both raise {py[2]!r}, same arguments")
    check(s.call(x, lg, None, None) is not None, "the real forward is not back")


def main():
    if F._ext is None:
        if os.environ.get("MXMOE_FASTCALL") == "0":
            skip("MXMOE_FASTCALL=0: the extension is not used")
        check(False, "mxmoe._fastcall is not importable: `pip install ./python` builds it")
        check.finish(0)
    t0 = time.time()
    rng = np.random.default_rng(seed())
    check(issubclass(F._Site, F._ext.Site), "_Site is not the extension's Site")
    per_call_cases(rng)
    weight_cases(rng)
    forward_error_cases(rng)
    print(f"answers compared: {counts}")
    check.finish(time.time() - t0)


if __name__ == "__main__":
    main()
