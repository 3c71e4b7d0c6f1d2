#!/usr/bin/env bash
# tools/bench/finetune_cache.sh MRISAM [OUTDIR] — time to reach a validation Dice for decoder-only fine-tuning with
# cached image embeddings (--cache-embeddings: the frozen encoder runs once per slice) versus without (the encoder
# runs every step), same seed and settings otherwise (issue #7).
#   1. ingest the mricron ch2 T1 template with its ch2bet brain (> 0) as the label (as tools/demo.sh does);
#   2. `mrisam finetune --method full --scope decoder --init random --model vit_test` twice, without and with
#      --cache-embeddings;
#   3. from each RUN/log.jsonl's validation lines ("t": seconds since start, "dice": {task: {class: value}}), the
#      first t at which the mean foreground Dice reaches each threshold, and the whole run's wall time.
# Both runs train the same tensors on the same batches (no augmentation), so their validation curves must be
# identical; the script checks that (exit 1 when they differ). Only the time axis differs.
# Environment: MS_FT_STEPS (default 300), MS_FT_BATCH (4), MS_FT_VAL_EVERY (epochs, default 1), MS_FT_WARMUP (30),
# MS_FT_LR (1e-3), MS_FT_SEED (1), MS_THREADS (default 1: on a shared machine one thread gives the steadiest
# timings), MS_FT_DICE (thresholds, default 0.3,0.35,0.4,0.45), MS_FT_CKPT (start from these SAM weights instead
# of --init random), MS_FT_EXTRA (more finetune options for both runs).
set -euo pipefail
MRISAM=${1:?usage: finetune_cache.sh path/to/mrisam [outdir]}
OUT=${2:-finetune-cache-out}
STEPS=${MS_FT_STEPS:-300}
BATCH=${MS_FT_BATCH:-4}
VAL_EVERY=${MS_FT_VAL_EVERY:-1}
WARMUP=${MS_FT_WARMUP:-30}
LR=${MS_FT_LR:-1e-3}
SEED=${MS_FT_SEED:-1}
THREADS=${MS_THREADS:-1}
DICE=${MS_FT_DICE:-0.3,0.35,0.4,0.45}
TPL=/usr/share/mricron/templates
for f in ch2 ch2bet; do
    [ -f "$TPL/$f.nii.gz" ] ||
        { echo "finetune_cache: $TPL/$f.nii.gz missing (apt-get install mricron-data)" >&2; exit 1; }
done
mkdir -p "$OUT"
printf 'image,label\n%s,%s\n' "$TPL/ch2.nii.gz" "$TPL/ch2bet.nii.gz" > "$OUT/pairs.csv"

echo "== ingest: ch2 with the ch2bet brain > 0 as its label"
rm -rf "$OUT/store"
"$MRISAM" ingest --labels "$OUT/pairs.csv" --label-threshold 0 --axis axial -o "$OUT/store" >/dev/null

if [ -n "${MS_FT_CKPT:-}" ]; then init=(--ckpt "$MS_FT_CKPT"); else init=(--init random --model vit_test); fi
common=(--store "$OUT/store" "${init[@]}" --method full --scope decoder --max-steps "$STEPS" --batch-size "$BATCH"
        --lr "$LR" --warmup-steps "$WARMUP" --val-every "$VAL_EVERY" --seed "$SEED" --threads "$THREADS")
# shellcheck disable=SC2206
[ -n "${MS_FT_EXTRA:-}" ] && common+=($MS_FT_EXTRA)

for mode in nocache cache; do
    extra=()
    [ "$mode" = cache ] && extra=(--cache-embeddings)
    echo "== finetune ($mode): ${common[*]} ${extra[*]}"
    rm -rf "$OUT/run_$mode"
    t0=$(date +%s.%N)
    "$MRISAM" finetune "${common[@]}" "${extra[@]}" -o "$OUT/run_$mode" > "$OUT/run_$mode.out" 2>&1 ||
        { tail -20 "$OUT/run_$mode.out" >&2; exit 1; }
    t1=$(date +%s.%N)
    echo "$t0 $t1" > "$OUT/run_$mode.wall"
done

/usr/bin/python3 - "$OUT" "$DICE" <<'EOF'
import json, math, sys
out, thr = sys.argv[1], [float(x) for x in sys.argv[2].split(",")]

def curve(mode):
    """(t, step, mean foreground Dice) of every validation line."""
    pts = []
    for line in open("%s/run_%s/log.jsonl" % (out, mode)):
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("split") != "val" or "dice" not in j:
            continue
        v = [x for task in j["dice"].values() for x in task.values() if isinstance(x, (int, float))]
        v = [x for x in v if not math.isnan(x)]
        if v:
            pts.append((float(j["t"]), int(j.get("step", -1)), sum(v) / len(v)))
    return pts

def step_time(mode):
    """Median seconds between consecutive training lines of the second half (the cache is full by then)."""
    t = [float(j["t"]) for j in map(json.loads, open("%s/run_%s/log.jsonl" % (out, mode))) if j.get("split") == "train"]
    d = sorted(b - a for a, b in zip(t[len(t) // 2:], t[len(t) // 2 + 1:]))
    return d[len(d) // 2] if d else float("nan")


res = {}
for mode in ("nocache", "cache"):
    t0, t1 = map(float, open("%s/run_%s.wall" % (out, mode)).read().split())
    res[mode] = (curve(mode), t1 - t0)
    pts = res[mode][0]
    print("%s: wall %.1f s, %.3f s per training step (median, second half, validation excluded), %d validations, "
          "best Dice %.4f, last %s" % (
              mode, t1 - t0, step_time(mode), len(pts), max((p[2] for p in pts), default=float("nan")),
              "step %d Dice %.4f at %.1f s" % (pts[-1][1], pts[-1][2], pts[-1][0]) if pts else "-"))

same = [(s, v) for _, s, v in res["nocache"][0]] == [(s, v) for _, s, v in res["cache"][0]]
print("validation curves (step, Dice) of the two runs: %s" % ("identical" if same else "DIFFERENT"))


def first(pts, d):
    for t, s, v in pts:
        if v >= d:
            return t, s
    return None

print("| Dice >= | without cache: s (step) | with --cache-embeddings: s (step) | speed-up |")
print("|---|---|---|---|")
for d in thr:
    a, b = first(res["nocache"][0], d), first(res["cache"][0], d)
    fa = "%.1f (%d)" % a if a else "not reached"
    fb = "%.1f (%d)" % b if b else "not reached"
    print("| %.2f | %s | %s | %s |" % (d, fa, fb, "%.2fx" % (a[0] / b[0]) if a and b and b[0] > 0 else "-"))
print("| whole run | %.1f | %.1f | %.2fx |" % (res["nocache"][1], res["cache"][1], res["nocache"][1] / res["cache"][1]))
sys.exit(0 if same else 1)
EOF
