#!/bin/bash
# tools/gpu/bench_ft.sh — fine-tuning speed on CUDA beside PyTorch, in one device call (after build_and_test.sh has
# built $MS_BUILD; needs deps/ft as validate_ft.sh does). vit_b at 1024, batch 4, encoder+decoder, LoRA / adapter /
# full: mrisam finetune --device cuda (seconds per step from log.jsonl's clock over steps 5..12, so start-up and
# warm-up stay out) and tools/bench/finetune_ref.py --device cuda (median of 5 steps after 2 warm-up steps), exact
# fp32 first, then both with TF32 (MS_CUDA_TF32=1). Also test_ft_model_cuda under compute-sanitizer memcheck.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. "$ROOT/tools/gpu/env.sh"
B=${MS_BUILD:-build-gpu}
export OMP_WAIT_POLICY=passive
M="$ROOT/$B/mrisam"
W=/tmp/ftb
rm -rf "$W" && mkdir -p "$W" && cp -r deps/ft/store deps/ft/split.json "$W/"
"$B/tests/test_ft_model_cuda" > "$LOG/test_ft_model_cuda.log" 2>&1
echo "test_ft_model_cuda rc=$? $(grep -c PASS "$LOG/test_ft_model_cuda.log") PASS lines; $(tail -1 "$LOG/test_ft_model_cuda.log")"
grep -E "FAIL|rel" "$LOG/test_ft_model_cuda.log" | head -12
if command -v compute-sanitizer > /dev/null; then
    timeout 240 compute-sanitizer --tool memcheck --error-exitcode 3 "$B/tests/test_ft_model_cuda" > "$LOG/memcheck_ft.log" 2>&1
    echo "memcheck test_ft_model_cuda rc=$? $(grep "ERROR SUMMARY" "$LOG/memcheck_ft.log")"
fi
per_step() { awk -F'"t": ' '/"split": "train"/ { split($2, a, "}"); t[++n] = a[1] } END { printf "%.3f", (t[12] - t[4]) / 8 }' "$1/log.jsonl"; }
for tf in 0 1; do
    echo "== MS_CUDA_TF32=$tf"
    for m in lora adapter full; do
        MS_CUDA_TF32=$tf timeout 120 "$M" finetune --store "$W/store:brain" --init random --model vit_b --method $m \
            --scope encoder+decoder --split "$W/split.json" --max-steps 12 --warmup-steps 2 --batch-size 4 \
            --val-every 1000 --save-every 1000 --threads 16 --device cuda -o "$W/vb_${m}_$tf" > "$LOG/vb_${m}_$tf.log" 2>&1
        echo "mrisam $m enc+dec rc=$? s/step $(per_step "$W/vb_${m}_$tf")"
    done
    MS_CUDA_TF32=$tf timeout 200 python3 tools/bench/finetune_ref.py --device cuda --model vit_b --batch 4 --steps 5 \
        --warmup 2 --cases lora:encoder+decoder,adapter:encoder+decoder,full:encoder+decoder > "$LOG/torch_$tf.jsonl" 2> "$LOG/torch_$tf.err"
    echo "torch rc=$?"; tail -2 "$LOG/torch_$tf.err"
    sed 's/.*"method": "\([a-z]*\)".*"s_per_step": \([0-9.]*\).*"torch": "\([^"]*\)".*/torch \1 enc+dec s\/step \2 (\3)/' "$LOG/torch_$tf.jsonl"
done
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null
