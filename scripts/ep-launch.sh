#!/bin/sh
# One process per GPU on this host: scripts/ep-launch.sh N COMMAND [ARGS...]
# Each process gets MXM_EP_RANK (0..N-1), MXM_EP_WORLD (N) and MXM_EP_ID_FILE (a fresh path
# where rank 0 leaves the NCCL unique id for the others); see docs/ep.md.
# Exit status: the first non-zero status of a rank, else 0 (77 when every rank skipped).
set -u
if [ $# -lt 2 ]; then
    echo "usage: $0 N COMMAND [ARGS...]" >&2
    exit 2
fi
n=$1
shift
id=$(mktemp -u "${TMPDIR:-/tmp}/mxm_ep_XXXXXX.id")
pids=""
r=0
while [ "$r" -lt "$n" ]; do
    MXM_EP_RANK=$r MXM_EP_WORLD=$n MXM_EP_ID_FILE=$id "$@" &
    pids="$pids $!"
    r=$((r + 1))
done
rc=0
for p in $pids; do
    wait "$p"
    s=$?
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 77 ]; then [ "$s" -ne 0 ] && rc=$s; fi
done
rm -f "$id" "$id.tmp"
exit "$rc"
