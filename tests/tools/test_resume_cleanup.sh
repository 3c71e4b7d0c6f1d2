#!/usr/bin/env bash
# tests/tools/test_resume_cleanup.sh — `--resume RUN` leaves RUN/ as an uninterrupted run leaves it, whatever a
# SIGKILL left behind (what the kill campaign, tools/reliability/kill_campaign.sh, found):
#  - a prune stopped half-way: an old step directory still holding DONE but no longer its weights (before the fix
#    ms_ckpt_dir_prune removed DONE in directory order; now first), an incomplete one (no DONE), and a complete one
#    beyond --keep-last (a kill between a checkpoint's DONE and the prune): the resume prunes them, even when it
#    writes no further checkpoint (a run killed after its last one);
#  - the temporaries "<file>.tmp.<pid>" of a killed write (the export, log.jsonl, a val/ panel) and best.tmp/.
# The resumed RUN/ must equal the uninterrupted run's byte for byte (tools/reliability/compare_runs.py: log.jsonl
# without t and img_per_s, tb/ aside, and no leftovers). Which old steps and which temporaries are drawn (seeded).
set -u
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
M=${MS_MRISAM:?run through ctest}
SRC=${MS_SOURCE_DIR:?run through ctest}
PY=/usr/bin/python3
T=${MS_BINARY_DIR:?}/tests/tmp_test_resume_cleanup
rm -rf "$T" && mkdir -p "$T"
SEED=${MS_TEST_SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
$PY -c 'import nibabel, numpy' 2>/dev/null || { echo "skip: python3-nibabel missing"; exit 77; }
FAIL=0
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
R=$SEED
# D = a draw in [0, $1) (in this shell: R carries on)
draw() { R=$(( (R * 1103515245 + 12345) % 2147483648 )); D=$(( R % $1 )); }
$PY "$SRC/tools/reliability/make_data.py" "$T" "$SEED" --small || exit 1
"$M" ingest "$T/in" -o "$T/store" --quiet || bad "ingest"
"$M" ingest --labels "$T/ft/pairs.csv" --axis axial -o "$T/lstore" --quiet || bad "ingest --labels"
PRE="pretrain --store $T/store --init random --model vit_test --input-size 64 --batch-size 2 --decoder-dim 32
     --decoder-depth 1 --decoder-heads 2 --lr 1e-3 --val-slices 2 --val-every 2 --save-every 2 --keep-last 2
     --max-steps 6 --threads 2 --seed 5"
FT="finetune --store $T/lstore --init random --model vit_test --input-size 64 --method full --scope decoder --shots 4
    --batch-size 2 --max-steps 6 --warmup-steps 1 --lr 3e-3 --val-every 1 --val-slices 2 --save-every 2 --keep-last 2
    --seed 3 --threads 2 --cache-embeddings"
for cmd in "$PRE" "$FT"; do
    name=${cmd%% *}
    ref=$T/${name}_ref
    run=$T/$name
    "$M" $cmd -o "$ref" > "$T/ref.log" 2>&1 || { bad "$name: the reference run: $(tail -n 1 "$T/ref.log")"; continue; }
    cp -a "$ref" "$run"
    last=$(ls -d "$run"/ckpt/step_* | tail -n 1)
    # the old steps 1..3 (the run kept 4 and 6): what a stopped prune and a kill before the prune leave
    draw 3
    half=$(printf '%s/ckpt/step_%08d' "$run" $((1 + D)))
    cp -a "$last" "$half"
    rm "$half/model.safetensors" # DONE without the weights: the old prune's order
    old=$(printf '%s/ckpt/step_%08d' "$run" $(( $(basename "$half" | sed 's/step_0*//') % 3 + 1 )))
    cp -a "$last" "$old"
    draw 2
    [ $D = 1 ] && rm "$old/DONE" # incomplete, or complete beyond --keep-last
    # temporaries of killed writes, and a staged best/
    files="config.json log.jsonl val/$(ls "$run/val" | head -n 1) sam_mri_vit_test.pth"
    [ "$name" = finetune ] && files="config.json log.jsonl val/$(ls "$run/val" | head -n 1) shots.json"
    for f in $files; do
        draw 30000
        [ $((D % 2)) = 1 ] && head -c 1000 /dev/zero > "$run/$f.tmp.$((1000 + D))"
    done
    [ "$name" = finetune ] && cp -a "$run/best" "$run/best.tmp"
    echo "$name: RUN/ before the resume: $(cd "$run" && find . -path ./tb -prune -o -type f -print | grep -E 'tmp|step_0000000[123]' | sort | tr '\n' ' ')"
    "$M" $cmd --resume "$run" -o "$run" > "$T/resume.log" 2>&1 || bad "$name: --resume: $(tail -n 1 "$T/resume.log")"
    $PY "$SRC/tools/reliability/compare_runs.py" "$ref" "$run" || bad "$name: the resumed RUN/ differs from the uninterrupted run's"
done
echo "test_resume_cleanup: $([ $FAIL -eq 0 ] && echo all passed || echo "$FAIL failed")"
[ $FAIL -eq 0 ]
