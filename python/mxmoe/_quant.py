"""MXFP8 and DeepSeek FP8 quantizers (the library's bit-exact ones, SPEC section 2) on numpy
arrays and torch tensors. They run on the host; a CUDA tensor is copied to the host and the
results are returned on its device."""
import ml_dtypes
import numpy as np

from . import _capi
from ._tensor import view, torch_or_none, DT

_RULES = {"rceil": _capi.ENUMS["MXM_SCALE_RCEIL"], "floor": _capi.ENUMS["MXM_SCALE_FLOOR"]}
_OUT = {"float32": "f32", "bfloat16": "bf16"}


def _host(name, x, dtypes):
    """(host View, device of x, whether torch) for x; CUDA tensors are copied to the host."""
    torch = torch_or_none()
    dev = None
    if torch is not None and isinstance(x, torch.Tensor):
        dev = x.device
        x = x.detach()
        if dev.type != "cpu":
            x = x.cpu()
        x = x.contiguous()
    v = view(name, x, dtypes)
    if len(v.shape) < 1:
        raise ValueError(f"{name}: expected at least 1 dimension, got a scalar")
    return v, dev


def _new(dev, shape, dtype):
    """Host buffer (numpy) for the result; torch results are made from it by _ret."""
    return np.empty(shape, {"e4m3": ml_dtypes.float8_e4m3fn, "u8": np.uint8, "f32": np.float32,
                            "bf16": ml_dtypes.bfloat16}[dtype])


def _ret(a, dev):
    if dev is None:
        return a
    torch = torch_or_none()
    if a.dtype == ml_dtypes.float8_e4m3fn:
        t = torch.from_numpy(a.view(np.uint8)).view(torch.float8_e4m3fn)
    elif a.dtype == ml_dtypes.bfloat16:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    return t.to(dev) if dev.type != "cpu" else t


def _dt(v):
    return DT["f32"] if v.dtype == "f32" else DT["bf16"]


def quantize_mxfp8(x, scale_rule="rceil", num_threads=0):
    """x [..., C] float32/bfloat16, C % 32 == 0 -> (codes float8_e4m3fn [..., C], scales uint8
    E8M0 [..., C/32]). scale_rule "rceil" (NVIDIA, default) or "floor" (OCP MX v1.0). Blocks with
    NaN/Inf get scale 0xFF and NaN codes (SPEC 2.2)."""
    if scale_rule not in _RULES:
        raise ValueError(f"scale_rule={scale_rule!r} is not supported; supported: rceil, floor")
    v, dev = _host("x", x, ("f32", "bf16"))
    C = v.shape[-1]
    if C % 32:
        raise ValueError(f"x: last dimension {C} must be a multiple of 32 (one E8M0 scale per 32 values)")
    rows = v.numel() // C if C else 0
    q = _new(dev, v.shape, "e4m3")
    s = _new(dev, v.shape[:-1] + (C // 32,), "u8")
    if rows:
        _capi.check(_capi.lib.mxm_mxfp8_quantize(v.ptr, _dt(v), rows, C, 0, q.ctypes.data, s.ctypes.data,
                                                 _RULES[scale_rule], num_threads), "mxm_mxfp8_quantize")
    return _ret(q, dev), _ret(s, dev)


def dequantize_mxfp8(q, scales, dtype="float32", num_threads=0):
    """Inverse of quantize_mxfp8: codes [..., C] + scales [..., C/32] -> float32 (or "bfloat16")."""
    if dtype not in _OUT:
        raise ValueError(f"dtype={dtype!r} is not supported; supported: float32, bfloat16")
    qv, dev = _host("q", q, ("e4m3", "u8"))
    C = qv.shape[-1]
    if C % 32:
        raise ValueError(f"q: last dimension {C} must be a multiple of 32")
    sv, _ = _host("scales", scales, ("u8",))
    if tuple(sv.shape) != tuple(qv.shape[:-1]) + (C // 32,):
        raise ValueError(f"scales: expected shape {list(qv.shape[:-1]) + [C // 32]}, got {list(sv.shape)}")
    rows = qv.numel() // C if C else 0
    out = _new(dev, qv.shape, _OUT[dtype])
    if rows:
        _capi.check(_capi.lib.mxm_mxfp8_dequantize(qv.ptr, sv.ptr, rows, C, out.ctypes.data, DT[_OUT[dtype]],
                                                   num_threads), "mxm_mxfp8_dequantize")
    return _ret(out, dev)


def quantize_fp8_block(x, block="weight", scales_transposed=False, num_threads=0):
    """DeepSeek FP8 (SPEC 2.3). block "weight": x [R, C] -> (codes [R, C], float32 scales
    [ceil(R/128), ceil(C/128)]), one scale per 128x128 block; block "act": one scale per row and
    128 columns, [R, ceil(C/128)] or, with scales_transposed, [ceil(C/128), R] (FlashInfer's
    hidden_states_scale layout)."""
    if block not in ("weight", "act"):
        raise ValueError(f"block={block!r} is not supported; supported: weight, act")
    v, dev = _host("x", x, ("f32", "bf16"))
    if len(v.shape) != 2:
        raise ValueError(f"x: expected 2 dimensions [R, C], got shape {list(v.shape)}")
    R, C = v.shape
    cb = -(-C // 128)
    q = _new(dev, (R, C), "e4m3")
    if block == "weight":
        s = _new(dev, (-(-R // 128), cb), "f32")
        st = _capi.lib.mxm_fp8block_quantize_weight(v.ptr, _dt(v), R, C, q.ctypes.data, s.ctypes.data, num_threads)
    else:
        s = _new(dev, (cb, R) if scales_transposed else (R, cb), "f32")
        st = _capi.lib.mxm_fp8block_quantize_act(v.ptr, _dt(v), R, C, q.ctypes.data, s.ctypes.data,
                                                 int(bool(scales_transposed)), num_threads)
    _capi.check(st, "mxm_fp8block_quantize_" + block)
    return _ret(q, dev), _ret(s, dev)


def dequantize_fp8_block(q, scales, block="weight", scales_transposed=False, dtype="float32", num_threads=0):
    """Inverse of quantize_fp8_block."""
    if block not in ("weight", "act"):
        raise ValueError(f"block={block!r} is not supported; supported: weight, act")
    if dtype not in _OUT:
        raise ValueError(f"dtype={dtype!r} is not supported; supported: float32, bfloat16")
    qv, dev = _host("q", q, ("e4m3", "u8"))
    if len(qv.shape) != 2:
        raise ValueError(f"q: expected 2 dimensions [R, C], got shape {list(qv.shape)}")
    R, C = qv.shape
    cb = -(-C // 128)
    want = (-(-R // 128), cb) if block == "weight" else ((cb, R) if scales_transposed else (R, cb))
    sv, _ = _host("scales", scales, ("f32",))
    if tuple(sv.shape) != want:
        raise ValueError(f"scales: expected shape {list(want)}, got {list(sv.shape)}")
    out = _new(dev, (R, C), _OUT[dtype])
    _capi.check(_capi.lib.mxm_fp8block_dequantize(qv.ptr, sv.ptr, R, C, 128 if block == "weight" else 1,
                                                  int(bool(scales_transposed)), out.ctypes.data, DT[_OUT[dtype]],
                                                  num_threads), "mxm_fp8block_dequantize")
    return _ret(out, dev)

