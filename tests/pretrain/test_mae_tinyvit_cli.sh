#!/usr/bin/env bash
# tests/pretrain/test_mae_tinyvit_cli.sh — `mrisam pretrain --model vit_t_test` (MAE over MobileSAM's TinyViT,
# docs/MAE.md §TinyViT) on a store of mricron's ch2, batch 2 at 256 on the CPU, 4 steps:
#  1. an uninterrupted run exports RUN/sam_mri_vit_t_test.{pth,safetensors}; its last checkpoint's model.safetensors holds
#     every BatchNorm's num_batches_tracked = 4;
#  2. the same run stopped after step 2 (MRISAM_TEST_STOP: exit 75) and resumed gives the same exports, byte for
#     byte, and the same log.jsonl (t and img_per_s aside);
#     `export-weights RUN/` re-creates the export from the last checkpoint, byte for byte;
#  3. the export loads back as a whole MobileSAM (strictly: `pretrain --ckpt` on it runs, its num_batches_tracked
#     counts the 4 training forwards, its BatchNorm running statistics differ from a fresh --init random's);
#  4. --input-size other than 256 is refused (exit 1, one line).
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

"$MRISAM" ingest "$TPL/ch2.nii.gz" --axis axial -o "$T/store" > "$T/ingest.log" 2>&1
check $? "ingest ch2"
A="--store $T/store --init random --model vit_t_test --batch-size 2 --decoder-dim 32 --decoder-depth 1
   --decoder-heads 2 --lr 1e-3 --val-slices 2 --val-every 2 --save-every 2 --max-steps 4 --threads 2 --seed $SEED"

"$MRISAM" pretrain $A -o "$T/a" > "$T/a.log" 2>&1
check $? "uninterrupted run ($(tail -n 1 "$T/a.log"))"
$PY - "$T/a/ckpt/step_00000004/model.safetensors" <<'PYEND'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
hl = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + hl])
n = [k for k in h if k.endswith("num_batches_tracked")]
v = [struct.unpack("<q", b[8 + hl + h[k]["data_offsets"][0]:][:8])[0] for k in n]
ok = len(n) == sum(1 for k in h if k.endswith("running_var")) > 0 and all(x == 4 for x in v)
print("%d num_batches_tracked keys: %s" % (len(n), sorted(set(v))))
sys.exit(0 if ok else 1)
PYEND
check $? "the checkpoint's model.safetensors holds every num_batches_tracked = 4"

MRISAM_TEST_STOP=2,0 "$MRISAM" pretrain $A -o "$T/b" > "$T/b1.log" 2>&1
rc=$?
[ $rc -eq 75 ]
check $? "stopped after step 2: exit 75 (got $rc)"
"$MRISAM" pretrain $A --resume "$T/b" > "$T/b2.log" 2>&1
check $? "resumed run"
for f in sam_mri_vit_t_test.pth sam_mri_vit_t_test.safetensors; do
    cmp -s "$T/a/$f" "$T/b/$f"
    check $? "resumed export $f equals the uninterrupted one"
done
"$MRISAM" export-weights "$T/a" -o "$T/ew.safetensors" > /dev/null 2>&1 &&
    cmp -s "$T/ew.safetensors" "$T/a/sam_mri_vit_t_test.safetensors"
check $? "export-weights RUN/ re-creates the export byte for byte (BatchNorm counters included)"

"$MRISAM" pretrain --store "$T/store" --init random --model vit_t_test --batch-size 2 --decoder-dim 32 \
    --decoder-depth 1 --decoder-heads 2 --val-slices 0 --max-steps 1 --threads 2 --seed $SEED -o "$T/fresh" \
    > /dev/null 2>&1
check $? "a fresh 1-step run"
"$MRISAM" pretrain --store "$T/store" --ckpt "$T/a/sam_mri_vit_t_test.pth" --batch-size 2 --decoder-dim 32 \
    --decoder-depth 1 --decoder-heads 2 --val-slices 0 --max-steps 1 --threads 2 -o "$T/c" > "$T/c.log" 2>&1
check $? "the export loads back strictly (pretrain --ckpt: $(tail -n 1 "$T/c.log"))"
$PY - "$T/a/sam_mri_vit_t_test.safetensors" "$T/fresh/sam_mri_vit_t_test.safetensors" <<'PYEND'
import json, struct, sys
def read(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: (v["dtype"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in h.items()}
a, f = read(sys.argv[1]), read(sys.argv[2])
nbt = [k for k in a if k.endswith("num_batches_tracked")]
ok = len(nbt) > 0 and all(a[k][0] == "I64" and struct.unpack("<q", a[k][1])[0] == 4 for k in nbt)
print(("ok" if ok else "FAIL") + ": %d num_batches_tracked keys, all 4" % len(nbt))
rs = [k for k in a if k.endswith("running_mean") or k.endswith("running_var")]
moved = all(a[k][1] != f[k][1] for k in rs)
print(("ok" if moved and rs else "FAIL") + ": %d running statistics differ from the fresh model's" % len(rs))
same = all(a[k][1] == f[k][1] for k in a if k.startswith("image_encoder.neck.") or k.startswith("prompt_encoder."))
print(("ok" if same else "FAIL") + ": neck and prompt encoder as they came")
sys.exit(0 if ok and moved and same else 1)
PYEND
check $? "export contents"

"$MRISAM" pretrain $A --input-size 512 -o "$T/d" > /dev/null 2> "$T/d.err"
rc=$?
[ $rc -eq 1 ] && [ "$(wc -l < "$T/d.err")" -eq 1 ] && grep -q "input size" "$T/d.err"
check $? "--input-size 512 refused (exit $rc: $(head -c 200 "$T/d.err"))"
exit $fail
