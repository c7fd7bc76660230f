#!/usr/bin/env bash
# Builds, tests and benchmarks the CUDA backend on a GPU machine in one go. Output to $OUT (or
# ./gpu-out): build log, test log, compute-sanitizer logs, benchmark tables and JSON.
# Without Debian's -dev packages installed it unpacks the ones in .debs/ (apt-get download
# libjansson-dev libjansson4 libcmocka-dev libcmocka0) into a private prefix.
#   scripts/gpu-check.sh [all|test|bench|wgmma]   (wgmma: only the bench/wgmma prototype)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
what=${1:-all}
if [ -d .debs ] && ! [ -f /usr/include/jansson.h ]; then
  mkdir -p /tmp/mxm-sys && for f in .debs/*.deb; do dpkg -x "$f" /tmp/mxm-sys; done
  export CMAKE_PREFIX_PATH=/tmp/mxm-sys/usr LD_LIBRARY_PATH=/tmp/mxm-sys/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMXM_PYTHON=python3 >"$OUT/build.log" 2>&1 &&
  cmake --build build-gpu -j"$(nproc)" >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build ok"
rc=0
if [ "$what" = wgmma ] || [ "$what" = all ]; then
  OUT="$(cd "$OUT" && pwd)/wgmma" bash bench/wgmma/run.sh | tail -25
  [ "$what" = wgmma ] && exit 0
fi
if [ "$what" != bench ]; then
  (cd build-gpu && ctest --output-on-failure -j4 -E 'test_cuda|py_') >"$OUT/ctest.log" 2>&1; echo "ctest (CPU tests on the GPU machine): rc=$?"; tail -3 "$OUT/ctest.log"
  build-gpu/test_cuda >"$OUT/tests.log" 2>&1; r=$?; rc=$((rc | r)); echo "test_cuda rc=$r"; grep -E "FAIL|PASSED|FAILED" "$OUT/tests.log" | head -20
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool (MXM_TEST_QUICK=1) ==" >>"$OUT/tests.log"
    MXM_TEST_QUICK=1 compute-sanitizer --tool $tool --error-exitcode 9 build-gpu/test_cuda >>"$OUT/tests.log" 2>&1; r=$?
    echo "$tool rc=$r"; tail -1 "$OUT/tests.log"; rc=$((rc | r))
  done
fi
if [ "$what" != test ]; then
  # From precomputed top-k ids (as the peers), then with routing from logits included.
  build-gpu/mxmoe bench --backend cuda --given-ids --shapes nano,qwen3,dsv3 --tokens ${TOKENS:-1,8,32,64,256,1024,4096,16384} \
    --routing uniform --reps 10 --json "$OUT/moe_cuda.json" | tee "$OUT/bench_cuda.txt"
  build-gpu/mxmoe bench --backend cuda --shapes nano,qwen3,dsv3 --tokens 1,64,4096 --routing both --reps 10 \
    --json "$OUT/moe_cuda_routed.json" | tee -a "$OUT/bench_cuda.txt"
  # DeepSeek FP8 weights (128x128 blocks) on the DeepSeek-V3 slice.
  build-gpu/mxmoe bench --backend cuda --given-ids --format fp8_block --shapes dsv3 \
    --tokens ${TOKENS:-1,8,32,64,256,1024,4096,16384} --routing uniform --reps 10 --json "$OUT/moe_cuda_fp8block.json" |
    tee -a "$OUT/bench_cuda.txt"
  python3 bench/peers.py "$OUT/peers.json" ${TOKENS:-1,8,32,64,256,1024,4096,16384} | tee "$OUT/peers.txt"
fi
exit $rc
