# The value→class rule of a store's PNG masks (#16 item 2), on random masks: 0/255, 0/254/255, anti-aliased and
# 16-bit binary masks together become classes {0,1} with a warning counting the pixels neither 0 nor the maximum;
# small-integer masks keep their ids; the rule is recorded and a rerun that would change it is refused; a store of
# ids keeps 255 as 255 (warned); --label-threshold and --label-map read the masks' own values; inspect's class
# pixel counts.
source "$MS_SOURCE_DIR/tests/data/common.sh"
D=$T/m
check $PY "$HERE/mask_rule.py" gen "$D" "$SEED"
between=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["between"])' "$D/expect.json")
n254=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["n254"])' "$D/expect.json")
# a 0/255 file and a 0/254/255 file: classes {0,1}, the warning counts the 254 pixels
$M ingest --labels "$D/pair.csv" --keep-paths -o "$T/pair.store" 2>"$T/err0"; rc=$?
check test $rc -eq 0
check grep -q "warning: PNG masks read as binary .*: $n254 pixels in 2 masks were neither 0 nor 255" "$T/err0"
check $PY "$HERE/mask_rule.py" labels "$T/pair.store" binary
$M inspect "$T/pair.store" --no-volumes >"$T/insp0" || bad "inspect pair.store"
check grep -q "^classes  2 " "$T/insp0"
check $PY "$HERE/mask_rule.py" counts "$T/pair.store" "$T/insp0"
# binary masks: one rule for the store, warned with the count of in-between pixels
$M ingest --labels "$D/bin.csv" --keep-paths -o "$T/bin.store" 2>"$T/err"; rc=$?
cat "$T/err"
check test $rc -eq 0
check grep -q "warning: PNG masks read as binary .*: $between pixels in 4 masks were neither 0 nor 255" "$T/err"
check $PY "$HERE/mask_rule.py" labels "$T/bin.store" binary
check $PY "$HERE/check_store.py" "$T/bin.store"
$M inspect "$T/bin.store" >"$T/insp" || bad "inspect bin.store"
check grep -q '^label_rule {"png_masks":"binary"}' "$T/insp"
check $PY "$HERE/mask_rule.py" counts "$T/bin.store" "$T/insp"
# small integers: class ids as they are
check $M ingest --labels "$D/ids.csv" --keep-paths -o "$T/ids.store" --quiet
check $PY "$HERE/mask_rule.py" labels "$T/ids.store" ids
$M inspect "$T/ids.store" --no-volumes >"$T/insp2" || bad "inspect ids.store"
check grep -q '^label_rule {"png_masks":"ids"}' "$T/insp2"
check $PY "$HERE/mask_rule.py" counts "$T/ids.store" "$T/insp2"
# a rerun whose masks would turn the binary store into class ids: refused, nothing added
n0=$($PY -c 'import sys; sys.path.insert(0, sys.argv[2]); from storelib import Store; print(len(Store(sys.argv[1]).volumes()))' "$T/bin.store" "$HERE")
$M ingest --labels "$D/ids.csv" -o "$T/bin.store" 2>"$T/err2"; rc=$?
cat "$T/err2"
check test $rc -eq 2
check grep -q "^mrisam ingest: $T/bin.store: the store's PNG masks are binary .*mk_ids[01].png holds [0-9]*, a class id" "$T/err2"
n1=$($PY -c 'import sys; sys.path.insert(0, sys.argv[2]); from storelib import Store; print(len(Store(sys.argv[1]).volumes()))' "$T/bin.store" "$HERE")
check test "$n0" = "$n1"
# binary masks into the store of ids: kept as ids (255 stays 255), warned
$M ingest --labels "$D/bin.csv" --keep-paths -o "$T/ids.store" 2>"$T/err3"; rc=$?
check test $rc -eq 0
check grep -q "warning: PNG masks kept as class ids" "$T/err3"
check $PY "$HERE/mask_rule.py" labels "$T/ids.store" ids
# --label-threshold reads the masks' own values (0/255 > 127 is 1)
check $M ingest --labels "$D/bin.csv" --label-threshold 127 --keep-paths -o "$T/thr.store" --quiet
check $PY "$HERE/mask_rule.py" labels "$T/thr.store" gt:127
# --label-map too: 254 and 255 → 1 on the pair (values 0, 254, 255: the same as value > 253)
printf 'value,class\n254,1\n255,1\n' >"$T/map.csv"
check $M ingest --labels "$D/pair.csv" --label-map "$T/map.csv" --keep-paths -o "$T/map.store" --quiet
check $PY "$HERE/mask_rule.py" labels "$T/map.store" gt:253
done_
