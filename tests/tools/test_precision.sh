#!/usr/bin/env bash
# tests/tools/test_precision.sh — `--precision` (docs/CLI.md §Precision) through the mrisam binary on the CPU:
#  1. a short MAE run (vit_test at 64) in bf16 — the CPU emulation rounds the inputs of every GEMM and attention to
#     bf16 — beside the same run in fp32: the losses differ (bf16 arithmetic took place) yet stay within the band
#     |bf16 - fp32| <= 0.05 |fp32| + 1e-3 at every step (a broken bf16 path lands far outside it);
#  2. the bf16 run stopped after step K (drawn; pretrain may finish the next one) resumes with --precision fp32: --resume accepts another precision,
#     log.jsonl records each step's device and precision (bf16 up to the stop, fp32 after), config.json the resumed one's,
#     and the resumed steps stay within the band of the fp32 run;
#  3. the same for finetune, whose --resume compares every other option of config.json;
#  4. a bad --precision is a usage error (exit 2, one line naming the option); --help lists it;
#  5. --recompute (docs/CLI.md §Precision, next to it): the fp32 MAE and LoRA encoder+decoder runs again with
#     per-block recomputation give the same train losses bit for bit (same ops in the same order on the CPU), and
#     `bench memory` prints for vit_b a larger batch with --recompute than without, both within the budget.
set -u
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
M=${MS_MRISAM:?run through ctest}
SRC=${MS_SOURCE_DIR:?run through ctest}
PY=/usr/bin/python3
T=${MS_BINARY_DIR:?}/tests/tmp_test_precision
rm -rf "$T" && mkdir -p "$T"
SEED=${MS_TEST_SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
$PY -c 'import nibabel, numpy' 2>/dev/null || { echo "skip: python3-nibabel missing"; exit 77; }
FAIL=0
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
ok() { echo "ok: $*"; }
K=$(( 2 + SEED % 3 )) # the step after which the bf16 runs stop: 2..4 of 6
$PY "$SRC/tools/reliability/make_data.py" "$T" "$SEED" --small || exit 1
"$M" ingest "$T/in" -o "$T/store" --quiet || bad "ingest"
"$M" ingest --labels "$T/ft/pairs.csv" --axis axial -o "$T/lstore" --quiet || bad "ingest --labels"
PRE="pretrain --store $T/store --init random --model vit_test --input-size 64 --batch-size 2 --decoder-dim 32
     --decoder-depth 1 --decoder-heads 2 --lr 1e-3 --val-slices 0 --save-every 1 --keep-last 1 --max-steps 6
     --threads 2 --seed $((SEED % 1000))"
FT="finetune --store $T/lstore --init random --model vit_test --input-size 64 --method lora --scope encoder+decoder
    --shots 4 --batch-size 2 --max-steps 6 --warmup-steps 1 --lr 3e-3 --val-every 100 --val-slices 2 --save-every 1
    --keep-last 1 --seed $((SEED % 1000)) --threads 2"

# the band check: the train losses of A (bf16, resumed in fp32 after step $3) against B (fp32 throughout)
compare() {
    $PY - "$1" "$2" "$3" <<'PYEND'
import json, sys
def train(run):
    return {l["step"]: l for l in map(json.loads, open(run + "/log.jsonl")) if l["split"] == "train"}
a, b, k = train(sys.argv[1]), train(sys.argv[2]), int(sys.argv[3])
ok = sorted(a) == sorted(b) == list(range(1, 7))
for s in sorted(b):
    if s not in a: continue
    d = abs(a[s]["loss"] - b[s]["loss"])
    print(f"  step {s}: {a[s]['precision']} {a[s]['loss']:.7g}  fp32 {b[s]['loss']:.7g}  |diff| {d:.3g}")
    ok &= d <= 0.05 * abs(b[s]["loss"]) + 1e-3
    ok &= a[s]["precision"] == ("bf16" if s <= k else "fp32") and b[s]["precision"] == "fp32"
    ok &= a[s]["device"] == b[s]["device"] == "cpu"
# bf16 arithmetic took place: some step before the switch differs from the fp32 run
differ = any(a[s]["loss"] != b[s]["loss"] for s in range(1, k + 1))
print("  bf16 steps differ from fp32:", differ)
cfg = json.load(open(sys.argv[1] + "/ckpt/" + sorted(__import__("os").listdir(sys.argv[1] + "/ckpt"))[-1] + "/config.json"))
ok &= cfg.get("precision") == "fp32" and cfg.get("device") == "cpu"
sys.exit(0 if ok and differ else 1)
PYEND
}

for cmd in "$PRE" "$FT"; do
    name=${cmd%% *}
    "$M" $cmd --precision fp32 -o "$T/${name}_fp32" > "$T/${name}_fp32.log" 2>&1 ||
        { bad "$name fp32: $(tail -n 1 "$T/${name}_fp32.log")"; continue; }
    MRISAM_TEST_STOP="$K,0" "$M" $cmd --precision bf16 -o "$T/${name}_bf16" > "$T/${name}_bf16.log" 2>&1
    rc=$?
    [ $rc = 75 ] || { bad "$name bf16 stopped after step $K: exit $rc, not 75: $(tail -n 1 "$T/${name}_bf16.log")"; continue; }
    # the stop lands after step K or, in pretrain, the step after (the flag is read when a step starts)
    k=$(sed -n 's/.*interrupted at step \([0-9]*\).*/\1/p' "$T/${name}_bf16.log" | head -n 1)
    grep -q "cpu bf16" "$T/${name}_bf16.log" && ok "$name: the start-up line names cpu bf16" ||
        bad "$name: no 'cpu bf16' on the start-up line"
    "$M" $cmd --precision fp32 --resume "$T/${name}_bf16" -o "$T/${name}_bf16" > "$T/${name}_res.log" 2>&1 &&
        ok "$name: bf16 run resumed with --precision fp32" ||
        { bad "$name: resume with another precision: $(tail -n 1 "$T/${name}_res.log")"; continue; }
    compare "$T/${name}_bf16" "$T/${name}_fp32" "${k:-$K}" && ok "$name: bf16 losses differ from fp32 within the band" ||
        bad "$name: bf16 vs fp32 losses (band 0.05 |fp32| + 1e-3, or identical: is the CPU bf16 emulation in?)"
done

"$M" pretrain --store "$T/store" --init random --model vit_test --precision fp16 -o "$T/bad" > "$T/bad.log" 2>&1
rc=$?
[ $rc = 2 ] && grep -q -- "--precision" "$T/bad.log" && [ "$(wc -l < "$T/bad.log")" = 1 ] &&
    ok "--precision fp16: exit 2, one line" || bad "--precision fp16: exit $rc: $(cat "$T/bad.log")"
for c in pretrain finetune predict eval embed segment; do
    "$M" $c --help | grep -q -- "--precision fp32|bf16" || bad "$c --help does not list --precision"
done
"$M" bench mae --help | grep -q -- "--precision" || bad "bench mae --help does not list --precision"
"$M" bench finetune --help | grep -q -- "--precision" || bad "bench finetune --help does not list --precision"

for cmd in "$PRE" "$FT"; do
    name=${cmd%% *}
    [ -f "$T/${name}_fp32/log.jsonl" ] || continue
    "$M" $cmd --precision fp32 --recompute -o "$T/${name}_rc" > "$T/${name}_rc.log" 2>&1 ||
        { bad "$name --recompute: $(tail -n 1 "$T/${name}_rc.log")"; continue; }
    $PY - "$T/${name}_rc" "$T/${name}_fp32" <<'PYEND' && ok "$name --recompute: the same losses bit for bit" ||
import json, sys
def train(run):
    return [(l["step"], l["loss"]) for l in map(json.loads, open(run + "/log.jsonl")) if l["split"] == "train"]
a, b = train(sys.argv[1]), train(sys.argv[2])
print("  recompute:", a[:3], "\n  plain:    ", b[:3])
sys.exit(0 if a == b and len(a) == 6 else 1)
PYEND
        bad "$name --recompute: losses differ from the run without it"
done
"$M" bench memory --models vit_b > "$T/mem.txt" 2>&1 || bad "bench memory: $(tail -n 1 "$T/mem.txt")"
awk -F'|' '$2 ~ /vit_b/ { n++; if (!($4 > 0 && $6 > $4 && $5 <= 76 && $7 <= 76)) bad++ }
           END { exit !(n == 2 && !bad) }' "$T/mem.txt" && ok "bench memory: vit_b rows, recompute batch larger" ||
    bad "bench memory: $(cat "$T/mem.txt")"
[ $FAIL = 0 ] && rm -rf "$T"
echo "$FAIL failure(s)"
[ $FAIL = 0 ]
