"""mxmoe: MXFP8 / DeepSeek FP8 mixture-of-experts layers on CPU and Hopper GPUs.

    import mxmoe
    out = mxmoe.trtllm_fp8_block_scale_moe(...)        # FlashInfer's call and semantics
    layer = mxmoe.load_layer("path/to/checkpoint")      # a Hugging Face MoE layer
    q, s = mxmoe.quantize_mxfp8(x)                      # and dequantize_mxfp8(q, s)

Inputs are numpy arrays or torch tensors (CPU; CUDA when the library was built with nvcc),
used in place through their data pointers. `import mxmoe.ops` (needs torch) registers the calls
as torch.library ops (torch.ops.mxmoe.*) with fake implementations for torch.compile."""
import sys as _sys

from ._capi import MxmError, lib as _lib, LIBRARY_PATH, HEADER_PATH
from ._flashinfer import (ActivationType, Fp8BlockScaleMoE, Fp8QuantizationType, RoutingMethodType, WeightLayout, pack_topk,
                          trtllm_fp8_block_scale_moe, trtllm_fp8_block_scale_routed_moe, unpack_topk)
from ._layer import Model, MoELayer, load_layer
from ._quant import dequantize_fp8_block, dequantize_mxfp8, quantize_fp8_block, quantize_mxfp8

__version__ = _lib.mxm_version().decode()


def cuda_available():
    """True when the library has the CUDA backend and a GPU is present."""
    return bool(_lib.mxm_cuda_available())


__all__ = ["ActivationType", "Fp8BlockScaleMoE", "Fp8QuantizationType", "RoutingMethodType", "WeightLayout", "MxmError", "Model",
           "MoELayer", "load_layer", "trtllm_fp8_block_scale_moe", "trtllm_fp8_block_scale_routed_moe",
           "pack_topk", "unpack_topk", "quantize_mxfp8", "dequantize_mxfp8", "quantize_fp8_block",
           "dequantize_fp8_block", "cuda_available", "LIBRARY_PATH", "HEADER_PATH"]

if "torch" in _sys.modules:  # register the torch ops when the caller already uses torch
    from . import ops  # noqa: F401
