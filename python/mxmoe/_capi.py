"""The C library through ctypes. The structs and enum values are generated at import from the
header that ships with the library (mxmoe.h, the public API's manual), so they cannot drift from
it; tests/test_abi.py compiles a C program that prints every field's offset and every struct's
size and compares them with what ctypes computed here.

Only include/mxmoe.h is used (STYLE.md: python/ sees the public header only)."""
import ctypes
import os
import re
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))


def _find(name, env):
    """The packaged file, or the one named by an environment variable (MXMOE_LIBRARY,
    MXMOE_HEADER: for running the package against a build tree)."""
    path = os.environ.get(env) or os.path.join(_HERE, name)
    if not os.path.exists(path):
        raise ImportError(f"mxmoe: {path} not found (install with `pip install ./python`, or set {env})")
    return path


HEADER_PATH = _find("mxmoe.h", "MXMOE_HEADER")
LIBRARY_PATH = _find("libmxmoe.so", "MXMOE_LIBRARY")

# ---- header parsing ------------------------------------------------------------------------------

_SCALARS = {"int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64, "float": ctypes.c_float,
            "uint8_t": ctypes.c_uint8, "uint16_t": ctypes.c_uint16, "double": ctypes.c_double}


def _strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _parse(text):
    """(structs, enums): structs maps a typedef name to [(field, ctype, c_type_text)] in order;
    enums maps every enumerator name to its value."""
    text = _strip_comments(text)
    structs = {}
    for m in re.finditer(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*(\w+)\s*;", text, re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            d = re.fullmatch(r"(?:const\s+)?(\w+)\s*(\*?)\s*(\w+)\s*(?:\[(\d+)\])?", decl)
            if not d:
                raise ImportError(f"mxmoe: cannot parse field '{decl}' of {m.group(3)} in {HEADER_PATH}")
            base, star, name, count = d.groups()
            if star:
                ct = ctypes.c_void_p
            elif base in _SCALARS:
                ct = _SCALARS[base]
            else:
                raise ImportError(f"mxmoe: field type '{base}' of {m.group(3)}.{name} is unknown to the binding")
            if count:
                ct = ct * int(count)
            fields.append((name, ct, decl))
        structs[m.group(3)] = fields
    enums = {}
    for m in re.finditer(r"enum\s*\w*\s*\{(.*?)\}", text, re.S):
        for item in m.group(1).split(","):
            e = re.fullmatch(r"\s*(MXM_\w+)\s*=\s*(-?\d+)\s*", item)
            if e:
                enums[e.group(1)] = int(e.group(2))
    # status codes come from the X-macro list
    for m in re.finditer(r"X\((MXM_\w+),\s*(-?\d+),", text):
        enums[m.group(1)] = int(m.group(2))
    return structs, enums


with open(HEADER_PATH) as _f:
    STRUCT_FIELDS, ENUMS = _parse(_f.read())


def _struct(name):
    return type(name, (ctypes.Structure,), {"_fields_": [(f, t) for f, t, _ in STRUCT_FIELDS[name]]})


Config = _struct("mxm_moe_config")
ExpertWeights = _struct("mxm_expert_weights")
MoEWeights = _struct("mxm_moe_weights")
Inputs = _struct("mxm_moe_inputs")
Outputs = _struct("mxm_moe_outputs")
LayerOptions = _struct("mxm_layer_options")
TensorOut = _struct("mxm_tensor_out")
STRUCTS = {"mxm_moe_config": Config, "mxm_expert_weights": ExpertWeights, "mxm_moe_weights": MoEWeights,
           "mxm_moe_inputs": Inputs, "mxm_moe_outputs": Outputs, "mxm_layer_options": LayerOptions,
           "mxm_tensor_out": TensorOut}

# ---- the library ---------------------------------------------------------------------------------

lib = ctypes.CDLL(LIBRARY_PATH)
vp, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float
P = ctypes.POINTER
_SIGS = {
    "mxm_version": (ctypes.c_char_p, []),
    "mxm_status_str": (ctypes.c_char_p, [i32]),
    "mxm_last_error": (ctypes.c_char_p, []),
    "mxm_mxfp8_quantize": (i32, [vp, i32, i64, i64, i64, vp, vp, i32, i32]),
    "mxm_mxfp8_dequantize": (i32, [vp, vp, i64, i64, vp, i32, i32]),
    "mxm_fp8block_quantize_act": (i32, [vp, i32, i64, i64, vp, vp, i32, i32]),
    "mxm_fp8block_quantize_weight": (i32, [vp, i32, i64, i64, vp, vp, i32]),
    "mxm_fp8block_dequantize": (i32, [vp, vp, i64, i64, i32, i32, vp, i32, i32]),
    "mxm_moe_config_default": (None, [P(Config)]),
    "mxm_moe_config_validate": (i32, [P(Config)]),
    "mxm_moe_plan_create": (i32, [P(Config), i64, P(vp)]),
    "mxm_moe_plan_destroy": (None, [vp]),
    "mxm_moe_plan_workspace_size": (i64, [vp]),
    "mxm_moe_plan_kernels": (ctypes.c_char_p, [vp]),
    "mxm_moe_forward": (i32, [vp, P(MoEWeights), P(Inputs), P(Outputs), vp, i64, vp]),
    "mxm_route": (i32, [P(Config), i64, vp, i32, vp, i32, vp, vp]),
    "mxm_activation_name": (ctypes.c_char_p, [i32]),
    "mxm_activation_is_gated": (i32, [i32]),
    "mxm_routing_method_name": (ctypes.c_char_p, [i32]),
    "mxm_weight_format_name": (ctypes.c_char_p, [i32]),
    "mxm_weight_data_bytes": (i64, [i32, i64, i64]),
    "mxm_weight_scale_bytes": (i64, [i32, i64, i64]),
    "mxm_model_open": (i32, [ctypes.c_char_p, P(vp)]),
    "mxm_model_close": (None, [vp]),
    "mxm_model_family": (ctypes.c_char_p, [vp]),
    "mxm_model_weight_format": (i32, [vp]),
    "mxm_model_moe_layer_count": (i32, [vp]),
    "mxm_model_moe_layer": (i32, [vp, i32]),
    "mxm_model_tensor_count": (i64, [vp]),
    "mxm_model_tensor_info": (i32, [vp, i64, P(ctypes.c_char_p), P(ctypes.c_char_p), P(i32), P(i64)]),
    "mxm_model_tensor_find": (i64, [vp, ctypes.c_char_p]),
    "mxm_model_tensor_data": (i32, [vp, i64, P(vp), P(i64)]),
    "mxm_layer_options_default": (None, [P(LayerOptions)]),
    "mxm_layer_load": (i32, [vp, i32, P(LayerOptions), P(vp)]),
    "mxm_layer_free": (None, [vp]),
    "mxm_layer_config": (P(Config), [vp]),
    "mxm_layer_weights": (P(MoEWeights), [vp]),
    "mxm_layer_routing_bias": (vp, [vp]),
    "mxm_layer_router_logits": (i32, [vp, vp, i32, i64, vp, i32]),
    "mxm_layer_weight_bytes": (i64, [vp]),
    "mxm_cuda_available": (i32, []),
    "mxm_device_alloc": (i32, [i64, P(vp)]),
    "mxm_device_free": (None, [vp]),
    "mxm_copy_to_device": (i32, [vp, vp, i64]),
    "mxm_copy_to_host": (i32, [vp, vp, i64]),
    "mxm_device_synchronize": (i32, []),
    "mxm_device_name": (ctypes.c_char_p, []),
}
for _name, (_res, _args) in _SIGS.items():
    _fn = getattr(lib, _name)
    _fn.restype, _fn.argtypes = _res, _args


class MxmError(RuntimeError):
    """A failing library call: status (negative mxm_status), its name, and mxm_last_error()."""

    def __init__(self, status, what):
        self.status = status
        self.status_name = next((k for k, v in ENUMS.items() if v == status and k.startswith("MXM_ERR")), "?")
        self.message = lib.mxm_last_error().decode(errors="replace")
        super().__init__(f"{what}: {self.status_name} ({status}): {self.message}")


def check(status, what):
    if status != 0:
        raise MxmError(status, what)


_tls = threading.local()


def thread_state():
    """Per-thread caches (plans, workspaces): mxm plans are not shared between threads."""
    st = getattr(_tls, "state", None)
    if st is None:
        st = _tls.state = {}
    return st
