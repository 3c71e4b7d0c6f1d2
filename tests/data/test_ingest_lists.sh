# finetune-SAM's train/val lists as they ship (#16 item 1): paths relative to --image-root, mask paths with a
# leading "/", comma or tab, CRLF, a header or not (drawn by seed, fsam_lists.py); --val-labels writes
# STORE/split.json whose ranges are the listed rows' keys in list order; finetune --split trains and validates on
# exactly them; a rerun rewrites the same file; a row in both lists is refused.
source "$MS_SOURCE_DIR/tests/data/common.sh"
R=$T/root
check $PY "$HERE/fsam_lists.py" gen "$R" "$SEED"
L="--labels $R/ds/train.csv --val-labels $R/ds/val.csv --image-root $R"
$M ingest $L --keep-paths -o "$T/a.store" 2>"$T/err"; rc=$?
cat "$T/err"
check test $rc -eq 0
check grep -q "split file $T/a.store/split.json: train" "$T/err"
check grep -q "train.csv:[0-9]*: warning: the same image and mask as line" "$T/err"
check $PY "$HERE/fsam_lists.py" check "$T/a.store" "$R"
check $PY "$HERE/check_store.py" "$T/a.store"
# a rerun skips every row and writes the same split file
cp "$T/a.store/split.json" "$T/split0.json"
$M ingest $L --keep-paths -o "$T/a.store" 2>"$T/err2"; rc=$?
check test $rc -eq 0
check grep -q " 0 ingested, " "$T/err2"
check cmp -s "$T/split0.json" "$T/a.store/split.json"
# without --keep-paths: the same keys (rows are found by content hash, not by name)
check $M ingest $L -o "$T/b.store" --quiet
check $PY "$HERE/fsam_lists.py" same "$T/a.store/split.json" "$T/b.store/split.json"
# finetune --split trains and validates on exactly these slices (RUN/shots.json is the split as used)
check $M finetune --store "$T/b.store" --split "$T/b.store/split.json" --init random --model vit_test --method full \
    --scope decoder --max-steps 1 --batch-size 2 --threads 1 -o "$T/run"
check $PY "$HERE/fsam_lists.py" same "$T/b.store/split.json" "$T/run/shots.json"
# a row in both lists: refused by line, no split file; the rows are stored all the same
tail -n 1 "$R/ds/train.csv" >"$T/val2.csv"
$M ingest --labels "$R/ds/train.csv" --val-labels "$T/val2.csv" --image-root "$R" -o "$T/c.store" 2>"$T/err3"; rc=$?
check test $rc -eq 1
check grep -q "val2.csv:1: the same image and mask as .*train.csv:[0-9]*: a slice cannot both train and validate" "$T/err3"
check test ! -e "$T/c.store/split.json"
# without --image-root the old rule holds: paths relative to the list's folder (here: not found, named)
$M ingest --labels "$R/ds/train.csv" -o "$T/d.store" 2>"$T/err4"; rc=$?
check test $rc -eq 1
check grep -q "^$R/ds/ds/images/.*No such file" "$T/err4"
check grep -q "train.csv:[0-9]*: warning: .* not found (paths are relative to the list's folder; finetune-SAM's lists are relative to its -img_folder: give it as --image-root DIR)" "$T/err4"
# usage: --val-labels needs a CSV --labels
$M ingest --val-labels "$R/ds/val.csv" -o "$T/e.store" 2>/dev/null; rc=$?
check test $rc -eq 2
done_
