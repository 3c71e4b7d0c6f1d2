#!/usr/bin/env bash
# tests/pretrain/test_pretrain_rundir.sh — `mrisam pretrain -o RUN` never mixes two runs (checkpoints/rundir.h,
# docs/CLI.md §RUN/ layout), on a store of mricron's ch2, vit_test at input 64 on the CPU:
#  1. a second `pretrain -o RUN` over a run is refused: exit 2, one line "RUN: not empty (a run is there): ...",
#     RUN/ unchanged (every file's checksum); so is --overwrite when RUN/ holds a file no run writes, and
#     --resume with --overwrite;
#  2. --overwrite gives a run identical to a fresh one in a new directory: the same files, byte for byte (log.jsonl
#     but t and img_per_s; the TensorBoard file's name and wall times aside), exports included;
#  3. --resume RUN still continues the run there (a finished run: nothing to do, the same export).
# The second run uses another seed (drawn, printed), so a stale file of the first would show.
set -u
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
MRISAM=${MS_MRISAM:-mrisam}
PY=/usr/bin/python3
TPL=${MS_MRICRON_TEMPLATES:-/usr/share/mricron/templates}
[ -f "$TPL/ch2.nii.gz" ] || { echo "skip: $TPL/ch2.nii.gz missing (apt-get install mricron-data)"; exit 77; }
SEED=${MS_TEST_SEED:-$(( $(date +%s%N) % 100000 ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
check() { if [ "$1" -ne 0 ]; then echo "FAIL: $2"; fail=1; else echo "ok: $2"; fi; }
# every file under a directory with its checksum (the "unchanged" comparison)
sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum); }

"$MRISAM" ingest "$TPL/ch2.nii.gz" --axis axial -o "$T/store" > "$T/ingest.log" 2>&1
check $? "ingest ch2"
A="--store $T/store --init random --model vit_test --input-size 64 --batch-size 2 --decoder-dim 32 --decoder-depth 1
   --decoder-heads 2 --lr 1e-3 --val-slices 2 --val-every 2 --save-every 2 --keep-last 1 --max-steps 4 --threads 2"
S2=$(( SEED % 1000 + 1 ))

"$MRISAM" pretrain $A --seed 0 -o "$T/run" > "$T/first.log" 2>&1
check $? "first run"
sums "$T/run" > "$T/sums_first"

# 1: refusals leave RUN/ as it was
"$MRISAM" pretrain $A --seed $S2 -o "$T/run" > "$T/again.out" 2> "$T/again.err"
rc=$?
want="mrisam pretrain: $T/run: not empty (a run is there): --resume $T/run to continue it, --overwrite to start again"
[ $rc -eq 2 ] && [ "$(cat "$T/again.err")" = "$want" ]
check $? "a second pretrain -o RUN is refused, exit 2 (got $rc: $(head -c 200 "$T/again.err"))"
sums "$T/run" | cmp -s - "$T/sums_first"
check $? "RUN/ unchanged by the refused run"
echo note > "$T/run/notes.txt"
"$MRISAM" pretrain $A --seed $S2 --overwrite -o "$T/run" > /dev/null 2> "$T/foreign.err"
rc=$?
[ $rc -eq 2 ] && grep -q "notes.txt, which no run writes" "$T/foreign.err" && [ -f "$T/run/notes.txt" ]
check $? "--overwrite refused when RUN/ holds a file no run writes (exit $rc: $(head -c 200 "$T/foreign.err"))"
rm "$T/run/notes.txt"
"$MRISAM" pretrain $A --seed 0 --resume "$T/run" --overwrite > /dev/null 2> "$T/both.err"
rc=$?
[ $rc -eq 2 ] && grep -q "not both" "$T/both.err"
check $? "--resume with --overwrite refused (exit $rc)"
sums "$T/run" | cmp -s - "$T/sums_first"
check $? "RUN/ unchanged by the refused runs"

# 2: --overwrite == fresh
"$MRISAM" pretrain $A --seed $S2 -o "$T/fresh" > /dev/null 2>&1
check $? "fresh run, seed $S2"
"$MRISAM" pretrain $A --seed $S2 --overwrite -o "$T/run" > "$T/over.log" 2>&1
check $? "--overwrite run, seed $S2"
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
ok = sorted(fa) == sorted(fb)
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

# 3: --resume still works
cp "$T/run/sam_mri_vit_test.safetensors" "$T/export_before"
"$MRISAM" pretrain $A --seed $S2 --resume "$T/run" > "$T/resume.log" 2>&1
rc=$?
[ $rc -eq 0 ] && grep -q "resuming from .*step_00000004" "$T/resume.log" &&
    cmp -s "$T/export_before" "$T/run/sam_mri_vit_test.safetensors"
check $? "--resume RUN continues the run there (exit $rc, $(grep -o 'resuming from [^ ]*' "$T/resume.log"))"

echo "test_pretrain_rundir: $([ $fail -eq 0 ] && echo all passed || echo FAILED)"
exit $fail
