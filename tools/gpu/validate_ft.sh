#!/bin/bash
# tools/gpu/validate_ft.sh — fine-tuning on CUDA, checked against the CPU, in one device call (after validate.sh has
# built $MS_BUILD). Needs deps/ft (carried): store/ (ch2better + ch2 with the ch2bet brain mask as its label, as the
# demo ingests them), split.json (the demo's split) and ch2.nii.gz, prepared on a machine with mricron-data:
#   T=/usr/share/mricron/templates; mkdir -p deps/ft && cp $T/ch2.nii.gz deps/ft/
#   printf 'image,label\n%s,%s\n' $T/ch2.nii.gz $T/ch2bet.nii.gz > /tmp/pairs.csv
#   build/mrisam ingest $T/ch2better.nii.gz --labels /tmp/pairs.csv --label-threshold 0 --axis axial -o deps/ft/store
#   and the split.json that tools/demo.sh writes. Steps:
#   1. the same few-shot run (vit_test from random weights, full decoder, 200 steps) on the CPU and on CUDA:
#      loss curves and validation Dice side by side;
#   2. LoRA and adapter encoder+decoder runs (vit_test, 60 steps) on both: the losses must follow each other;
#   3. predict ch2 and eval the held-out slices with the CUDA run's checkpoint on both devices: Dice between the two
#      label volumes, and both eval summaries;
#   4. vit_b at 1024 on CUDA, batch 4: seconds per step for LoRA enc+dec, adapter enc+dec, full enc+dec.
# Logs go to $OUT (or /tmp).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. "$ROOT/tools/gpu/env.sh"
B=${MS_BUILD:-build-gpu}
export OMP_WAIT_POLICY=passive
M="$ROOT/$B/mrisam"
D="$ROOT/deps/ft"
W=/tmp/ftv
rm -rf "$W" && mkdir -p "$W" && cp -r "$D/store" "$D/split.json" "$W/"
val() { grep '"split": "val"' "$1/log.jsonl" | sed 's/.*"step": \([0-9]*\),.*"score": \([0-9.e-]*\).*/\1:\2/' | tr '\n' ' '; }
loss_at() { grep "\"step\": $2, .*\"split\": \"train\"" "$1/log.jsonl" | sed 's/.*"loss": \([0-9.e-]*\).*/\1/'; }
rate() { grep '"split": "train"' "$1/log.jsonl" | tail -1 | sed 's/.*"img_per_s": \([0-9.e-]*\).*/\1/'; }

echo "== 1. few-shot vit_test, full decoder, 200 steps"
for dev in cpu cuda; do
    /usr/bin/time -f "$dev wall %e s" timeout 200 "$M" finetune --store "$W/store:brain" --init random --model vit_test \
        --method full --scope decoder --split "$W/split.json" --max-steps 200 --warmup-steps 10 --lr 3e-4 \
        --val-every 25 --patience 1000 --seed 2 --threads 16 --device $dev -o "$W/ft_$dev" > "$LOG/ft_$dev.log" 2>&1
    echo "$dev rc=$? loss@1 $(loss_at "$W/ft_$dev" 1) loss@100 $(loss_at "$W/ft_$dev" 100) loss@200 $(loss_at "$W/ft_$dev" 200) img/s $(rate "$W/ft_$dev")"
    echo "   val dice: $(val "$W/ft_$dev")"
    tail -1 "$LOG/ft_$dev.log"
done

echo "== 2. PEFT encoder+decoder, vit_test, 60 steps"
for m in lora adapter; do
    for dev in cpu cuda; do
        timeout 200 "$M" finetune --store "$W/store:brain" --init random --model vit_test --method $m \
            --scope encoder+decoder --split "$W/split.json" --max-steps 60 --warmup-steps 5 --lr 1e-3 \
            --val-every 15 --patience 1000 --seed 3 --threads 16 --device $dev -o "$W/pe_${m}_$dev" \
            > "$LOG/pe_${m}_$dev.log" 2>&1
        echo "$m $dev rc=$? loss@1 $(loss_at "$W/pe_${m}_$dev" 1) @30 $(loss_at "$W/pe_${m}_$dev" 30) @60 $(loss_at "$W/pe_${m}_$dev" 60) img/s $(rate "$W/pe_${m}_$dev") val: $(val "$W/pe_${m}_$dev")"
    done
done

echo "== 3. predict / eval with the CUDA checkpoint on both devices"
for dev in cpu cuda; do
    mkdir -p "$W/p_$dev"
    timeout 120 "$M" predict --ckpt "$W/ft_cuda" --in "$D/ch2.nii.gz" -o "$W/p_$dev/ch2.nii.gz" --device $dev \
        --threads 16 > "$LOG/predict_$dev.log" 2>&1
    echo "predict $dev rc=$? $(tail -1 "$LOG/predict_$dev.log")"
    timeout 120 "$M" eval --ckpt "$W/ft_cuda" --store "$W/store" -o "$W/eval_$dev" --device $dev --threads 16 \
        > "$LOG/eval_$dev.log" 2>&1
    echo "eval $dev rc=$?"; grep -i "dice" "$LOG/eval_$dev.log" | head -3
done
"$M" eval --pred "$W/p_cuda" --gt "$W/p_cpu" -o "$W/eval_cmp" > "$LOG/eval_cmp.log" 2>&1
echo "cuda vs cpu label volumes: rc=$?"; grep -i "dice\|mean" "$LOG/eval_cmp.log" | head -4
cmp -s "$W/p_cuda/ch2.nii.gz" "$W/p_cpu/ch2.nii.gz" && echo "   (byte-identical files)"

echo "== 4. vit_b at 1024 on CUDA, batch 4, 12 steps"
for m in lora adapter full; do
    timeout 150 "$M" finetune --store "$W/store:brain" --init random --model vit_b --method $m --scope encoder+decoder \
        --split "$W/split.json" --max-steps 12 --warmup-steps 2 --batch-size 4 --val-every 1000 --save-every 1000 \
        --threads 16 --device cuda -o "$W/vb_$m" > "$LOG/vb_$m.log" 2>&1
    echo "vit_b $m rc=$? img/s $(rate "$W/vb_$m") loss@1 $(loss_at "$W/vb_$m" 1) loss@12 $(loss_at "$W/vb_$m" 12)"
    grep -i "error\|memory" "$LOG/vb_$m.log" | head -2
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null
cp -r "$W"/ft_cuda/log.jsonl "$LOG/ft_cuda_log.jsonl" 2>/dev/null
cp -r "$W"/ft_cpu/log.jsonl "$LOG/ft_cpu_log.jsonl" 2>/dev/null
exit 0
