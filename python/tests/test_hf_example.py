#!/usr/bin/env python3
"""examples/hf_moe.py on the fixtures' models (tests/data: qwen3_moe, nemotron_h, deepseek_v3):
transformers' model with every MoE block replaced by mxmoe against the unmodified model.
- reference mode (the checkpoint's BF16 experts, weight-only, exact profile, float32 model): the
  same math as transformers, so the logits agree to 1e-5 and every greedy token is identical;
- the MXFP8 checkpoint, W8A8 (FlashInfer's math): the logits' difference is reported and must stay
  below 0.15 relative (weights and activations in MXFP8; a wrong layout or routing gives ~1);
- BF16 quantized to MXFP8 at load gives the same logits as the MXFP8 checkpoint.
Skipped (77) without torch and transformers."""
import os
import sys
import time

from pkgtest import Checks, SRC, seed, skip, torch

try:
    import transformers  # noqa: F401
except ImportError:
    transformers = None
if torch is None or transformers is None:
    skip("torch and transformers are needed (pip install ./python[hf])")
sys.path.insert(0, os.path.join(SRC, "examples"))
import hf_moe  # noqa: E402

check = Checks("test_hf_example")


def main():
    t0 = time.time()
    s = seed()
    for fam in ("qwen3_moe", "nemotron_h", "deepseek_v3"):
        bf16 = os.path.join(SRC, "tests", "data", f"{fam}_tiny")
        r = hf_moe.compare(bf16, reference_mode=True, profile="exact", dtype="float32", seed=s, new_tokens=8)
        check(r["logits_rel_l2"] <= 1e-5 and r["greedy_identical"] == 1.0 and r["teacher_forced_agreement"] == 1.0,
              f"{fam} reference mode: {r}")
        q = hf_moe.compare(bf16, os.path.join(SRC, "tests", "data", f"{fam}_tiny_mxfp8"), seed=s, new_tokens=8)
        check(q["logits_rel_l2"] <= 0.15, f"{fam} MXFP8 W8A8: logits rel L2 {q['logits_rel_l2']:.3e}")
        ql = hf_moe.compare(bf16, quantize=True, seed=s, new_tokens=8, verbose=False)
        check(ql["logits_rel_l2"] == q["logits_rel_l2"], f"{fam}: quantized at load {ql['logits_rel_l2']} != "
              f"checkpoint {q['logits_rel_l2']}")
    check.finish(time.time() - t0)


if __name__ == "__main__":
    main()
