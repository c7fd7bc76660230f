#!/bin/sh
# Bounded fuzz run of the safetensors reader for CTest: builds tests/fuzz/fuzz_safetensors.c
# with clang's libFuzzer and the sources it needs (seconds), then fuzzes for
# MXM_FUZZ_SECONDS (default 10) from the seed corpus. Exit 77 (CTest "skipped") without a clang
# that has libFuzzer; non-zero on any crash, leak, sanitizer report or build failure.
# usage: run_fuzz.sh SOURCE_DIR WORK_DIR
set -eu
src=$1
work=$2
cc=${MXM_FUZZ_CC:-clang}
command -v "$cc" >/dev/null 2>&1 || { echo "no $cc: fuzz run skipped"; exit 77; }
mkdir -p "$work"
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' > "$work/probe.c"
"$cc" -fsanitize=fuzzer "$work/probe.c" -o "$work/probe" 2>/dev/null || { echo "$cc has no libFuzzer: fuzz run skipped"; exit 77; }
"$cc" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
    -I"$src/include" -I"$src/src" "$src/tests/fuzz/fuzz_safetensors.c" "$src"/src/io/safetensors*.c \
    "$src/src/core/status.c" -ljansson -o "$work/fuzz_safetensors"
rm -rf "$work/corpus"
mkdir -p "$work/corpus"
"$work/fuzz_safetensors" -max_total_time="${MXM_FUZZ_SECONDS:-10}" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/" -dict="$src/tests/fuzz/fuzz_safetensors.dict" "$work/corpus" "$src/tests/fuzz/corpus_safetensors"
