#!/usr/bin/env bash
# tests/finetune/test_finetune_rundir.sh — `mrisam finetune -o RUN` never mixes two runs (checkpoints/rundir.h,
# docs/CLI.md §RUN/ layout), vit_test at input 64 on mricron's ch2 with its brain mask, on the CPU:
#  1. a second `finetune -o RUN` over a run is refused: exit 2, one line "RUN: not empty (a run is there): ...",
#     RUN/ unchanged (every file's checksum);
#  2. --overwrite gives a run identical to a fresh one in a new directory (log.jsonl but t and img_per_s; the
#     TensorBoard file's name and wall times aside), best/ and shots.json included — here with --split
#     RUN/shots.json, the old run's own split, which is read before RUN/ is cleared;
#  3. --resume RUN still continues the run there.
# The second run uses another seed (drawn, printed), so a stale file of the first would show.
set -u
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
MRISAM=${MS_MRISAM:-mrisam}
PY=/usr/bin/python3
SEED=${MS_TEST_SEED:-$(( $(date +%s%N) % 100000 ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
check() { if [ "$1" -ne 0 ]; then echo "FAIL: $2"; fail=1; else echo "ok: $2"; fi; }
sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum); }
. "$(dirname "$0")/ch2_brainmask.sh"

A="--store $T/brain --init random --model vit_test --input-size 64 --method full --scope decoder --shots 4
   --batch-size 2 --val-slices 2 --val-every 1 --save-every 2 --keep-last 1 --max-steps 4 --threads 2"
S2=$(( SEED % 1000 + 1 ))

"$MRISAM" finetune $A --seed 0 -o "$T/run" > "$T/first.log" 2>&1
check $? "first run"
sums "$T/run" > "$T/sums_first"

# 1: a second run into RUN/ is refused and leaves it as it was
"$MRISAM" finetune $A --seed $S2 -o "$T/run" > "$T/again.out" 2> "$T/again.err"
rc=$?
want="mrisam finetune: $T/run: not empty (a run is there): --resume $T/run to continue it, --overwrite to start again"
[ $rc -eq 2 ] && [ "$(cat "$T/again.err")" = "$want" ]
check $? "a second finetune -o RUN is refused, exit 2 (got $rc: $(head -c 200 "$T/again.err"))"
sums "$T/run" | cmp -s - "$T/sums_first"
check $? "RUN/ unchanged by the refused run"

# 2: --overwrite == fresh, with the old run's split file
"$MRISAM" finetune $A --seed $S2 --split "$T/run/shots.json" -o "$T/fresh" > /dev/null 2>&1
check $? "fresh run, seed $S2, --split RUN/shots.json"
"$MRISAM" finetune $A --seed $S2 --split "$T/run/shots.json" --overwrite -o "$T/run" > "$T/over.log" 2>&1
check $? "--overwrite run, seed $S2, --split RUN/shots.json"
$PY - "$T/run" "$T/fresh" <<'PYEND'
import json, os, sys
a, b = sys.argv[1], sys.argv[2]
def files(d):
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.relpath(os.path.join(root, n), d)
            out["tb/*" if p.startswith("tb/") else p] = open(os.path.join(root, n), "rb").read()
    return out
fa, fb = files(a), files(b)
ok = sorted(fa) == sorted(fb) and "best/model.safetensors" in fa
print(("ok" if ok else "FAIL") + ": the same files: %s" % (sorted(fa) if ok else (sorted(fa), sorted(fb))))
def log(x):
    return [{k: v for k, v in json.loads(l).items() if k not in ("t", "img_per_s")} for l in x.decode().splitlines()]
for p in sorted(set(fa) & set(fb)):
    if p == "tb/*":
        continue
    same = log(fa[p]) == log(fb[p]) if p == "log.jsonl" else fa[p] == fb[p]
    ok &= same
    if not same:
        print("FAIL: %s differs" % p)
print(("ok" if ok else "FAIL") + ": every file equal (log.jsonl but t and img_per_s), %d files" % len(fa))
sys.exit(0 if ok else 1)
PYEND
check $? "--overwrite gives the fresh run's files byte for byte"

# 3: --resume still works (the same options; the run is finished, so nothing is left to do)
"$MRISAM" finetune $A --seed $S2 --split "$T/run/shots.json" --resume "$T/run" > "$T/resume.log" 2>&1
rc=$?
[ $rc -eq 0 ] && grep -q "resuming from .*step_00000004" "$T/resume.log"
check $? "--resume RUN continues the run there (exit $rc, $(grep -o 'resuming from [^ ]*' "$T/resume.log"))"

echo "test_finetune_rundir: $([ $fail -eq 0 ] && echo all passed || echo FAILED)"
exit $fail
