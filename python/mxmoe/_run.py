"""Plans, workspaces and the forward call, shared by the FlashInfer-style functions and MoELayer.

A plan is made once per (config, device) and thread, for a power-of-two number of tokens at least
as large as the call's, with its workspace; later calls reuse both, so a call costs one
mxm_moe_forward plus the argument checks."""
import ctypes

import numpy as np

from . import _capi
from ._capi import lib
from ._tensor import torch_or_none

E = _capi.ENUMS
BACKEND_CPU, BACKEND_CUDA = E["MXM_BACKEND_CPU"], E["MXM_BACKEND_CUDA"]


class Plan:
    __slots__ = ("ptr", "max_tokens", "ws", "ws_ptr", "ws_bytes", "kernels", "__weakref__")

    def __init__(self, cfg, max_tokens, device_index):
        p = ctypes.c_void_p()
        _capi.check(lib.mxm_moe_plan_create(ctypes.byref(cfg), max_tokens, ctypes.byref(p)), "mxm_moe_plan_create")
        self.ptr, self.max_tokens = p.value, max_tokens
        self.ws_bytes = lib.mxm_moe_plan_workspace_size(self.ptr)
        if self.ws_bytes < 0:
            lib.mxm_moe_plan_destroy(self.ptr)
            self.ptr = None
            raise _capi.MxmError(self.ws_bytes, "mxm_moe_plan_workspace_size")
        self.kernels = lib.mxm_moe_plan_kernels(self.ptr).decode()
        self.ws = None
        if cfg.backend == BACKEND_CUDA:  # cudaMalloc (256-byte aligned) on the plan's device
            d = ctypes.c_void_p()
            torch = torch_or_none()
            if torch is not None:  # mxm_device_alloc allocates on the current device
                with torch.cuda.device(device_index):
                    st = lib.mxm_device_alloc(max(self.ws_bytes, 1), ctypes.byref(d))
            else:
                st = lib.mxm_device_alloc(max(self.ws_bytes, 1), ctypes.byref(d))
            if st != 0:
                lib.mxm_moe_plan_destroy(self.ptr)
                self.ptr = None
                raise _capi.MxmError(st, "mxm_device_alloc (workspace)")
            self.ws_ptr = d.value
        else:
            self.ws = np.empty(max(self.ws_bytes, 1) + 64, np.uint8)
            self.ws_ptr = (self.ws.ctypes.data + 63) // 64 * 64

    # bound here so that __del__ still finds them while the interpreter tears modules down
    _free, _destroy = lib.mxm_device_free, lib.mxm_moe_plan_destroy

    def __del__(self):
        if getattr(self, "ws", 0) is None and getattr(self, "ws_ptr", None):
            self._free(self.ws_ptr)
            self.ws_ptr = None
        if getattr(self, "ptr", None):
            self._destroy(self.ptr)
            self.ptr = None


def get_plan(cfg, num_tokens):
    """The thread's plan for cfg (an mxm_moe_config) covering num_tokens tokens."""
    cache = _capi.thread_state().setdefault("plans", {})
    key = bytes(cfg)
    plan = cache.get(key)
    if plan is None or plan.max_tokens < num_tokens:
        max_tokens = 16
        while max_tokens < num_tokens:
            max_tokens *= 2
        cache.pop(key, None)
        plan = cache[key] = Plan(cfg, max_tokens, cfg.device)
    return plan


def current_stream(device):
    """The current torch CUDA stream of a device ("cuda:N") as a cudaStream_t value."""
    torch = torch_or_none()
    return torch.cuda.current_stream(torch.device(device)).cuda_stream


def forward(cfg, weights, inputs, outputs, num_tokens, stream=None):
    plan = get_plan(cfg, num_tokens)
    st = lib.mxm_moe_forward(plan.ptr, ctypes.byref(weights), ctypes.byref(inputs), ctypes.byref(outputs),
                             plan.ws_ptr, plan.ws_bytes, stream)
    if st != 0:
        raise _capi.MxmError(st, "mxm_moe_forward")
    return plan
