#!/usr/bin/env bash
# Fills the git-ignored folders that a device call carries (a fresh checkout has none of them), so
# that scripts/gpu-check.sh runs prebuilt sm_90a binaries instead of building on the GPU machine:
#   .prebuilt/  mxmoe, test_cuda (this tree's build/), libmxmoe.so built without NCCL (for the
#               `python` mode: NCCL beside torch's breaks it), COMMIT (the HEAD they came from)
#   .debs/      libjansson and libcmocka packages, unpacked there when the machine lacks them
#   .peers/     the vLLM Triton peer (a copy of ../shared/peers/vllm_triton); the `cpu` mode's
#               ggml source copy comes from `scripts/cpu-peer.sh --populate /path/to/ggml`
#   .wheels/    ml_dtypes for the device's Python (3.12) only: the carry limit is 64 MiB
# Optional VARIANTS="NAME=NVCC_FLAGS ...": extra mxmoe and test_cuda builds (gpu-check.sh codes-ab, test);
# PREV=REV: an earlier commit's mxmoe (and bench_gemv) beside them (.prebuilt/variants/*_prev).
# Then: run(command="scripts/gpu-check.sh ...", carry=[".pack"]) (.pack/carry.tar.xz holds the four).
#   scripts/prepare-device.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .debs .peers .prebuilt .wheels
(cd .debs && apt-get download libjansson-dev libjansson4 libcmocka-dev libcmocka0 >/dev/null)
if [ -d ../shared/peers/vllm_triton ]; then
  rm -rf .peers/vllm_triton && cp -r ../shared/peers/vllm_triton .peers/
else
  echo "prepare-device: ../shared/peers/vllm_triton not found; the benchmark runs without the vLLM peer" >&2
fi
ls .wheels/ml_dtypes-*cp312* >/dev/null 2>&1 ||
  pip download -q ml_dtypes --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --no-deps -d .wheels
make build
cp build/mxmoe build/test_cuda .prebuilt/
[ -f build-py/CMakeCache.txt ] || cmake -S . -B build-py -DCMAKE_BUILD_TYPE=Release -DMXM_NCCL=OFF >/dev/null
cmake --build build-py -j "$(nproc)" --target mxmoe >/dev/null
cp build-py/libmxmoe.so .prebuilt/
# Build-time variants for codes-ab and the test step: VARIANTS="mb3=-DSK_MIN_BLOCKS=3 ..." gives
# .prebuilt/variants/mxmoe_mb3 and test_cuda_mb3 (e.g. s64=-DMXM_CUDA_SKINNY_MAX=64).
rm -rf .prebuilt/variants
# Benchmark-only knock-outs (flags with MXM_WG_ABLATE: wrong results by design) get no test_cuda.
for v in ${VARIANTS:-}; do
  name=${v%%=*} flags=${v#*=}
  tests=test_cuda
  case $flags in *MXM_WG_ABLATE*) tests= ;; esac
  cmake -S . -B "build-variant-$name" -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CUDA_FLAGS=$flags" >/dev/null
  cmake --build "build-variant-$name" -j "$(nproc)" --target mxmoe_cli $tests >/dev/null
  mkdir -p .prebuilt/variants && cp "build-variant-$name/mxmoe" ".prebuilt/variants/mxmoe_$name"
  [ -z "$tests" ] || cp "build-variant-$name/test_cuda" ".prebuilt/variants/test_cuda_$name"
done
# PREV=REV: that commit's mxmoe as .prebuilt/variants/mxmoe_prev, for a same-call A/B against an
# earlier binary (gpu-check.sh codes-ab with AB_BINS="build-gpu/mxmoe .prebuilt/variants/mxmoe_prev").
if [ -n "${PREV:-}" ]; then
  git worktree remove --force build-prev-src >/dev/null 2>&1 || rm -rf build-prev-src
  git worktree add -f --detach build-prev-src "$PREV" >/dev/null
  cmake -S build-prev-src -B build-prev -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build-prev -j "$(nproc)" --target mxmoe_cli >/dev/null
  mkdir -p .prebuilt/variants && cp build-prev/mxmoe .prebuilt/variants/mxmoe_prev
  # and its bench_gemv where it has one (cpu-peer.sh runs it beside this tree's)
  if [ -f build-prev-src/bench/bench_gemv.c ]; then
    cmake --build build-prev -j "$(nproc)" --target bench_gemv >/dev/null
    cp build-prev/bench_gemv .prebuilt/variants/bench_gemv_prev
  fi
  git worktree remove --force build-prev-src
fi
git rev-parse HEAD >.prebuilt/COMMIT
# The device call carries the working tree and these folders within 64 MiB; the tree's fixtures take
# about half, so the folders travel as one xz archive (~3 MB; gpu-check.sh unpacks it).
strip .prebuilt/mxmoe .prebuilt/test_cuda .prebuilt/libmxmoe.so .prebuilt/variants/* 2>/dev/null || true
mkdir -p .pack && tar cJf .pack/carry.tar.xz .debs .peers .prebuilt .wheels
du -sh .pack/carry.tar.xz | sed 's/^/prepare-device: carry /'
