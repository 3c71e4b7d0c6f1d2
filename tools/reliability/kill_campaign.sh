#!/usr/bin/env bash
# tools/reliability/kill_campaign.sh MRISAM [--rounds N] [--seed S] [--only ingest|pretrain|finetune] [--out DIR]
#                                    [--round R [--delay SECONDS]]
# SIGKILL at random moments during ingest, pretrain and finetune, each followed by recovery and a comparison with an
# uninterrupted run (docs/RELIABILITY.md, issue #18 "Keep them closed"). Per workload: one uninterrupted reference
# run, then N rounds (default 50), each starting from nothing:
#   ingest   — a small noisy archive (int16 volumes and one 4D float file, generated from the seed) ingested with
#              --threads 1 and 2 in turn (the reference run is made with both). Rounds 1, 2, 5, 6, ... are killed
#              at a moment drawn over the whole length of a clean run; rounds 3, 4, 7, 8, ... (where strace can
#              trace) on entry to the N-th writev (LMDB's data pages) or pwrite64 (its meta pages) of the run, drawn
#              from the counts of a clean run: inside a commit, with part of a volume's transaction written. Whatever
#              store exists after the kill must pass `mrisam verify`; a rerun of the same command completes it, it
#              verifies again and its content equals the reference's (tests/data/compare_stores.py). Counted too:
#              kills after which data.mdb held pages past its last committed one.
#   pretrain — vit_test at input 64, 24 steps, a checkpoint every 4 steps (keep-last 2), validation every 8. After
#              the kill: `pretrain --resume RUN` (or `--overwrite` when the kill came before the first complete
#              checkpoint: resume then answers "no checkpoints"); then every file of RUN/ (both kept checkpoints,
#              the export .pth/.safetensors, config.json, val/ panels) must equal the reference's byte for byte,
#              and log.jsonl without t and img_per_s its lines (compare_runs.py; tb/ aside: its name and wall
#              times differ by design).
#   finetune — vit_test at input 64, LoRA on encoder+decoder, 4 shots of a small labelled store (3 volumes, label
#              values 3 and 7), 20 steps, validation every epoch (best/ is swapped in several times),
#              a checkpoint every 4 steps; `finetune --resume RUN`, then the same comparison (best/, the kept
#              checkpoints, shots.json, log.jsonl ...).
# Rounds 3, 8, 13, ... kill the recovery too (ingest: the rerun; pretrain, finetune: the resume), at a delay of its
# own drawn from the seed, and recover from that (ingest: verify again first).
# The runs use --threads 2 and OMP_WAIT_POLICY=passive; on the CPU they are deterministic, so "byte-identical" is the
# test. A kill "lands" when the process was still running (it died of SIGKILL, status 137); a run that finished
# first is still recovered and compared. A temporary of a killed write (`<file>.tmp.<pid>`, best.tmp/) still there
# after the resume is a failure too (counted as leftovers).
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
# the kill delay of round R of workload W: uniform in [lo, hi), from (seed, W, R); --delay replaces it. A third
# argument "2": the delay of the second kill of a round (the recovery's), never replaced.
delay() {
    if [ -n "$FIXED" ] && [ -z "${3:-}" ]; then echo "$FIXED"; return; fi
    $PY -c "import random; r = random.Random('$SEED:$W:$R${3:+:$3}'); print('%.3f' % ($1 + r.random() * ($2 - $1)))"
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
    line=$(printf '%-9s rounds %3d  kills landed %3d (+%d of recoveries)  recoveries OK %3d  identical %3d  leftovers %3d  wall %6ss' \
        "$W" "$N" "$NLAND" "$NDBL" "$NREC" "$NSAME" "$NLEFT" "$(secs "$T0" "$(now)")")
    [ "$W" != ingest ] || line+="  (inside a commit by strace: $NSYS; uncommitted pages seen: $NMID)"
    echo "$line"
    SUMMARY+="$line"$'\n'
}
# a round's scratch folder goes unless the round failed
round_end() { if [ "$FAILS" -eq "$1" ] && [ -z "$ONE" ]; then rm -rf "$RD"; fi; }

# ---- data: a noisy archive (ingest, pretrain) and small labelled volumes (finetune) -----------------------------------
D=$OUT/data
rm -rf "$D"
mkdir -p "$D"
$PY "$HERE/make_data.py" "$D" "$SEED" || { echo "kill_campaign.sh: cannot generate the data" >&2; exit 1; }
"$M" ingest "$D/in" -o "$D/ref.store" --threads 2 --quiet || { echo "kill_campaign.sh: reference ingest failed" >&2; exit 1; }

# ---- ingest ----------------------------------------------------------------------------------------------------------
# SIGKILL on entry to the N-th call of syscall SC (strace's fault injection): sets LANDED like kill_after
kill_at_syscall() {
    local sc=$1 n=$2
    shift 2
    # (in a subshell: bash would report the killed foreground job on stderr)
    (strace -f -o /dev/null -e trace="$sc" -e inject="$sc:signal=KILL:when=$n" "$@" > "$RD/killed.log" 2>&1; exit $?) 2> /dev/null
    local rc=$?
    LANDED=$([ $rc -eq 137 ] && echo 1 || echo 0)
    [ $rc -eq 137 ] || [ $rc -eq 0 ] || fail "the run to be killed exited $rc before the kill ($(tail -n 1 "$RD/killed.log"))"
}

ingest_round() {
    local th=$(( R % 2 + 1 )) s=$RD/k.store how
    # rounds 3, 4, 7, 8, ... (with strace): killed inside LMDB's commit, on the N-th write of the store's pages
    # (writev) or meta page (pwrite64), so a volume's transaction is always cut half-way; the others at a moment
    if [ -n "${SCN[writev.$th]:-}" ] && [ $(( (R - 1) / 2 % 2 )) -eq 1 ]; then
        local sc n
        read -r sc n < <($PY -c "import random; r = random.Random('$SEED:$W:$R'); sc = r.choice(['writev', 'pwrite64'])
print(sc, r.randint(1, {'writev': ${SCN[writev.$th]}, 'pwrite64': ${SCN[pwrite64.$th]}}[sc]))")
        DELAY=0
        how="kill at $sc #$n of ${SCN[$sc.$th]}"
        kill_at_syscall "$sc" "$n" "$M" ingest "$D/in" -o "$s" --threads "$th" --quiet
        NSYS=$((NSYS + LANDED))
    else
        DELAY=$(delay 0.005 "${IDUR[$th]}")
        how="kill after ${DELAY}s"
        kill_after "$M" ingest "$D/in" -o "$s" --threads "$th" --quiet
    fi
    local ok=1 v="no store yet" mid
    if [ -e "$s/data.mdb" ]; then
        # pages past the last committed one on disk: the kill came while a volume's transaction was being written
        mid=$($PY -c "import lmdb, os; e = lmdb.open('$s', readonly=True, lock=False, max_dbs=16)
print(int(os.path.getsize('$s/data.mdb') > (e.info()['last_pgno'] + 1) * e.stat()['psize']))" 2>/dev/null)
        if [ "$mid" = 1 ]; then NMID=$((NMID + 1)); v="uncommitted pages on disk; "; else v=""; fi
        if "$M" verify "$s" > "$RD/verify.log" 2>&1; then v+=$(tail -n 1 "$RD/verify.log" | sed 's/.*: //');
        else ok=0; fail "verify after the kill failed: $(tail -n 2 "$RD/verify.log" | tr '\n' ' ')"; fi
    fi
    if [ $((R % 5)) -eq 3 ]; then # rounds 3, 8, 13, ...: the rerun is killed too, and the store verified again
        local first=$LANDED d2
        d2=$(delay 0.005 "${IDUR[$th]}" 2)
        DELAY1=$DELAY DELAY=$d2
        kill_after "$M" ingest "$D/in" -o "$s" --threads "$th" --quiet
        DELAY=$DELAY1
        NDBL=$((NDBL + LANDED))
        v+="; the rerun killed after ${d2}s: $([ $LANDED = 1 ] && echo landed || echo finished first)"
        LANDED=$first
        if [ -e "$s/data.mdb" ] && ! "$M" verify "$s" > "$RD/verify2.log" 2>&1; then
            ok=0
            fail "verify after the second kill failed: $(tail -n 2 "$RD/verify2.log" | tr '\n' ' ')"
        fi
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
    echo "ingest   round $R: --threads $th, $how: $([ $LANDED = 1 ] && echo landed || echo finished first); after it: $v; recovered $rec, identical $same"
}

# ---- pretrain and finetune: the run, killed; resume (or start again); compare with the reference ----------------------
# the recovery for what RUN/ ($1) holds: ARGS (the output options) and HOW (in words)
recovery() {
    if ls "$1"/ckpt/step_*/DONE > /dev/null 2>&1; then
        HOW="resumed from $(basename "$(ls -d "$1"/ckpt/step_*/DONE | sort | tail -n 1 | xargs dirname)")"
        ARGS="--resume $1 -o $1"
    elif [ -e "$1" ]; then
        HOW="no checkpoint yet: --overwrite"
        ARGS="--overwrite -o $1"
    else
        HOW="no RUN/ yet: a fresh run"
        ARGS="-o $1"
    fi
}

run_round() {
    local run=$RD/run how=""
    DELAY=$(delay 0.05 "$DUR")
    kill_after "$M" $CMD $OPTS -o "$run"
    if [ $((R % 5)) -eq 3 ]; then # rounds 3, 8, 13, ...: the recovery is killed too (a resume takes less than a run)
        local first=$LANDED d2
        recovery "$run"
        d2=$(delay 0.05 "$(awk -v d="$DUR" 'BEGIN { print d * 0.6 }')" 2)
        DELAY1=$DELAY DELAY=$d2
        kill_after "$M" $CMD $OPTS $ARGS
        DELAY=$DELAY1
        NDBL=$((NDBL + LANDED))
        how="$HOW, killed after ${d2}s too ($([ $LANDED = 1 ] && echo landed || echo finished first)); "
        LANDED=$first
    fi
    recovery "$run"
    how+=$HOW
    "$M" $CMD $OPTS $ARGS > "$RD/recover.log" 2>&1
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
    N=0; NLAND=0; NREC=0; NSAME=0; NLEFT=0; NMID=0; NSYS=0; NDBL=0
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
    # the store's page writes in a clean run, per thread count (strace -c), for the kills inside a commit
    declare -A SCN
    if command -v strace > /dev/null; then
        for th in 1 2; do
            rm -rf "$OUT/ingest/sc.store"
            strace -f -c -o "$OUT/ingest/sc.txt" -e trace=writev,pwrite64 "$M" ingest "$D/in" -o "$OUT/ingest/sc.store" \
                --threads "$th" --quiet > /dev/null 2>&1 || break
            for sc in writev pwrite64; do
                c=$(awk -v s=$sc '$NF == s { print $(NF - 1) }' "$OUT/ingest/sc.txt")
                [ -n "$c" ] && [ "$c" -gt 0 ] && SCN[$sc.$th]=$c
            done
        done
        rm -rf "$OUT/ingest/sc.store"
    fi
    [ -n "${SCN[pwrite64.2]:-}" ] && echo "ingest: a clean run writes pages with ${SCN[writev.1]} / ${SCN[writev.2]} writev and ${SCN[pwrite64.1]} / ${SCN[pwrite64.2]} pwrite64 calls (--threads 1 / 2)" ||
        echo "ingest: no strace (or ptrace refused): every kill at a moment"
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
    "$M" ingest --labels "$D/ft/pairs.csv" --axis axial -o "$D/ft.store" --quiet ||
        { echo "kill_campaign.sh: cannot make the labelled store" >&2; exit 1; }
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
