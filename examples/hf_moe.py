#!/usr/bin/env python3
"""Run a Hugging Face MoE model (Qwen3-MoE, Nemotron-H, DeepSeek-V3 families) with every MoE block
replaced by mxmoe, and compare it with the unmodified model: the logits' difference on a prompt
and the share of identical greedy tokens.

    python examples/hf_moe.py tests/data/qwen3_moe_tiny --mxfp8 tests/data/qwen3_moe_tiny_mxfp8
    python examples/hf_moe.py /path/to/Qwen3-30B-A3B --quantize          # MXFP8 at load
    python examples/hf_moe.py tests/data/deepseek_v3_tiny --reference-mode --dtype float32

MODEL is the BF16 checkpoint that transformers loads (attention, embeddings, norms, and the
baseline). The MoE blocks run in mxmoe from --mxfp8 DIR (a ModelOpt MXFP8 or DeepSeek FP8 export
of the same model), from MODEL quantized to MXFP8 at load (--quantize), or from MODEL's own BF16
weights in mxmoe's reference mode (--reference-mode: same math as transformers, to check the
plumbing). The router runs in mxmoe too, from the checkpoint's router weights.

Needs torch and transformers (pip install ./python[hf]). The fixtures in tests/data are random
tiny models without a tokenizer, so the prompt is random token ids."""
import argparse
import re
import time

import torch

import mxmoe

MOE_BLOCKS = ("Qwen3MoeSparseMoeBlock", "DeepseekV3MoE", "NemotronHMoE")


class MxmoeBlock(torch.nn.Module):
    """Drop-in for a transformers MoE block: hidden_states [B, S, H] -> [B, S, H] (routed + shared
    experts), computed by an mxmoe.MoELayer on the tensor's device."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states, *args, **kwargs):
        return self.layer(hidden_states.contiguous())


def replace_moe_blocks(model, checkpoint, **load_kwargs):
    """Replaces every MoE block of model by MxmoeBlock(mxmoe.load_layer(checkpoint, L)); returns
    the list of replaced (module name, layer index)."""
    done = []
    for name, module in list(model.named_modules()):
        if type(module).__name__ not in MOE_BLOCKS:
            continue
        if getattr(module, "fc1_latent_proj", None) is not None and not isinstance(module.fc1_latent_proj,
                                                                                   torch.nn.Identity):
            raise NotImplementedError(f"{name}: Nemotron-H latent MoE projections are not supported by mxmoe")
        m = re.search(r"layers\.(\d+)\.", name + ".")
        layer = mxmoe.load_layer(checkpoint, int(m.group(1)), **load_kwargs)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, MxmoeBlock(layer))
        done.append((name, layer.layer))
    if not done:
        raise ValueError(f"no MoE block found (looked for {', '.join(MOE_BLOCKS)})")
    return done


@torch.no_grad()
def greedy(model, ids, n):
    for _ in range(n):
        nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def compare(model_dir, moe_checkpoint=None, quantize=False, reference_mode=False, act_quant="mxfp8",
            profile="trtllm", dtype="bfloat16", prompt_len=16, new_tokens=16, batch=2, seed=0, device="cpu",
            verbose=True):
    """Loads model_dir twice, replaces the MoE blocks of the second copy, and returns a report:
    logits_rel_l2 and logits_max_abs on the prompt, greedy_identical (share of equal tokens of the
    two greedy continuations), teacher_forced_agreement (share of equal argmaxes along the
    baseline's continuation), replaced blocks, seconds."""
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    dt = getattr(torch, dtype)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt).to(device).eval()
    ours = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt).to(device).eval()
    if reference_mode:
        src, kw = model_dir, dict(weight_format="as_stored", act_quant="none")
    elif quantize:
        src, kw = model_dir, dict(weight_format="mxfp8", act_quant=act_quant)
    else:
        if moe_checkpoint is None:
            raise ValueError("moe_checkpoint: give an MXFP8 checkpoint, or quantize=True, or reference_mode=True")
        src, kw = moe_checkpoint, dict(act_quant=act_quant)
    replaced = replace_moe_blocks(ours, src, profile=profile, device=device, **kw)
    g = torch.Generator().manual_seed(seed)
    vocab = base.config.vocab_size
    prompt = torch.randint(3, vocab, (batch, prompt_len), generator=g).to(device)
    with torch.no_grad():
        lb = base(prompt, use_cache=False).logits.double()
        lo = ours(prompt, use_cache=False).logits.double()
    rel = float((lo - lb).norm() / lb.norm())
    mx = float((lo - lb).abs().max())
    gb = greedy(base, prompt, new_tokens)
    go = greedy(ours, prompt, new_tokens)
    same = float((gb[:, prompt_len:] == go[:, prompt_len:]).double().mean())
    with torch.no_grad():  # teacher forcing along the baseline's tokens
        tf_o = ours(gb[:, :-1], use_cache=False).logits[:, prompt_len - 1:].argmax(-1)
    tf = float((tf_o == gb[:, prompt_len:]).double().mean())
    report = dict(model=model_dir, moe_source=src, mode="reference" if reference_mode else
                  ("quantize-at-load" if quantize else "checkpoint"), act_quant=kw["act_quant"], profile=profile,
                  dtype=dtype, replaced=replaced, logits_rel_l2=rel, logits_max_abs=mx, greedy_identical=same,
                  teacher_forced_agreement=tf, seconds=time.time() - t0)
    if verbose:
        print(f"{model_dir}: {len(replaced)} MoE block(s) -> mxmoe ({report['mode']}, {src}, act_quant "
              f"{kw['act_quant']}, profile {profile}, {dtype})")
        print(f"  logits on a {batch}x{prompt_len} prompt: rel L2 {rel:.3e}, max |diff| {mx:.3e}")
        print(f"  greedy, {new_tokens} new tokens: identical {100 * same:.1f}%, teacher-forced argmax "
              f"agreement {100 * tf:.1f}% ({report['seconds']:.1f} s)")
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="BF16 Hugging Face checkpoint folder")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--mxfp8", metavar="DIR", help="MXFP8 (or DeepSeek FP8) checkpoint of the same model for the MoE blocks")
    src.add_argument("--quantize", action="store_true", help="quantize MODEL's experts to MXFP8 at load")
    src.add_argument("--reference-mode", action="store_true", help="MODEL's BF16 experts, weight-only (plumbing check)")
    ap.add_argument("--act-quant", choices=["mxfp8", "none"], default="mxfp8")
    ap.add_argument("--profile", choices=["trtllm", "exact"], default="trtllm")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (mxmoe built with CUDA)")
    a = ap.parse_args()
    if not (a.mxfp8 or a.quantize or a.reference_mode):
        ap.error("give --mxfp8 DIR, --quantize or --reference-mode")
    compare(a.model, a.mxfp8, a.quantize, a.reference_mode, a.act_quant, a.profile, a.dtype, a.prompt_len,
            a.new_tokens, a.batch, a.seed, a.device)


if __name__ == "__main__":
    main()
