#!/usr/bin/env bash
# tests/finetune/test_finetune_mpi.sh — data-parallel `mrisam finetune` over MPI on the CPU backend
# (docs/FINETUNE.md), on the mricron ch2 T1 with its brain mask (tests/finetune/ch2_brainmask.sh), vit_test at
# input 64, 7 training slices, so that an epoch ends in a partial global batch the ranks share unevenly (2 + 1):
#  1. 2 ranks × batch 2 take the steps of 1 process × batch 4 (LoRA, encoder+decoder: gradients through the
#     encoder): in log.jsonl the train and validation losses agree to 5e-5 relative, the loss parts (Dice, CE,
#     CE fg / bg) to 2e-4, the gradient norm to 1e-3 (a factor-2 error in the reduction would be 1; the bound
#     absorbs float noise: one process on 2 threads instead of 1 already moves the first step's norm by 1.3e-4 at
#     seed 744, and AdamW carries such noise on), lr exactly. The final parameters agree to a relative L2
#     difference <= 1e-4 with at most 0.1 % of the values more than 1e-5 apart (AdamW divides by sqrt(v): a
#     gradient that is last-bit noise around 0 can move a value by up to lr per step, so a max-abs bound would
#     measure that noise, not the reduction). The control, 1 process × batch 2, must miss that bound. config.json
#     records world_size and global_batch; only rank 0 prints.
#  2. stop and resume (full / decoder, embedding cache per rank): MRISAM_TEST_STOP raises one rank's stop flag
#     after a drawn step; both ranks stop after the next step (where they agree), exit 75, with a checkpoint of
#     that step; a resume on 1 process with batch 2 (another global batch) is refused (exit 2), with batch 4 it
#     ends within 1e-4 relative L2 of the uninterrupted 2-rank run; --resume on 2 ranks ends with model, optimizer
#     state, best/ and loss sequence bit-identical to it.
#  3. --zero1 (each rank keeps its part of the AdamW state): model, best/ and log bit-identical to the plain 2-rank
#     run, one optimizer shard per rank in the checkpoint (no optim.safetensors), and a stop + resume with --zero1
#     ends bit-identical too (the shards read back).
# Needs mpirun (openmpi-bin) and a build with MPI. Runs serially (label mpi).
set -u
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} OMP_NUM_THREADS=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none # the sandbox forbids the ptrace-based single copy
MRISAM=${MS_MRISAM:-mrisam}
PY=/usr/bin/python3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
check() { if [ "$1" -ne 0 ]; then echo "FAIL: $2"; fail=1; else echo "ok: $2"; fi; }
command -v mpirun > /dev/null || { echo "FAIL: mpirun not found (apt-get install openmpi-bin)"; exit 1; }
MPI="mpirun --allow-run-as-root --oversubscribe -np 2"
SEED=${MS_TEST_SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
t0=$(date +%s)
. "$(dirname "$0")/ch2_brainmask.sh"
A="--store $T/brain --init random --model vit_test --input-size 64 --threads 1 --shots 7 --max-steps 6
   --warmup-steps 2 --val-every 1 --val-slices 4 --seed $(( SEED % 1000 ))"

# 1: 2 ranks × 2 = 1 process × 4
L="$A --method lora --scope encoder+decoder --save-every 1000"
"$MRISAM" finetune $L --batch-size 4 -o "$T/one" > "$T/one.log" 2>&1
check $? "1 process, batch 4"
$MPI "$MRISAM" finetune $L --batch-size 2 --bucket-mb 0.05 -o "$T/two" > "$T/two.log" 2>&1
check $? "2 ranks, batch 2 each (50 kB buckets: most start during the encoder's backward)"
"$MRISAM" finetune $L --batch-size 2 -o "$T/half" > "$T/half.log" 2>&1
check $? "1 process, batch 2 (control)"
[ "$(grep -c 'finetune: 2 ranks, batch 2 per rank, global batch 4' "$T/two.log")" = 1 ] &&
    [ "$(grep -c '^finetune: task brain' "$T/two.log")" = 1 ]
check $? "the plan is printed once, by rank 0, with the global batch"
$PY - "$T" <<'PYEND'
import json, struct, sys
import numpy as np
t = sys.argv[1]

def tensors(p):  # safetensors by hand: u64 header length, JSON header, raw little-endian data
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in sorted(h.items()):
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype="<f4").astype(np.float64)
    return out

def flat(run):
    d = tensors("%s/%s/ckpt/step_00000006/model.safetensors" % (t, run))
    return list(d), np.concatenate(list(d.values()))

def lines(run):
    return [json.loads(l) for l in open("%s/%s/log.jsonl" % (t, run))]

ok = True
def report(good, msg):
    global ok
    ok &= bool(good)
    print(("ok" if good else "FAIL") + ": " + msg)

ka, a = flat("one")
kb, b = flat("two")
kc, c = flat("half")
report(ka == kb == kc, "same tensors in the three runs (%d)" % len(ka))
def dist(x, y):
    return np.linalg.norm(x - y) / np.linalg.norm(x), float(np.mean(np.abs(x - y) > 1e-5)), float(np.abs(x - y).max())
r, f, m = dist(a, b)
report(r <= 1e-4 and f <= 1e-3, "2 ranks x 2 vs 1 x 4: relative L2 %.3g (<= 1e-4), %.3g of the values > 1e-5 apart "
       "(<= 1e-3), max abs %.3g" % (r, f, m))
rc_, fc, mc = dist(a, c)
report(rc_ > 1e-4 or fc > 1e-3,
       "control 1 x 2 vs 1 x 4 misses the bound: relative L2 %.3g, %.3g > 1e-5 apart" % (rc_, fc))

la, lb = lines("one"), lines("two")
tol = {"loss": 5e-5, "loss_dice": 2e-4, "loss_ce": 2e-4, "loss_fg": 2e-4, "loss_bg": 2e-4, "grad_norm": 1e-3, "lr": 0}
worst = dict.fromkeys(tol, 0.0)
same_shape = [(x["split"], x["step"]) for x in la] == [(x["split"], x["step"]) for x in lb] and len(la) == 9
for x, y in zip(la, lb):
    for k in (tol if x["split"] == "train" else ["loss"]):
        worst[k] = max(worst[k], abs(x[k] - y[k]) / max(abs(x[k]), 1e-6))
report(same_shape and all(worst[k] <= tol[k] for k in tol), "log.jsonl: same %d lines, largest relative differences %s "
       "(bounds %s)" % (len(la), {k: float("%.2g" % v) for k, v in worst.items()}, tol))
ca, cb = (json.load(open("%s/%s/config.json" % (t, r))) for r in ("one", "two"))
shape = (ca["world_size"], ca["global_batch"], cb["world_size"], cb["global_batch"], cb["batch_size"])
report(shape == (1, 4, 2, 4, 2), "config.json: world_size / global_batch 1 / 4 and 2 / 4 (batch_size 2 per rank)")
sys.exit(0 if ok else 1)
PYEND
check $? "data parallel equals the doubled batch"

# 2: stop one rank's flag after a drawn step; both stop one step later; --resume completes bit-exactly
K=$(( 1 + SEED % 4 ))
R=$(( SEED / 4 % 2 ))
S=$(( K + 1 ))
echo "stop: rank $R raises its flag after step $K; expected stop after step $S"
C="$A --method full --scope decoder --cache-embeddings --batch-size 2 --save-every 4"
$MPI "$MRISAM" finetune $C -o "$T/u" > "$T/u.log" 2>&1
check $? "uninterrupted 2-rank run"
MRISAM_TEST_STOP="$K,$R" $MPI "$MRISAM" finetune $C -o "$T/i" > "$T/i.log" 2>&1
rc=$?
[ $rc -eq 75 ]
check $? "stopped run exits 75 (got $rc)"
stops=$(grep -o 'interrupted at step [0-9]* (resumable)' "$T/i.log" | sort | uniq -c | tr -s ' ')
[ "$(grep -c "interrupted at step $S (resumable)" "$T/i.log")" = 2 ]
check $? "both ranks stopped after step $S ($stops)"
[ -f "$T/i/ckpt/$(printf step_%08d $S)/DONE" ]
check $? "checkpoint of step $S written ($(ls "$T/i/ckpt" | tr '\n' ' '))"
"$MRISAM" finetune $C --resume "$T/i" -o "$T/i" > "$T/r1.log" 2>&1
[ $? -eq 2 ] && grep -q "the run had 2 ranks and a global batch of 4, this one 1 ranks and 2: give --batch-size 4" "$T/r1.log"
check $? "a resume on 1 process with another global batch is refused, exit 2 ($(grep -o 'the run had.*' "$T/r1.log"))"
cp -r "$T/i" "$T/i1"
"$MRISAM" finetune ${C/--batch-size 2/--batch-size 4} --resume "$T/i1" -o "$T/i1" > "$T/r1b.log" 2>&1
check $? "a resume on 1 process with the global batch (--batch-size 4) runs"
$MPI "$MRISAM" finetune $C --resume "$T/i" -o "$T/i" > "$T/r.log" 2>&1
check $? "2-rank resume ($(grep -o 'resuming from [^ ]*' "$T/r.log"))"
same=0
for f in ckpt/step_00000006/model.safetensors ckpt/step_00000006/optim.safetensors best/model.safetensors; do
    cmp -s "$T/u/$f" "$T/i/$f" || { echo "differs: $f"; same=1; }
done
check $same "resumed run: final model, optimizer state and best/ bit-identical to the uninterrupted run"
$PY - "$T/u/log.jsonl" "$T/i/log.jsonl" <<'PYEND'
import json, sys
def seq(p):
    d = {}
    for j in map(json.loads, open(p)):
        d[(j["split"], j["step"])] = (j["loss"], j.get("grad_norm"), j.get("dice"))  # a resume rewrites what followed
    return d
a, b = seq(sys.argv[1]), seq(sys.argv[2])
same = a == b and len(a) == 9
print(("ok" if same else "FAIL") + ": loss sequence after stop + resume is bit-identical (%d lines)" % len(a))
sys.exit(0 if same else 1)
PYEND
check $? "bit-exact resume of the loss sequence"
$PY - "$T/u/ckpt/step_00000006/model.safetensors" "$T/i1/ckpt/step_00000006/model.safetensors" <<'PYEND'
import json, struct, sys
import numpy as np
def flat(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return np.concatenate([np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], "<f4")
                           .astype(np.float64) for k, v in sorted(h.items()) if k != "__metadata__"])
a, b = flat(sys.argv[1]), flat(sys.argv[2])
r = np.linalg.norm(a - b) / np.linalg.norm(a)
print(("ok" if r <= 1e-4 else "FAIL") + ": resumed on 1 process: relative L2 %.3g from the 2-rank run (<= 1e-4)" % r)
sys.exit(0 if r <= 1e-4 else 1)
PYEND
check $? "stopped on 2 ranks, resumed on 1 with the same global batch: the parameters of the 2-rank run"

# 3: ZeRO-1
$MPI "$MRISAM" finetune $C --zero1 -o "$T/z" > "$T/z.log" 2>&1
check $? "2 ranks with --zero1"
same=0
for f in ckpt/step_00000006/model.safetensors best/model.safetensors; do
    cmp -s "$T/u/$f" "$T/z/$f" || { echo "differs: $f"; same=1; }
done
check $same "--zero1: final model and best/ bit-identical to the plain 2-rank run"
[ -f "$T/z/ckpt/step_00000006/optim.rank000-of-002.safetensors" ] &&
    [ -f "$T/z/ckpt/step_00000006/optim.rank001-of-002.safetensors" ] && [ ! -e "$T/z/ckpt/step_00000006/optim.safetensors" ]
check $? "--zero1: one optimizer shard per rank in the checkpoint"
MRISAM_TEST_STOP="$K,$R" $MPI "$MRISAM" finetune $C --zero1 -o "$T/zi" > "$T/zi.log" 2>&1
rc=$?
$MPI "$MRISAM" finetune $C --zero1 --resume "$T/zi" -o "$T/zi" > "$T/zr.log" 2>&1 &&
    cmp -s "$T/u/ckpt/step_00000006/model.safetensors" "$T/zi/ckpt/step_00000006/model.safetensors"
check $? "--zero1 stopped (exit $rc) and resumed: final model bit-identical to the uninterrupted run"

echo "test_finetune_mpi: $(( $(date +%s) - t0 )) s"
exit $fail
