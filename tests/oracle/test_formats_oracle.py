#!/usr/bin/env python3
"""Oracle test of mxmoe's number formats against ml_dtypes and numpy (SPEC sections 2 and 7).

Loads the shared library named by the environment variable MXM_LIB with ctypes and compares:
  * every bf16 bit pattern (as float32) through mxm_e4m3_from_f32 vs ml_dtypes.float8_e4m3fn after
    clipping to +-448 (ml_dtypes 0.6 returns NaN above 464 instead of saturating), and through
    mxm_e5m2_from_f32 vs ml_dtypes.float8_e5m2 after clipping to +-57344; random float32 too;
  * E4M3 and E5M2 decode of all 256 codes vs ml_dtypes;
  * the MXFP8 quantizer (f32 and bf16 input, RCEIL and FLOOR) on random block-scaled data, with
    scales from the integer formulas of SPEC 2.2 in numpy (never ml_dtypes' E8M0 cast, which rounds
    to nearest), elements via float32 multiply + ml_dtypes E4M3; then the dequantizer.
Exit status: 0 pass, 1 failure, 77 skipped (numpy/ml_dtypes or MXM_LIB missing).
"""
import ctypes
import os
import sys
import time

import ml_dtypes
import numpy as np

from oracle_common import Checks, lib

u8, f32, i32, i64, vp = ctypes.c_uint8, ctypes.c_float, ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
for name, res, args in [
    ("mxm_e4m3_from_f32", u8, [f32]),
    ("mxm_e4m3_to_f32", f32, [u8]),
    ("mxm_e5m2_from_f32", u8, [f32]),
    ("mxm_e5m2_to_f32", f32, [u8]),
    ("mxm_e8m0_to_f32", f32, [u8]),
    ("mxm_mxfp8_quantize", i32, [vp, i32, i64, i64, i64, vp, vp, i32, i32]),
    ("mxm_mxfp8_dequantize", i32, [vp, vp, i64, i64, vp, i32, i32]),
]:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = res, args

DT_F32, DT_BF16 = 0, 1
RCEIL, FLOOR = 0, 1
E4M3, E5M2 = ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2

check = Checks("test_formats_oracle")
T_START = time.time()


def ptr(a):
    return a.ctypes.data_as(vp)


def first_diff(a, b):
    idx = np.flatnonzero(a != b)
    return idx[0] if idx.size else None


def lib_encode(fn, xs):
    return np.array([fn(float(v)) for v in xs], dtype=np.uint8)


def oracle_e4m3(x):
    """float32 array -> E4M3 codes via ml_dtypes, saturating."""
    with np.errstate(invalid="ignore"):
        return np.clip(x, -448.0, 448.0).astype(E4M3).view(np.uint8)


def compare_codes(got, exp, x, what):
    """Codes equal; NaN inputs: NaN code (0x7F/0xFF) with the input's sign."""
    nan = np.isnan(x)
    sign = np.signbit(x).astype(np.uint8) << 7
    exp = np.where(nan, 0x7F | sign, exp).astype(np.uint8)
    i = first_diff(got, exp)
    check(i is None, f"{what}: x={x[i] if i is not None else 0!r} got 0x{got[i] if i is not None else 0:02x} "
                     f"expected 0x{exp[i] if i is not None else 0:02x}")


# ---- 1. every bf16 pattern through the encoders ----------------------------------------------
allbf = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)
compare_codes(lib_encode(lib.mxm_e4m3_from_f32, allbf), oracle_e4m3(allbf), allbf, "E4M3 encode, all bf16")
with np.errstate(invalid="ignore", over="ignore"):
    e5 = np.clip(allbf, -57344.0, 57344.0).astype(E5M2).view(np.uint8)
compare_codes(lib_encode(lib.mxm_e5m2_from_f32, allbf), e5, allbf, "E5M2 encode, all bf16")

rng = np.random.default_rng(int(os.environ.get("MXM_TEST_SEED", time.time_ns() % (1 << 32))))
rnd = rng.integers(0, 1 << 32, 100000, dtype=np.uint64).astype(np.uint32)
rnd[::2] = (rnd[::2] & 0x80FFFFFF) | (((rnd[::2] >> 24) % 40 + 100) << 23).astype(np.uint32)  # E4M3 range
rndf = rnd.view(np.float32)
compare_codes(lib_encode(lib.mxm_e4m3_from_f32, rndf), oracle_e4m3(rndf), rndf, "E4M3 encode, random f32")

# ---- 2. decode of all codes -----------------------------------------------------------------
codes = np.arange(256, dtype=np.uint8)
for name, fn, dt in [("E4M3", lib.mxm_e4m3_to_f32, E4M3), ("E5M2", lib.mxm_e5m2_to_f32, E5M2)]:
    got = np.array([fn(int(c)) for c in codes], dtype=np.float32)
    exp = codes.view(dt).astype(np.float32)
    same = (got.view(np.uint32) == exp.view(np.uint32)) | (np.isnan(got) & np.isnan(exp))
    check(bool(same.all()), f"{name} decode: codes {codes[~same][:8]}")
e8 = np.array([lib.mxm_e8m0_to_f32(int(c)) for c in codes], dtype=np.float32)
e8_exp = np.where(codes == 255, np.nan, np.ldexp(1.0, codes.astype(np.int32) - 127)).astype(np.float32)
check(bool(((e8 == e8_exp) | (np.isnan(e8) & np.isnan(e8_exp))).all()), "E8M0 decode")


# ---- 3. MXFP8 quantizer and dequantizer -------------------------------------------------------
def scale_bytes(amax, rule):
    """SPEC 2.2 scale byte from the integer formulas (amax: float32 array, finite, >= 0)."""
    if rule == FLOOR:
        e = (amax.view(np.uint32) >> 23).astype(np.int64) - 8
        return np.clip(e, 0, 254).astype(np.uint8)
    d = (amax * np.float32(1.0 / 448.0)).astype(np.float32)
    bits = d.view(np.uint32).astype(np.int64)
    E, m = bits >> 23, bits & 0x7FFFFF
    b = E + ((m != 0) & ((E != 0) | (m > 0x400000)))
    return np.minimum(b, 254).astype(np.uint8)


def quantize_oracle(x, rule):
    """x: float32 [rows, cols] -> (codes uint8 [rows, cols], scales uint8 [rows, cols/32])."""
    rows, cols = x.shape
    blk = x.reshape(rows, cols // 32, 32)
    special = ~np.isfinite(blk).all(axis=2)
    amax = np.where(special, 0, np.abs(np.where(np.isfinite(blk), blk, 0)).max(axis=2)).astype(np.float32)
    b = scale_bytes(amax, rule).astype(np.int64)
    inv_bits = np.where(b == 254, 0x00400000, (254 - b) << 23).astype(np.uint32)
    inv = inv_bits.view(np.float32)[..., None]
    with np.errstate(invalid="ignore", over="ignore"):
        q = oracle_e4m3((blk * inv).astype(np.float32))
    sign = (np.signbit(blk).astype(np.uint8) << 7)
    q = np.where((b == 0)[..., None], sign, q)
    q = np.where(special[..., None], np.uint8(0x7F), q)
    s = np.where(special, 255, b).astype(np.uint8)
    return q.reshape(rows, cols).astype(np.uint8), s


def dequantize_oracle(q, s):
    rows, cols = q.shape
    v = q.view(E4M3).astype(np.float32).reshape(rows, cols // 32, 32)
    sb = s.astype(np.uint32)
    scale = np.where(sb == 0, 0x00400000, sb << 23).astype(np.uint32).view(np.float32)
    scale = np.where(sb == 255, np.float32(np.nan), scale).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        return (v * scale[..., None]).astype(np.float32).reshape(rows, cols)


def make_data(rows, cols):
    x = rng.standard_normal((rows, cols // 32, 32)).astype(np.float32)
    e = rng.integers(-20, 21, (rows, cols // 32, 1))
    e[0, :2] = [[-140], [120]]  # subnormal and huge blocks
    x = (x * np.ldexp(np.float32(1), e).astype(np.float32)).astype(np.float32).reshape(rows, cols)
    flat = x.reshape(-1)
    k = max(1, flat.size // 500)
    sp = np.array([0.0, -0.0, 448.0, -464.0, 1e-40, np.finfo(np.float32).max], dtype=np.float32)
    flat[rng.integers(0, flat.size, k)] = sp[rng.integers(0, sp.size, k)]
    flat[rng.integers(0, flat.size, 3)] = np.array([np.nan, np.inf, -np.inf], dtype=np.float32)
    x[1, 32:64] = 0.0  # an all-zero block
    # edge amaxes in row 2: d = 2^-127 exactly (flushed) and just above, 448 * 2^k and neighbours,
    # significand above 1.75, FLT_MAX
    edges = [np.ldexp(np.float32(1.75), -119), np.nextafter(np.ldexp(np.float32(1.75), -119), np.float32(1)),
             np.float32(448.0), np.nextafter(np.float32(448.0), np.float32(0)), np.nextafter(np.float32(448.0), np.float32(1e9)),
             np.ldexp(np.float32(448.0), -100), np.ldexp(np.float32(1.8), 3), np.ldexp(np.float32(1.75), 3),
             np.finfo(np.float32).max]
    for j, a in enumerate(edges[: cols // 32]):
        blk = (rng.uniform(-1, 1, 32) * a).astype(np.float32)
        blk[rng.integers(0, 32)] = -a if j % 2 else a
        x[2, 32 * j: 32 * j + 32] = blk
    return x


for rows, cols in [(7, 96), (64, 2080), (129, 544)]:
    x = make_data(rows, cols)
    xb = x.astype(ml_dtypes.bfloat16)
    for rule in (RCEIL, FLOOR):
        for name, src, dt, ref_in in [("f32", x, DT_F32, x), ("bf16", xb, DT_BF16, xb.astype(np.float32))]:
            q = np.full((rows, cols), 0xA5, dtype=np.uint8)
            s = np.full((rows, cols // 32), 0xA5, dtype=np.uint8)
            st = lib.mxm_mxfp8_quantize(ptr(np.ascontiguousarray(src)), dt, rows, cols, 0, ptr(q), ptr(s), rule, 2)
            check(st == 0, f"mxm_mxfp8_quantize status {st}")
            qe, se = quantize_oracle(ref_in, rule)
            i = first_diff(s.reshape(-1), se.reshape(-1))
            check(i is None, f"MXFP8 scales [{rows},{cols}] {name} rule {rule}: block {i}: "
                             f"{s.reshape(-1)[i] if i is not None else ''} vs {se.reshape(-1)[i] if i is not None else ''}")
            i = first_diff(q.reshape(-1), qe.reshape(-1))
            check(i is None, f"MXFP8 codes [{rows},{cols}] {name} rule {rule}: element {i}: x="
                             f"{ref_in.reshape(-1)[i] if i is not None else ''} "
                             f"0x{q.reshape(-1)[i] if i is not None else 0:02x} vs 0x{qe.reshape(-1)[i] if i is not None else 0:02x}")
            out = np.empty((rows, cols), dtype=np.float32)
            st = lib.mxm_mxfp8_dequantize(ptr(q), ptr(s), rows, cols, ptr(out), DT_F32, 2)
            check(st == 0, f"mxm_mxfp8_dequantize status {st}")
            oe = dequantize_oracle(qe, se)
            same = (out.view(np.uint32) == oe.view(np.uint32)) | (np.isnan(out) & np.isnan(oe))
            check(bool(same.all()), f"MXFP8 dequantize [{rows},{cols}] {name} rule {rule}")
            outb = np.empty((rows, cols), dtype=ml_dtypes.bfloat16)
            st = lib.mxm_mxfp8_dequantize(ptr(q), ptr(s), rows, cols, ptr(outb), DT_BF16, 1)
            ob = oe.astype(ml_dtypes.bfloat16)  # ml_dtypes' float32 -> bf16 is RNE
            same = (outb.view(np.uint16) == ob.view(np.uint16)) | (np.isnan(outb.astype(np.float32)) & np.isnan(oe))
            check(st == 0 and bool(same.all()), f"MXFP8 dequantize bf16 [{rows},{cols}] {name} rule {rule}")

# sanity: the oracle itself must see RCEIL and FLOOR differ on some data
a = np.array([1.8, 1.7, 448.0, 449.0], dtype=np.float32)
check(list(scale_bytes(a, RCEIL)) == [120, 119, 127, 128] and list(scale_bytes(a, FLOOR)) == [119, 119, 127, 127],
      "scale formula sanity")

print(f"(65536 bf16 patterns, 256 codes, MXFP8 quantize/dequantize vs ml_dtypes {ml_dtypes.__version__})")
check.finish(time.time() - T_START)
