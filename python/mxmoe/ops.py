"""torch.library ops: torch.ops.mxmoe.trtllm_fp8_block_scale_moe and
torch.ops.mxmoe.trtllm_fp8_block_scale_routed_moe, with fake (meta) implementations so that
torch.compile traces through them (the op stays one opaque node) and torch.export sees shapes.
The arguments are FlashInfer's, less the ones that do not change the result (enable_pdl,
tune_max_num_tokens, routing_replay_out, output), plus mxmoe's act_quant, profile and w13_layout.
On CUDA the op runs on the current stream without host synchronization, so it can be captured
in a CUDA graph once a first call has made its plan (warm up before capturing)."""
from typing import Optional

import torch

from . import _flashinfer

Tensor = torch.Tensor


@torch.library.custom_op("mxmoe::trtllm_fp8_block_scale_moe", mutates_args=())
def trtllm_fp8_block_scale_moe(
        routing_logits: Tensor, routing_bias: Optional[Tensor], hidden_states: Tensor,
        hidden_states_scale: Optional[Tensor], gemm1_weights: Tensor, gemm1_weights_scale: Tensor,
        gemm2_weights: Tensor, gemm2_weights_scale: Tensor, num_experts: int, top_k: int, n_group: Optional[int],
        topk_group: Optional[int], intermediate_size: int, local_expert_offset: int, local_num_experts: int,
        routed_scaling_factor: Optional[float], routing_method_type: int = 0, fp8_quantization_type: int = 1,
        activation_type: int = 3, norm_topk_prob: bool = True, gemm1_alpha: Optional[Tensor] = None,
        gemm1_beta: Optional[Tensor] = None, gemm1_clamp_limit: Optional[Tensor] = None,
        act_quant: str = "mxfp8", profile: str = "trtllm", w13_layout: str = "up_gate") -> Tensor:
    return _flashinfer.trtllm_fp8_block_scale_moe(
        routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
        gemm2_weights, gemm2_weights_scale, num_experts, top_k, n_group, topk_group, intermediate_size,
        local_expert_offset, local_num_experts, routed_scaling_factor, routing_method_type,
        fp8_quantization_type=fp8_quantization_type, activation_type=activation_type,
        norm_topk_prob=norm_topk_prob, gemm1_alpha=gemm1_alpha, gemm1_beta=gemm1_beta,
        gemm1_clamp_limit=gemm1_clamp_limit, act_quant=act_quant, profile=profile, w13_layout=w13_layout)


@trtllm_fp8_block_scale_moe.register_fake
def _(routing_logits, routing_bias, hidden_states, *args, **kwargs):
    return hidden_states.new_empty(hidden_states.shape, dtype=torch.bfloat16)


@torch.library.custom_op("mxmoe::trtllm_fp8_block_scale_routed_moe", mutates_args=())
def trtllm_fp8_block_scale_routed_moe(
        topk_ids: Tensor, expert_weights: Optional[Tensor], hidden_states: Tensor,
        hidden_states_scale: Optional[Tensor], gemm1_weights: Tensor, gemm1_weights_scale: Tensor,
        gemm2_weights: Tensor, gemm2_weights_scale: Tensor, num_experts: int, top_k: int, n_group: Optional[int],
        topk_group: Optional[int], intermediate_size: int, local_expert_offset: int, local_num_experts: int,
        routed_scaling_factor: Optional[float], routing_method_type: int = 0, fp8_quantization_type: int = 1,
        activation_type: int = 3, gemm1_alpha: Optional[Tensor] = None, gemm1_beta: Optional[Tensor] = None,
        gemm1_clamp_limit: Optional[Tensor] = None, act_quant: str = "mxfp8", profile: str = "trtllm",
        w13_layout: str = "up_gate") -> Tensor:
    """topk_ids packed as FlashInfer's ((id << 16) | bf16 weight bits) when expert_weights is None,
    plain ids with float32 expert_weights otherwise."""
    return _flashinfer.trtllm_fp8_block_scale_routed_moe(
        topk_ids, None, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale, gemm2_weights,
        gemm2_weights_scale, num_experts, top_k, n_group, topk_group, intermediate_size, local_expert_offset,
        local_num_experts, routed_scaling_factor, routing_method_type,
        fp8_quantization_type=fp8_quantization_type, activation_type=activation_type, gemm1_alpha=gemm1_alpha,
        gemm1_beta=gemm1_beta, gemm1_clamp_limit=gemm1_clamp_limit, expert_weights=expert_weights,
        act_quant=act_quant, profile=profile, w13_layout=w13_layout)


@trtllm_fp8_block_scale_routed_moe.register_fake
def _(topk_ids, expert_weights, hidden_states, *args, **kwargs):
    return hidden_states.new_empty(hidden_states.shape, dtype=torch.bfloat16)
