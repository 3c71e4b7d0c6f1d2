#!/usr/bin/env bash
# tests/finetune/test_store_norm.sh — a store read with another intensity normalisation than ingest chose, without a
# new ingest (data/store_norm.h; pretrain/finetune --intensity; eval follows the model's meta.json). Three noisy int16
# volumes with label blobs (norm_check.py gen, seeded) are ingested with the default percentile norm (store P) and
# with --norm none (store N). Checks:
#  a. every slice of P read as it is, and with zscore, none and a percentile pair drawn from the kept grid, equals
#     the reference norm_check.py computes from the source NIfTI (numpy percentiles of the nonzero stored values,
#     floor(65535·clip((s−off)/sc,0,1)+0.5)); P read with none equals N read as it is;
#  b. finetune --store P --intensity none (2 steps) writes meta.json preprocess intensity "none" and config.json
#     "intensity"; its model equals the one trained on N byte for byte; with non-trivial weights (ft_check.py
#     reweight), eval of it on P equals eval on N and predict + eval --pred/--gt on the sources (predict follows
#     meta.json), and so does embed; a model trained with percentiles the stores do not keep is refused by eval on
#     P, one line;
#  c. refusals, one line naming the store: a percentile off the grid (driver, finetune), a layout-1 store
#     (norm_check.py v1: P rewritten as layout 1 from docs/FORMATS.md) for the driver, finetune, pretrain, and eval
#     and embed of the --intensity none model; usage errors (exit 2) for a bad word and percentiles with zscore;
#  d. --resume with another --intensity (or none given) is refused, pretrain and finetune; the same one continues.
set -u
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
MRISAM=${MS_MRISAM:-mrisam}
DRV=${1:-store_norm_driver}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
NC="$SRC/tests/finetune/norm_check.py"
$PY -c "import torch, numpy, nibabel, lmdb, zstandard" 2>/dev/null || { echo "skip: no torch/numpy/nibabel/lmdb"; exit 77; }
SEED=${MS_TEST_SEED:-$(( $(date +%s%N) % 100000 ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
fail=0
t0=$(date +%s)
check() { if [ "$1" -ne 0 ]; then echo "FAIL: $2"; fail=1; else echo "ok: $2"; fi; }
# exit status $1 (want), one stderr line matching $2, in file $3
refused() { [ "$1" -eq "$4" ] && [ "$(wc -l < "$3")" -eq 1 ] && grep -q -- "$2" "$3"; }
M() { "$MRISAM" "$@" --threads 2; }

$PY "$NC" gen . "$SEED" || exit 1
M ingest --labels pairs.csv -o P --keep-paths --keep-empty --quiet || { echo "FAIL: ingest P"; exit 1; }
M ingest --labels pairs.csv -o N --norm none --keep-paths --keep-empty --quiet || { echo "FAIL: ingest N"; exit 1; }

# a: pixels against the reference; a percentile pair drawn from the kept grid
GRID=(0 0.1 0.25 0.5 1 2 5 10 25 50 75 90 95 98 99 99.5 99.75 99.9 100)
i=$(( SEED % 18 )); j=$(( i + 1 + (SEED / 18) % (18 - i) ))
LO=${GRID[$i]}; HI=${GRID[$j]}
for spec in "own percentile 0.5 99.5" "zscore zscore 0 0" "none none 0 0" "percentile percentile $LO $HI"; do
    set -- $spec
    "$DRV" P "$1" "$3" "$4" "px_$1.bin" 2> drv.err
    check $? "driver reads P with $1 $3 $4 ($(head -c 200 drv.err))"
    $PY "$NC" pixels P "px_$1.bin" "$2" "$3" "$4" || fail=1
done
"$DRV" N own 0 0 n_own.bin && cmp -s n_own.bin px_none.bin
check $? "P read with none == N (ingested with --norm none) read as it is"

# b: finetune --intensity none; eval and predict follow the model
FT="--init random --model vit_test --warmup-steps 1 --val-slices 1 --batch-size 2 --method full --scope decoder
    --max-steps 2"
M finetune --store P $FT --intensity none -o run_o > run_o.log 2>&1
check $? "finetune --store P --intensity none"
M finetune --store N $FT -o run_n > run_n.log 2>&1
check $? "finetune --store N"
$PY "$NC" meta run_o none || fail=1
grep -q '"intensity":[[:space:]]*"none"' run_o/config.json && ! grep -q '"intensity"' run_n/config.json
check $? "config.json records --intensity only when given"
cmp -s run_o/best/model.safetensors run_n/best/model.safetensors
check $? "the model trained on P read with none == the model trained on N"
$PY "$SRC/tests/finetune/ft_check.py" reweight run_o/best $(( SEED % 97 + 1 )) > /dev/null || fail=1
M eval --ckpt run_o/best --store P --all --no-hd95 -o e_P > /dev/null 2>&1
check $? "eval --store P"
M eval --ckpt run_o/best --store N --all --no-hd95 -o e_N > /dev/null 2>&1
check $? "eval --store N"
# the batch size of eval's encoder (a batch of another size can flip a near-tie in the argmax)
M predict --ckpt run_o/best --in in -o pred --batch-size 4 > /dev/null 2>&1 && M eval --pred pred --gt lab --no-hd95 -o e_pred > /dev/null
check $? "predict + eval --pred/--gt"
cmp -s e_P/per_volume.csv e_N/per_volume.csv && cmp -s e_P/per_volume.csv e_pred/per_volume.csv &&
    $PY -c "import csv,sys; sys.exit(0 if any(float(r['dice']) > 0 for r in csv.DictReader(open('e_P/per_volume.csv'))) else 1)"
check $? "eval of the none model: store P == store N == predict on the sources, Dice not all 0 ($(tail -n +2 e_P/per_volume.csv | tr '\n' ' '))"
M embed --ckpt run_o/best --store P --key 3 -o emb_P.npy > /dev/null 2>&1 &&
    M embed --ckpt run_o/best --store N --key 3 -o emb_N.npy > /dev/null 2>&1 && cmp -s emb_P.npy emb_N.npy
check $? "embed of a slice with the none model: store P == store N"
M ingest --labels pairs.csv -o Q --percentile-low 1.5 --keep-paths --keep-empty --quiet &&
    M finetune --store Q $FT --max-steps 1 -o run_q > run_q.log 2>&1
check $? "a store with percentiles 1.5..99.5, and a model trained on it"
M eval --ckpt run_q/best --store P --all -o e_q > /dev/null 2> e_q.err
refused $? "^mrisam eval: P: percentiles 1.5, 99.5: .*(run_q/best was trained on intensity percentile 1.5..99.5" \
    e_q.err 1 && [ ! -e e_q/per_volume.csv ]
check $? "eval refuses a store without the model's percentiles ($(cat e_q.err))"

# c: refusals
$PY "$NC" v1 P V1 && M verify V1 > /dev/null
check $? "P rewritten as a layout-1 store V1, verified"
"$DRV" V1 own 0 0 v1_own.bin && cmp -s v1_own.bin px_own.bin
check $? "V1 reads as P"
"$DRV" V1 none 0 0 x.bin 2> e.txt
refused $? "^V1: a layout-1 store keeps its pixels normalised at ingest" e.txt 1
check $? "layout 1 refused by the store ($(cat e.txt))"
"$DRV" P percentile 1.5 99 x.bin 2> e.txt
refused $? "^P: percentiles 1.5, 99: the store keeps 0, 0.1," e.txt 1
check $? "a percentile off the grid refused ($(cat e.txt))"
M finetune --store P $FT --intensity percentile --percentile-low 2.5 -o run_x > /dev/null 2> e.txt
refused $? "^mrisam finetune: P: percentiles 2.5, 99.5: .*new ingest" e.txt 2 && [ ! -e run_x ]
check $? "finetune --percentile-low 2.5 refused, no RUN/ ($(cat e.txt))"
M finetune --store V1 $FT --intensity zscore -o run_x > /dev/null 2> e.txt
refused $? "^mrisam finetune: V1: a layout-1 store" e.txt 1 && [ ! -e run_x ]
check $? "finetune --intensity on a layout-1 store refused ($(cat e.txt))"
PT="--init random --model vit_test --input-size 64 --batch-size 2 --decoder-dim 32 --decoder-depth 1 --decoder-heads 2
    --val-slices 2 --val-every 2 --save-every 1 --max-steps 2"
M pretrain --store V1 $PT --intensity none -o pt_x > /dev/null 2> e.txt
refused $? "^mrisam pretrain: V1: a layout-1 store" e.txt 1 && [ ! -e pt_x ]
check $? "pretrain --intensity on a layout-1 store refused ($(cat e.txt))"
M eval --ckpt run_o/best --store V1 --all -o e_v1 > /dev/null 2> e.txt
refused $? "^mrisam eval: V1: a layout-1 store .*(run_o/best was trained on intensity none, the store holds intensity percentile 0.5..99.5)" e.txt 1 && [ ! -e e_v1/per_volume.csv ]
check $? "eval of the none model on a layout-1 store refused ($(cat e.txt))"
M embed --ckpt run_o/best --store V1 --key 3 -o x.npy > /dev/null 2> e.txt
refused $? "^mrisam embed: V1: a layout-1 store .*(run_o/best was trained on intensity none" e.txt 1
check $? "embed of the none model on a layout-1 store refused ($(cat e.txt))"
M finetune --store P $FT --intensity bogus -o run_x > /dev/null 2> e.txt
refused $? "intensity: 'bogus' is not percentile, zscore or none" e.txt 2
check $? "--intensity bogus: usage error ($(cat e.txt))"
M pretrain --store P $PT --intensity zscore --percentile-high 99 -o pt_x > /dev/null 2> e.txt
refused $? "go with --intensity percentile" e.txt 2 && [ ! -e pt_x ]
check $? "percentiles with zscore: usage error ($(cat e.txt))"

# d: resume
M pretrain --store P $PT --intensity zscore -o pt > pt.log 2>&1
check $? "pretrain --intensity zscore"
grep -q '"intensity":[[:space:]]*"zscore"' pt/config.json
check $? "pretrain config.json records the intensity"
for other in "--intensity none" "" "--percentile-low 1"; do
    M pretrain --store P $PT $other --resume pt > /dev/null 2> e.txt
    refused $? "config.json: the run read its stores with intensity zscore, not .*--resume" e.txt 2
    check $? "pretrain --resume with '${other:-no --intensity}' refused ($(cat e.txt))"
done
M pretrain --store P $PT --intensity zscore --resume pt > pt_r.log 2>&1 && grep -q "resuming from" pt_r.log
check $? "pretrain --resume with the same --intensity continues"
M finetune --store P $FT --save-every 1 --intensity zscore -o ft > ft.log 2>&1
check $? "finetune --intensity zscore"
$PY "$NC" meta ft zscore || fail=1
M finetune --store P $FT --save-every 1 --intensity none --resume ft > /dev/null 2> e.txt
refused $? "options differ" e.txt 2
check $? "finetune --resume with another --intensity refused ($(cat e.txt))"
M finetune --store P $FT --save-every 1 --intensity zscore --resume ft > ft_r.log 2>&1
check $? "finetune --resume with the same --intensity"

echo "time: $(( $(date +%s) - t0 )) s"
if [ $fail -ne 0 ]; then echo "test_store_norm: FAILED"; exit 1; fi
echo "test_store_norm: passed"
