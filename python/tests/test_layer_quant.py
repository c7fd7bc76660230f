#!/usr/bin/env python3
"""mxmoe.quantize_mxfp8 / dequantize_mxfp8 / quantize_fp8_block against numpy references (the
MXFP8 ones of tests/oracle/test_moe_oracle.py, SPEC 2.2's FLOOR rule and 2.3's DeepSeek rule
written here), bit for bit; and mxmoe.load_layer / MoELayer on the fixtures of tests/data against
transformers' outputs (reference.safetensors): weight-only fp32 runs to 1e-5 (the MXFP8 fixtures'
references use the dequantized weights), W8A8 within the CLI's 0.08, routing ids equal.
With torch importable, the same on torch tensors. Exit status 0 pass, 1 failure."""
import os
import time

import ml_dtypes
import numpy as np

from pkgtest import Checks, SRC, mxmoe, seed, torch
import test_moe_oracle as mo

check = Checks("test_layer_quant")
F8, BF = ml_dtypes.float8_e4m3fn, ml_dtypes.bfloat16


def quant(rng):
    for shape in ((7, 96), (3, 5, 64), (1, 32), (0, 64)):
        x = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape[:-1] + (1,)))).astype(np.float32)
        if x.size > 64:
            x.reshape(-1)[:32] = 0.0  # an all-zero block
            x.reshape(-1)[32:64] *= 1e-3 / np.abs(x.reshape(-1)[32:64]).max()
            x.reshape(-1)[40] = 448.0 * 2.0 ** -12  # amax exactly 448 * 2^-12 (scale byte 115)
        q, s = mxmoe.quantize_mxfp8(x)
        rq, rs = mo.mx_quantize(x.reshape(-1, shape[-1])) if x.size else (np.zeros(shape, np.uint8), np.zeros(shape[:-1] + (shape[-1] // 32,), np.uint8))
        ok = q.dtype == F8 and q.shape == shape and s.shape == shape[:-1] + (shape[-1] // 32,) and \
            np.array_equal(q.view(np.uint8).reshape(-1), rq.reshape(-1)) and np.array_equal(s.reshape(-1), rs.reshape(-1))
        check(ok, f"quantize_mxfp8 {shape} differs from the oracle")
        d = mxmoe.dequantize_mxfp8(q, s)
        ok = d.dtype == np.float32 and np.array_equal(d.reshape(-1), mo.mx_dequantize(rq.reshape(-1, shape[-1]), rs.reshape(
            -1, shape[-1] // 32)).astype(np.float32).reshape(-1)) if x.size else d.shape == shape
        check(ok, f"dequantize_mxfp8 {shape} differs from the oracle")
        db = mxmoe.dequantize_mxfp8(q, s, dtype="bfloat16")
        check(db.dtype == BF and np.array_equal(db, d.astype(BF)), f"dequantize_mxfp8 bf16 {shape}")
        # FLOOR: b = clamp(exponent bits of amax - 8, 0, 254)
        qf, sf = mxmoe.quantize_mxfp8(x.astype(BF), scale_rule="floor")
        xb = x.astype(BF).astype(np.float32).reshape(-1, 32)
        amax = np.abs(xb).max(axis=1)
        b = np.clip(((amax.view(np.uint32) >> 23) & 0xFF).astype(np.int64) - 8, 0, 254)
        b[amax == 0] = 0
        ok = np.array_equal(sf.reshape(-1), b.astype(np.uint8)) and np.array_equal(
            qf.view(np.uint8).reshape(-1), mo.mx_codes_at(xb.astype(np.float64), b).reshape(-1))
        check(ok, f"quantize_mxfp8 floor bf16 {shape} differs from SPEC 2.2")
    # DeepSeek FP8: s = max(amax / 448, FLT_MIN), q = e4m3(x / s)
    R, C = 200, 300
    x = (rng.standard_normal((R, C)) * 3).astype(np.float32)
    for block, tr in (("weight", False), ("act", False), ("act", True)):
        q, s = mxmoe.quantize_fp8_block(x, block=block, scales_transposed=tr)
        br = 128 if block == "weight" else 1
        ok = True
        for i in range(0, R, br):
            for j in range(0, C, 128):
                blk = x[i:i + br, j:j + 128]
                sc = np.maximum(np.float32(np.abs(blk).max()) / np.float32(448), np.float32(np.finfo(np.float32).tiny))
                si = s[i // br, j // 128] if not tr else s[j // 128, i]
                rq = np.clip(blk / sc, -448, 448).astype(F8).view(np.uint8)
                ok &= bool(si == sc) and np.array_equal(q[i:i + br, j:j + 128].view(np.uint8), rq)
        check(ok, f"quantize_fp8_block {block} transposed={tr} differs from SPEC 2.3")
        d = mxmoe.dequantize_fp8_block(q, s, block=block, scales_transposed=tr)
        check(np.abs(d - x).max() <= np.abs(x).max() / 16, f"dequantize_fp8_block {block}: far from x")
    for bad, what in ((lambda: mxmoe.quantize_mxfp8(np.zeros((2, 40), np.float32)), "multiple of 32"),
                      (lambda: mxmoe.quantize_mxfp8(np.zeros((2, 64), np.int32)), "float32"),
                      (lambda: mxmoe.quantize_mxfp8(np.zeros((2, 64), np.float32), scale_rule="up"), "rceil, floor")):
        try:
            bad()
            check(False, f"no error ({what})")
        except (ValueError, TypeError) as e:
            check(what in str(e), f"message '{e}' lacks '{what}'")
    if torch is not None:
        xt = torch.from_numpy(x[:, :288].copy()).to(torch.bfloat16)
        q, s = mxmoe.quantize_mxfp8(xt)
        qn, sn = mxmoe.quantize_mxfp8(xt.float().numpy().astype(BF))
        check(q.dtype == torch.float8_e4m3fn and np.array_equal(q.view(torch.uint8).numpy(), qn.view(np.uint8))
              and np.array_equal(s.numpy(), sn), "quantize_mxfp8 on torch differs from numpy")
        d = mxmoe.dequantize_mxfp8(q, s, dtype="bfloat16")
        check(d.dtype == torch.bfloat16 and d.shape == xt.shape, "dequantize_mxfp8 on torch")
    print("quantizers: done")


def layers():
    for fam in ("qwen3_moe", "nemotron_h", "deepseek_v3"):
        path = os.path.join(SRC, "tests", "data", f"{fam}_tiny_mxfp8")
        ref = mxmoe.Model(os.path.join(path, "reference.safetensors"))
        exact = mxmoe.load_layer(path, act_quant="none", profile="exact")
        w8a8 = mxmoe.load_layer(path)
        check(exact.family == fam and w8a8.num_experts == exact.config["num_experts"], f"{fam}: family/config")
        for T in (1, 7, 64):
            x = ref.tensor(f"x_{T}")
            y32 = ref.tensor(f"y32_{T}").astype(np.float64)
            ids_ref = ref.tensor(f"topk_ids_{T}")
            out, ids, w = exact(x.astype(np.float32), return_routing=True)
            e_exact = np.linalg.norm(out - y32) / np.linalg.norm(y32)
            same = np.mean(np.sort(ids, 1) == np.sort(ids_ref, 1))
            ob = w8a8(x)  # bf16 in, bf16 out
            e_w8a8 = np.linalg.norm(ob.astype(np.float64) - y32) / np.linalg.norm(y32)
            ok = e_exact <= 1e-5 and same == 1.0 and ob.dtype == BF and e_w8a8 <= 0.08
            print(f"layer {fam:12} T={T:2} weight-only fp32 err={e_exact:.1e} ids={same:.0%} w8a8 bf16 err={e_w8a8:.2e} "
                  f"{'PASS' if ok else 'FAIL'}")
            check(ok, f"{fam} T={T}: exact {e_exact:.1e}, ids {same}, w8a8 {e_w8a8:.2e}")
            if torch is not None and T == 7:
                xt = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).reshape(1, 7, -1)
                ot = w8a8(xt)
                check(ot.dtype == torch.bfloat16 and ot.shape == xt.shape and
                      np.array_equal(ot.reshape(7, -1).view(torch.int16).numpy(), ob.view(np.int16)),
                      f"{fam}: MoELayer on a torch [1, 7, H] tensor differs from numpy")
        # BF16 checkpoint quantized at load = the MXFP8 checkpoint (ModelOpt's export is RCEIL MXFP8)
        q = mxmoe.load_layer(os.path.join(SRC, "tests", "data", f"{fam}_tiny"), weight_format="mxfp8")
        x = ref.tensor("x_7")
        check(np.array_equal(q(x).view(np.int16), w8a8(x).view(np.int16)), f"{fam}: BF16 quantized at load != MXFP8 ckpt")
    try:
        mxmoe.load_layer(os.path.join(SRC, "tests", "data", "qwen3_moe_tiny_mxfp8"), layer=5)
        check(False, "layer=5: no error")
    except ValueError as e:
        check("layer=5" in str(e) and "MoE layers: 0" in str(e), f"layer=5: {e}")
    if not mxmoe.cuda_available():
        try:
            mxmoe.load_layer(os.path.join(SRC, "tests", "data", "qwen3_moe_tiny_mxfp8"), device="cuda")
            check(False, "device=cuda without CUDA: no error")
        except ValueError as e:
            check("cuda" in str(e) and "no CUDA backend" in str(e), f"device=cuda: {e}")
    try:
        mxmoe.load_layer("/nonexistent")
        check(False, "missing checkpoint: no error")
    except mxmoe.MxmError as e:
        check("/nonexistent" in str(e), f"missing checkpoint: {e}")


def main():
    t0 = time.time()
    rng = np.random.default_rng(seed())
    quant(rng)
    layers()
    check.finish(time.time() - t0)


if __name__ == "__main__":
    main()
