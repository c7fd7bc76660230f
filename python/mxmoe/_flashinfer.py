"""FlashInfer's trtllm_fp8_block_scale_moe and trtllm_fp8_block_scale_routed_moe (v0.6.13
argument order, enum values and scale layouts), computed by mxmoe on CPU or CUDA.

Weights are FlashInfer's plain MajorK layout (weight_layout=0, use_shuffled_weight=False):
gemm1_weights [E_loc, M1, H] row-major with W13 as [up ; gate] for gated activations (FlashInfer
calls the halves X1 "linear" and X2 "gate"), gemm2_weights [E_loc, H, I]. FlashInfer's fast path
on Blackwell wants the weights shuffled (use_shuffled_weight=True: rows reordered for the fused
gated activation and tiled for the epilogue); mxmoe does not take that layout: pass the weights
before shuffling."""
import ctypes
import os
import threading
import weakref
from enum import IntEnum

import ml_dtypes
import numpy as np

from . import _capi, _run, _tensor
from ._tensor import view, empty_like_kind, np_ptr, torch_or_none

E = _capi.ENUMS


class RoutingMethodType(IntEnum):
    """flashinfer.tllm_enums.RoutingMethodType (mxmoe's mxm_routing_method has the same numbers)."""
    Default = 0
    Renormalize = 1
    DeepSeekV3 = 2
    Llama4 = 3
    RenormalizeNaive = 4
    TopK = 5
    SigmoidRenorm = 6
    MiniMax2 = 7
    Sigmoid = 8
    Unspecified = 9


class ActivationType(IntEnum):
    """flashinfer.tllm_enums.ActivationType."""
    Gelu = 0
    Relu = 1
    Silu = 2
    Swiglu = 3
    Geglu = 4
    SwigluBias = 5
    Relu2 = 6
    SwigluStep = 7
    Identity = 8
    InvalidType = 9


class Fp8QuantizationType(IntEnum):
    """flashinfer.tllm_enums.Fp8QuantizationType."""
    NoneFp8 = 0
    DeepSeekFp8 = 1
    MxFp8 = 2


class WeightLayout(IntEnum):
    """flashinfer.tllm_enums.WeightLayout (mxmoe takes MajorK only)."""
    MajorK = 0
    MajorMn = 1
    BlockMajorK = 2


# FlashInfer activation -> (mxm activation, gated)
_ACT = {ActivationType.Gelu: (E["MXM_ACT_GELU_NO_MUL"], False), ActivationType.Silu: (E["MXM_ACT_SILU_NO_MUL"], False),
        ActivationType.Swiglu: (E["MXM_ACT_SILU"], True), ActivationType.Geglu: (E["MXM_ACT_GELU"], True),
        ActivationType.Relu2: (E["MXM_ACT_RELU2_NO_MUL"], False), ActivationType.Identity: (E["MXM_ACT_IDENTITY"], False)}
_ACT_LIST = ", ".join(f"{a.value} ({a.name})" for a in _ACT)
_ROUTE_LIST = ", ".join(f"{r.value} ({r.name})" for r in RoutingMethodType if r != RoutingMethodType.Unspecified)
_PROFILES = {"trtllm": E["MXM_PROFILE_TRTLLM"], "exact": E["MXM_PROFILE_EXACT"]}
_ACT_QUANT = {"mxfp8": E["MXM_ACT_QUANT_MXFP8"], "none": E["MXM_ACT_QUANT_NONE"]}
_LAYOUTS = {"up_gate": E["MXM_W13_UP_GATE"], "gate_up": E["MXM_W13_GATE_UP"], "interleaved": E["MXM_W13_INTERLEAVED"]}


def _choice(name, value, table):
    if value not in table:
        raise ValueError(f"{name}={value!r} is not supported; supported: {', '.join(map(str, table))}")
    return table[value]


def _int_enum(name, value, enum, accepted, listing):
    try:
        v = enum(int(value))
    except (ValueError, TypeError):
        raise ValueError(f"{name}={value!r} is unknown; supported: {listing}") from None
    if v not in accepted:
        raise ValueError(f"{name}={v.value} ({v.name}) is not supported by mxmoe; supported: {listing}")
    return v


_cfg_cache = {}


def _config(key):
    """mxm_moe_config for a tuple of scalar arguments (cached: building one costs microseconds)."""
    cfg = _cfg_cache.get(key)
    if cfg is not None:
        return cfg
    (E_glob, K, n_group, topk_group, I, off, E_loc, S, method, act, fmt, norm, H, aq, profile, layout,
     swiglu, backend, device, threads) = key
    cfg = _capi.Config()
    _capi.lib.mxm_moe_config_default(ctypes.byref(cfg))
    cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.top_k = H, I, E_glob, K
    cfg.n_group, cfg.topk_group, cfg.routing_method = n_group, topk_group, method
    cfg.routed_scaling_factor, cfg.norm_topk_prob = S, norm
    cfg.local_expert_offset, cfg.local_num_experts = off, E_loc
    cfg.activation, cfg.w13_layout, cfg.weight_format, cfg.act_quant, cfg.profile = act, layout, fmt, aq, profile
    if swiglu:  # FlashInfer's OA defaults: alpha 1, beta 0, no clamp
        cfg.swiglu_alpha, cfg.swiglu_beta, cfg.swiglu_limit = 1.0, 0.0, float("inf")
    cfg.backend, cfg.device, cfg.num_threads = backend, device, threads
    st = _capi.lib.mxm_moe_config_validate(ctypes.byref(cfg))
    if st != 0:
        raise _capi.MxmError(st, "invalid MoE arguments")
    if len(_cfg_cache) > 256:
        _cfg_cache.clear()
    _cfg_cache[key] = cfg
    return cfg


class _Prepared:
    """What a call derives from its weights and scalar arguments (checked once): the config, the
    expert table, the per-expert SwiGLU-OAI arrays on the host. Reused while the same weight
    objects come back (same objects, alive, same shapes and, for torch, the same data pointers)."""
    __slots__ = ("cfg", "cfg_key", "mw", "keep", "objs", "shapes", "dtypes", "ptrs", "device", "H", "I", "M1", "K",
                 "Eg", "E_loc", "mx", "cuda", "__weakref__")

    def valid(self, objs):
        for r, o, shp, dt, ptr in zip(self.objs, objs, self.shapes, self.dtypes, self.ptrs):
            if o is None:
                if r is not None:
                    return False
                continue
            if (r is None or r() is not o or o.shape != shp or o.dtype != dt
                    or (ptr is not None and o.data_ptr() != ptr)):
                return False
        return True


_prep_cache = {}


def _weakref(o):
    import weakref
    try:
        return weakref.ref(o)
    except TypeError:
        return lambda: None


def _prepare(H, dev, gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, num_experts, top_k,
             n_group, topk_group, intermediate_size, local_expert_offset, local_num_experts, routed_scaling_factor,
             routing_method_type, use_shuffled_weight, weight_layout, do_finalize, fp8_quantization_type,
             activation_type, norm_topk_prob, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, act_quant, profile,
             w13_layout, num_threads):
    if use_shuffled_weight:
        raise NotImplementedError(
            "use_shuffled_weight=True: mxmoe takes FlashInfer's plain row-major (MajorK) weights, not the "
            "shuffled layout of FlashInfer's Blackwell kernel; pass the weights before shuffling")
    if int(weight_layout) != WeightLayout.MajorK:
        raise ValueError(f"weight_layout={int(weight_layout)} is not supported; supported: 0 (MajorK)")
    if not do_finalize:
        raise NotImplementedError("do_finalize=False (unfinalized per-expert outputs) is not supported; supported: True")
    qt = _int_enum("fp8_quantization_type", fp8_quantization_type, Fp8QuantizationType,
                   (Fp8QuantizationType.DeepSeekFp8, Fp8QuantizationType.MxFp8), "1 (DeepSeekFp8), 2 (MxFp8)")
    at = _int_enum("activation_type", activation_type, ActivationType, _ACT, _ACT_LIST)
    rm = _int_enum("routing_method_type", routing_method_type, RoutingMethodType,
                   [r for r in RoutingMethodType if r != RoutingMethodType.Unspecified], _ROUTE_LIST)
    act, gated = _ACT[at]
    oa = gemm1_alpha is not None or gemm1_beta is not None or gemm1_clamp_limit is not None
    if oa:
        if qt != Fp8QuantizationType.MxFp8 or at != ActivationType.Swiglu:  # as FlashInfer
            raise ValueError("gemm1_alpha, gemm1_beta and gemm1_clamp_limit are only supported for "
                             "Fp8QuantizationType.MxFp8 with ActivationType.Swiglu")
        act = E["MXM_ACT_SWIGLUOAI"]
    p = _Prepared()
    p.mx = mx = qt == Fp8QuantizationType.MxFp8
    fmt = E["MXM_WFMT_MXFP8"] if mx else E["MXM_WFMT_FP8_BLOCK"]
    p.H, p.K, p.Eg, p.I = H, int(top_k), int(num_experts), int(intermediate_size)
    p.E_loc = E_loc = int(local_num_experts)
    I = p.I
    p.M1 = M1 = 2 * I if gated else I
    p.device, p.cuda = dev, dev != "cpu"
    if p.cuda and not _capi.lib.mxm_cuda_available():
        raise ValueError(f"hidden_states: is on {dev}, but this mxmoe build has no CUDA backend or no GPU "
                         f"(mxm_cuda_available() == 0); supported: cpu")
    w1 = view("gemm1_weights", gemm1_weights, ("e4m3", "u8"), shape=(E_loc, M1, H), device=dev)
    w2 = view("gemm2_weights", gemm2_weights, ("e4m3", "u8"), shape=(E_loc, H, I), device=dev)
    if mx:
        if H % 32 or I % 32:
            raise ValueError(f"hidden size {H} and intermediate_size {I} must be multiples of 32 for MxFp8")
        s1 = view("gemm1_weights_scale", gemm1_weights_scale, ("u8",), numel=E_loc * M1 * (H // 32), device=dev)
        s2 = view("gemm2_weights_scale", gemm2_weights_scale, ("u8",), numel=E_loc * H * (I // 32), device=dev)
        bs1, bs2 = M1 * (H // 32), H * (I // 32)
    else:
        c = lambda n: -(-n // 128)  # noqa: E731
        s1 = view("gemm1_weights_scale", gemm1_weights_scale, ("f32",), shape=(E_loc, c(M1), c(H)), device=dev)
        s2 = view("gemm2_weights_scale", gemm2_weights_scale, ("f32",), shape=(E_loc, c(H), c(I)), device=dev)
        bs1, bs2 = 4 * c(M1) * c(H), 4 * c(H) * c(I)
    experts = (_capi.ExpertWeights * E_loc)()
    for e in range(E_loc):
        experts[e] = _capi.ExpertWeights(w1.ptr + e * M1 * H, s1.ptr + e * bs1, w2.ptr + e * H * I, s2.ptr + e * bs2)
    p.mw = _capi.MoEWeights()
    p.mw.experts = ctypes.addressof(experts)
    p.keep = [experts]
    # per-expert SwiGLU-OAI parameters: host float32 [E_loc]
    for name, arr in (("gemm1_alpha", gemm1_alpha), ("gemm1_beta", gemm1_beta), ("gemm1_clamp_limit", gemm1_clamp_limit)):
        if arr is not None:
            if not isinstance(arr, np.ndarray):
                arr = arr.detach().to("cpu")  # the library reads these on the host
            a = view(name, arr, ("f32",), shape=(E_loc,))
            p.keep.append(arr)
            setattr(p.mw, name, a.ptr)
    objs = (gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, gemm1_alpha, gemm1_beta,
            gemm1_clamp_limit)
    p.objs = tuple(None if o is None else _weakref(o) for o in objs)
    p.shapes = tuple(None if o is None else tuple(o.shape) for o in objs)
    p.dtypes = tuple(None if o is None else o.dtype for o in objs)
    p.ptrs = tuple(None if o is None or isinstance(o, np.ndarray) else o.data_ptr() for o in objs)
    key = (p.Eg, p.K, int(n_group or 0), int(topk_group or 0), I, int(local_expert_offset), E_loc,
           float(1.0 if routed_scaling_factor is None else routed_scaling_factor), int(rm), act, fmt,
           int(bool(norm_topk_prob)), H, _choice("act_quant", act_quant, _ACT_QUANT),
           _choice("profile", profile, _PROFILES), _choice("w13_layout", w13_layout, _LAYOUTS), oa,
           _run.BACKEND_CUDA if p.cuda else _run.BACKEND_CPU, int(dev.split(":")[1]) if p.cuda else 0,
           int(num_threads))
    p.cfg = _config(key)
    p.cfg_key = bytes(p.cfg)
    return p


# ---- the short path ------------------------------------------------------------------------------
# A call that repeats a layer's weights and scalar arguments needs none of the work above again: a
# _Site keeps, per prepared layer and thread, the plan, the mxm_moe_inputs / mxm_moe_outputs structs
# and the forward's arguments as ctypes objects, all made once; a call checks its per-call tensors
# (kind, dtype, shape, contiguity, device: the same checks as view(), with the same outcome; on any
# doubt it goes the full way, which raises the same exceptions as before), patches their pointers
# into the structs and calls the forward through a function object without argtypes (no per-call
# conversions). Sites are per thread because the structs are patched in place.
#
# Where the extension module mxmoe._fastcall is built (`pip install ./python` builds it), _Site
# subclasses its Site and a CPU site's call() runs _fast's per-call work in C, from what
# __init__ hands it (c_init: the structs, H, E, the scales' geometry, the dtype tables) and the
# plan (c_plan): the same checks with the same outcome (test_fastcall.py compares the two on every
# check), without the interpreter. Without it (or with MXMOE_FASTCALL=0), and on CUDA sites, call()
# is _fast.
try:
    from . import _fastcall as _ext
except ImportError:
    _ext = None
if os.environ.get("MXMOE_FASTCALL") == "0":
    _ext = None

_fwd_fast = _capi.lib["mxm_moe_forward"]  # a second function object: arguments prebuilt, no argtypes
_fwd_fast.restype, _fwd_fast.argtypes = ctypes.c_int32, None
_c_vp, _c_i64, _byref = ctypes.c_void_p, ctypes.c_int64, ctypes.byref
_ND, _np_empty, _get_ident, _id = np.ndarray, np.empty, threading.get_ident, id
_OFF, _vp_at = _tensor._DATA_OFF, _tensor._vp_at
_tls = threading.local()


class _Site(object if _ext is None else _ext.Site):
    __slots__ = ("p", "H", "Eg", "cuda", "nsc", "xst", "inp", "outs", "plan", "args", "refs", "tdev", "tdt", "tfp8",
                 "tu8", "tf32", "ttype", "tempty", "tbf16", "tcf", "__weakref__") + (
                     ("max_tokens", "meta") if _ext is None else ())  # Site's members otherwise

    def __init__(self, p):
        self.p, self.H, self.Eg, self.cuda = p, p.H, p.Eg, p.cuda
        # FP8 hidden states' scales: MxFp8 T * H/32 uint8, DeepSeekFp8 float32 [H/128, T] (transposed)
        self.nsc, self.xst = (p.H // 32, 0) if p.mx else (-(-p.H // 128), 1)
        self.inp, self.outs = _capi.Inputs(), _capi.Outputs()
        self.outs.out_dtype = _DT_BF16
        self.plan, self.max_tokens, self.args, self.meta, self.refs = None, 0, None, (), ()
        self.ttype = self.tdev = self.tdt = self.tfp8 = self.tu8 = self.tf32 = self.tempty = self.tbf16 = None
        self.tcf = None
        torch = torch_or_none()
        if torch is not None:  # torch tensors on the layer's device take the short path too
            self.ttype, self.tdev, self.tempty, self.tbf16 = torch.Tensor, torch.device(p.device), torch.empty_like, \
                torch.bfloat16
            self.tdt = {torch.float32: _DT_F32, torch.bfloat16: _DT_BF16}
            self.tcf, self.tu8, self.tf32 = torch.contiguous_format, torch.uint8, torch.float32
            self.tfp8 = {torch.uint8: _DT_E4M3}
            if hasattr(torch, "float8_e4m3fn"):
                self.tfp8[torch.float8_e4m3fn] = _DT_E4M3
        if _ext is not None and not p.cuda:
            self.c_init(self.inp, self.outs, p.mw, p.H, p.Eg, self.nsc, p.mx, self.xst, None if torch is None else (
                self.ttype, self.tdt, self.tfp8, self.tu8, self.tf32, self.tempty, self.tbf16, self.tcf, self.tdev))

    def plan_for(self, T):
        plan = _run.get_plan(self.p.cfg, T)
        self.plan, self.max_tokens = plan, plan.max_tokens
        self.args = (_c_vp(plan.ptr), _byref(self.p.mw), _byref(self.inp), _byref(self.outs), _c_vp(plan.ws_ptr),
                     _c_i64(plan.ws_bytes), None)
        if _ext is not None:
            self.c_plan(plan.ptr, plan.ws_ptr, plan.ws_bytes)


def _fast(s, x, lg, bias, xsc, *w):
    """routing_logits, hidden_states (bf16/f32 with xsc None, or FP8 codes with their scales xsc)
    and routing_bias (or None) on site s: the output, or None when the arguments need the full
    checks of _moe. w: the function's seven weight arguments (gemm1_weights .. gemm1_clamp_limit),
    first compared with what the site checked (_unchanged, its common case inlined)."""
    if w:
        m = s.meta
        if not (w[0].shape == m[0] and w[1].shape == m[1] and w[2].shape == m[2] and w[3].shape == m[3]
                and w[0].dtype is m[4] and w[1].dtype is m[5] and w[2].dtype is m[6] and w[3].dtype is m[7]
                and (m[8] is None and m[9] is None or _unchanged(m, *w))):
            return None
    if type(x) is _ND:
        if type(lg) is not _ND or s.cuda:
            return None
        xd, ld, xs = (_NP_FAST if xsc is None else _NP_FP8).get(x.dtype), _NP_FAST.get(lg.dtype), x.shape
        if (xd is None or ld is None or len(xs) != 2 or xs[1] != s.H or lg.shape != (xs[0], s.Eg) or not xs[0]
                or not x.flags.c_contiguous or not lg.flags.c_contiguous):
            return None
        sp = 0
        if xsc is not None:  # MxFp8: uint8 of T * H/32 elements; DeepSeekFp8: float32 [H/128, T]
            if (type(xsc) is not _ND or not xsc.flags.c_contiguous
                    or (xsc.dtype != _NP_U8 or xsc.size != xs[0] * s.nsc if s.p.mx
                        else xsc.dtype != _NP_F32 or xsc.shape != (s.nsc, xs[0]))):
                return None
            sp = np_ptr(xsc)
        bp = bd = 0
        if bias is not None:
            if type(bias) is not _ND or bias.shape != (s.Eg,) or not bias.flags.c_contiguous:
                return None
            bd = _NP_FAST.get(bias.dtype)
            if bd is None:
                return None
            bp = np_ptr(bias)
        out = _np_empty(xs, _NP_BF16)
        if _OFF is not None:  # np_ptr inlined
            xp, lp, op = _vp_at(_id(x) + _OFF).value, _vp_at(_id(lg) + _OFF).value, _vp_at(_id(out) + _OFF).value
        else:
            xp, lp, op = np_ptr(x), np_ptr(lg), np_ptr(out)
        stream = None
    elif type(x) is s.ttype:
        if type(lg) is not s.ttype:
            return None
        dev, m = s.tdev, s.tdt
        xd, ld, xs = (m if xsc is None else s.tfp8).get(x.dtype), m.get(lg.dtype), x.shape
        if (xd is None or ld is None or len(xs) != 2 or xs[1] != s.H or lg.shape != (xs[0], s.Eg) or not xs[0]
                or not (x.is_cpu and lg.is_cpu if not s.cuda else x.device == dev and lg.device == dev)
                or not x.is_contiguous() or not lg.is_contiguous()):
            return None
        sp = 0
        if xsc is not None:
            if (type(xsc) is not s.ttype or xsc.device != dev or not xsc.is_contiguous()
                    or (xsc.dtype is not s.tu8 or xsc.numel() != xs[0] * s.nsc if s.p.mx
                        else xsc.dtype is not s.tf32 or xsc.shape != (s.nsc, xs[0]))):
                return None
            sp = xsc.data_ptr()
        bp = bd = 0
        if bias is not None:
            if (type(bias) is not s.ttype or bias.shape != (s.Eg,) or bias.device != dev
                    or not bias.is_contiguous()):
                return None
            bd = m.get(bias.dtype)
            if bd is None:
                return None
            bp = bias.data_ptr()
        out = s.tempty(x, dtype=s.tbf16, memory_format=s.tcf)  # x's shape and device (faster than torch.empty)
        xp, lp, op = x.data_ptr(), lg.data_ptr(), out.data_ptr()
        stream = _c_vp(_run.current_stream(s.p.device)) if s.cuda else None
    else:
        return None
    T = xs[0]
    if T > s.max_tokens:
        s.plan_for(T)
    inp = s.inp
    inp.num_tokens, inp.x, inp.x_dtype, inp.router_logits, inp.logits_dtype = T, xp, xd, lp, ld
    inp.routing_bias, inp.bias_dtype = bp, bd
    inp.x_scale, inp.x_scale_transposed = sp, s.xst if sp else 0
    s.outs.out = op
    a = s.args
    st = _fwd_fast(*a) if stream is None else _fwd_fast(a[0], a[1], a[2], a[3], a[4], a[5], stream)
    if st != 0:
        raise _capi.MxmError(st, "mxm_moe_forward")
    return out


def _fn_sites():
    d = getattr(_tls, "fn", None)
    if d is None:
        d = _tls.fn = {}
    return d


def _add_fn_site(key, p, objs):
    """A site for the function's calls with these weight objects and scalar arguments (key): kept
    while every weight object lives (a weakref callback drops it), and used only while the weight
    tensors and SwiGLU-OAI arrays keep the shapes, dtype objects and (torch) data pointers checked
    (compared on each call)."""
    sites = _fn_sites()
    if len(sites) > 64:
        sites.clear()
    s = _Site(p)
    drop = lambda _r, d=sites, k=key: d.pop(k, None)  # noqa: E731
    try:
        s.refs = tuple(weakref.ref(o, drop) for o in objs if o is not None)
    except TypeError:  # an object without weak references: no site
        return
    ptrs = tuple((i, ptr) for i, ptr in enumerate(p.ptrs) if ptr is not None) or None  # torch ones
    oa = tuple((i, shp, dt) for i, shp, dt in zip(range(4, 7), p.shapes[4:], p.dtypes[4:]) if shp is not None)
    s.meta = p.shapes[:4] + p.dtypes[:4] + (ptrs, oa or None)
    sites[key] = s


def _unchanged(m, w1, s1, w2, s2, a, b, c):
    """The weights of a site (meta m) still have the shapes, dtype objects and (torch) data
    pointers checked (_fast inlines the first part for the common case m[8:] == (None, None); Site.call of
    the extension compares the same)."""
    if not (w1.shape == m[0] and s1.shape == m[1] and w2.shape == m[2] and s2.shape == m[3] and w1.dtype is m[4]
            and s1.dtype is m[5] and w2.dtype is m[6] and s2.dtype is m[7]):
        return False
    objs = (w1, s1, w2, s2, a, b, c)
    if m[9] is not None and not all(objs[i].shape == shp and objs[i].dtype is dt for i, shp, dt in m[9]):
        return False
    return m[8] is None or all(objs[i].data_ptr() == ptr for i, ptr in m[8])


def _moe(routing_logits, topk, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
         gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, num_experts, top_k, n_group, topk_group,
         intermediate_size, local_expert_offset, local_num_experts, routed_scaling_factor, routing_method_type,
         use_shuffled_weight, weight_layout, do_finalize, fp8_quantization_type, activation_type, norm_topk_prob,
         routing_replay_out, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, output, act_quant, profile, w13_layout,
         num_threads, site_key=None):
    x = view("hidden_states", hidden_states, _X_DTYPES, ndim=2)
    dev = x.device
    T, H = x.shape
    objs = (gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, gemm1_alpha, gemm1_beta,
            gemm1_clamp_limit)
    key = (id(gemm1_weights), id(gemm1_weights_scale), id(gemm2_weights), id(gemm2_weights_scale), id(gemm1_alpha),
           id(gemm1_beta), id(gemm1_clamp_limit), num_experts, top_k, n_group, topk_group, intermediate_size,
           local_expert_offset, local_num_experts, routed_scaling_factor, routing_method_type, use_shuffled_weight,
           weight_layout, do_finalize, fp8_quantization_type, activation_type, norm_topk_prob, act_quant, profile,
           w13_layout, num_threads, H, dev)
    p = _prep_cache.get(key)
    if p is None or not p.valid(objs):
        p = _prepare(H, dev, gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, num_experts,
                     top_k, n_group, topk_group, intermediate_size, local_expert_offset, local_num_experts,
                     routed_scaling_factor, routing_method_type, use_shuffled_weight, weight_layout, do_finalize,
                     fp8_quantization_type, activation_type, norm_topk_prob, gemm1_alpha, gemm1_beta,
                     gemm1_clamp_limit, act_quant, profile, w13_layout, num_threads)
        if len(_prep_cache) > 64:
            _prep_cache.clear()
        _prep_cache[key] = p
    K = p.K
    # activations
    inp = _capi.Inputs()
    inp.num_tokens, inp.x = T, x.ptr
    xd = x.dtype
    if xd == "e4m3" or xd == "u8":
        if hidden_states_scale is None:
            raise ValueError("hidden_states_scale: required for FP8 hidden_states (MxFp8: uint8 [T, H/32]; "
                             "DeepSeekFp8: float32 [H/128, T])")
        inp.x_dtype = _DT_E4M3
        if p.mx:
            xs = view("hidden_states_scale", hidden_states_scale, ("u8",), numel=T * (H // 32), device=dev)
        else:
            xs = view("hidden_states_scale", hidden_states_scale, ("f32",), shape=(-(-H // 128), T), device=dev)
            inp.x_scale_transposed = 1
        inp.x_scale = xs.ptr
    else:  # mxmoe extension: bf16/f32 hidden states, quantized inside the call
        if hidden_states_scale is not None:
            raise ValueError(f"hidden_states_scale: must be None for {xd} hidden_states "
                             "(mxmoe quantizes them); pass FP8 hidden_states to give scales")
        inp.x_dtype = _DT_BF16 if xd == "bf16" else _DT_F32
    # routing
    if routing_logits is not None:
        lg = view("routing_logits", routing_logits, _LOGIT_DTYPES, shape=(T, p.Eg), device=dev)
        inp.router_logits, inp.logits_dtype = lg.ptr, _DT_F32 if lg.dtype == "f32" else _DT_BF16
        if routing_bias is not None:
            b = view("routing_bias", routing_bias, _LOGIT_DTYPES, shape=(p.Eg,), device=dev)
            inp.routing_bias, inp.bias_dtype = b.ptr, _DT_F32 if b.dtype == "f32" else _DT_BF16
    else:
        ids_obj, w_obj = topk
        ids = view("topk_ids", ids_obj, ("i32",), shape=(T, K), device=dev)
        ws = view("expert_weights", w_obj, ("f32",), shape=(T, K), device=dev)
        inp.topk_ids, inp.topk_weights = ids.ptr, ws.ptr
    # outputs
    outs = _capi.Outputs()
    if output is None:  # made here: nothing to check
        output = empty_like_kind(x, (T, H), "bf16")
        outs.out, outs.out_dtype = output.data_ptr() if x.is_torch else np_ptr(output), _DT_BF16
    else:
        o = view("output", output, _OUT_DTYPES, shape=(T, H), device=dev)
        outs.out, outs.out_dtype = o.ptr, _DT_BF16 if o.dtype == "bf16" else _DT_F32
    replay_ids = None
    if routing_replay_out is not None:
        r = view("routing_replay_out", routing_replay_out, ("i16",), ndim=2, device=dev)
        if r.shape[1] != K or r.shape[0] < T:
            raise ValueError(f"routing_replay_out: expected shape [>= {T}, {K}], got {list(r.shape)}")
        replay_ids = empty_like_kind(x, (T, K), "i32")
        outs.topk_ids = view("routing_replay_out", replay_ids, ("i32",)).ptr
    if T > 0:
        plans = _capi.thread_state().setdefault("plans", {})
        plan = plans.get(p.cfg_key)
        if plan is None or plan.max_tokens < T:
            plan = _run.get_plan(p.cfg, T)
        st = _forward(plan.ptr, ctypes.byref(p.mw), ctypes.byref(inp), ctypes.byref(outs), plan.ws_ptr,
                      plan.ws_bytes, _run.current_stream(dev) if p.cuda else None)
        if st != 0:
            raise _capi.MxmError(st, "mxm_moe_forward")
    if replay_ids is not None:
        if r.is_torch:
            routing_replay_out[:T].copy_(replay_ids)
        else:
            routing_replay_out[:T] = replay_ids
    if site_key is not None:  # checked in full: later calls with the same weights take the short path
        _add_fn_site(site_key, p, objs)
    return output


_forward = _capi.lib.mxm_moe_forward
_DT_E4M3, _DT_BF16, _DT_F32 = E["MXM_DT_E4M3"], E["MXM_DT_BF16"], E["MXM_DT_F32"]
_X_DTYPES, _LOGIT_DTYPES, _OUT_DTYPES = ("e4m3", "u8", "bf16", "f32"), ("f32", "bf16"), ("bf16", "f32")


def trtllm_fp8_block_scale_moe(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
                               gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, num_experts, top_k, n_group,
                               topk_group, intermediate_size, local_expert_offset, local_num_experts,
                               routed_scaling_factor, routing_method_type=0, use_shuffled_weight=False,
                               weight_layout=0, do_finalize=True, enable_pdl=None, tune_max_num_tokens=8192,
                               fp8_quantization_type=Fp8QuantizationType.DeepSeekFp8,
                               activation_type=ActivationType.Swiglu.value, norm_topk_prob=True,
                               routing_replay_out=None, gemm1_alpha=None, gemm1_beta=None, gemm1_clamp_limit=None,
                               *, act_quant="mxfp8", profile="trtllm", w13_layout="up_gate", num_threads=0):
    """FlashInfer's flashinfer.fused_moe.trtllm_fp8_block_scale_moe (v0.6.13), same arguments and
    results, on numpy arrays or torch tensors (CPU, or CUDA when the library has the CUDA backend:
    run on the current torch stream).

    routing_logits [T, E] f32/bf16; routing_bias [E] f32/bf16 or None; hidden_states [T, H] FP8
    codes (torch.float8_e4m3fn, ml_dtypes.float8_e4m3fn or uint8) with hidden_states_scale: MxFp8
    uint8 E8M0 [T, H/32] (FlashInfer's linear layout), DeepSeekFp8 float32 [H/128, T]; or (mxmoe
    extension) bf16/f32 hidden_states with hidden_states_scale None, quantized inside the call.
    gemm1_weights [E_loc, M1, H] FP8 with W13 as [up ; gate] (M1 = 2I gated, I otherwise);
    gemm1_weights_scale MxFp8 uint8 [E_loc, M1, H/32] (any shape of that many elements), DeepSeekFp8
    float32 [E_loc, M1/128, H/128]; gemm2_weights [E_loc, H, I], gemm2_weights_scale likewise.
    enable_pdl and tune_max_num_tokens are accepted and ignored (no autotuner, no PDL).
    Returns bf16 [T, H] of hidden_states' kind and device.

    Keyword-only mxmoe extensions: act_quant "mxfp8" (W8A8, FlashInfer's math) or "none"
    (weight-only); profile "trtllm" (FlashInfer's bf16 rounding points) or "exact";
    w13_layout "up_gate" (FlashInfer), "gate_up" (checkpoints) or "interleaved"; num_threads
    (CPU; 0 = all).

    A call that repeats the weight tensors (the same objects) and scalar arguments of an earlier
    call on the same thread, without routing_replay_out, takes a short path: the weights are
    re-checked only for their shapes, dtypes and (torch) data pointers, the per-call tensors in
    full."""
    if routing_logits is None:
        raise ValueError("routing_logits: required (use trtllm_fp8_block_scale_routed_moe for precomputed top-k)")
    key = None
    if routing_replay_out is None:  # the short path (see _Site)
        key = (id(gemm1_weights), id(gemm1_weights_scale), id(gemm2_weights), id(gemm2_weights_scale), id(gemm1_alpha),
               id(gemm1_beta), id(gemm1_clamp_limit), num_experts, top_k, n_group, topk_group, intermediate_size,
               local_expert_offset, local_num_experts, routed_scaling_factor, routing_method_type,
               use_shuffled_weight, weight_layout, do_finalize, fp8_quantization_type, activation_type,
               norm_topk_prob, act_quant, profile, w13_layout, num_threads)
        try:
            s = _tls.fn.get(key)
        except AttributeError:
            s = None
        except TypeError:  # an unhashable argument: the full path says which
            s = key = None
        if s is not None:
            out = s.call(hidden_states, routing_logits, routing_bias, hidden_states_scale, gemm1_weights,
                         gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, gemm1_alpha, gemm1_beta,
                         gemm1_clamp_limit)
            if out is not None:
                return out
    return _moe(routing_logits, None, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
                gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, num_experts, top_k, n_group, topk_group,
                intermediate_size, local_expert_offset, local_num_experts, routed_scaling_factor,
                routing_method_type, use_shuffled_weight, weight_layout, do_finalize, fp8_quantization_type,
                activation_type, norm_topk_prob, routing_replay_out, gemm1_alpha, gemm1_beta, gemm1_clamp_limit,
                None, act_quant, profile, w13_layout, num_threads, key)


def unpack_topk(topk_ids):
    """FlashInfer's packed routing ((expert_id << 16) | bf16 weight bits, int32 [T, K]) -> (ids
    int32, weights float32), same kind and device."""
    if isinstance(topk_ids, np.ndarray):
        ids = (topk_ids >> 16).astype(np.int32)
        w = ((topk_ids.astype(np.uint32) & 0xFFFF) << 16).view(np.float32)
        return ids, np.ascontiguousarray(w)
    torch = torch_or_none()
    ids = (topk_ids >> 16).to(torch.int32).contiguous()
    w = (topk_ids & 0xFFFF).to(torch.int16).view(torch.bfloat16).to(torch.float32).contiguous()
    return ids, w


def pack_topk(ids, weights):
    """Inverse of unpack_topk: (ids, weights rounded to bf16) -> FlashInfer's packed int32 [T, K]."""
    import ml_dtypes
    if isinstance(ids, np.ndarray):
        bits = np.asarray(weights, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16).astype(np.int32)
        return ((ids.astype(np.int32) << 16) | bits).astype(np.int32)
    torch = torch_or_none()
    bits = weights.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    return (ids.to(torch.int32) << 16) | bits


def trtllm_fp8_block_scale_routed_moe(topk_ids, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
                                      gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, num_experts, top_k,
                                      n_group, topk_group, intermediate_size, local_expert_offset, local_num_experts,
                                      routed_scaling_factor, routing_method_type=0, use_shuffled_weight=False,
                                      weight_layout=0, do_finalize=True, enable_pdl=None, gemm1_lora_delta=None,
                                      output=None, tune_max_num_tokens=8192,
                                      fp8_quantization_type=Fp8QuantizationType.DeepSeekFp8,
                                      activation_type=ActivationType.Swiglu.value, gemm1_alpha=None, gemm1_beta=None,
                                      gemm1_clamp_limit=None, *, expert_weights=None, act_quant="mxfp8",
                                      profile="trtllm", w13_layout="up_gate", num_threads=0):
    """FlashInfer's trtllm_fp8_block_scale_routed_moe (v0.6.13): as trtllm_fp8_block_scale_moe but
    routed by topk_ids, int32 [T, K] packed as (expert_id << 16) | bf16 weight bits. mxmoe
    extension: expert_weights float32 [T, K] given, topk_ids holds plain expert ids. output: an
    optional bf16 (or f32) [T, H] to write into. gemm1_lora_delta is not supported."""
    if gemm1_lora_delta is not None:
        raise NotImplementedError("gemm1_lora_delta is not supported; supported: None")
    if topk_ids is None:
        raise ValueError("topk_ids: required, int32 [T, top_k]")
    if expert_weights is None:
        view("topk_ids", topk_ids, ("i32",), ndim=2)
        ids, w = unpack_topk(topk_ids)
    else:
        ids, w = topk_ids, expert_weights
    return _moe(None, (ids, w), routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
                gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, num_experts, top_k, n_group, topk_group,
                intermediate_size, local_expert_offset, local_num_experts, routed_scaling_factor,
                routing_method_type, use_shuffled_weight, weight_layout, do_finalize, fp8_quantization_type,
                activation_type, True, None, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, output, act_quant,
                profile, w13_layout, num_threads)


class Fp8BlockScaleMoE:
    """trtllm_fp8_block_scale_moe with its weights and scalar arguments bound once (checked here,
    kept alive by this object and used through the pointers they have now: do not reallocate
    them, e.g. with torch's resize_/set_). Calling it runs the layer with per-call checks only on
    the per-call tensors:

        moe = mxmoe.Fp8BlockScaleMoE(w13, w13_scale, w2, w2_scale, E, K, None, None, I, 0, E, None,
                                     routing_method_type=1, fp8_quantization_type=2, activation_type=3)
        out = moe(routing_logits, hidden_states)        # bf16 [T, H], same kind and device

    __call__(routing_logits, hidden_states, hidden_states_scale=None, routing_bias=None,
    output=None): arguments as in trtllm_fp8_block_scale_moe; routing_logits None with
    topk=(ids int32 [T, K], weights float32 [T, K]) routes by precomputed top-k. The common case
    (hidden_states bf16/f32, or FP8 with hidden_states_scale; logits; routing_bias or None; no topk
    or output) takes a short path (see _Site), about 0.5 us over the C call on numpy arrays
    with the extension module (docs/BENCHMARKS.md)."""

    def __init__(self, gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, num_experts, top_k,
                 n_group, topk_group, intermediate_size, local_expert_offset, local_num_experts,
                 routed_scaling_factor, routing_method_type=0, fp8_quantization_type=Fp8QuantizationType.DeepSeekFp8,
                 activation_type=ActivationType.Swiglu.value, norm_topk_prob=True, gemm1_alpha=None, gemm1_beta=None,
                 gemm1_clamp_limit=None, *, act_quant="mxfp8", profile="trtllm", w13_layout="up_gate",
                 num_threads=0):
        w1 = view("gemm1_weights", gemm1_weights, ("e4m3", "u8"), ndim=3)
        self._args = (gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, num_experts, top_k,
                      n_group, topk_group, intermediate_size, local_expert_offset, local_num_experts,
                      routed_scaling_factor, routing_method_type, False, 0, True, fp8_quantization_type,
                      activation_type, norm_topk_prob)
        self._oa = (gemm1_alpha, gemm1_beta, gemm1_clamp_limit)
        self._kw = (act_quant, profile, w13_layout, num_threads)
        self._p = _prepare(w1.shape[2], w1.device, gemm1_weights, gemm1_weights_scale, gemm2_weights,
                           gemm2_weights_scale, num_experts, top_k, n_group, topk_group, intermediate_size,
                           local_expert_offset, local_num_experts, routed_scaling_factor, routing_method_type, False,
                           0, True, fp8_quantization_type, activation_type, norm_topk_prob, gemm1_alpha, gemm1_beta,
                           gemm1_clamp_limit, act_quant, profile, w13_layout, num_threads)
        self.device = self._p.device
        self._site, self._tid = _Site(self._p), _get_ident()

    def _thread_site(self):
        """This object's site on the calling thread (sites are per thread: their structs are patched)."""
        d = getattr(_tls, "bound", None)
        if d is None:
            d = _tls.bound = weakref.WeakKeyDictionary()
        s = d.get(self)
        if s is None:
            s = d[self] = _Site(self._p)
        return s

    def __call__(self, routing_logits, hidden_states, hidden_states_scale=None, routing_bias=None, output=None,
                 topk=None):
        if output is None and topk is None and routing_logits is not None:
            out = (self._site if self._tid == _get_ident() else self._thread_site()).call(
                hidden_states, routing_logits, routing_bias, hidden_states_scale)
            if out is not None:
                return out
        return _moe(routing_logits, topk, routing_bias, hidden_states, hidden_states_scale, *self._args, None,
                    *self._oa, output, *self._kw)


_NP_BF16 = np.dtype(ml_dtypes.bfloat16)
_NP_FAST = {np.dtype(np.float32): _DT_F32, _NP_BF16: _DT_BF16}
_NP_FP8 = {np.dtype(ml_dtypes.float8_e4m3fn): _DT_E4M3, np.dtype(np.uint8): _DT_E4M3}
_NP_U8, _NP_F32 = np.dtype(np.uint8), np.dtype(np.float32)


def _ext_setup(forward=None):
    """Hands the extension what every site shares: the library's mxm_moe_forward (or, for the
    benchmark's stubbed rows, another function of its type: an address), _fast for the sites it
    does not set up, MxmError, and numpy's type, np.empty and the dtype tables above."""
    if forward is None:
        forward = ctypes.cast(_capi.lib.mxm_moe_forward, ctypes.c_void_p).value
    _ext.setup(forward, _fast, _capi.MxmError, np.ndarray, np.empty, _NP_BF16, _NP_FAST, _NP_FP8, _NP_U8, _NP_F32)


if _ext is None:
    _Site.call = _fast
else:
    _ext_setup()
