#!/usr/bin/env bash
# tests/tools/test_writers_full.sh — every writer but ingest (tests/data/test_ingest_full.sh) on a full disk (issue #18):
# pretrain (checkpoints, val panels, the export), finetune (checkpoints, best/), convert, export-weights, predict
# (NIfTI and PNG), export (PNG, NPY) and embed (NPY). Each runs once without a limit (the reference), then under a byte limit
# drawn at random (seeded) below the size of its largest output: RLIMIT_FSIZE (`ulimit -f`: EFBIG; mrisam ignores
# SIGXFSZ) and, where the test may mount one (root), a tmpfs of a drawn size (ENOSPC). Each must
#  - exit 1 with one stderr line naming the file and the errno: "mrisam CMD: FILE: File too large (EFBIG)" (predict:
#    "FILE: ..." for the volume that failed, its summary on stdout);
#  - damage nothing already written: a file the command had written before it (the previous output, put there
#    first) is either still the old one or the new one whole, never half; no temporary "<file>.tmp.<pid>", no
#    best.tmp/, no step directory without DONE; each file of a run equal to the reference run's (best/ whole;
#    tools/reliability/compare_runs.py --partial);
#  - pretrain, finetune: when a checkpoint was written before the failure, `--resume RUN` with space finishes the run
#    and RUN/ then equals the reference run byte for byte (log.jsonl but t, img_per_s; tb/ aside).
set -u
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
M=${MS_MRISAM:?run through ctest}
SRC=${MS_SOURCE_DIR:?run through ctest}
PY=/usr/bin/python3
CMP=$SRC/tools/reliability/compare_runs.py
T=${MS_BINARY_DIR:?}/tests/tmp_test_writers_full
umount "$T/mnt" 2>/dev/null
rm -rf "$T" && mkdir -p "$T"
SEED=${MS_TEST_SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
$PY -c 'import nibabel, numpy' 2>/dev/null || { echo "skip: python3-nibabel missing"; exit 77; }
PASS=0
FAIL=0
CASES=0
ok() { PASS=$((PASS + 1)); }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
check() { if "$@"; then ok; else bad "$*"; fi; }
R=$SEED
# D = a draw in [0, $1) (in this shell: R carries on)
draw() { R=$(( (R * 1103515245 + 12345) % 2147483648 )); D=$(( R % $1 )); }
# a tmpfs at $T/mnt of $1 KiB (root only, where mount works)
MNT=$T/mnt
mkdir -p "$MNT"
CAN_MOUNT=0
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=64k tmpfs "$MNT" 2>/dev/null; then
    umount "$MNT"
    CAN_MOUNT=1
    trap 'umount "$MNT" 2>/dev/null' EXIT
else
    echo "(no ENOSPC cases: cannot mount a tmpfs here)"
fi
mnt() { umount "$MNT" 2>/dev/null; mount -t tmpfs -o "size=$1k" tmpfs "$MNT"; }

# ---- data: a noisy store (pretrain, export), a labelled one (finetune), a NIfTI volume (predict) ----------------------
$PY "$SRC/tools/reliability/make_data.py" "$T" "$SEED" --small || exit 1
check "$M" ingest "$T/in" -o "$T/store" --quiet
check "$M" ingest --labels "$T/ft/pairs.csv" --axis axial -o "$T/lstore" --quiet

# $1: the command's name; $2: its exit status; $3: its stderr; $4: "EFBIG" or "ENOSPC"; $5: the file it must name
# (a regular expression). Exit 1 and one line naming the file and the errno.
check_err() {
    local want="File too large \(EFBIG\)"
    [ "$4" = ENOSPC ] && want="No space left on device \(ENOSPC\)"
    echo "  $(head -n 1 "$3")"
    check test "$2" -eq 1
    check test "$(wc -l < "$3")" -eq 1
    grep -qE "^(mrisam $1: )?$5: $want\$" "$3" || bad "$1: the message names $5 and $4: $(cat "$3")"
}

# ---- pretrain and finetune ------------------------------------------------------------------------------------------
PRE="pretrain --store $T/store --init random --model vit_test --input-size 64 --batch-size 2 --decoder-dim 32
     --decoder-depth 1 --decoder-heads 2 --lr 1e-3 --val-slices 2 --val-every 2 --save-every 2 --keep-last 2
     --max-steps 6 --threads 2 --seed 5"
FT="finetune --store $T/lstore --init random --model vit_test --input-size 64 --method full --scope decoder --shots 4
    --batch-size 2 --max-steps 8 --warmup-steps 1 --lr 3e-3 --val-every 1 --val-slices 2 --save-every 2 --keep-last 2
    --seed 3 --threads 2 --cache-embeddings"
check "$M" $PRE -o "$T/pre_ref" > /dev/null 2>&1
check "$M" $FT -o "$T/ft_ref" > /dev/null 2>&1
# the largest file of a folder, in bytes
largest() { find "$1" -type f -printf '%s\n' | sort -n | tail -n 1; }
# the size of a folder in KiB (what a tmpfs needs to hold it)
kib() { if [ -e "$1" ]; then du -sk "$1" | cut -f1; else echo 0; fi; }

# $1: the command's name; $2: the run directory; $3: the reference; $4: errno name; then the command (without -o).
# EFBIG: under RLIMIT_FSIZE $LIMIT KiB; ENOSPC: into the tmpfs.
run_full() {
    local name=$1 run=$2 ref=$3 err=$4
    shift 4
    if [ "$err" = EFBIG ]; then (ulimit -f "$LIMIT"; exec "$@" -o "$run") > "$T/out" 2> "$T/err"
    else "$@" -o "$run" > "$T/out" 2> "$T/err"; fi
    check_err "$name" $? "$T/err" "$err" "$run/.+"
    $PY "$CMP" --partial "$ref" "$run" | sed 's/^/  /'
    [ "${PIPESTATUS[0]}" -eq 0 ] || bad "$name: something already written is damaged"
    if ls "$run"/ckpt/step_*/DONE > /dev/null 2>&1; then
        [ "$err" = ENOSPC ] && mount -o remount,size=400m "$MNT"
        "$@" --resume "$run" -o "$run" > "$T/resume.log" 2>&1 || bad "$name: --resume failed: $(tail -n 1 "$T/resume.log")"
        echo "  resumed from $(grep -o 'resuming from [^ ]*' "$T/resume.log" | sed 's/.*\///')"
        $PY "$CMP" "$ref" "$run" | sed 's/^/  /'
        [ "${PIPESTATUS[0]}" -eq 0 ] || bad "$name: the resumed run differs from the reference"
    else
        echo "  (failed before the first checkpoint: nothing to resume)"
    fi
    CASES=$((CASES + 1))
}

# EFBIG: a limit from 16 KiB to the largest file; ENOSPC: a tmpfs from the size of one checkpoint (and best/) up to
# the whole run (which it cannot hold at the end, so the run fails somewhere on the way)
for w in pre ft; do
    cmd=$PRE
    [ $w = ft ] && cmd=$FT
    name=${cmd%% *}
    big=$(largest "$T/${w}_ref")
    draw $((big / 1024 - 16))
    LIMIT=$((16 + D))
    echo "== $name: RLIMIT_FSIZE $LIMIT KiB (largest file $big bytes)"
    run_full "$name" "$T/${w}_f" "$T/${w}_ref" EFBIG "$M" $cmd
    if [ $CAN_MOUNT = 1 ]; then
        # a checkpoint and best/ (finetune writes it before its first checkpoint) fit
        first=$(( $(kib "$(ls -d "$T/${w}_ref"/ckpt/step_* | head -n 1)") + $(kib "$T/${w}_ref/best") ))
        all=$(kib "$T/${w}_ref")
        draw $((all - first))
        K=$((first + D))
        echo "== $name: a tmpfs of $K KiB (the whole run: $all KiB)"
        mnt "$K" || bad "mount"
        run_full "$name" "$MNT/run" "$T/${w}_ref" ENOSPC "$M" $cmd
        umount "$MNT"
    fi
done

# ---- the single-file writers: each writes into folder $1 ------------------------------------------------------------
w_convert() { "$M" convert "$T/pre_ref/sam_mri_vit_test.pth" "$1/out.safetensors"; }
w_export_weights() { "$M" export-weights "$T/pre_ref" -o "$1/out.pth"; }
w_predict() { "$M" predict --ckpt "$T/ft_ref" --in "$T/ft/img/v0.nii.gz" -o "$1/out.nii" --png "$1/png" --threads 2; }
w_export_npy() { "$M" export "$T/store" --key 7 -o "$1/out.npy"; }
w_export_png() { "$M" export "$T/store" --key 3 -o "$1/out.png"; }
w_embed() { "$M" embed --ckpt "$T/ft_ref" --store "$T/lstore" --key 1 -o "$1/out.npy" --threads 2; }

# $1: the writer (w_*), $2: the command's name, $3: errno name, $4: the output folder. Every output of the reference
# run is there first with old content; after the failure each is its old content or the reference's, the one named
# in the message its old content; nothing else is there.
one_full() {
    local w=$1 name=$2 err=$3 dir=$4 ref=$T/$1_ref
    find "$dir" -mindepth 1 -delete 2>/dev/null
    (cd "$ref" && find . -type f) | while read -r f; do mkdir -p "$(dirname "$dir/$f")"; printf 'old %s\n' "$f" > "$dir/$f"; done
    if [ "$err" = EFBIG ]; then (ulimit -f "$LIMIT"; "$w" "$dir") > "$T/out" 2> "$T/err"
    else "$w" "$dir" > "$T/out" 2> "$T/err"; fi
    check_err "$name" $? "$T/err" "$err" "$dir/[^ ]+"
    local named
    named=$(sed -E "s/^(mrisam $name: )?([^ ]+): .*/\\2/" "$T/err")
    $PY - "$ref" "$dir" "$named" <<'PYEND' || bad "$name: an output is damaged"
import os, sys
ref, d, named = sys.argv[1:]
out = {os.path.relpath(os.path.join(r, n), d) for r, _, ns in os.walk(d) for n in ns}
want = {os.path.relpath(os.path.join(r, n), ref) for r, _, ns in os.walk(ref) for n in ns}
bad = ["unexpected %s" % p for p in sorted(out - want)] + ["%s is gone" % p for p in sorted(want - out)]
for p in sorted(out & want):
    b = open(os.path.join(d, p), "rb").read()
    old = b == ("old ./%s\n" % p).encode()
    if not old and b != open(os.path.join(ref, p), "rb").read():
        bad.append("%s is neither its old content nor the new one" % p)
    if os.path.join(d, p) == named and not old:
        bad.append("%s, named in the message, is not its old content" % p)
print("  " + ("; ".join(bad) if bad else "%d outputs: each its old content or the new one whole" % len(out)))
sys.exit(1 if bad else 0)
PYEND
    CASES=$((CASES + 1))
}

for w in w_convert:convert w_export_weights:export-weights w_predict:predict w_export_npy:export w_export_png:export \
         w_embed:embed; do
    fn=${w%%:*}
    name=${w#*:}
    mkdir -p "$T/${fn}_ref" "$T/$fn"
    check "$fn" "$T/${fn}_ref" > /dev/null 2>&1
    big=$(largest "$T/${fn}_ref")
    draw $(( (big - 1) / 1024 ))
    LIMIT=$((1 + D))
    echo "== $name (${fn#w_}): RLIMIT_FSIZE $LIMIT KiB (largest output $big bytes)"
    one_full "$fn" "$name" EFBIG "$T/$fn"
    if [ $CAN_MOUNT = 1 ]; then
        n=$(find "$T/${fn}_ref" -type f | wc -l)
        draw $(( (big + 4095) / 4096 ))
        K=$((4 * n + 4 * D))
        echo "== $name (${fn#w_}): a tmpfs of $K KiB"
        mnt "$K" || bad "mount"
        one_full "$fn" "$name" ENOSPC "$MNT"
        umount "$MNT"
    fi
done
# every case ran (a shell error skips silently otherwise): 8 writers, each with EFBIG and (mount) ENOSPC
check test "$CASES" -eq $((8 * (1 + CAN_MOUNT)))
echo "$PASS passed, $FAIL failed, $CASES cases"
[ "$FAIL" -eq 0 ]
