"""Numpy arrays and torch tensors seen the same way: data pointer, shape, dtype, device. Nothing is
copied: the library reads and writes the caller's memory through the data pointer. Every check
raises an exception that names the argument and what it accepts."""
import ctypes
import sys

import ml_dtypes
import numpy as np

from . import _capi

DT = {name[len("MXM_DT_"):].lower(): v for name, v in _capi.ENUMS.items() if name.startswith("MXM_DT_")}

_NP = {np.dtype(np.float32): "f32", np.dtype(ml_dtypes.bfloat16): "bf16", np.dtype(np.float16): "f16",
       np.dtype(np.float64): "f64", np.dtype(ml_dtypes.float8_e4m3fn): "e4m3", np.dtype(np.uint8): "u8",
       np.dtype(np.int8): "i8", np.dtype(np.int16): "i16", np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}
NP_DTYPE = {v: k for k, v in _NP.items()}


def torch_or_none():
    """torch if the caller has imported it (mxmoe never imports torch itself for numpy callers)."""
    return sys.modules.get("torch")


def _torch_dtypes(torch):
    m = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.float64: "f64",
         torch.uint8: "u8", torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64"}
    if hasattr(torch, "float8_e4m3fn"):
        m[torch.float8_e4m3fn] = "e4m3"
    return m


_TORCH_MAP = None


def torch_dtype_name(t):
    global _TORCH_MAP
    if _TORCH_MAP is None:
        _TORCH_MAP = _torch_dtypes(torch_or_none())
    return _TORCH_MAP.get(t.dtype)


def torch_dtype(name):
    torch = torch_or_none()
    global _TORCH_MAP
    if _TORCH_MAP is None:
        _TORCH_MAP = _torch_dtypes(torch)
    return next(k for k, v in _TORCH_MAP.items() if v == name)


class View:
    """One argument: ptr (int), shape (tuple), dtype (short name: f32 bf16 e4m3 u8 i32 ...),
    device ("cpu" or "cuda:N"), the object itself and whether it is a torch tensor."""
    __slots__ = ("obj", "ptr", "shape", "dtype", "device", "is_torch", "name")

    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n


def is_tensor(x):
    torch = torch_or_none()
    return isinstance(x, np.ndarray) or (torch is not None and isinstance(x, torch.Tensor))


def view(name, x, dtypes, ndim=None, shape=None, device=None, numel=None):
    """Checks x (numpy array or torch tensor) and returns its View. dtypes: accepted short names.
    shape: expected sizes (None entries are free). device: expected device string or None.
    (On the per-call path: messages are only formatted on failure.)"""
    v = View()
    v.name, v.obj = name, x
    if type(x) is np.ndarray:
        v.is_torch, v.device = False, "cpu"
        v.dtype = _NP.get(x.dtype)
        v.shape = x.shape
        contiguous = x.flags.c_contiguous
    else:
        torch = torch_or_none()
        if torch is None or not isinstance(x, torch.Tensor):
            if isinstance(x, np.ndarray):  # a subclass
                return view(name, np.asarray(x), dtypes, ndim, shape, device, numel)
            raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")
        v.is_torch = True
        v.dtype = torch_dtype_name(x)
        v.shape = tuple(x.shape)
        dev = x.device
        v.device = (f"cuda:{dev.index if dev.index is not None else 0}" if dev.type == "cuda" else dev.type)
        contiguous = x.is_contiguous()
    if v.dtype not in dtypes:
        tname = f"numpy {x.dtype}" if not v.is_torch else str(x.dtype)
        raise TypeError(f"{name}: dtype {tname} is not accepted; accepted: {', '.join(_describe(d) for d in dtypes)}")
    if ndim is not None and len(v.shape) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {list(v.shape)}")
    if shape is not None and v.shape != shape:
        if len(v.shape) != len(shape) or any(e is not None and e != s for e, s in zip(shape, v.shape)):
            want = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
            raise ValueError(f"{name}: expected shape {want}, got {list(v.shape)}")
    if numel is not None and v.numel() != numel:
        raise ValueError(f"{name}: expected {numel} elements, got shape {list(v.shape)} ({v.numel()} elements)")
    if not contiguous:
        raise ValueError(f"{name}: must be contiguous (row-major); call .contiguous() / np.ascontiguousarray first")
    if device is not None and v.device != device:
        raise ValueError(f"{name}: is on {v.device}, expected {device} (all tensors of a call on one device)")
    if v.device != "cpu" and not v.device.startswith("cuda"):
        raise ValueError(f"{name}: device {v.device} is not supported; supported: cpu, cuda")
    v.ptr = x.data_ptr() if v.is_torch else np_ptr(x)
    return v


_char, _addressof = ctypes.c_char, ctypes.addressof
_ND, _vp_at = np.ndarray, ctypes.c_void_p.from_address


def _probe_data_offset():
    """Offset of the data pointer in numpy's array object (PyArrayObject_fields.data, right after
    the object header: 16 bytes on 64-bit CPython), found and checked against ndarray.ctypes.data
    on a few arrays at import; None (use the buffer protocol) if it does not check out."""
    a = np.arange(64, dtype=np.float32)
    probes = (a, a[3:], np.empty((2, 3), ml_dtypes.bfloat16), np.empty(0, np.uint8), a[::2])
    for off in (16, 24, 32):
        if all((_vp_at(id(p) + off).value or 0) == p.ctypes.data for p in probes):
            return off
    return None


_DATA_OFF = _probe_data_offset()


def np_ptr(x):
    """Data pointer of a numpy array: read from the array object at the checked offset (0.1-0.2
    us), else through the buffer protocol (0.6 us) where the array is writable and not empty, else
    ndarray.ctypes.data (1.5 us)."""
    if _DATA_OFF is not None and isinstance(x, _ND):
        return _vp_at(id(x) + _DATA_OFF).value or 0
    try:
        if x.dtype.char not in _BUFFER_CHARS:  # ml_dtypes' types export no buffer: view as bytes
            x = x.view(np.uint8)
        return _addressof(_char.from_buffer(x))
    except (TypeError, ValueError, BufferError):
        return x.ctypes.data


_BUFFER_CHARS = set("?bBhHiIlLqQefdg")


def _describe(d):
    return {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64",
            "e4m3": "float8_e4m3fn", "u8": "uint8", "i8": "int8", "i16": "int16", "i32": "int32",
            "i64": "int64"}[d]


def empty_like_kind(ref, shape, dtype):
    """A new contiguous array of the kind (numpy / torch, device) of View ref."""
    if ref.is_torch:
        torch = torch_or_none()
        return torch.empty(shape, dtype=torch_dtype(dtype), device=ref.obj.device)
    return np.empty(shape, NP_DTYPE[dtype])


def to_numpy_host(x):
    """A host numpy view or copy of an array or torch tensor (for small control inputs)."""
    if isinstance(x, np.ndarray):
        return x
    t = x.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if str(t.dtype) == "torch.bfloat16":
        return t.view(torch_or_none().int16).numpy().view(ml_dtypes.bfloat16)
    if "float8" in str(t.dtype):
        return t.view(torch_or_none().uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    return t.numpy()
