#!/usr/bin/env bash
# Builds, tests, benchmarks and profiles the CUDA backend on a GPU machine in one go. Output to
# $OUT (or ./gpu-out): build log, test log, compute-sanitizer logs, benchmark tables and JSON,
# ncu summaries; the short tables are printed last.
# Without Debian's -dev packages installed it unpacks the ones in .debs/ (apt-get download
# libjansson-dev libjansson4 libcmocka-dev libcmocka0) into a private prefix. The vLLM Triton
# peer runs from .peers/vllm_triton (a copy of ../shared/peers/vllm_triton) when present.
# Before the device call, here: `scripts/prepare-device.sh` (fills the git-ignored .debs, .peers,
# .prebuilt and .wheels and packs them into .pack/carry.tar.xz) and carry [".pack"].
#   scripts/gpu-check.sh [all|test|bench|peer|codes-ab|wgmma-bench|timeline|python|profile|srcprof|peer-ncu|cpu]
#   TOKENS=1,8,... SHAPES=nano,qwen3,dsv3 override the benchmark's lists (WG_TOKENS: wgmma-bench's); SANITIZERS="memcheck"
#   picks the compute-sanitizer tools (empty: none); PEER=0 skips the vLLM peer; REBUILD=0 keeps
#   an existing build-gpu; NCU_CASES="qwen3 1,nano 64" picks the profiled (shape T) pairs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
what=${1:-all}
TOKENS=${TOKENS:-1,8,32,64,256,1024,4096,16384}
SHAPES=${SHAPES:-nano,qwen3,dsv3}
# The carried folders as one archive (scripts/prepare-device.sh makes it).
[ -f .pack/carry.tar.xz ] && tar xJf .pack/carry.tar.xz
if [ -d .debs ] && ! [ -f /usr/include/jansson.h ]; then
  mkdir -p /tmp/mxm-sys && for f in .debs/*.deb; do dpkg -x "$f" /tmp/mxm-sys; done
  export CMAKE_PREFIX_PATH=/tmp/mxm-sys/usr LD_LIBRARY_PATH=/tmp/mxm-sys/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
# Binaries built elsewhere for sm_90a (.prebuilt/: mxmoe, test_cuda) save the build when they run here.
if [ -x .prebuilt/mxmoe ] && [ "${REBUILD:-1}" = 1 ]; then
  mkdir -p build-gpu && find .prebuilt -maxdepth 1 -type f -exec cp {} build-gpu/ \;
  if build-gpu/mxmoe --help >/dev/null 2>&1 && ! ldd build-gpu/test_cuda | grep -q "not found"; then
    echo "using .prebuilt binaries"; REBUILD=0
  else
    rm -f build-gpu/mxmoe build-gpu/test_cuda; echo ".prebuilt binaries do not run here: building"
  fi
fi
if ! [ -x build-gpu/mxmoe ] || [ "${REBUILD:-1}" = 1 ]; then
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMXM_PYTHON="$(command -v python3)" >"$OUT/build.log" 2>&1 &&
    cmake --build build-gpu -j"$(nproc)" --target mxmoe_cli test_cuda >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  echo "build ok"
fi
rc=0
if [ "$what" = all ] || [ "$what" = test ]; then
  build-gpu/test_cuda >"$OUT/tests.log" 2>&1; r=$?; rc=$((rc | r)); echo "test_cuda rc=$r"
  grep -E "FAIL|PASSED|FAILED|passed|failed" "$OUT/tests.log" | head -20
  for v in .prebuilt/variants/test_cuda_*; do # build-time variants' tests (quick)
    [ -x "$v" ] || continue
    MXM_TEST_QUICK=1 timeout 200 "$v" >"$OUT/tests_${v##*/}.log" 2>&1; r=$?; rc=$((rc | r)); echo "${v##*/} rc=$r"
    grep -E "FAILED|passed|failed" "$OUT/tests_${v##*/}.log" | head -8
  done
  for tool in ${SANITIZERS-memcheck racecheck synccheck}; do
    echo "== compute-sanitizer --tool $tool (MXM_TEST_QUICK=1) ==" >>"$OUT/sanitizer.log"
    MXM_TEST_QUICK=1 timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 build-gpu/test_cuda >>"$OUT/sanitizer.log" 2>&1; r=$?
    echo "$tool rc=$r"; tail -1 "$OUT/sanitizer.log"; rc=$((rc | r))
  done
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  # The peers' layer: from precomputed top-k ids, routed experts only (Nano's shared expert left
  # out; the DeepSeek slice takes every pick, as the peer's dsv3s); MXFP8 and DeepSeek FP8 weights.
  build-gpu/mxmoe bench --backend cuda --given-ids --no-shared --shapes "$SHAPES" --tokens "$TOKENS" \
    --routing uniform --reps 10 --json "$OUT/moe_cuda.json" >"$OUT/bench_cuda.txt" 2>&1
  build-gpu/mxmoe bench --backend cuda --given-ids --no-shared --format fp8_block --shapes dsv3 --tokens "$TOKENS" \
    --routing uniform --reps 10 --json "$OUT/moe_cuda_fp8block.json" >>"$OUT/bench_cuda.txt" 2>&1
  # The whole layer (routing from logits, Nano's shared expert included).
  build-gpu/mxmoe bench --backend cuda --shapes "$SHAPES" --tokens 1,64,4096 --routing uniform --reps 10 \
    --json "$OUT/moe_cuda_routed.json" >>"$OUT/bench_cuda.txt" 2>&1
fi
if [ "$what" = all ] || [ "$what" = bench ] || [ "$what" = peer ]; then
  # Ceilings in the same run: copy bandwidth (device-to-device, 2 GiB), bf16 and fp8 8192^3 matmuls.
  timeout 120 python3 bench/peers.py "$OUT/ceilings.json" none >"$OUT/ceilings.txt" 2>&1; echo "ceilings rc=$?"
  head -1 "$OUT/ceilings.txt"
  if [ -f .peers/vllm_triton/run_peer.py ] && [ "${PEER:-1}" = 1 ]; then
    PYTHONUNBUFFERED=1 timeout 300 python3 .peers/vllm_triton/run_peer.py --config-device auto --tokens "$TOKENS" \
      --json "$OUT/vllm_peer.json" >"$OUT/vllm_peer.txt" 2>&1; echo "vllm peer rc=$?"
  fi
fi
if [ "$what" = all ] || [ "$what" = codes-ab ]; then
  # A/B of a run-time switch on the decode and middle range, same binary, interleaved by shape:
  # AB_VAR (default MXM_CUDA_CODES: 0 exact bf16 decode, 1 f16 MMAs on raw codes; or e.g.
  # MXM_CUDA_WGMMA) over AB_VALUES (default "0 1"); build-time variants in
  # .prebuilt/variants/mxmoe_NAME (e.g. cmake -DCMAKE_CUDA_FLAGS=-DSK_MIN_BLOCKS=3) beside.
  # AB_ENVS="A=1 A=1,B=2 ..." instead runs each comma-separated set of assignments; AB_BINS picks
  # the binaries; AB_ROUTED=1 routes from logits (Nano's shared expert included) instead of given ids.
  var=${AB_VAR:-MXM_CUDA_CODES}
  envs=${AB_ENVS:-}
  [ -n "$envs" ] || for v in ${AB_VALUES:-0 1}; do envs="$envs $var=$v"; done
  for shape in ${SHAPES//,/ }; do
    for bin in ${AB_BINS:-build-gpu/mxmoe .prebuilt/variants/mxmoe_*}; do
      [ -x "$bin" ] || continue
      tag=${bin##*/mxmoe}; tag=${tag#_}
      for set in $envs; do
        env ${set//,/ } "$bin" bench --backend cuda $([ "${AB_ROUTED:-0}" = 1 ] || echo --given-ids --no-shared) --shapes "$shape" \
          --tokens "${AB_TOKENS:-1,8,32,64,256}" --routing uniform --reps 10 --json "$OUT/ab_${set//[=,]/_}${tag:+_$tag}_$shape.json" 2>&1 |
          grep -vE "^(building|measuring)" | sed "s/^/$set${tag:+ $tag} /" | tee -a "$OUT/bench_ab.txt"
      done
    done
  done
fi
if [ "$what" = all ] || [ "$what" = wgmma-bench ]; then
  # The prefill paths side by side (run-time switches, one binary): mma.sync tiles, wgmma with
  # 64-, 128- and 256-token tiles (MXM_CUDA_WG_BT), and DeepSeek FP8 on wgmma against mma.sync.
  for set in MXM_CUDA_WGMMA=0 MXM_CUDA_WGMMA=1,MXM_CUDA_WG_BT=64 MXM_CUDA_WGMMA=1,MXM_CUDA_WG_BT=128 MXM_CUDA_WGMMA=1,MXM_CUDA_WG_BT=256; do
    env ${set//,/ } build-gpu/mxmoe bench --backend cuda --given-ids --no-shared --shapes "$SHAPES" --tokens "${WG_TOKENS:-256,1024,4096,16384}" \
      --routing uniform --reps 5 --json "$OUT/moe_cuda_${set//[=,]/_}.json" 2>&1 | grep -vE "^(building|measuring)" |
      sed "s/^/$set /" | tee -a "$OUT/bench_wgmma.txt"
  done
  for w in 0 1; do
    MXM_CUDA_WGMMA=$w build-gpu/mxmoe bench --backend cuda --given-ids --no-shared --format fp8_block --shapes dsv3 \
      --tokens "${WG_TOKENS:-256,1024,4096,16384}" --routing uniform --reps 5 --json "$OUT/moe_cuda_fp8block_wgmma$w.json" 2>&1 |
      grep -vE "^(building|measuring)" | sed "s/^/fp8_block wgmma=$w /" | tee -a "$OUT/bench_wgmma.txt"
  done
fi
if [ "$what" = all ] || [ "$what" = timeline ]; then
  # Where a decode step's time goes inside a replayed graph (MXM_CUDA_TIMELINE=1, moe/timeline.h):
  # per kernel, first block start, the programmatic-launch wait's return, last warp end.
  IFS=, read -ra cases <<<"${TL_CASES:-qwen3 1,nano 1,dsv3 1,qwen3 64,nano 64,nano 256}"
  for case in "${cases[@]}"; do
    set -- $case
    MXM_CUDA_TIMELINE=1 timeout 60 build-gpu/mxmoe bench --backend cuda --given-ids --no-shared --shapes "$1" \
      --tokens "$2" --routing uniform --reps 3 2>&1 | grep -E "^timeline|uniform" | tee -a "$OUT/timeline.txt"
  done
fi
if [ "$what" = all ] || [ "$what" = python ]; then
  # The Python package's torch op on CUDA tensors and inside CUDA-graph capture, against a library
  # built without NCCL (.prebuilt/libmxmoe.so: cmake -DMXM_NCCL=OFF; NCCL beside torch's breaks it);
  # ml_dtypes from .wheels/ when the machine lacks it.
  python3 -c "import ml_dtypes" 2>/dev/null || pip install -q --no-index --find-links .wheels ml_dtypes >"$OUT/pip.log" 2>&1
  MXMOE_LIBRARY=$PWD/.prebuilt/libmxmoe.so MXMOE_HEADER=$PWD/include/mxmoe.h PYTHONPATH=$PWD/python \
    timeout 300 python3 python/tests/test_torch_op.py >"$OUT/python.log" 2>&1; r=$?; rc=$((rc | r))
  echo "python test_torch_op rc=$r"; tail -5 "$OUT/python.log"
fi
if [ "$what" = cpu ]; then
  # Issue 14 on the host CPU: mxmoe (avx512, amx) beside ggml Q8_0/BF16 on every core
  # (scripts/cpu-peer.sh; carry .peers with its ggml source copy). Not part of "all".
  OUT="$OUT/cpu-peer" timeout "${CPU_TIMEOUT:-540}" scripts/cpu-peer.sh --threads "$(nproc)"; rc=$((rc | $?))
  tail -30 "$OUT/cpu-peer/summary.txt" 2>/dev/null
fi
if [ "$what" = all ] || [ "$what" = profile ]; then
  # Per-kernel view of a decode step and a middle-range step (kernels serialized by ncu).
  IFS=, read -ra cases <<<"${NCU_CASES:-qwen3 1,nano 64,nano 4096}"
  for case in "${cases[@]}"; do
    set -- $case
    timeout 150 ncu --clock-control none --graph-profiling node --launch-skip 40 --launch-count 14 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      build-gpu/mxmoe bench --backend cuda --given-ids --no-shared --shapes "$1" --tokens "$2" --reps 1 \
      >"$OUT/ncu_$1_$2.txt" 2>&1; echo "ncu $1 T=$2 rc=$?"
    grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Achieved Occupancy" \
      "$OUT/ncu_$1_$2.txt" | head -80 >"$OUT/ncu_$1_$2_short.txt"
  done
fi
if [ "$what" = peer-ncu ]; then
  # The vLLM peer's kernels under ncu (eager launches, fp8-block), to set beside the `profile`
  # mode's view of mxmoe: PEER_NCU_CASE="shape T" (peer shape names: nano, qwen3, dsv3s).
  set -- ${PEER_NCU_CASE:-qwen3 1}
  timeout 300 ncu --clock-control none --section SpeedOfLight --section LaunchStats \
    -k "regex:fused_moe|moe_align|act_and_mul|moe_sum|group_quant|per_token" \
    --launch-skip "${PEER_NCU_SKIP:-40}" --launch-count "${PEER_NCU_COUNT:-12}" \
    python3 .peers/vllm_triton/run_peer.py --config-device auto --shapes "$1" --tokens "$2" --modes fp8 \
    --sets 1 --eager-iters 8 --json "$OUT/peer_ncu.json" >"$OUT/peer_ncu_$1_$2.txt" 2>&1
  echo "peer ncu $1 T=$2 rc=$?"
  grep -E "^  [a-zA-Z_].*\(|Duration|DRAM Throughput" "$OUT/peer_ncu_$1_$2.txt" | head -60
fi
if [ "$what" = srcprof ]; then
  # Source-level profiles (per-SASS-instruction stall samples) of chosen kernels: SRC_CASES="shape T kernel-regex skip count,...".
  # The reports stay in $OUT; the SASS tables are CSV (ncu --page source) for reading elsewhere.
  IFS=, read -ra cases <<<"${SRC_CASES:-nano 16384 wgmma_kernel 2 2,nano 4096 wgmma_kernel 2 2,qwen3 1 prologue|skinny|combine 8 4}"
  for case in "${cases[@]}"; do
    set -- $case
    tag="$1_$2"
    timeout 200 ncu --clock-control none -k "regex:$3" --launch-skip "$4" --launch-count "$5" \
      --section WarpStateStats --section SourceCounters --section SchedulerStats --section SpeedOfLight \
      --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis -o "$OUT/src_$tag" -f \
      build-gpu/mxmoe bench --backend cuda --given-ids --no-shared --shapes "$1" --tokens "$2" --reps 1 \
      >"$OUT/src_$tag.log" 2>&1; echo "ncu src $tag rc=$?"
    ncu --import "$OUT/src_$tag.ncu-rep" --page details >"$OUT/src_${tag}_details.txt" 2>&1
    ncu --import "$OUT/src_$tag.ncu-rep" --page source --csv --print-source sass >"$OUT/src_${tag}_sass.csv" 2>&1
    grep -E "^  [a-zA-Z_].*\(|Duration|Warp Cycles Per Issued|Issued Warp|No Eligible|Stall|stall" "$OUT/src_${tag}_details.txt" | head -60
  done
fi
if [ "$what" = all ] || [ "$what" = bench ] || [ "$what" = peer ]; then
  echo "== mxmoe"; grep -vE "^(building|measuring)" "$OUT/bench_cuda.txt"
  echo "== vLLM peer"; tail -45 "$OUT/vllm_peer.txt" 2>/dev/null
fi
# Everything in one archive (the device tool brings back at most 8 files).
# (Written outside $OUT first: tar fails on an archive growing inside the folder it reads.)
(cd "$OUT" && tar czf "/tmp/logs-$what.tgz" --exclude='logs-*.tgz' . && mv "/tmp/logs-$what.tgz" . &&
  find . -type f ! -name 'logs-*.tgz' -delete)
exit $rc
