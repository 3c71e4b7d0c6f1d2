"""tools/reliability/compare_runs.py REF RUN — a run directory (pretrain or finetune) against the uninterrupted
reference: the same files, each byte for byte, but tb/ (its file name and wall times differ by design) and
log.jsonl, whose lines must be equal without the wall-clock fields t and img_per_s (docs/CLI.md §RUN/ layout).
Temporaries an interrupted write leaves (`<file>.tmp.<pid>`, `best.tmp/`) are reported as leftovers on a line of
their own and left out of the comparison. Exit 0: identical; 1: something differs (the first differences printed)."""
import json
import os
import re
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
    for i, line in enumerate(open(path, "rb").read().decode().split("\n")[:-1]):
        j = json.loads(line)
        for k in ("t", "img_per_s"):
            j.pop(k, None)
        lines.append(j)
    return lines


ref, run = sys.argv[1], sys.argv[2]
fa, _ = files(ref)
fb, left = files(run)
diff = []
if sorted(fa) != sorted(fb):
    diff.append("file sets differ: only in the reference %s, only in the run %s" %
                (sorted(set(fa) - set(fb))[:6], sorted(set(fb) - set(fa))[:6]))
for p in sorted(set(fa) & set(fb)):
    if p == "log.jsonl":
        la, lb = log_lines(fa[p]), log_lines(fb[p])
        if la != lb:
            first = next((i for i in range(min(len(la), len(lb))) if la[i] != lb[i]), min(len(la), len(lb)))
            diff.append("log.jsonl differs (%d vs %d lines) from line %d" % (len(la), len(lb), first + 1))
    elif open(fa[p], "rb").read() != open(fb[p], "rb").read():
        diff.append("%s differs" % p)
if left:
    print("leftovers: %s" % " ".join(left))
if diff:
    print("different: " + "; ".join(diff[:8]))
    sys.exit(1)
print("identical: %d files (log.jsonl without t, img_per_s; tb/ aside)" % len(fa))
