#!/usr/bin/env bash
# tests/tools/test_torch_accept.sh — the PyTorch baselines of tools/gpu/accept.sh (tools/gpu/torch_accept.py) on the
# CPU with Debian's torch:
#  1. the two attention variants — relative positions as an SDPA mask, and folded into q'/k' — give the same output
#     and the same gradients of q, k, v and both tables (float64, max relative difference < 1e-10) on random windowed,
#     global and MAE-subset groups (seeded);
#  2. a tiny run of every task (MAE step, full and LoRA fine-tuning) with both variants: each prints its figures, and
#     the two variants' losses after the same steps agree (relative 1e-4, float32).
set -u
PY=/usr/bin/python3
SRC=${MS_SOURCE_DIR:?run through ctest}
T=${MS_BINARY_DIR:?}/tests/tmp_test_torch_accept
rm -rf "$T" && mkdir -p "$T"
$PY -c 'import torch' 2>/dev/null || { echo "skip: no torch in $PY"; exit 77; }
SEED=${MS_TEST_SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
OMP_NUM_THREADS=1 $PY "$SRC/tools/gpu/torch_accept.py" --device cpu --tiny --batches 1 --steps 1 --seed "$SEED" --peak-tflops 1 \
    --tflop mae=1e-4,full=2e-4,lora=1e-4 > "$T/out.jsonl" 2> "$T/err.log" || { cat "$T/err.log"; exit 1; }
$PY - "$T/out.jsonl" <<'PYEND'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ok = True
chk = [r for r in rows if r.get("check")]
print("check:", chk)
ok &= len(chk) == 1 and chk[0]["ok"] and chk[0]["max_rel_diff"] < 1e-10
for task in ("mae", "full", "lora"):
    got = {r["variant"]: r for r in rows if r.get("task") == task}
    m, f = got.get("mask"), got.get("fold")
    if not (m and f and "loss" in m and "loss" in f):
        print("FAIL:", task, "missing a variant"); ok = False; continue
    d = abs(m["loss"] - f["loss"]) / abs(f["loss"])
    print(f"{task}: mask {m['loss']:.7g} {m['img_per_s']:.3g} img/s, fold {f['loss']:.7g} {f['img_per_s']:.3g} img/s, "
          f"rel diff {d:.2g}, mfu {m['mfu']}")
    ok &= d < 1e-4 and m["mfu"] is not None and m["first_step_s"] > 0
print("ok" if ok else "FAIL")
sys.exit(0 if ok else 1)
PYEND
rc=$?
[ $rc = 0 ] && rm -rf "$T"
exit $rc
