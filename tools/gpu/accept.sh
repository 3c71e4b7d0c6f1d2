#!/bin/bash
# tools/gpu/accept.sh — the GPU acceptance of docs/PERFORMANCE.md §GPU acceptance, one device call (kind
# nvidia-h100-x1, at most 5 minutes; carry ["deps"] with deps/debs as in tools/gpu/build_and_test.sh):
#   1. unpack the dependencies and build mrisam and the CUDA tests (tools/gpu/deps.sh);
#   2. ctest -L gpu;
#   3. mrisam's benchmarks, one process per configuration, --precision bf16, vit_b at 1024: the MAE step (mask 0.75,
#      decoder 512x8) and full / LoRA encoder+decoder fine-tuning, batch 8 and 32 (halved on out-of-memory);
#   4. tools/gpu/torch_accept.py on the same GPU: PyTorch eager bf16 with the rel-pos bias as an SDPA mask, with the
#      q'/k' folding, and torch.compile of the faster for the MAE step; FLOPs per image from mrisam's count;
#   5. one table: ours beside every PyTorch variant — img/s, MFU against 989 TFLOP/s, peak memory, time to the first
#      step — and the speed-up over the best PyTorch variant.
# --dry-run: everything that needs no GPU, here: the CPU build in $MS_BUILD (default build-dev), no ctest -L gpu,
# the benchmarks on the CPU (vit_test: MAE at 64, fine-tuning at 256; batch 2 and 4), torch_accept.py --device cpu
# --tiny, and the same table. Environment: MS_BUILD, MS_JOBS (16), MS_ACCEPT_STEPS (timed steps, 3; dry run 1),
# MS_PYTHON (python3; dry run /usr/bin/python3), OUT (logs), MS_ACCEPT_MEMCHECK=1 (also test_ops_cuda under
# compute-sanitizer memcheck; adds minutes, so a separate call).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. "$ROOT/tools/gpu/env.sh"
DRY=0
[ "${1:-}" = --dry-run ] && DRY=1
J=${MS_JOBS:-16}
STEPS=${MS_ACCEPT_STEPS:-3}
mkdir -p "$LOG"
: > "$LOG/ours.jsonl"
export OMP_WAIT_POLICY=passive MS_SOURCE_DIR="$ROOT"
if [ $DRY = 1 ]; then
    B=${MS_BUILD:-build-dev}
    DEV=cpu BATCHES="2 4" MAE_ARGS="--models vit_test --input-size 64" FT_MODEL=vit_test THREADS=2
    TORCH_ARGS="--device cpu --tiny --batches 2,4"
    STEPS=${MS_ACCEPT_STEPS:-1}
    PY=${MS_PYTHON:-/usr/bin/python3} # Debian's torch
    cmake --build "$B" -j2 --target mrisam > "$LOG/build.log" 2>&1
    echo "build ($B, CPU) rc=$?"
    echo "ctest -L gpu: not run (dry run: needs the GPU)"
    echo "dry run: ours runs vit_test, PyTorch its --tiny model, both on the CPU: the figures exercise the path only"
else
    B=${MS_BUILD:-build-gpu}
    DEV=cuda BATCHES="8 32" MAE_ARGS="--models vit_b --input-size 1024" FT_MODEL=vit_b THREADS=16
    TORCH_ARGS="--device cuda --batches 8,32 --compile"
    PY=${MS_PYTHON:-python3} # the machine's PyTorch 2.11
    . "$ROOT/tools/gpu/deps.sh"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
    ms_gpu_unpack
    ms_gpu_configure "$B" > "$LOG/cmake.log" 2>&1 || { tail -20 "$LOG/cmake.log"; exit 1; }
    # the gpu-labelled tests are C tests named as their targets (script tests need mrisam alone)
    gpu_tests=$(cd "$B" && ctest -N -L gpu | sed -n 's/^ *Test *#[0-9]*: *//p' | while read -r t; do
        [ -n "$(ls "$ROOT"/tests/*/"$t".c 2>/dev/null)" ] && echo "$t"; done)
    timeout 170 cmake --build "$B" -j"$J" --target mrisam $gpu_tests > "$LOG/build.log" 2>&1
    echo "build rc=$? ($(grep -c -i warning "$LOG/build.log") warning lines)"
    grep -E "error" "$LOG/build.log" | head -5
    (cd "$B" && timeout 60 ctest -L gpu --output-on-failure > "$LOG/ctest_gpu.log" 2>&1)
    echo "ctest -L gpu rc=$?"
    grep -E "Test +#|tests passed" "$LOG/ctest_gpu.log"
    if [ "${MS_ACCEPT_MEMCHECK:-0}" = 1 ]; then # the op tests under compute-sanitizer (slow: opt-in)
        timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/tests/test_ops_cuda" \
            > "$LOG/memcheck.log" 2>&1
        echo "compute-sanitizer memcheck test_ops_cuda rc=$? ($(grep -c "ERROR SUMMARY: 0 errors" "$LOG/memcheck.log") clean summaries)"
    fi
fi
M="$ROOT/$B/mrisam"
[ -x "$M" ] || { echo "accept: no $M"; exit 1; }

# ours: one process per configuration, so that each time to the first step starts from a fresh process
for b in $BATCHES; do
    timeout 60 "$M" bench mae $MAE_ARGS --device $DEV --precision bf16 --threads $THREADS --batch $b \
        --steps "$STEPS" --halve-on-oom --no-torch --json > "$LOG/ours_mae_$b.log" 2>&1
    echo "mrisam bench mae batch $b rc=$?"
    grep '^{' "$LOG/ours_mae_$b.log" | sed "s/^{/{\"batch_asked\": $b, /" >> "$LOG/ours.jsonl"
    for m in full lora; do
        timeout 60 "$M" bench finetune --model $FT_MODEL --cases $m:encoder+decoder --device $DEV --precision bf16 \
            --threads $THREADS --batch $b --steps "$STEPS" --warmup 1 --halve-on-oom --no-torch --json \
            > "$LOG/ours_${m}_$b.log" 2>&1
        echo "mrisam bench finetune $m batch $b rc=$?"
        grep '^{' "$LOG/ours_${m}_$b.log" | sed "s/^{/{\"batch_asked\": $b, /" >> "$LOG/ours.jsonl"
    done
done

# PyTorch on the same device, with mrisam's FLOPs per image
TFLOP=$($PY - "$LOG/ours.jsonl" <<'PYEND'
import json, sys
t = {}
for l in open(sys.argv[1]):
    r = json.loads(l)
    task = "mae" if r["bench"] == "mae" else r["case"].split(":")[0]
    t[task] = r["tflop_per_img"]
print(",".join(f"{k}={v:.6g}" for k, v in t.items()))
PYEND
)
echo "model TFLOP per image (pretrain/flops.h): $TFLOP"
OMP_NUM_THREADS=$THREADS timeout 150 $PY tools/gpu/torch_accept.py $TORCH_ARGS --steps "$STEPS" --tflop "$TFLOP" \
    > "$LOG/torch.jsonl" 2> "$LOG/torch.err"
echo "torch_accept.py rc=$?"
tail -3 "$LOG/torch.err"

$PY - "$LOG/ours.jsonl" "$LOG/torch.jsonl" "$BATCHES" <<'PYEND'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
theirs = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{") and "task" in l]
chk = [json.loads(l) for l in open(sys.argv[2]) if '"check"' in l]
if chk:
    print(f"mask vs fold attention (float64, seed {chk[0]['seed']}): max relative difference {chk[0]['max_rel_diff']:.2g}")
asked = [int(b) for b in sys.argv[3].split()]
f = lambda v, fmt: "-" if v is None or v < 0 else fmt % v  # noqa: E731
print("| task | batch asked | side | batch run | img/s | MFU | peak GiB | first step s | vs best PyTorch |")
print("|---|---|---|---|---|---|---|---|---|")
for task in ("mae", "full", "lora"):
    for b in asked:
        o = [r for r in ours if r["batch_asked"] == b and ("mae" if r["bench"] == "mae" else r["case"].split(":")[0]) == task]
        o = o[0] if o else None
        per_b = [r for r in theirs if r["task"] == task and r["batch_asked"] == b]
        if task == "mae" and b == asked[0]:
            per_b += [r for r in theirs if r["task"] == task and r["batch_asked"] == 0]  # a note (no torch.compile)
        best = max((r.get("img_per_s", 0) for r in per_b), default=0)
        if o:
            print(f"| {task} | {b} | mrisam {o['precision']} | {o['batch']} | {o['img_per_s']:.3g} | "
                  f"{f(o['mfu'] * 100 if o['mfu'] >= 0 else None, '%.1f %%')} | "
                  f"{f(o['peak_gib'] if o['device'] == 'cuda' else None, '%.2f')} | {o['first_step_s']:.2f} | "
                  f"{f(o['img_per_s'] / best if best else None, '%.2fx')} |")
        else:
            print(f"| {task} | {b} | mrisam | - | failed | - | - | - | - |")
        for r in per_b:
            if "img_per_s" not in r:
                print(f"| {task} | {b} | PyTorch {r['variant']} | - | {r.get('error', 'failed')} | - | - | - | - |")
                continue
            print(f"| {task} | {b} | PyTorch {r['variant']} {r['precision']} | {r['batch']} | {r['img_per_s']:.3g} | "
                  f"{f(r['mfu'] * 100 if r['mfu'] is not None else None, '%.1f %%')} | {f(r['peak_gib'], '%.2f')} | "
                  f"{r['first_step_s']:.2f} | |")
PYEND
