"""torch.library ops: torch.ops.mxmoe.trtllm_fp8_block_scale_moe and
torch.ops.mxmoe.trtllm_fp8_block_scale_routed_moe, with fake (meta) implementations so that
torch.compile traces through them (the op stays one opaque node) and torch.export sees shapes.
The arguments are FlashInfer's, less the ones that do not change the result (enable_pdl,
tune_max_num_tokens, routing_replay_out, output), plus mxmoe's act_quant, profile and w13_layout.
On CUDA the op runs on the current stream without host synchronization, so it can be captured
in a CUDA graph once a first call has made its plan (warm up before capturing).

The ops are defined with torch.library.Library and plain CPU/CUDA kernels rather than
torch.library.custom_op: the latter's Python autograd wrapper costs about 17 us per call, and
the ops have no gradient (FP8 weights)."""
import torch

from . import _flashinfer

_COMMON = ("Tensor hidden_states, Tensor? hidden_states_scale, Tensor gemm1_weights, Tensor gemm1_weights_scale, "
           "Tensor gemm2_weights, Tensor gemm2_weights_scale, int num_experts, int top_k, int? n_group, "
           "int? topk_group, int intermediate_size, int local_expert_offset, int local_num_experts, "
           "float? routed_scaling_factor, int routing_method_type=0, int fp8_quantization_type=1, "
           "int activation_type=3")
_TAIL = ("Tensor? gemm1_alpha=None, Tensor? gemm1_beta=None, Tensor? gemm1_clamp_limit=None, "
         "str act_quant='mxfp8', str profile='trtllm', str w13_layout='up_gate') -> Tensor")

_lib = torch.library.Library("mxmoe", "DEF")
_lib.define("trtllm_fp8_block_scale_moe(Tensor routing_logits, Tensor? routing_bias, " + _COMMON +
            ", bool norm_topk_prob=True, " + _TAIL)
_lib.define("trtllm_fp8_block_scale_routed_moe(Tensor topk_ids, Tensor? expert_weights, " + _COMMON + ", " + _TAIL)


def _moe(routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
         gemm2_weights, gemm2_weights_scale, num_experts, top_k, n_group, topk_group, intermediate_size,
         local_expert_offset, local_num_experts, routed_scaling_factor, routing_method_type=0,
         fp8_quantization_type=1, activation_type=3, norm_topk_prob=True, gemm1_alpha=None, gemm1_beta=None,
         gemm1_clamp_limit=None, act_quant="mxfp8", profile="trtllm", w13_layout="up_gate"):
    return _flashinfer.trtllm_fp8_block_scale_moe(
        routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
        gemm2_weights, gemm2_weights_scale, num_experts, top_k, n_group, topk_group, intermediate_size,
        local_expert_offset, local_num_experts, routed_scaling_factor, routing_method_type,
        fp8_quantization_type=fp8_quantization_type, activation_type=activation_type,
        norm_topk_prob=norm_topk_prob, gemm1_alpha=gemm1_alpha, gemm1_beta=gemm1_beta,
        gemm1_clamp_limit=gemm1_clamp_limit, act_quant=act_quant, profile=profile, w13_layout=w13_layout)


def _routed(topk_ids, expert_weights, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
            gemm2_weights, gemm2_weights_scale, num_experts, top_k, n_group, topk_group, intermediate_size,
            local_expert_offset, local_num_experts, routed_scaling_factor, routing_method_type=0,
            fp8_quantization_type=1, activation_type=3, gemm1_alpha=None, gemm1_beta=None, gemm1_clamp_limit=None,
            act_quant="mxfp8", profile="trtllm", w13_layout="up_gate"):
    """topk_ids packed as FlashInfer's ((id << 16) | bf16 weight bits) when expert_weights is None,
    plain ids with float32 expert_weights otherwise."""
    return _flashinfer.trtllm_fp8_block_scale_routed_moe(
        topk_ids, None, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale, gemm2_weights,
        gemm2_weights_scale, num_experts, top_k, n_group, topk_group, intermediate_size, local_expert_offset,
        local_num_experts, routed_scaling_factor, routing_method_type,
        fp8_quantization_type=fp8_quantization_type, activation_type=activation_type, gemm1_alpha=gemm1_alpha,
        gemm1_beta=gemm1_beta, gemm1_clamp_limit=gemm1_clamp_limit, expert_weights=expert_weights,
        act_quant=act_quant, profile=profile, w13_layout=w13_layout)


for _key in ("CPU", "CUDA"):
    _lib.impl("trtllm_fp8_block_scale_moe", _moe, _key)
    _lib.impl("trtllm_fp8_block_scale_routed_moe", _routed, _key)


@torch.library.register_fake("mxmoe::trtllm_fp8_block_scale_moe")
def _(routing_logits, routing_bias, hidden_states, *args, **kwargs):
    return hidden_states.new_empty(hidden_states.shape, dtype=torch.bfloat16)


@torch.library.register_fake("mxmoe::trtllm_fp8_block_scale_routed_moe")
def _(topk_ids, expert_weights, hidden_states, *args, **kwargs):  # noqa: F811
    return hidden_states.new_empty(hidden_states.shape, dtype=torch.bfloat16)


trtllm_fp8_block_scale_moe = torch.ops.mxmoe.trtllm_fp8_block_scale_moe
trtllm_fp8_block_scale_routed_moe = torch.ops.mxmoe.trtllm_fp8_block_scale_routed_moe
