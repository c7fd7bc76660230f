#!/usr/bin/env bash
# The CPU MoE layer beside ggml on one machine and thread count, interleaved, for the GPU machine's
# 16-core host Xeon (no network there; docs/BENCHMARKS.md, CPU sections). Builds a CPU-only mxmoe
# and ggml from the source copy in .peers/ggml with the peer harness .peers/ggml_moe_peer.c, then
# for each pass and shape runs, back to back: `mxmoe bench --backend cpu --given-ids` with
# MXM_KERNELS=avx512 and =amx (the sets this CPU runs), and ggml_moe_peer --roof in Q8_0 and BF16;
# first the CPU kernel tests and bench_gemv (the decode GEMV of every set alone, one thread).
# Everything goes to $OUT (default out/cpu-peer): machine.txt (CPU model, flags, cores,
# compilers, ggml version), build logs, one log per run, JSON from mxmoe, and summary.txt.
#
# Populate .peers (git-ignored) here, before the device call, from a ggml checkout (ggml-org/ggml;
# d99724f2 is the commit of the published figures):
#   scripts/cpu-peer.sh --populate /path/to/ggml      # .peers/ggml: about 6 MB of ggml's source
#                                                     # (CMake files, include/, src/*, src/ggml-cpu/)
#                                                     # and .peers/ggml_moe_peer.c from ../shared
# then carry [".peers"] (and ".debs" where the machine lacks libjansson-dev: see gpu-check.sh).
#
#   scripts/cpu-peer.sh [--threads N] [--tokens 1,4,16,64,256,1024] [--shapes nano,qwen3]
#                       [--passes 2] [--reps 5] [--sets avx512,amx] [--types q8_0,bf16]
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --populate ]; then
  src=${2:?usage: scripts/cpu-peer.sh --populate GGML_CHECKOUT}
  rm -rf .peers/ggml && mkdir -p .peers/ggml
  paths="CMakeLists.txt cmake include LICENSE ggml.pc.in src/ggml-cpu"
  if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then # a checkout, or a bare mirror
    files=$(git -C "$src" ls-tree --name-only HEAD src/ | grep -E '\.(c|cpp|h)$|/CMakeLists.txt$')
    git -C "$src" archive HEAD $paths $files | tar -x -C .peers/ggml || exit 1
    git -C "$src" log -1 --format='%H %cs %s' >.peers/ggml/VERSION
  else
    files=$(cd "$src" && ls src/CMakeLists.txt src/*.c src/*.cpp src/*.h)
    (cd "$src" && tar -c $paths $files) | tar -x -C .peers/ggml || exit 1
    echo "copied from $src (not a git checkout)" >.peers/ggml/VERSION
  fi
  cp ../shared/peers/ggml/ggml_moe_peer.c .peers/ || exit 1
  du -sh .peers/ggml
  exit 0
fi

THREADS=16 TOKENS=1,4,16,64,256,1024 SHAPES=nano,qwen3 PASSES=2 REPS=5 SETS=avx512,amx TYPES=q8_0,bf16
while [ $# -gt 0 ]; do
  case "$1" in
  --threads) THREADS=$2 ;;
  --tokens) TOKENS=$2 ;;
  --shapes) SHAPES=$2 ;;
  --passes) PASSES=$2 ;;
  --reps) REPS=$2 ;;
  --sets) SETS=$2 ;;
  --types) TYPES=$2 ;;
  *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2 || { echo "option $1 needs a value" >&2; exit 2; }
done
OUT=${OUT:-out/cpu-peer}
mkdir -p "$OUT"
[ -f .peers/ggml/CMakeLists.txt ] && [ -f .peers/ggml_moe_peer.c ] ||
  { echo "no .peers/ggml or .peers/ggml_moe_peer.c: run scripts/cpu-peer.sh --populate GGML_CHECKOUT first" >&2; exit 1; }
if [ -d .debs ] && ! [ -f /usr/include/jansson.h ]; then
  mkdir -p /tmp/mxm-sys && for f in .debs/*.deb; do dpkg -x "$f" /tmp/mxm-sys; done
  export CMAKE_PREFIX_PATH=/tmp/mxm-sys/usr LD_LIBRARY_PATH=/tmp/mxm-sys/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi

{
  echo "date: $(date -u +%FT%TZ)"
  grep -m1 'model name' /proc/cpuinfo
  echo "cpus: $(nproc); threads used: $THREADS"
  lscpu | grep -E 'Socket|Core|Thread|NUMA node|L2|L3|MHz' || true
  echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512[a-z0-9_]*|amx[a-z0-9_]*)$' | tr '\n' ' ')"
  echo "cc: $(cc --version | head -1); c++: $(c++ --version | head -1)"
  echo "ggml: $(cat .peers/ggml/VERSION 2>/dev/null)"
  echo "mxmoe: $(git log -1 --format='%h %s' 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (+ changes)')"
} | tee "$OUT/machine.txt"

jobs=$(nproc)
cmake -S . -B build-cpu-peer -DCMAKE_BUILD_TYPE=Release -DMXM_CUDA=OFF >"$OUT/build_mxmoe.log" 2>&1 &&
  cmake --build build-cpu-peer -j"$jobs" --target mxmoe_cli bench_gemv >>"$OUT/build_mxmoe.log" 2>&1 ||
  { tail -30 "$OUT/build_mxmoe.log"; exit 1; }
cmake -S .peers/ggml -B /tmp/cpu-peer-ggml -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
  -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF -DGGML_CCACHE=OFF >"$OUT/build_ggml.log" 2>&1 &&
  cmake --build /tmp/cpu-peer-ggml -j"$jobs" >>"$OUT/build_ggml.log" 2>&1 &&
  cc -O2 -march=native -fopenmp -I.peers/ggml/include .peers/ggml_moe_peer.c -o /tmp/cpu-peer-ggml/ggml_moe_peer \
    -Wl,--start-group /tmp/cpu-peer-ggml/src/libggml.a /tmp/cpu-peer-ggml/src/libggml-cpu.a \
    /tmp/cpu-peer-ggml/src/libggml-base.a -Wl,--end-group -lstdc++ -lm >>"$OUT/build_ggml.log" 2>&1 ||
  { tail -30 "$OUT/build_ggml.log"; exit 1; }
MXM=build-cpu-peer/mxmoe PEER=/tmp/cpu-peer-ggml/ggml_moe_peer
echo "build ok (a set this CPU cannot run falls back to the best one: each run's mode line says which ran)"

# The CPU kernel tests on this CPU's sets (avx512, avx512bf16, amx: the development machines may
# have none of them); a failure is reported, and the benchmarks still run.
if cmake --build build-cpu-peer -j"$jobs" --target test_cpu_kernels test_moe test_ep >>"$OUT/build_tests.log" 2>&1; then
  for t in test_cpu_kernels test_moe test_ep; do build-cpu-peer/$t >"$OUT/$t.log" 2>&1; echo "$t rc=$? ($(grep -cE '^\[ *OK' "$OUT/$t.log") ok)"; done
else
  echo "CPU tests did not build (cmocka?): $OUT/build_tests.log"
fi
# The decode GEMV alone, every set this CPU runs, one thread (Qwen3's GEMM1 and GEMM2 K); with an
# earlier commit's bench_gemv (prepare-device.sh PREV=REV), the two interleaved, twice.
prev=.prebuilt/variants/bench_gemv_prev
for pass in 1 2; do
  for k in 2048 768; do
    if [ -x $prev ]; then $prev --k $k >"$OUT/gemv_k${k}_prev_p$pass.txt" 2>&1; echo "bench_gemv_prev k=$k rc=$?"; fi
    build-cpu-peer/bench_gemv --k $k >"$OUT/gemv_k${k}_p$pass.txt" 2>&1; echo "bench_gemv k=$k rc=$?"
  done
  [ -x $prev ] || break
done

# Interleaved: the shape loop inside the pass loop, each tool right after the other on one shape,
# so that a slow minute of the machine hits all of them.
for pass in $(seq 1 "$PASSES"); do
  for shape in ${SHAPES//,/ }; do
    for set in ${SETS//,/ }; do
      log="$OUT/mxmoe_${shape}_${set}_p$pass.txt"
      MXM_KERNELS=$set $MXM bench --backend cpu --given-ids --routing uniform --shapes "$shape" --tokens "$TOKENS" \
        --threads "$THREADS" --reps "$REPS" --json "$OUT/mxmoe_${shape}_${set}_p$pass.json" >"$log" 2>&1
      echo "pass $pass $shape mxmoe $set rc=$?: $(grep -m1 -o 'kernels [a-z0-9]*' "$log")"
    done
    for type in ${TYPES//,/ }; do
      log="$OUT/ggml_${shape}_${type}_p$pass.txt"
      $PEER --shape "$shape" --type "$type" --tokens "$TOKENS" --threads "$THREADS" --reps "$REPS" --roof >"$log" 2>&1
      echo "pass $pass $shape ggml $type rc=$?"
    done
  done
done

# One table: every run's lines per shape (mxmoe: its roof lines and T rows; ggml: as it prints).
{
  cat "$OUT/machine.txt"
  for f in "$OUT"/gemv_k*.txt; do echo "== $(basename "$f")"; cat "$f"; done
  grep -hE "PASSED|FAILED" "$OUT"/test_*.log 2>/dev/null
  for shape in ${SHAPES//,/ }; do
    for pass in $(seq 1 "$PASSES"); do
      for set in ${SETS//,/ }; do
        echo "== $shape pass $pass mxmoe MXM_KERNELS=$set"
        grep -E '^roofs|^mode|^ *shape|^'"$shape"' ' "$OUT/mxmoe_${shape}_${set}_p$pass.txt"
      done
      for type in ${TYPES//,/ }; do
        echo "== $shape pass $pass ggml $type"
        grep -v '^$' "$OUT/ggml_${shape}_${type}_p$pass.txt" | tail -n +1
      done
    done
  done
} >"$OUT/summary.txt"
echo "summary: $OUT/summary.txt"
