"""MoE layers of Hugging Face checkpoints (nemotron_h, qwen3_moe, deepseek_v3 in ModelOpt MXFP8,
DeepSeek FP8 or BF16): mxm_model_open + mxm_layer_load, callable on hidden states."""
import ctypes
import os

import ml_dtypes
import numpy as np

from . import _capi, _run
from ._capi import lib
from ._tensor import view, empty_like_kind, torch_or_none, DT

E = _capi.ENUMS
_FORMATS = {"as_stored": -1, "mxfp8": E["MXM_WFMT_MXFP8"]}
_RULES = {"rceil": E["MXM_SCALE_RCEIL"], "floor": E["MXM_SCALE_FLOOR"]}
_PROFILES = {"trtllm": E["MXM_PROFILE_TRTLLM"], "exact": E["MXM_PROFILE_EXACT"]}
_ACT_QUANT = {"mxfp8": E["MXM_ACT_QUANT_MXFP8"], "none": E["MXM_ACT_QUANT_NONE"]}


def _choice(name, value, table):
    if value not in table:
        raise ValueError(f"{name}={value!r} is not supported; supported: {', '.join(table)}")
    return table[value]


class Model:
    """An opened checkpoint (mxm_model): family, weight format, MoE layer indices."""

    def __init__(self, path):
        path = os.fspath(path)
        h = ctypes.c_void_p()
        _capi.check(lib.mxm_model_open(path.encode(), ctypes.byref(h)), f"mxm_model_open({path!r})")
        self._h, self.path = h.value, path
        self.family = lib.mxm_model_family(self._h).decode()
        self.weight_format = lib.mxm_model_weight_format(self._h)
        self.moe_layers = [lib.mxm_model_moe_layer(self._h, i) for i in range(lib.mxm_model_moe_layer_count(self._h))]

    def tensor_names(self):
        return [self._info(i)[0] for i in range(lib.mxm_model_tensor_count(self._h))]

    def _info(self, i):
        name, dtype, rank = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_int32()
        shape = (ctypes.c_int64 * 8)()
        _capi.check(lib.mxm_model_tensor_info(self._h, i, ctypes.byref(name), ctypes.byref(dtype), ctypes.byref(rank),
                                              shape), "mxm_model_tensor_info")
        return name.value.decode(), dtype.value.decode(), tuple(shape[:rank.value])

    def tensor(self, name):
        """A copy of the named tensor as a numpy array (BF16 as ml_dtypes.bfloat16, F8_E4M3 as
        ml_dtypes.float8_e4m3fn)."""
        i = lib.mxm_model_tensor_find(self._h, name.encode())
        if i < 0:
            raise KeyError(f"tensor {name!r} is not in {self.path}")
        _, dtype, shape = self._info(i)
        if dtype not in _ST_DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {dtype} is not supported; supported: {', '.join(_ST_DTYPES)}")
        data, nbytes = ctypes.c_void_p(), ctypes.c_int64()
        _capi.check(lib.mxm_model_tensor_data(self._h, i, ctypes.byref(data), ctypes.byref(nbytes)), "mxm_model_tensor_data")
        raw = ctypes.string_at(data.value, nbytes.value) if nbytes.value else b""
        return np.frombuffer(raw, _ST_DTYPES[dtype]).reshape(shape).copy()

    _close = lib.mxm_model_close  # bound for __del__ at interpreter exit

    def __del__(self):
        if getattr(self, "_h", None):
            self._close(self._h)
            self._h = None


_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "F8_E4M3": ml_dtypes.float8_e4m3fn, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "I32": np.int32,
              "I64": np.int64}


class MoELayer:
    """One MoE layer of a checkpoint. layer(hidden_states [..., H] f32/bf16, router_logits=None)
    returns the block's output (routed + shared experts) in hidden_states' dtype, kind and device.
    Without router_logits the layer's own router computes them (on the host).

    Attributes: family, layer, config (dict of the mxm_moe_config fields), hidden_size,
    num_experts, top_k, device."""

    def __init__(self, model, layer, weight_format="as_stored", act_quant="mxfp8", profile="trtllm",
                 scale_rule="rceil", num_threads=0, device="cpu"):
        self.model = model if isinstance(model, Model) else Model(model)
        if layer is None:
            if not self.model.moe_layers:
                raise ValueError(f"checkpoint {self.model.path}: has no MoE layers")
            layer = self.model.moe_layers[0]
        if layer not in self.model.moe_layers:
            raise ValueError(f"layer={layer!r} is not an MoE layer of {self.model.path}; MoE layers: "
                             f"{', '.join(map(str, self.model.moe_layers))}")
        opts = _capi.LayerOptions()
        lib.mxm_layer_options_default(ctypes.byref(opts))
        opts.weight_format = _choice("weight_format", weight_format, _FORMATS)
        opts.scale_rule = _choice("scale_rule", scale_rule, _RULES)
        opts.profile = _choice("profile", profile, _PROFILES)
        opts.num_threads = num_threads
        h = ctypes.c_void_p()
        _capi.check(lib.mxm_layer_load(self.model._h, layer, ctypes.byref(opts), ctypes.byref(h)),
                    f"mxm_layer_load(layer {layer})")
        self._h, self.layer, self.family = h.value, layer, self.model.family
        self._cfg = _capi.Config()
        ctypes.memmove(ctypes.byref(self._cfg), lib.mxm_layer_config(self._h), ctypes.sizeof(_capi.Config))
        self._cfg.act_quant = _choice("act_quant", act_quant, _ACT_QUANT)
        self._cfg.num_threads = num_threads
        self._weights = lib.mxm_layer_weights(self._h).contents
        bias = lib.mxm_layer_routing_bias(self._h)
        E_ = self._cfg.num_experts
        self._bias = np.ctypeslib.as_array(ctypes.cast(bias, ctypes.POINTER(ctypes.c_float)), (E_,)) if bias else None
        self._num_threads = num_threads
        self._dev_bufs = []
        self.device = "cpu"
        if device != "cpu":
            self.to(device)

    @property
    def config(self):
        return {f: getattr(self._cfg, f) for f, _, _ in _capi.STRUCT_FIELDS["mxm_moe_config"]}

    hidden_size = property(lambda self: self._cfg.hidden_size)
    num_experts = property(lambda self: self._cfg.num_experts)
    top_k = property(lambda self: self._cfg.top_k)

    def to(self, device):
        """Copies the expert weights (and the routing bias) to a CUDA device ("cuda" or
        "cuda:N"; mxm_copy_to_device on the current device) and runs there from then on."""
        device = str(device)
        if device == self.device:
            return self
        if not device.startswith("cuda") or self.device != "cpu":
            raise ValueError(f"device={device!r} is not supported; supported: cuda, cuda:N (from cpu)")
        if not lib.mxm_cuda_available():
            raise ValueError(f"device={device!r}: this mxmoe build has no CUDA backend or no GPU")
        torch = torch_or_none()
        index = int(device.split(":")[1]) if ":" in device else 0
        if torch is not None:
            torch.cuda.set_device(index)
        cfg, w = self._cfg, self._weights
        fmt = cfg.weight_format
        H = cfg.hidden_size

        def up(ptr, nbytes):
            d = ctypes.c_void_p()
            _capi.check(lib.mxm_device_alloc(max(nbytes, 1), ctypes.byref(d)), "mxm_device_alloc")
            self._dev_bufs.append(d.value)
            if nbytes:
                _capi.check(lib.mxm_copy_to_device(d.value, ptr, nbytes), "mxm_copy_to_device")
            return d.value

        def expert(src, I, act):
            M1 = 2 * I if lib.mxm_activation_is_gated(act) == 1 else I
            return _capi.ExpertWeights(
                up(src.w13, lib.mxm_weight_data_bytes(fmt, M1, H)), up(src.w13_scale, lib.mxm_weight_scale_bytes(fmt, M1, H))
                if src.w13_scale else None,
                up(src.w2, lib.mxm_weight_data_bytes(fmt, H, I)), up(src.w2_scale, lib.mxm_weight_scale_bytes(fmt, H, I))
                if src.w2_scale else None)

        E_loc = cfg.local_num_experts or cfg.num_experts
        table = (_capi.ExpertWeights * E_loc)()
        src = ctypes.cast(w.experts, ctypes.POINTER(_capi.ExpertWeights))
        for e in range(E_loc):
            table[e] = expert(src[e], cfg.intermediate_size, cfg.activation)
        self._dev_table = table
        new = _capi.MoEWeights()
        new.experts = ctypes.addressof(table)
        if w.shared:
            sact = cfg.shared_activation if cfg.shared_activation >= 0 else cfg.activation
            self._dev_shared = expert(ctypes.cast(w.shared, ctypes.POINTER(_capi.ExpertWeights))[0],
                                      cfg.shared_intermediate_size, sact)
            new.shared = ctypes.addressof(self._dev_shared)
        self._weights = new
        if self._bias is not None:
            self._dev_bias = up(self._bias.ctypes.data, 4 * self._bias.size)
        cfg.backend, cfg.device = _run.BACKEND_CUDA, index
        self.device = f"cuda:{index}"
        return self

    _free_dev, _free_layer = lib.mxm_device_free, lib.mxm_layer_free  # bound for __del__ at exit

    def __del__(self):
        for p in getattr(self, "_dev_bufs", ()):
            self._free_dev(p)
        self._dev_bufs = []
        if getattr(self, "_h", None):
            self._free_layer(self._h)
            self._h = None

    def router_logits(self, hidden_states):
        """The layer's router: float32 [T, E] for hidden_states [T, H] (f32/bf16), on the host."""
        x = _host2d("hidden_states", hidden_states, self.hidden_size)
        T = x.shape[0]
        out = np.empty((T, self.num_experts), np.float32)
        if T:
            _capi.check(lib.mxm_layer_router_logits(self._h, x.ptr, DT[x.dtype], T, out.ctypes.data, self._num_threads),
                        "mxm_layer_router_logits")
        return out

    def __call__(self, hidden_states, router_logits=None, return_routing=False):
        """Output [..., H] in hidden_states' dtype (and, with return_routing, also the selected
        expert ids int32 [T, K] and their combine weights float32 [T, K])."""
        H = self.hidden_size
        lead = tuple(hidden_states.shape[:-1])
        x2 = hidden_states.reshape(-1, H) if len(hidden_states.shape) != 2 else hidden_states
        x = view("hidden_states", x2, ("f32", "bf16"), device=self.device)
        T = x.shape[0]
        if x.shape[1] != H:
            raise ValueError(f"hidden_states: last dimension {x.shape[1]} != hidden size {H} of the layer")
        cuda = self.device != "cpu"
        if router_logits is None:
            lg = self.router_logits(x2)
            if cuda:
                lg = torch_or_none().from_numpy(lg).to(self.device)
        else:
            lg = router_logits.reshape(-1, self.num_experts) if len(router_logits.shape) != 2 else router_logits
        lv = view("router_logits", lg, ("f32", "bf16"), shape=(T, self.num_experts), device=self.device)
        inp = _capi.Inputs()
        inp.num_tokens, inp.x, inp.x_dtype = T, x.ptr, DT[x.dtype]
        inp.router_logits, inp.logits_dtype = lv.ptr, DT[lv.dtype]
        if self._bias is not None:
            inp.routing_bias, inp.bias_dtype = (self._dev_bias if cuda else self._bias.ctypes.data), DT["f32"]
        out = empty_like_kind(x, (T, H), x.dtype)
        o = view("out", out, (x.dtype,))
        outs = _capi.Outputs()
        outs.out, outs.out_dtype = o.ptr, DT[x.dtype]
        if return_routing:
            ids = empty_like_kind(x, (T, self.top_k), "i32")
            wts = empty_like_kind(x, (T, self.top_k), "f32")
            outs.topk_ids, outs.topk_weights = view("ids", ids, ("i32",)).ptr, view("w", wts, ("f32",)).ptr
        if T:
            _run.forward(self._cfg, self._weights, inp, outs, T, _run.current_stream(self.device) if cuda else None)
        out = out.reshape(lead + (H,))
        return (out, ids, wts) if return_routing else out


def _host2d(name, x, H):
    if not isinstance(x, np.ndarray):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        x = x.contiguous()
    if len(x.shape) != 2:
        x = x.reshape(-1, H)
    v = view(name, x, ("f32", "bf16"))
    if v.shape[1] != H:
        raise ValueError(f"{name}: last dimension {v.shape[1]} != hidden size {H} of the layer")
    return v


def load_layer(checkpoint, layer=None, *, weight_format="as_stored", act_quant="mxfp8", profile="trtllm",
               scale_rule="rceil", num_threads=0, device="cpu"):
    """A MoELayer from a Hugging Face checkpoint folder (nemotron_h, qwen3_moe, deepseek_v3; ModelOpt
    MXFP8, DeepSeek FP8, BF16/F32). layer: the model's layer index (None: its first MoE layer).
    weight_format "as_stored" or "mxfp8" (quantize BF16/F32 experts at load with scale_rule);
    act_quant "mxfp8" (W8A8) or "none" (weight-only); profile "trtllm" or "exact"; device "cpu" or
    "cuda[:N]"."""
    return MoELayer(checkpoint, layer, weight_format, act_quant, profile, scale_rule, num_threads, device)
