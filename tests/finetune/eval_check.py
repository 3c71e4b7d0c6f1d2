"""tests/finetune/eval_check.py — volumes for test_eval_cli.sh and the numpy check of `mrisam eval`'s outputs.

gen DIR SEED     DIR/pred, DIR/gt: three pairs on oblique grids (random blobs, prediction = truth perturbed), with
                 known cases: identical class (Dice 1), empty prediction (Dice 0), class absent from both (nan);
                 DIR/names.txt; and bad inputs under DIR/bad_*/{pred,gt}.
check DIR OUT    compares OUT/per_volume.csv and OUT/summary.md with Dice, IoU and HD95 (brute force over surface
                 voxel pairs in world mm) computed by numpy from the files.
"""
import csv
import math
import os
import sys

import numpy as np
import nibabel as nib

NAMES = {1: 'liver', 2: 'kidney, left', 3: 'tumour "core"'}


def affine(rng):
    t = rng.uniform(-0.2, 0.2, 3)
    c, s = np.cos(t), np.sin(t)
    r = (np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]]) @
         np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]]) @
         np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]]))
    a = np.eye(4)
    a[:3, :3] = r @ np.diag([-rng.uniform(0.7, 1.5), rng.uniform(0.7, 1.5), rng.uniform(1, 3)])
    a[:3, 3] = rng.uniform(-50, 50, 3)
    return a


def save(arr, a, path, dtype):
    img = nib.Nifti1Image(arr.astype(dtype), a)
    img.set_sform(a, code=2)
    img.set_qform(a, code=1)
    nib.save(img, path)


def gen(d, seed):
    rng = np.random.default_rng(seed)
    for sub in ['pred', 'gt']:
        os.makedirs(f'{d}/{sub}', exist_ok=True)
    shapes = [(17, 13, 9), (12, 15, 7), (9, 9, 11)]
    for k, sh in enumerate(shapes):
        a = affine(rng)
        gt = np.zeros(sh, np.int64)
        # the class a known case needs is painted last, so no other box can cover it: class 1 in case 2, class 2 in
        # case 1 (where class 3 is removed afterwards; painted after 2, it could have hidden class 2 entirely)
        for c in {1: (1, 3, 2), 2: (2, 3, 1)}.get(k, (1, 2, 3)):
            lo = [rng.integers(0, s // 2) for s in sh]
            hi = [l + rng.integers(2, s - l + 1) for l, s in zip(lo, sh)]
            gt[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = c
        pred = gt.copy()
        flip = rng.random(sh) < 0.15
        pred[flip] = rng.integers(0, 4, size=int(flip.sum()))
        if k == 1:
            gt[gt == 3] = 0    # class 3 absent from both volumes: nan
            pred[pred == 3] = 0
            pred[pred == 2] = 0  # empty prediction of a present class: 0
        if k == 2:
            pred[gt == 1] = 1    # class 1 identical: Dice 1
            pred[(pred == 1) & (gt != 1)] = 0
        save(gt, a, f'{d}/gt/case{k}.nii', np.int16)
        save(pred, a, f'{d}/pred/case{k}.nii.gz', np.uint8)
    with open(f'{d}/names.txt', 'w') as f:
        f.write('# class names\n' + ''.join(f'{c}: {n}\n' for c, n in NAMES.items()))
    # bad inputs: shape mismatch, affine mismatch, a missing partner, non-integer labels
    a = affine(rng)
    z = rng.integers(0, 3, size=(6, 5, 4))
    for b in ['shape', 'affine', 'missing', 'float']:
        os.makedirs(f'{d}/bad_{b}/pred', exist_ok=True)
        os.makedirs(f'{d}/bad_{b}/gt', exist_ok=True)
        save(z, a, f'{d}/bad_{b}/gt/v.nii.gz', np.uint8)
    save(z[:, :, :3], a, f'{d}/bad_shape/pred/v.nii.gz', np.uint8)
    a2 = a.copy()
    a2[0, 3] += 0.5
    save(z, a2, f'{d}/bad_affine/pred/v.nii.gz', np.uint8)
    save(z, a, f'{d}/bad_missing/pred/w.nii.gz', np.uint8)
    save(z + 0.5, a, f'{d}/bad_float/pred/v.nii.gz', np.float32)


def metrics(p, g, c):
    P, G = p == c, g == c
    i, sp, sg, u = np.sum(P & G), np.sum(P), np.sum(G), np.sum(P | G)
    return (2 * i / (sp + sg), i / u) if sp + sg else (math.nan, math.nan)


def surface(m):
    p = np.pad(m, 1)
    inner = p[1:-1, 1:-1, 1:-1].copy()
    for ax in range(3):
        for sh in (-1, 1):
            inner &= np.roll(p, sh, axis=ax)[1:-1, 1:-1, 1:-1]
    return m & ~inner


def hd95(p, g, c, aff):
    sp, sg = surface(p == c), surface(g == c)
    if not sp.any() and not sg.any():
        return math.nan
    if not sp.any() or not sg.any():
        return math.inf
    wp = nib.affines.apply_affine(aff, np.argwhere(sp))  # world mm of the voxel centres
    wg = nib.affines.apply_affine(aff, np.argwhere(sg))
    dd = np.sqrt(((wp[:, None, :] - wg[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(dd.min(1), 95), np.percentile(dd.min(0), 95))


def check(d, out):
    bad = []
    rows = list(csv.DictReader(open(f'{out}/per_volume.csv', newline='')))
    names = sorted(f[:-4] for f in os.listdir(f'{d}/gt'))
    vols = {n: (np.rint(nib.load(f'{d}/pred/{n}.nii.gz').get_fdata()), np.rint(nib.load(f'{d}/gt/{n}.nii').get_fdata()))
            for n in names}
    affs = {n: nib.load(f'{d}/gt/{n}.nii').affine for n in names}
    classes = sorted(set(int(c) for p, g in vols.values() for c in np.union1d(np.unique(p), np.unique(g)) if c > 0))
    want_rows = [(n, c) for n in names for c in classes]
    got_rows = [(r['volume'], int(r['class'])) for r in rows]
    if got_rows != want_rows:
        bad.append(f'rows {got_rows} != {want_rows}')
    per = {c: [] for c in classes}
    for r in rows:
        p, g = vols[r['volume']]
        c = int(r['class'])
        dice, iou = metrics(p, g, c)
        per[c].append(dice)
        h = hd95(p, g, c, affs[r['volume']])
        for what, want, got, tol in [('dice', dice, float(r['dice']), 1e-7), ('iou', iou, float(r['iou']), 1e-7),
                                     ('hd95', h, float(r['hd95']), 1e-4)]:
            if not ((math.isnan(want) and math.isnan(got)) or (math.isinf(want) and got == want)
                    or abs(want - got) <= tol):
                bad.append(f"{r['volume']} class {c} {what}: {got} != {want}")
        if r['name'] != NAMES.get(c, ''):
            bad.append(f"{r['volume']} class {c}: name {r['name']!r}")
    # the known cases
    k = {(r['volume'], int(r['class'])): r for r in rows}
    if k[('case1', 3)]['dice'] != 'nan' or k[('case1', 3)]['iou'] != 'nan':
        bad.append('class absent from both volumes is not nan')
    if float(k[('case1', 2)]['dice']) != 0.0 or k[('case1', 2)]['hd95'] != 'inf':
        bad.append('empty prediction of a present class is not Dice 0, HD95 inf')
    if float(k[('case2', 1)]['hd95']) != 0.0:
        bad.append('identical class has HD95 != 0')
    if float(k[('case2', 1)]['dice']) != 1.0 or float(k[('case2', 1)]['iou']) != 1.0:
        bad.append('identical class is not 1')
    md = open(f'{out}/summary.md').read()
    if 'volumes: 3' not in md:
        bad.append('summary.md lacks "volumes: 3"')
    for c in classes:
        v = np.array([x for x in per[c] if not math.isnan(x)])
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        line = f'| {c} | {NAMES[c]} | {len(v)} | {v.mean():.4f} ± {sd:.4f} |'
        if line not in md:
            bad.append(f'summary.md lacks {line!r}')
    for b in bad:
        print('FAIL', b)
    print(f'{len(rows)} rows, {len(classes)} classes: {"ok" if not bad else "FAILED"}')
    return 1 if bad else 0


if __name__ == '__main__':
    if sys.argv[1] == 'gen':
        gen(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(check(sys.argv[2], sys.argv[3]))
