#!/usr/bin/env bash
# tests/pretrain/test_pretrain_mpi.sh — data-parallel `mrisam pretrain` over MPI on the CPU backend
# (docs/DISTRIBUTED.md), vit_test at input 64 on a store of mricron's ch2:
#  1. 2 ranks x batch B end with the parameters of 1 process x batch 2B (the export, every tensor, to float
#     rounding as AdamW amplifies it: the sum over ranks adds in another order) and log the same training losses
#     and gradient norms; small buckets, so most of them start during the backward. (Validation runs in chunks of the per-rank batch, and its loss depends a
#     little on the chunking, so val lines are not compared.)
#  2. a stop asked of one rank only (MRISAM_TEST_STOP=STEP,RANK) stops both after the same step with a checkpoint
#     (exit 75), and --resume finishes with the parameters of an uninterrupted 2-rank run, bit for bit;
#  3. ZeRO-1 (--zero1: each rank keeps the AdamW state of its part) ends bit for bit as the plain 2-rank run, its
#     checkpoints hold one optimizer shard per rank; stopped, it resumes on 2 ranks bit for bit and on 1 process
#     (batch 2B, no --zero1) to float rounding, the shards read back as the whole state;
#  4. a non-finite loss on one rank only (MRISAM_TEST_NAN=STEP,1,RANK) skips the step on both, and the run goes on
#     (that rank ran no backward, so its gradient buckets all start after it: the same collectives in the same order);
#  5. a rank stopped with SIGSTOP makes the job fail within --dist-timeout (10 s) with the one-line message,
#     never a hang.
set -u
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1
MRISAM=${MS_MRISAM:-mrisam}
PY=/usr/bin/python3
TPL=${MS_MRICRON_TEMPLATES:-/usr/share/mricron/templates}
MPIRUN="mpirun --allow-run-as-root --oversubscribe -np 2"
SEED=${MS_TEST_SEED:-$(( $(date +%s%N) % 100000 ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
check() { if [ "$1" -ne 0 ]; then echo "FAIL: $2"; fail=1; else echo "ok: $2"; fi; }

"$MRISAM" ingest "$TPL/ch2.nii.gz" --axis axial -o "$T/store" > "$T/ingest.log" 2>&1
check $? "ingest ch2"
B=$(( SEED % 2 + 1 ))  # per-rank batch 1 or 2
A="--store $T/store --init random --model vit_test --input-size 64 --decoder-dim 32 --decoder-depth 1
   --decoder-heads 2 --lr 1e-3 --val-slices 2 --val-every 3 --save-every 2 --keep-last 2 --max-steps 6 --threads 1
   --seed $SEED"

# 1: 2 ranks x B == 1 process x 2B
"$MRISAM" pretrain $A --batch-size $((2 * B)) -o "$T/one" > "$T/one.log" 2>&1
check $? "one process, batch $((2 * B))"
$MPIRUN "$MRISAM" pretrain $A --batch-size $B --bucket-mb 0.05 -o "$T/two" > "$T/two.log" 2>&1
check $? "2 ranks, batch $B each (exit $?: $(tail -n 3 "$T/two.log" | tr '\n' ' '))"
grep -q "2 ranks, batch $B per rank, global batch $((2 * B))" "$T/two.log"
check $? "the plan names ranks, per-rank and global batch"
cmp_pth() { # A.pth B.pth TOL: every tensor of A and B within TOL (absolute)
  "$PY" - "$1" "$2" "$3" <<'EOF'
import sys, torch
a, b, tol = torch.load(sys.argv[1]), torch.load(sys.argv[2]), float(sys.argv[3])
assert a.keys() == b.keys(), "different tensors"
worst, name = 0.0, ""
for k in a:
    d = (a[k].double() - b[k].double()).abs().max().item()
    if d > worst: worst, name = d, k
print(f"  {len(a)} tensors, largest difference {worst:.3g} ({name})")
sys.exit(0 if worst <= tol else 1)
EOF
}
# AdamW divides by the gradient's running RMS, so for elements whose gradient is near zero a difference in the last
# bits of the summed gradient moves the update visibly: the bound is 2 % of the most any element can move in 6
# steps at lr 1e-3 (6e-3). Adam hides a wrong gradient scale, so the logged gradient norm is compared too.
cmp_pth "$T/one/sam_mri_vit_test.pth" "$T/two/sam_mri_vit_test.pth" 1.2e-4
check $? "2 ranks x $B give the parameters of 1 process x $((2 * B)) (within 1.2e-4)"
"$PY" - "$T/one/log.jsonl" "$T/two/log.jsonl" <<'EOF'
import json, sys
def losses(p):
    return [(j["step"], j["loss"], j["grad_norm"]) for j in map(json.loads, open(p)) if j.get("split") == "train"]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert len(a) == len(b) == 6, (len(a), len(b))
for x, y in zip(a, b):
    assert x[0] == y[0] and abs(x[1] - y[1]) <= 1e-5 * (1 + abs(x[1])), (x, y)
    assert abs(x[2] - y[2]) <= 1e-4 * abs(x[2]), ("grad_norm", x, y)
print(f"  {len(a)} training lines agree (loss, gradient norm)")
EOF
check $? "the same training losses and gradient norms in log.jsonl"
[ "$(ls "$T/two" | sort | tr '\n' ' ')" = "$(ls "$T/one" | sort | tr '\n' ' ')" ]
check $? "RUN/ holds what a one-process run holds (rank 1 wrote nothing of its own)"

# 2: one rank asked to stop; both stop after the same step; the resume ends as the uninterrupted run
MRISAM_TEST_STOP="3,1" $MPIRUN -x MRISAM_TEST_STOP "$MRISAM" pretrain $A --batch-size $B -o "$T/stop" \
  > "$T/stop.log" 2>&1
rc=$?
[ $rc -ne 0 ] && grep -q "interrupted at step 4; checkpoint written" "$T/stop.log" && [ -f "$T/stop/ckpt/step_00000004/DONE" ] \
  && [ "$(grep -c 'interrupted at step 4 (resumable)' "$T/stop.log")" = 2 ]
check $? "a stop asked of rank 1 after step 3 stops both ranks after step 4 with a checkpoint (exit $rc)"
$MPIRUN "$MRISAM" pretrain $A --batch-size $B --resume "$T/stop" > "$T/resume.log" 2>&1
check $? "the resume finishes"
$MPIRUN "$MRISAM" pretrain $A --batch-size $B -o "$T/straight" > "$T/straight.log" 2>&1
check $? "an uninterrupted 2-rank run"
cmp "$T/stop/sam_mri_vit_test.pth" "$T/straight/sam_mri_vit_test.pth" >/dev/null \
  || cmp_pth "$T/stop/sam_mri_vit_test.pth" "$T/straight/sam_mri_vit_test.pth" 0
check $? "stopped and resumed equals uninterrupted, bit for bit"

# 3: ZeRO-1
$MPIRUN "$MRISAM" pretrain $A --batch-size $B --zero1 -o "$T/zero" > "$T/zero.log" 2>&1
check $? "2 ranks with --zero1"
cmp "$T/zero/sam_mri_vit_test.pth" "$T/straight/sam_mri_vit_test.pth"
check $? "--zero1 ends bit for bit as the plain 2-rank run"
[ -f "$T/zero/ckpt/step_00000006/optim.rank000-of-002.safetensors" ] \
  && [ -f "$T/zero/ckpt/step_00000006/optim.rank001-of-002.safetensors" ] \
  && [ ! -e "$T/zero/ckpt/step_00000006/optim.safetensors" ] && grep -q '"zero_world": 2' "$T/zero/ckpt/step_00000006/state.json"
check $? "a --zero1 checkpoint holds one optimizer shard per rank"
MRISAM_TEST_STOP="2,0" $MPIRUN -x MRISAM_TEST_STOP "$MRISAM" pretrain $A --batch-size $B --zero1 -o "$T/zstop" \
  > "$T/zstop.log" 2>&1
[ $? -ne 0 ] && [ -f "$T/zstop/ckpt/step_00000003/DONE" ]
check $? "a --zero1 run stopped after step 3"
cp -r "$T/zstop" "$T/zstop1"
$MPIRUN "$MRISAM" pretrain $A --batch-size $B --zero1 --resume "$T/zstop" > "$T/zres.log" 2>&1 \
  && cmp "$T/zstop/sam_mri_vit_test.pth" "$T/zero/sam_mri_vit_test.pth"
check $? "resumed on 2 ranks with --zero1: bit for bit the uninterrupted run"
"$MRISAM" pretrain $A --batch-size $((2 * B)) --resume "$T/zstop1" > "$T/zres1.log" 2>&1 \
  && cmp_pth "$T/zstop1/sam_mri_vit_test.pth" "$T/zero/sam_mri_vit_test.pth" 1.2e-4
check $? "resumed in one process (batch $((2 * B)), whole AdamW state from the 2 shards): the same parameters"

# 4: one rank's loss is not finite
NANR=$(( SEED % 2 ))
MRISAM_TEST_NAN="3,1,$NANR" $MPIRUN -x MRISAM_TEST_NAN "$MRISAM" pretrain $A --batch-size $B --dist-timeout 20 \
  -o "$T/nan" > "$T/nan.log" 2>&1
rc=$?
[ $rc -eq 0 ] && grep -q '"step": 6,.*"skipped": 1,' "$T/nan/log.jsonl" && [ "$(grep -c 'step skipped' "$T/nan.log")" = 1 ]
check $? "a non-finite loss on rank $NANR alone skips step 3 on both ranks, the run finishes (exit $rc)"

# 5: SIGSTOP on rank 1: rank 0 gives up within --dist-timeout 10 s and the job ends
$MPIRUN "$MRISAM" pretrain ${A/--max-steps 6/--max-steps 100000} --batch-size $B --dist-timeout 10 \
  --save-every 100000 -o "$T/hang" > "$T/hang.log" 2>&1 &
job=$!
for _ in $(seq 1 300); do grep -q '"step": 2,' "$T/hang/log.jsonl" 2>/dev/null && break; sleep 0.1; done
victim=""
for p in $(pgrep -f "mrisam pretrain"); do
  tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && victim=$p
done
[ -n "$victim" ]
check $? "found rank 1 (pid ${victim:-none})"
t0=$(date +%s)
[ -n "$victim" ] && kill -STOP "$victim"
for _ in $(seq 1 600); do kill -0 $job 2>/dev/null || break; sleep 0.1; done
if kill -0 $job 2>/dev/null; then
  check 1 "the job still runs 60 s after SIGSTOP on rank 1"
  kill -KILL $job ${victim:+$victim} 2>/dev/null
  wait $job
else
  wait $job
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  [ $rc -ne 0 ] && [ $dt -le 40 ] && grep -q "rank 0 of 2: .*no answer from the other ranks within 10 s (--dist-timeout)" "$T/hang.log"
  check $? "rank 0 failed within --dist-timeout with the message (exit $rc after ${dt}s: $(grep -m1 'no answer' "$T/hang.log"))"
fi
[ -n "$victim" ] && kill -KILL "$victim" 2>/dev/null
exit $fail
