#!/usr/bin/env python3
"""torch.ops.mxmoe.* (mxmoe.ops): torch.library.opcheck (fake implementation, autograd
registration, AOT dispatch with dynamic shapes), torch.compile(fullgraph=True) of a function that uses both ops with surrounding
torch code, equal to eager and to the plain function; on a GPU with the CUDA backend, the op on
CUDA tensors equals the CPU result's routing and capture in a CUDA graph replays it.
Skipped (77) when torch is not importable."""
import time

import numpy as np

from pkgtest import Checks, mxmoe, seed, skip, torch

if torch is None:
    skip("torch is not importable")
import mxmoe.ops  # noqa: E402,F401

check = Checks("test_torch_op")
ops = torch.ops.mxmoe


def layer(g, H, I, E, mx=True):
    w1 = torch.randn(E, 2 * I, H, generator=g) / H ** 0.5
    w2 = torch.randn(E, H, I, generator=g) / I ** 0.5
    if mx:
        q1, s1 = mxmoe.quantize_mxfp8(w1)
        q2, s2 = mxmoe.quantize_mxfp8(w2)
        return q1, s1, q2, s2
    r = [mxmoe.quantize_fp8_block(w) for w in list(w1) + list(w2)]
    return (torch.stack([a for a, _ in r[:E]]), torch.stack([b for _, b in r[:E]]),
            torch.stack([a for a, _ in r[E:]]), torch.stack([b for _, b in r[E:]]))


def main():
    t0 = time.time()
    s = seed()
    g = torch.Generator().manual_seed(s)
    H, I, E, K, T = 128, 64, 8, 3, 6
    q1, s1, q2, s2 = layer(g, H, I, E)
    x = torch.randn(T, H, generator=g)
    logits = torch.randn(T, E, generator=g)
    args = (logits, None, x.to(torch.bfloat16), None, q1, s1, q2, s2, E, K, None, None, I, 0, E, None, 1, 2, 3, True)

    ref = mxmoe.trtllm_fp8_block_scale_moe(*args[:17], fp8_quantization_type=2, activation_type=3)
    eager = ops.trtllm_fp8_block_scale_moe(*args)
    check(torch.equal(ref.view(torch.int16), eager.view(torch.int16)), "op differs from the plain function")
    for name, op, a in (("moe", ops.trtllm_fp8_block_scale_moe, args),):
        try:
            # test_schema is left out: it checks for mutation by scaling each input, which
            # float8 tensors do not support
            torch.library.opcheck(op, a, test_utils=("test_autograd_registration", "test_faketensor",
                                                      "test_aot_dispatch_dynamic"))
            ok = True
        except Exception as e:  # noqa: BLE001
            print(f"opcheck {name}: {e}")
            ok = False
        check(ok, f"opcheck {name}")

    def routing(logits):
        top = torch.topk(logits, K, dim=-1)
        return top.indices.to(torch.int32), torch.softmax(top.values, -1)

    def block(x, logits, ids, w):
        # The ops get bf16 inputs and routing weights made outside any fused kernel (a cast or a
        # softmax that inductor fuses into its own kernel may round differently from eager by an
        # ulp, which is not what this test is about).
        h = x.to(torch.bfloat16)
        y = ops.trtllm_fp8_block_scale_moe(logits, None, h, None, q1, s1, q2, s2, E, K, None, None, I, 0, E, None, 1, 2, 3)
        y2 = ops.trtllm_fp8_block_scale_routed_moe(ids, w, h, None, q1, s1, q2, s2, E, K, None, None, I, 0, E, None,
                                                   1, 2, 3)
        return x + y.float(), y2

    want = block(x, logits, *routing(logits))
    for backend in ("aot_eager", "inductor"):
        torch._dynamo.reset()
        f = torch.compile(block, fullgraph=True, backend=backend)
        got = f(x, logits, *routing(logits))
        ok = all(torch.equal(a, b) for a, b in zip(got, want))
        # a second shape: same compiled function, new T
        x2, l2 = torch.randn(T + 5, H, generator=g), torch.randn(T + 5, E, generator=g)
        ok2 = all(torch.allclose(a, b) for a, b in zip(f(x2, l2, *routing(l2)), block(x2, l2, *routing(l2))))
        print(f"torch.compile backend={backend}: {'PASS' if ok and ok2 else 'FAIL'}")
        check(ok and ok2, f"torch.compile({backend}) differs from eager")
    # routed (packed) and logits ops give the same bits for the same routing
    ids, w = mxmoe.unpack_topk(mxmoe.pack_topk(torch.topk(logits, K).indices.int(), torch.softmax(torch.topk(logits, K).values, -1)))
    a = ops.trtllm_fp8_block_scale_routed_moe(ids, w, x.bfloat16(), None, q1, s1, q2, s2, E, K, None, None, I, 0, E,
                                              None, 1, 2, 3)
    check(torch.equal(a.view(torch.int16), eager.view(torch.int16)), "routed op (bf16 weights) != logits op")

    if torch.cuda.is_available() and mxmoe.cuda_available():
        dev = torch.device("cuda")
        cargs = [a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]
        y = ops.trtllm_fp8_block_scale_moe(*cargs)
        torch.cuda.synchronize()
        d = (y.float().cpu() - eager.float()).abs().max() / eager.float().abs().max()
        check(d <= 2 ** -6, f"CUDA op vs CPU: {d:.2e}")
        gph = torch.cuda.CUDAGraph()
        s_ = torch.cuda.Stream()
        s_.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s_):
            ops.trtllm_fp8_block_scale_moe(*cargs)  # warm-up: the plan and its expert table
        torch.cuda.current_stream().wait_stream(s_)
        with torch.cuda.graph(gph):
            yg = ops.trtllm_fp8_block_scale_moe(*cargs)
        cargs[2].copy_((x * 0.5).to(torch.bfloat16))
        gph.replay()
        torch.cuda.synchronize()
        want2 = ops.trtllm_fp8_block_scale_moe(*cargs)
        ok = torch.equal(yg, want2)
        print(f"cuda: vs cpu {d:.2e}; graph replay on new inputs {'PASS' if ok else 'FAIL'}")
        check(ok, "CUDA graph replay differs from a direct call")
    else:
        print("cuda: no GPU or no CUDA backend, CUDA cases skipped")
    check.finish(time.time() - t0)


if __name__ == "__main__":
    np.random.seed(0)
    main()
