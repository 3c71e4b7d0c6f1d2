#!/usr/bin/env bash
# tools/bench/bench_dist.sh — data-parallel pretrain on the CPU: one process with the global batch against 2 MPI
# ranks with half of it each, plain and with --zero1, on the same cores, side by side in one run
# (docs/DISTRIBUTED.md §Measured).
# Usage: tools/bench/bench_dist.sh [MRISAM] [--model vit_test|vit_b] [--input N] [--steps N] [--batch GLOBAL] [--reps R]
# Each configuration runs R times (default 2), alternating; the table gives every run's img/s (log.jsonl at the last
# step) and, for the 2-rank runs, rank 0's wait for the gradient reductions after the backward.
set -euo pipefail
MRISAM=${1:-build/mrisam}
[ $# -gt 0 ] && shift
MODEL=vit_test INPUT=256 STEPS=20 GB=8 REPS=2
while [ $# -gt 0 ]; do
  case $1 in
    --model) MODEL=$2; shift 2 ;; --input) INPUT=$2; shift 2 ;; --steps) STEPS=$2; shift 2 ;;
    --batch) GB=$2; shift 2 ;; --reps) REPS=$2; shift 2 ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "bench_dist.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
TPL=${MS_MRICRON_TEMPLATES:-/usr/share/mricron/templates}
NC=$(nproc)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export OMP_WAIT_POLICY=passive OMPI_MCA_btl_vader_single_copy_mechanism=none
"$MRISAM" ingest "$TPL/ch2.nii.gz" --axis axial -o "$T/store" > /dev/null
A="--store $T/store --init random --model $MODEL --input-size $INPUT --decoder-dim 128 --decoder-depth 2
   --decoder-heads 4 --lr 1e-3 --val-slices 0 --save-every 100000 --max-steps $STEPS --warmup-steps 1 --seed 1"
MPI="mpirun --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS"
rate() { grep "\"step\": $STEPS," "$1/log.jsonl" | grep -o '"img_per_s": [0-9.]*' | cut -d' ' -f2; }
echo "$MODEL at $INPUT, global batch $GB, $STEPS steps, $NC cores ($(lscpu | sed -n 's/^Model name: *//p'))"
echo
echo "| run | configuration | img/s | rank 0 waiting for reductions |"
echo "|---|---|---|---|"
for r in $(seq 1 "$REPS"); do
  rm -rf "$T"/r*
  OMP_NUM_THREADS=$NC "$MRISAM" pretrain $A --batch-size "$GB" --threads "$NC" -o "$T/r1" > /dev/null
  echo "| $r | 1 process, $NC threads, batch $GB | $(rate "$T/r1") | |"
  for z in "" --zero1; do
    w=$(OMP_NUM_THREADS=$((NC / 2 > 0 ? NC / 2 : 1)) $MPI "$MRISAM" pretrain $A --batch-size $((GB / 2)) \
        --threads $((NC / 2 > 0 ? NC / 2 : 1)) $z -o "$T/r2$z" | tr '\r' '\n' | sed -n 's/.*waited \([0-9.]* s\) .*(\([0-9.]* %\) of.*/\1 (\2)/p')
    echo "| $r | 2 ranks x $((NC / 2 > 0 ? NC / 2 : 1)) threads, batch $((GB / 2)) each${z:+, $z} | $(rate "$T/r2$z") | $w |"
  done
done
