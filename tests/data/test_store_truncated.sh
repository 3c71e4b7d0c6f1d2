#!/bin/bash
# tests/data/test_store_truncated.sh — the tools on a half-copied store: `mrisam verify`, `inspect`, `export`,
# `pretrain` and `ingest` (appending) on a copy of an ingested store whose data.mdb is cut at drawn lengths (0,
# inside the meta pages, page-aligned, anywhere, one byte short) each exit 1 with the one line
# "mrisam CMD: STORE/data.mdb: truncated: N bytes, the store's pages need M (a partial copy?)" and nothing else,
# never a crash (SIGBUS before the fix), and ingest leaves the cut file as it was (and prints no summary of zeros
# around the error: issue #18 item 7).
source "$MS_SOURCE_DIR/tests/data/common.sh"
D=$T/in
mkdir -p "$D"
$PY - "$D" "$SEED" <<'PYEOF' || exit 1
import sys
import nibabel as nib, numpy as np
d, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
for v in range(3):
    shape = tuple(int(s) for s in rng.integers(24, 48, size=3))
    nib.Nifti1Image(rng.integers(1, 1000, size=shape).astype(np.int16), np.eye(4)).to_filename(f"{d}/v{v}.nii.gz")
PYEOF
"$M" ingest "$D" -o "$T/store" --quiet >/dev/null || { echo "FAIL: ingest"; exit 1; }
FULL=$T/store/data.mdb
N=$(stat -c %s "$FULL")
P=$(getconf PAGESIZE)
# the store ends at its last page: every shorter cut is truncated; under two pages the need is the two meta pages
R=$SEED
draw() { R=$(( (R * 1103515245 + 12345) % 2147483648 )); echo $(( R % $1 )); }
cuts="0 $((1 + $(draw $((P - 1))))) $P $((P + $(draw P))) $((N - P)) $((N - 1))"
for _ in 1 2 3; do cuts="$cuts $((P * (2 + $(draw $((N / P - 2))))))"; done
for _ in 1 2 3 4; do cuts="$cuts $(draw "$N")"; done
echo "data.mdb: $N bytes; cuts: $cuts"
i=0
for L in $cuts; do
    i=$((i + 1))
    NEED=$N
    [ "$L" -lt $((2 * P)) ] && NEED=$((2 * P))
    for cmd in verify inspect export pretrain ingest; do
        # pretrain takes seconds to reach its stores: one cut, the first page-aligned draw
        [ "$cmd" = pretrain ] && [ "$i" -ne 7 ] && continue
        C=$T/cut_${i}_$cmd
        mkdir -p "$C"
        head -c "$L" "$FULL" >"$C/data.mdb"
        case $cmd in
        export) args=(export "$C" --key 0 -o "$T/x.npy") ;;
        pretrain) args=(pretrain --store "$C" --init random --model vit_test -o "$T/run_$i" --max-steps 1) ;;
        ingest) args=(ingest "$D" -o "$C" --quiet) ;;
        *) args=("$cmd" "$C") ;;
        esac
        "$M" "${args[@]}" >"$T/out" 2>"$T/err"
        rc=$?
        want="mrisam $cmd: $C/data.mdb: truncated: $L bytes, the store's pages need $NEED (a partial copy?)"
        check [ "$rc" -eq 1 ]
        [ "$rc" -eq 1 ] || echo "  $cmd on a cut of $L bytes: exit $rc"
        check [ "$(cat "$T/err")" = "$want" ]
        [ "$(cat "$T/err")" = "$want" ] ||
            echo "  $cmd on a cut of $L bytes: stderr '$(head -c 300 "$T/err")', wanted '$want'"
        check [ ! -s "$T/out" ]
        check [ "$(stat -c %s "$C/data.mdb")" -eq "$L" ]
    done
done
# the whole copy still works
check "$M" verify "$T/store" >/dev/null
done_
