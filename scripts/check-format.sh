#!/usr/bin/env bash
# The .clang-format check of `make test` (CTest format_check): the C, CUDA and header lines
# changed since the merge base with main (committed or not; renames are not changes) must read
# as clang-format writes them. Only changed lines: the tree predates the check, and reformatting
# it whole would rewrite about 2,300 lines under every open branch; it converges as lines are
# touched.
#   scripts/check-format.sh         check (exit 1 with the diff when a changed line differs)
#   scripts/check-format.sh --fix   reformat those lines in the working tree (`make format`)
# MXM_FORMAT_BASE=<commit> overrides the base. Exit 77 (CTest: skipped) without clang-format and
# clang-format-diff, a git checkout, or a base to compare with.
set -euo pipefail
cd "$(dirname "$0")/.."
skip() { echo "format check: skipped ($1)"; exit 77; }
cfd=
for c in clang-format-diff clang-format-diff-14 clang-format-diff.py; do
  if command -v "$c" >/dev/null; then cfd=$c; break; fi
done
command -v clang-format >/dev/null && [ -n "$cfd" ] || skip "no clang-format / clang-format-diff"
git rev-parse --git-dir >/dev/null 2>&1 || skip "not a git checkout"
base=${MXM_FORMAT_BASE:-}
if [ -z "$base" ]; then
  for ref in main origin/main; do
    base=$(git merge-base HEAD "$ref" 2>/dev/null) && break
    base=
  done
fi
[ -n "$base" ] || skip "no main branch to compare with; set MXM_FORMAT_BASE"
changes() { git diff -U0 -M --no-color --diff-filter=d "$base" -- '*.c' '*.h' '*.cu' '*.cuh'; }
filter=(-p1 -iregex '.*\.(c|h|cu|cuh)' -binary "$(command -v clang-format)")
if [ "${1:-}" = --fix ]; then
  changes | "$cfd" "${filter[@]}" -i
  exit 0
fi
out=$(changes | "$cfd" "${filter[@]}")
short=$(git rev-parse --short "$base")
if [ -n "$out" ]; then
  printf '%s\n' "$out"
  echo "format check: the lines above, changed since $short, differ from .clang-format (make format fixes them)"
  exit 1
fi
echo "format check: the lines changed since $short follow .clang-format"
