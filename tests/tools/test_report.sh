#!/usr/bin/env bash
# tests/tools/test_report.sh — `mrisam report` (docs/CLI.md "report") on small hand-made inputs drawn at random
# (seed printed): a fake MAE run (log.jsonl, config.json, val/ panels), a fake `mrisam compare` folder (results.csv
# with a hostile task name among the tasks, summary.csv, paired.csv, compare.json, a log.jsonl per run, and for the
# last seed's runs compare's val_curve.jsonl, which the curves must use instead) and three
# volumes (image, predicted labels, reference labels). Checks: index.html exists and references only files inside
# its folder (no scheme, no absolute path, no ..) that exist; no script; the hostile name only escaped; the per-class
# Dice table holds the mean ± sd of results.csv computed here, its classes named from compare.json; the paired
# table's intervals; the validation curves'
# points are each run's own; the curves are
# non-empty SVGs gnuplot wrote; the overlays are PNGs of the right size; the Dice against the reference labels; label
# names escaped;
# missing inputs give notes, not failures; a malformed CSV and a missing gnuplot fail naming the file and leave the
# earlier report as it was.
source "$MS_SOURCE_DIR/tests/data/common.sh" # M, SRC, PY, T, SEED (printed), bad, done_
$PY - "$T" "$SEED" <<'PYEOF' || bad "making the inputs"
import csv, json, os, random, sys
import numpy as np, nibabel as nib
from PIL import Image
t, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
pre = f"{t}/pre"
os.makedirs(f"{pre}/val")
with open(f"{pre}/log.jsonl", "w") as f:
    for s in range(1, 41):
        f.write(json.dumps({"step": s, "epoch": s / 10, "split": "train", "loss": 1.0 / s + rng.random() * 0.1}) + "\n")
        if s % 10 == 0:
            f.write(json.dumps({"step": s, "epoch": s / 10, "split": "val", "loss": 1.0 / s}) + "\n")
    f.write('{"step": 41, "spl')  # a cut last line (a killed run) is skipped
json.dump({"model": "vit_test", "max_steps": 40, "note": "<b>not bold</b>"}, open(f"{pre}/config.json", "w"))
for s in (10, 20, 30, 40):
    Image.fromarray(np.full((32, 128), s * 5, np.uint8)).save(f"{pre}/val/step_{s:08d}.png")
cmp = f"{t}/cmp"
hostile = '<script>alert("x")</script>&\'a,b'
tasks = {"brain": ["1"], hostile: ["1", "2"]}
seeds = [0, 1, 2][: rng.randint(2, 3)]
rows = []
for task, classes in tasks.items():
    for start in ("random", "pretrained"):
        for seed_ in seeds:
            run = f"runs/{abs(hash(task)) % 1000}_{start}_{seed_}"
            os.makedirs(f"{cmp}/{run}")
            with open(f"{cmp}/{run}/log.jsonl", "w") as f:
                for s in (25, 50, 75):
                    d = {task: {c: rng.random() for c in classes}}
                    f.write(json.dumps({"step": s, "split": "val", "dice": d, "score": 0.5}) + "\n")
            if seed_ == seeds[-1]:  # compare's curve (val_curve.jsonl) wins over log.jsonl's val lines
                with open(f"{cmp}/{run}/val_curve.jsonl", "w") as f:
                    for s in range(10, 110, 10):
                        d = {task: {c: round(rng.random(), 6) for c in classes}}
                        f.write(json.dumps({"dice": d, "step": s, "split": "val", "score": 0.5}) + "\n")
            for c in classes:
                rows.append([task, "3", start, seed_, c, round(rng.random(), 6), round(rng.random(), 6),
                             round(rng.random() * 10, 4), round(rng.random(), 6), run])
with open(f"{cmp}/results.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["task", "budget", "start", "seed", "class", "dice", "iou", "hd95", "nsd", "run"])
    w.writerows(rows)
with open(f"{cmp}/summary.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["task", "budget", "start", "n", "mean", "sd"])
    for task in tasks:
        for start in ("random", "pretrained"):
            w.writerow([task, 3, start, len(seeds), round(rng.random(), 6), round(rng.random() * 0.1, 6)])
with open(f"{cmp}/paired.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["task", "budget", "start", "baseline", "n", "mean_diff", "sd_diff", "t_crit", "ci_lo", "ci_hi"])
    for task in tasks:
        m = rng.uniform(-0.2, 0.2)
        w.writerow([task, 3, "pretrained", "random", len(seeds), m, 0.05, 4.303, m - 0.12345, m + 0.12345])
# as compare writes it: a task whose store has label names carries them ("value name" lines)
json.dump({"tasks": [{"name": "brain"}, {"name": hostile, "label_names": "0 background\n1 cls<one>\n2 two"}],
           "seeds": seeds}, open(f"{cmp}/compare.json", "w"))
nx, ny, nz = rng.randint(30, 50), rng.randint(30, 50), rng.randint(12, 20)
img = np.random.default_rng(seed).random((nx, ny, nz)).astype(np.float32) * 100
lab = np.zeros((nx, ny, nz), np.uint8)
lab[5:20, 5:25, 3:10] = 1
lab[22:28, 10:20, 4:9] = 2
gt = np.roll(lab, 2, axis=0)
aff = np.diag([1.0, 1.0, 1.0, 1.0])
for name, a in (("vol", img), ("seg", lab), ("gt", gt)):
    nib.save(nib.Nifti1Image(a, aff), f"{t}/{name}.nii.gz")
PYEOF

R=$T/report
printf '# value name\n0 background\n1 left<&>"x"\n2 right part\n' > "$T/names.txt"
"$M" report --pretrain "$T/pre" --compare "$T/cmp" --predict "$T/vol.nii.gz" --seg "$T/seg.nii.gz" \
    --gt "$T/gt.nii.gz" --label-names "$T/names.txt" -o "$R" > "$T/out.txt" 2>&1
rc=$?
cat "$T/out.txt"
check [ $rc -eq 0 ]
check [ -s "$R/index.html" ]
$PY - "$T" <<'PYEOF' || bad "report content"
import csv, html, os, re, statistics, struct, sys
import numpy as np, nibabel as nib
t = sys.argv[1]
r = f"{t}/report"
page = open(f"{r}/index.html", encoding="utf-8").read()
ok = True
def check(c, msg):
    global ok
    if not c:
        ok = False
        print("FAIL:", msg)
refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
check(refs, "no references at all")
for ref in refs:
    check(not re.match(r"^[a-z]+:|^/|^//", ref) and ".." not in ref.split("/"), f"reference outside: {ref}")
    check(os.path.isfile(os.path.join(r, ref)) and os.path.getsize(os.path.join(r, ref)) > 0, f"missing file {ref}")
check("<script" not in page.lower(), "a <script> in the page")
check("url(" not in page and "@import" not in page, "a stylesheet reference")
hostile = '<script>alert("x")</script>&\'a,b'
check(html.escape(hostile, quote=True).replace("&#x27;", "&#39;") in page, "the hostile task name, escaped")
check("&lt;b&gt;not bold&lt;/b&gt;" in page, "config.json shown escaped")
check("1 left&lt;&amp;&gt;&quot;x&quot;" in page and "2 right part" in page, "label names, escaped")
check("<td>1 cls&lt;one&gt;</td>" in page and "<td>2 two</td>" in page and "<td>1</td>" in page,
      "the Dice table's classes: named from compare.json where the task has names (escaped), values elsewhere")
check("ch2" in page and "inia19" in page and "one human" in page and "one macaque" in page, "the data statement")
# the Dice table: mean ± sd (n) per task × budget × class × start, computed here from results.csv
rows = list(csv.DictReader(open(f"{t}/cmp/results.csv")))
groups = {}
for x in rows:
    groups.setdefault((x["task"], x["budget"], x["class"], x["start"]), []).append(float(x["dice"]))
for (task, bud, cls, start), v in groups.items():
    want = f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f} ({len(v)})"
    check(want in page, f"table cell {task!r} {cls} {start}: {want}")
for x in csv.DictReader(open(f"{t}/cmp/paired.csv")):
    want = f"[{float(x['ci_lo']):.4f}, {float(x['ci_hi']):.4f}]"
    check(want in page, f"paired interval {want}")
for x in csv.DictReader(open(f"{t}/cmp/summary.csv")):
    check(f"{float(x['mean']):.4f}" in page, f"summary mean {x['mean']}")
# validation curves: each run's points from its val_curve.jsonl when it has one (mean over classes), else log.jsonl
import json
want_pts = set()
for run in {x["run"] for x in rows}:
    src = f"{t}/cmp/{run}/val_curve.jsonl"
    if not os.path.isfile(src): src = f"{t}/cmp/{run}/log.jsonl"
    task = next(x["task"] for x in rows if x["run"] == run)
    pts = []
    for line in open(src):
        j = json.loads(line)
        v = list(j["dice"][task].values())
        pts.append((j["step"], sum(v) / len(v)))
    want_pts.add(tuple(pts))
got_pts = []
for f in sorted(os.listdir(r)):
    if f.startswith("val_dice_") and f.endswith(".dat"):
        for block in open(f"{r}/{f}").read().split("\n\n\n"):
            pts = [tuple(map(float, l.split())) for l in block.splitlines() if l and not l.startswith("#")]
            if pts: got_pts.append(pts)
def same(a, b): return len(a) == len(b) and all(x == u and abs(y - v) < 1e-8 for (x, y), (u, v) in zip(a, b))
matched = sum(any(same(g, w) for w in want_pts) for g in got_pts)
check(matched == len(got_pts) == len(want_pts), f"validation curves: {len(got_pts)} series drawn, {matched} "
      f"match one of the {len(want_pts)} runs' curves ({sum(len(p) == 10 for p in want_pts)} from val_curve.jsonl)")
svgs = [f for f in os.listdir(r) if f.endswith(".svg")]
check("pretrain_loss.svg" in svgs and "val_dice_0.svg" in svgs and "val_dice_1.svg" in svgs, f"curves: {svgs}")
for f in svgs:
    s = open(f"{r}/{f}").read()
    check("<svg" in s and "<path" in s and f in page, f"{f} is no gnuplot SVG in the page")
check(len(re.findall(r'src="recon_\d\.png"', page)) == 3, "three reconstruction panels")
seg = np.asarray(nib.load(f"{t}/seg.nii.gz").dataobj)
gt = np.asarray(nib.load(f"{t}/gt.nii.gz").dataobj)
for k in range(3):
    p = f"{r}/overlay_{k}.png"
    w, h = struct.unpack(">II", open(p, "rb").read()[16:24])
    s = min(4, -(-300 // seg.shape[0]))
    check((w, h) == (seg.shape[0] * s, seg.shape[1] * s), f"{p}: {w}x{h} for a {seg.shape} volume")
for c in (1, 2):
    a, b = seg == c, gt == c
    want = f"<td>{a.sum()}</td><td>{b.sum()}</td><td>{2 * (a & b).sum() / (a.sum() + b.sum()):.4f}</td>"
    check(want in page, f"Dice of label {c}: {want}")
sys.exit(0 if ok else 1)
PYEOF

# missing inputs: notes, no failure
"$M" report --compare "$T/cmp" -o "$T/r2" > /dev/null 2>&1
check [ $? -eq 0 ]
check grep -q "Not shown: pretraining" "$T/r2/index.html"
check grep -q "Not shown: segmentation overlays" "$T/r2/index.html"
mkdir -p "$T/empty"
"$M" report --pretrain "$T/empty" --compare "$T/empty" -o "$T/r3" > /dev/null 2>&1
check [ $? -eq 0 ]
check grep -q "Not shown: the loss curve" "$T/r3/index.html"
check grep -q "Not shown: validation curves" "$T/r3/index.html"
# failures name the file and keep the earlier report
cp "$R/index.html" "$T/before.html"
printf 'task,budget,start\n"unterminated,1,random\n' > "$T/cmp/summary.csv"
"$M" report --compare "$T/cmp" -o "$R" 2> "$T/err.txt"
rc=$?
cat "$T/err.txt"
check [ $rc -eq 1 ]
check grep -q "summary.csv: line 2: unterminated quoted field" "$T/err.txt"
check cmp -s "$R/index.html" "$T/before.html"
"$M" report --pretrain "$T/pre" --gnuplot "$T/no-gnuplot" -o "$R" 2> "$T/err.txt"
rc=$?
cat "$T/err.txt"
check [ $rc -eq 1 ]
check grep -q "no-gnuplot" "$T/err.txt"
check cmp -s "$R/index.html" "$T/before.html"
check [ -z "$(ls -d "$T"/report.tmp.* 2>/dev/null)" ]
done_
