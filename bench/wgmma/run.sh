#!/usr/bin/env bash
# Builds, checks and times the wgmma MXFP8 GEMM prototype on an H200 (sm_90a), with the old-style
# mma.sync kernel and torch bf16 matmul for comparison; the table comes last.
# Usage (from the repository root, on the GPU machine): bash bench/wgmma/run.sh
set -uo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-/tmp/wgmma_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv
nvcc --version | tail -1
nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -lineinfo -Xptxas -v wgmma_gemm.cu -o "$OUT/wgmma_gemm" \
    >"$OUT/ptxas.txt" 2>&1 || { cat "$OUT/ptxas.txt"; exit 1; }
grep -E "warn|C75" "$OUT/ptxas.txt"
grep -B1 -A2 "Compiling entry function '_Z14wg_gemm|old_kernel" "$OUT/ptxas.txt" | grep -E "entry|Used|spill"

# torch bf16 ceiling: C = A @ B^T on the same shapes (bf16 out), 3 rotating input sets, median of 20.
PYTHONUNBUFFERED=1 timeout 60 python3 - >"$OUT/torch.txt" 2>&1 <<'PY'
import torch
torch.manual_seed(0)
for name, M, N, K in [("a", 16384, 3712, 2688), ("b", 16384, 2688, 1856), ("c", 8192, 4096, 7168), ("sq8192", 8192, 8192, 8192)]:
    sets = [(torch.randn(M, K, device="cuda", dtype=torch.bfloat16), torch.randn(N, K, device="cuda", dtype=torch.bfloat16)) for _ in range(3)]
    for i in range(3):
        a, b = sets[i % 3]; a @ b.t()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(20)]
    for i, (e0, e1) in enumerate(ev):
        a, b = sets[i % 3]; e0.record(); a @ b.t(); e1.record()
    torch.cuda.synchronize()
    ms = sorted(e0.elapsed_time(e1) for e0, e1 in ev)[10]
    print(f"torch bf16 {name:7s} {M}x{N}x{K}: {ms:8.3f} ms {2*M*N*K/ms/1e9:7.1f} TFLOP/s")
    del sets
PY
timeout 150 "$OUT/wgmma_gemm" "$@" 2>&1 | tee "$OUT/log.txt"
echo "rc=$?"
cat "$OUT/torch.txt"
