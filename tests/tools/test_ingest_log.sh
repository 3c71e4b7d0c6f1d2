#!/usr/bin/env bash
# tests/tools/test_ingest_log.sh — `mrisam ingest --log FILE.jsonl` (docs/CLI.md) over a small realistic archive
# (tools/bench/gen_archive.py --small: every orientation, int16/uint16/float32, 4D and odd headers) with one broken
# file among the sources: one line per committed source and none for the failed one, each with every field; source
# indices, times and data.mdb sizes in order; volumes, slices and bytes equal to the summary, the files and the
# manifest. A rerun (everything skipped) appends nothing; a log that cannot be opened stops the run before the
# store exists. The archive's seed is the test's (printed).
source "$MS_SOURCE_DIR/tests/data/common.sh" # M, SRC, PY, T, SEED (printed), bad, done_
N=20 # 20 in a row hold one 4D volume and two odd headers
$PY "$SRC/tools/bench/gen_archive.py" "$T/in" --n $N --seed "$SEED" --small -j 2 || exit 1
head -c 3000 "$T/in/vol_000004.nii.gz" > "$T/in/vol_000004x.nii.gz" # truncated: fails, gets no line
"$M" ingest "$T/in" -o "$T/store" --threads 2 --log "$T/log.jsonl" 2> "$T/err.txt"
rc=$?
cat "$T/err.txt"
[ $rc -eq 1 ] || bad "ingest exit status $rc (1: a source failed)"
grep -q "vol_000004x.nii.gz" "$T/err.txt" || bad "the truncated file is not reported"
$PY - "$T" "$N" <<'PYEOF' || bad "log content"
import json, os, re, sys
import nibabel as nib, numpy as np
t, n = sys.argv[1], int(sys.argv[2])
err = open(f"{t}/err.txt").read()
m = re.search(r"ingest: (\d+) ingested, (\d+) skipped.*?; (\d+) volumes, (\d+) slices", err)
ingested, volumes, slices = int(m[1]), int(m[3]), int(m[4])
lines = [json.loads(s) for s in open(f"{t}/log.jsonl")]
ok = True
def check(c, msg):
    global ok
    if not c:
        ok = False
        print("FAIL:", msg)
check(ingested == n and len(lines) == ingested, f"{len(lines)} log lines, {ingested} ingested, {n} valid sources")
keys = {"t", "source", "volumes", "slices", "source_bytes", "voxel_bytes", "commit_ms", "mdb_bytes"}
for x in lines:
    check(set(x) == keys, f"fields {sorted(x)}")
for a, b in zip(lines, lines[1:]):
    check(a["source"] < b["source"], f"source {a['source']} then {b['source']}")
    check(a["t"] <= b["t"], f"t {a['t']} then {b['t']}")
    check(a["mdb_bytes"] <= b["mdb_bytes"], f"data.mdb {a['mdb_bytes']} then {b['mdb_bytes']}")
check(sum(x["volumes"] for x in lines) == volumes, "volumes differ from the summary's")
check(sum(x["slices"] for x in lines) == slices, "slices differ from the summary's")
check(all(x["commit_ms"] >= 0 and x["slices"] > 0 for x in lines), "a commit without time or slices")
check(lines[-1]["mdb_bytes"] <= os.path.getsize(f"{t}/store/data.mdb"), "data.mdb shrank")
# sources in walk order (sorted names); the broken one fails and has no line
names = sorted(f for f in os.listdir(f"{t}/in") if f.endswith(".nii.gz"))
logged = [names[x["source"]] for x in lines]
check("vol_000004x.nii.gz" not in logged, "a line for the failed source")
man = {e["file"]: e for e in json.load(open(f"{t}/in/manifest.json"))["volumes"]}
for x, f in zip(lines, logged):
    e = man[f]
    im = nib.load(f"{t}/in/{f}")
    check(tuple(e["shape"]) == im.shape, f"{f}: manifest shape {e['shape']}, file {im.shape}")
    check(e["orientation"] in ("none", "".join(nib.aff2axcodes(im.affine))), f"{f}: orientation {e['orientation']}")
    check(x["source_bytes"] == os.path.getsize(f"{t}/in/{f}"), f"{f}: source bytes")
    check(x["voxel_bytes"] == np.prod(im.shape) * im.get_data_dtype().itemsize, f"{f}: voxel bytes")
    check(x["volumes"] == e["frames"], f"{f}: {x['volumes']} volumes, {e['frames']} frames")
kinds = [e["oddity"] for e in man.values() if e["oddity"]]
check(len(kinds) == 2 and sum(e["frames"] > 1 for e in man.values()) == 1, f"odd headers {kinds}, 4D")
print(f"{len(lines)} lines, {volumes} volumes, {slices} slices; odd headers {kinds}")
sys.exit(0 if ok else 1)
PYEOF
before=$(wc -l < "$T/log.jsonl")
"$M" ingest "$T/in" -o "$T/store" --quiet --log "$T/log.jsonl" 2>/dev/null
[ "$(wc -l < "$T/log.jsonl")" -eq "$before" ] || bad "a rerun that skips everything appended lines"
"$M" ingest "$T/in" -o "$T/store2" --log "$T/no/such/dir/log.jsonl" 2> "$T/err2.txt" && bad "a log in a missing folder was accepted"
grep -q "no/such/dir/log.jsonl: cannot open" "$T/err2.txt" || { bad "error line"; cat "$T/err2.txt"; }
[ ! -e "$T/store2" ] || bad "the store was created although the log could not be opened"
done_
