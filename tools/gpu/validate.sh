#!/bin/bash
# tools/gpu/validate.sh — one device call that checks the CUDA backend end to end on a GPU machine:
# build_and_test.sh (full CUDA build + the op-by-op CUDA-vs-CPU test), then every ctest with the `gpu` label, the
# encoder golden test (which re-runs on CUDA when a GPU is present), and a short MAE pretraining run on CUDA with
# vit_b at 1024 on a store carried in deps/store (images/s printed). Logs go to $OUT (or /tmp).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. "$ROOT/tools/gpu/env.sh"
export MS_SKIP_TORCH=${MS_SKIP_TORCH:-1} MS_JOBS=${MS_JOBS:-16} MS_BUILD=${MS_BUILD:-build-gpu}
timeout 300 bash tools/gpu/build_and_test.sh > "$LOG/ops.log" 2>&1
echo "build_and_test rc=$?"
grep -E "passed|FAIL|warning lines|full build failed" "$LOG/ops.log" | head -8
cd "$MS_BUILD" || exit 1
timeout 240 cmake --build . -j"$MS_JOBS" > "$LOG/build_all.log" 2>&1
echo "full build rc=$? ($(grep -c -i warning "$LOG/build_all.log") warning lines)"
grep -E "error" "$LOG/build_all.log" | head -5
timeout 120 ctest -L gpu --output-on-failure > "$LOG/ctest_gpu.log" 2>&1
echo "ctest -L gpu rc=$?"
grep -E "Test +#|tests passed" "$LOG/ctest_gpu.log"
timeout 60 ./tests/test_sam_encoder > "$LOG/encoder.log" 2>&1
echo "test_sam_encoder rc=$? $(tail -1 "$LOG/encoder.log")"
if [ -d "$ROOT/deps/store" ]; then
  timeout 150 ./mrisam pretrain --store "$ROOT/deps/store" --init random --model vit_b --device cuda \
    --batch-size 8 --max-steps 6 --val-slices 0 --save-every 100 --threads 16 --overwrite -o /tmp/run_vitb \
    > "$LOG/pretrain.log" 2>&1
  echo "pretrain vit_b cuda rc=$?"
  tail -4 "$LOG/pretrain.log"
  cp /tmp/run_vitb/log.jsonl "$LOG/pretrain_log.jsonl" 2>/dev/null
  grep '"step": 6,' /tmp/run_vitb/log.jsonl | head -1
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null
