#!/usr/bin/env bash
# tools/reliability/kill_campaign.sh MRISAM [--rounds N] [--seed S] [--only ingest|pretrain|finetune] [--out DIR]
#                                    [--round R [--delay SECONDS]]
# SIGKILL at random moments during ingest, pretrain and finetune, each followed by recovery and a comparison with an
# uninterrupted run (docs/RELIABILITY.md, issue #18 "Keep them closed"). Per workload: one uninterrupted reference
# run, then N rounds (default 50), each starting from nothing:
#   ingest   — a small noisy archive (int16 volumes and one 4D float file, generated from the seed) ingested with
#              --threads 1 and 2 in turn (the reference run is made with both); killed at a moment drawn over the
#              whole length of a clean run, so kills land while a volume's transaction is being written. Whatever
#              store exists after the kill must pass `mrisam verify`; a rerun of the same command completes it, it
#              verifies again and its content equals the reference's (tests/data/compare_stores.py).
#   pretrain — vit_test at input 64, 24 steps, a checkpoint every 4 steps (keep-last 2), validation every 8. After
#              the kill: `pretrain --resume RUN` (or `--overwrite` when the kill came before the first complete
#              checkpoint: resume then answers "no checkpoints"); then every file of RUN/ (both kept checkpoints,
#              the export .pth/.safetensors, config.json, val/ panels) must equal the reference's byte for byte,
#              and log.jsonl without t and img_per_s its lines (compare_runs.py; tb/ aside: its name and wall
#              times differ by design).
#   finetune — vit_test at input 64, LoRA on encoder+decoder, 4 shots of a labelled store made by
#              tests/finetune/ft_check.py, 20 steps, validation every epoch (best/ is swapped in several times),
#              a checkpoint every 4 steps; `finetune --resume RUN`, then the same comparison (best/, the kept
#              checkpoints, shots.json, log.jsonl ...).
# The runs use --threads 2 and OMP_WAIT_POLICY=passive; on the CPU they are deterministic, so "byte-identical" is the
# test. A kill "lands" when the process was still running (it died of SIGKILL, status 137); a run that finished
# first is still recovered and compared. Temporaries a kill leaves (`<file>.tmp.<pid>`) are counted as leftovers.
# The kill moment of round R is a fraction drawn from (seed, workload, R) of the length of this machine's clean run,
# printed in seconds: `--seed S --only W --round R --delay SECONDS` replays that round with that delay (where the
# process is at that moment still depends on the machine's load).
# Output: one line per round, then per workload: rounds, kills landed, recoveries OK, identical results, leftovers,
# wall time. Exit 1 on any failure (each failure names its seed, workload and round), 2 on usage errors.
# Scratch data under --out DIR (default: a temporary folder, removed when everything passed); a failed round's
# files are kept there.
set -u
usage() {
    echo "usage: kill_campaign.sh MRISAM [--rounds N] [--seed S] [--only ingest|pretrain|finetune] [--out DIR] [--round R [--delay SECONDS]]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
M=$1
shift
ROUNDS=50
SEED=$(( ($(date +%s%N) / 1000) % 1000000 ))
ONLY=""
OUT=""
ONE=""
FIXED=""
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --seed) SEED=${2:?}; shift 2 ;;
        --only) ONLY=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --round) ONE=${2:?}; shift 2 ;;
        --delay) FIXED=${2:?}; shift 2 ;;
        *) usage ;;
    esac
done
case $ONLY in ""|ingest|pretrain|finetune) ;; *) usage ;; esac
[[ $ROUNDS =~ ^[0-9]+$ && $SEED =~ ^[0-9]+$ && $ONE =~ ^[0-9]*$ && $FIXED =~ ^([0-9]+(\.[0-9]*)?)?$ ]] || usage
[ -z "$FIXED" ] || [ -n "$ONE" ] || usage
[ -x "$M" ] || { echo "kill_campaign.sh: $M: not an executable" >&2; exit 2; }
M=$(cd "$(dirname "$M")" && pwd)/$(basename "$M")
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3
export OMP_WAIT_POLICY=passive
KEEP=1
if [ -z "$OUT" ]; then OUT=$(mktemp -d); KEEP=0; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
echo "kill campaign: seed $SEED, $ROUNDS rounds per workload${ONLY:+, only $ONLY}${ONE:+, round $ONE}; scratch $OUT"
echo "replay: $0 $M --seed $SEED${ONLY:+ --only $ONLY} --rounds $ROUNDS"
FAILS=0
SUMMARY=""
fail() {
    FAILS=$((FAILS + 1))
    if [ "$R" = 0 ]; then echo "FAIL: $W reference (seed $SEED): $*"
    else echo "FAIL: $W round $R (seed $SEED): $* — replay: $0 $M --seed $SEED --only $W --round $R --delay $DELAY"; fi
}
now() { date +%s.%N; }
secs() { $PY -c "print('%.1f' % ($2 - $1))"; }
# the kill delay of round R of workload W: uniform in [lo, hi), from (seed, W, R); --delay replaces it
delay() {
    if [ -n "$FIXED" ]; then echo "$FIXED"; return; fi
    $PY -c "import random; r = random.Random('$SEED:$W:$R'); print('%.3f' % ($1 + r.random() * ($2 - $1)))"
}
# runs "$@" in the background, SIGKILLs it after $DELAY s; sets LANDED=1 when it was still running (died of SIGKILL)
kill_after() {
    "$@" > "$RD/killed.log" 2>&1 &
    local pid=$!
    sleep "$DELAY"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    local rc=$?
    LANDED=$([ $rc -eq 137 ] && echo 1 || echo 0)
    [ $rc -eq 137 ] || [ $rc -eq 0 ] || fail "the run to be killed exited $rc before the kill ($(tail -n 1 "$RD/killed.log"))"
}
# the rounds to run: 1..N, or the one given with --round
rounds() { if [ -n "$ONE" ]; then echo "$ONE"; else seq 1 "$ROUNDS"; fi; }
# a finished workload's line: rounds, kills landed, recoveries, identical, leftovers, wall time
tally() {
    local line
    line=$(printf '%-9s rounds %3d  kills landed %3d  recoveries OK %3d  identical %3d  leftovers %3d  wall %6ss' \
        "$W" "$N" "$NLAND" "$NREC" "$NSAME" "$NLEFT" "$(secs "$T0" "$(now)")")
    echo "$line"
    SUMMARY+="$line"$'\n'
}
# a round's scratch folder goes unless the round failed
round_end() { if [ "$FAILS" -eq "$1" ] && [ -z "$ONE" ]; then rm -rf "$RD"; fi; }

# ---- data: a noisy archive (ingest, pretrain) and a small labelled store (finetune) ----------------------------------
D=$OUT/data
rm -rf "$D"
mkdir -p "$D"
$PY - "$D/in" "$SEED" <<'PYEOF' || { echo "kill_campaign.sh: cannot generate the archive" >&2; exit 1; }
import os, sys, nibabel as nib, numpy as np
d, seed = sys.argv[1], int(sys.argv[2])
os.makedirs(d)
rng = np.random.default_rng(seed)
for i in range(10):
    v = rng.integers(0, 4000, size=(96, 96, 28)).astype(np.int16)
    v[:, :, :2] = 0  # near-empty slices, which ingest skips
    nib.Nifti1Image(v, np.diag([1.0, 1.0, 2.5, 1.0])).to_filename(f"{d}/v{i:02d}.nii.gz")
nib.Nifti1Image(rng.normal(100, 20, size=(64, 64, 20, 4)).astype(np.float32), np.eye(4)).to_filename(f"{d}/v05_4d.nii.gz")
PYEOF
"$M" ingest "$D/in" -o "$D/ref.store" --threads 2 --quiet || { echo "kill_campaign.sh: reference ingest failed" >&2; exit 1; }

# ---- ingest ----------------------------------------------------------------------------------------------------------
ingest_round() {
    local th=$(( R % 2 + 1 )) s=$RD/k.store
    DELAY=$(delay 0.005 "${IDUR[$th]}")
    kill_after "$M" ingest "$D/in" -o "$s" --threads "$th" --quiet
    local ok=1 v="no store yet"
    if [ -e "$s/data.mdb" ]; then
        if "$M" verify "$s" > "$RD/verify.log" 2>&1; then v=$(tail -n 1 "$RD/verify.log" | sed 's/.*: //');
        else ok=0; fail "verify after the kill failed: $(tail -n 2 "$RD/verify.log" | tr '\n' ' ')"; fi
    fi
    local rec=0 same=0
    if "$M" ingest "$D/in" -o "$s" --threads "$th" --quiet > "$RD/rerun.log" 2>&1 && "$M" verify "$s" > /dev/null 2>&1; then
        rec=1
        if $PY "$SRC/tests/data/compare_stores.py" "$D/ref.store" "$s" > "$RD/cmp.log" 2>&1; then same=1;
        else fail "content differs from the reference: $(tail -n 3 "$RD/cmp.log" | tr '\n' ' ')"; fi
    else
        fail "the rerun did not complete a verified store: $(tail -n 2 "$RD/rerun.log" | tr '\n' ' ')"
    fi
    [ $ok -eq 1 ] || rec=0
    NREC=$((NREC + rec)); NSAME=$((NSAME + same))
    echo "ingest   round $R: --threads $th, kill after ${DELAY}s: $([ $LANDED = 1 ] && echo landed || echo finished first); after it: $v; recovered $rec, identical $same"
}

# ---- pretrain and finetune: the run, killed; resume (or start again); compare with the reference ----------------------
run_round() {
    local run=$RD/run
    DELAY=$(delay 0.05 "$DUR")
    kill_after "$M" $CMD $OPTS -o "$run"
    local how
    if ls "$run"/ckpt/step_*/DONE > /dev/null 2>&1; then
        how="resumed from $(basename "$(ls -d "$run"/ckpt/step_*/DONE | sort | tail -n 1 | xargs dirname)")"
        "$M" $CMD $OPTS --resume "$run" -o "$run" > "$RD/recover.log" 2>&1
    elif [ -e "$run" ]; then
        how="no checkpoint yet: --overwrite"
        "$M" $CMD $OPTS --overwrite -o "$run" > "$RD/recover.log" 2>&1
    else
        how="no RUN/ yet: a fresh run"
        "$M" $CMD $OPTS -o "$run" > "$RD/recover.log" 2>&1
    fi
    local rc=$? rec=0 same=0 left=""
    if [ $rc -eq 0 ]; then
        rec=1
        $PY "$HERE/compare_runs.py" "$REF" "$run" > "$RD/cmp.log" 2>&1 && same=1 ||
            fail "differs from the uninterrupted run: $(grep -v '^leftovers' "$RD/cmp.log" | tail -n 2 | tr '\n' ' ')"
        left=$(sed -n 's/^leftovers: //p' "$RD/cmp.log")
        [ -z "$left" ] || NLEFT=$((NLEFT + 1))
    else
        fail "recovery ($how) exited $rc: $(tail -n 2 "$RD/recover.log" | tr '\n' ' ')"
    fi
    NREC=$((NREC + rec)); NSAME=$((NSAME + same))
    echo "$W round $R: kill after ${DELAY}s: $([ $LANDED = 1 ] && echo landed || echo finished first); $how; recovered $rec, identical $same${left:+; leftovers: $left}"
}

# one workload: reference, then the rounds ($1: the round function)
campaign() {
    N=0; NLAND=0; NREC=0; NSAME=0; NLEFT=0
    local f
    for R in $(rounds); do
        RD=$OUT/$W/r$R
        rm -rf "$RD" && mkdir -p "$RD"
        f=$FAILS
        "$1"
        N=$((N + 1)); NLAND=$((NLAND + LANDED))
        round_end "$f"
    done
    tally
}

if [ -z "$ONLY" ] || [ "$ONLY" = ingest ]; then
    W=ingest
    T0=$(now)
    R=0
    declare -A IDUR
    mkdir -p "$OUT/ingest"
    for th in 1 2; do # a clean run with each thread count: its length bounds the kill moments, its content the reference
        t=$(now)
        "$M" ingest "$D/in" -o "$OUT/ingest/ref$th.store" --threads "$th" --quiet || { fail "reference ingest failed"; break; }
        IDUR[$th]=$(secs "$t" "$(now)")
        $PY "$SRC/tests/data/compare_stores.py" "$D/ref.store" "$OUT/ingest/ref$th.store" > /dev/null ||
            fail "two clean ingests differ (--threads $th)"
        rm -rf "$OUT/ingest/ref$th.store"
    done
    echo "ingest: a clean run takes ${IDUR[1]}s (--threads 1), ${IDUR[2]}s (--threads 2)"
    campaign ingest_round
fi

if [ -z "$ONLY" ] || [ "$ONLY" = pretrain ]; then
    W=pretrain
    T0=$(now)
    R=0
    CMD=pretrain
    OPTS="--store $D/ref.store --init random --model vit_test --input-size 64 --batch-size 2 --decoder-dim 32
          --decoder-depth 1 --decoder-heads 2 --lr 1e-3 --val-slices 2 --val-every 8 --save-every 4 --keep-last 2
          --max-steps 24 --threads 2 --seed 3"
    REF=$OUT/pretrain/ref
    rm -rf "$REF" && mkdir -p "$OUT/$W"
    t=$(now)
    "$M" $CMD $OPTS -o "$REF" > "$OUT/pretrain/ref.log" 2>&1 || fail "the reference run failed: $(tail -n 1 "$OUT/pretrain/ref.log")"
    DUR=$(secs "$t" "$(now)")
    echo "pretrain: an uninterrupted run takes ${DUR}s"
    campaign run_round
fi

if [ -z "$ONLY" ] || [ "$ONLY" = finetune ]; then
    W=finetune
    T0=$(now)
    R=0
    mkdir -p "$OUT/finetune"
    if [ ! -d "$D/ft.store" ]; then
        $PY "$SRC/tests/finetune/ft_check.py" make "$D/ft" > /dev/null &&
            "$M" ingest --labels "$D/ft/pairs.csv" --axis axial -o "$D/ft.store" --quiet ||
            { echo "kill_campaign.sh: cannot make the labelled store" >&2; exit 1; }
    fi
    CMD=finetune
    OPTS="--store $D/ft.store --init random --model vit_test --input-size 64 --method lora --scope encoder+decoder
          --shots 4 --batch-size 2 --max-steps 20 --warmup-steps 2 --lr 3e-3 --val-every 1 --val-slices 2
          --save-every 4 --keep-last 2 --seed 7 --threads 2"
    REF=$OUT/finetune/ref
    rm -rf "$REF" && mkdir -p "$OUT/$W"
    t=$(now)
    "$M" $CMD $OPTS -o "$REF" > "$OUT/finetune/ref.log" 2>&1 || fail "the reference run failed: $(tail -n 1 "$OUT/finetune/ref.log")"
    DUR=$(secs "$t" "$(now)")
    echo "finetune: an uninterrupted run takes ${DUR}s ($(grep -c '(best)' "$OUT/finetune/ref.log") best/ updates)"
    campaign run_round
fi

echo "== kill campaign, seed $SEED"
printf '%s' "$SUMMARY"
if [ $FAILS -ne 0 ]; then
    echo "$FAILS failures (scratch kept in $OUT)"
    exit 1
fi
[ $KEEP -eq 1 ] || rm -rf "$OUT"
echo "all passed"
