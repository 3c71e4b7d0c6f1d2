"""tools/reliability/compare_runs.py [--partial] REF RUN — a run directory (pretrain or finetune) against the
uninterrupted reference run with the same options.

Default: RUN has finished. The same files, each byte for byte, but tb/ (its file name and wall times differ by design)
and log.jsonl, whose lines must be equal without the wall-clock fields t and img_per_s (docs/CLI.md §RUN/ layout).
Temporaries an interrupted write leaves (`<file>.tmp.<pid>`, `best.tmp/`) are reported on a line "leftovers: ..."
of their own and count as a difference (a resume removes them, checkpoints/rundir.h ms_run_dir_prepare).

--partial: RUN stopped early (a full disk): nothing it holds may be damaged. Every file of RUN that REF also has is
equal to REF's (best/ aside: it may hold an earlier best, so its safetensors file must be whole and its meta.json
parse), RUN's log.jsonl lines are a prefix of REF's, every RUN/ckpt/step_* holds DONE (no partial step directory),
and there are no leftovers.
Exit 0: as required; 1: something differs (the first differences printed)."""
import json
import os
import re
import struct
import sys

TMP = re.compile(r"(\.tmp\.[0-9]+$)|(^|/)best\.tmp(/|$)")


def files(d):
    out, left = {}, []
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.relpath(os.path.join(root, n), d)
            if TMP.search(p):
                left.append(p)
            elif not p.startswith("tb/"):
                out[p] = os.path.join(root, n)
    return out, sorted(left)


def log_lines(path):
    lines = []
    for line in open(path, "rb").read().decode().split("\n")[:-1]:
        j = json.loads(line)
        for k in ("t", "img_per_s"):
            j.pop(k, None)
        lines.append(j)
    return lines


def whole_safetensors(path):
    b = open(path, "rb").read()
    if len(b) < 8:
        return False
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    end = max([v["data_offsets"][1] for k, v in head.items() if k != "__metadata__"] or [0])
    return len(b) == 8 + n + end


partial = sys.argv[1] == "--partial"
ref, run = sys.argv[1 + partial], sys.argv[2 + partial]
fa, _ = files(ref)
fb, left = files(run)
diff = []
if not partial and sorted(fa) != sorted(fb):
    diff.append("file sets differ: only in the reference %s, only in the run %s" %
                (sorted(set(fa) - set(fb))[:6], sorted(set(fb) - set(fa))[:6]))
for p in sorted(set(fa) & set(fb)):
    if p == "log.jsonl":
        la, lb = log_lines(fa[p]), log_lines(fb[p])
        if (lb != la[:len(lb)]) if partial else (la != lb):
            first = next((i for i in range(min(len(la), len(lb))) if la[i] != lb[i]), min(len(la), len(lb)))
            diff.append("log.jsonl differs (%d vs %d lines) from line %d" % (len(la), len(lb), first + 1))
    elif partial and p.startswith("best/"):
        continue
    elif open(fa[p], "rb").read() != open(fb[p], "rb").read():
        diff.append("%s differs" % p)
if partial:
    for p in fb:
        if p.startswith("best/") and p.endswith(".safetensors") and not whole_safetensors(fb[p]):
            diff.append("%s is not whole" % p)
        if p.startswith("best/") and p.endswith(".json"):
            json.load(open(fb[p]))
    ck = os.path.join(run, "ckpt")
    for s in sorted(os.listdir(ck)) if os.path.isdir(ck) else []:
        if not os.path.exists(os.path.join(ck, s, "DONE")):
            diff.append("ckpt/%s: a partial step directory (no DONE)" % s)
if left:
    print("leftovers: %s" % " ".join(left))
    diff.append("leftovers: %s" % " ".join(left))
if diff:
    print("different: " + "; ".join(diff[:8]))
    sys.exit(1)
if partial:
    print("nothing damaged: %d files, each equal to the reference's or (best/) whole" % len(fb))
else:
    print("identical: %d files (log.jsonl without t, img_per_s; tb/ aside)" % len(fa))
