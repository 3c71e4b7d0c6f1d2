"""tests/finetune/nsd_check.py — volumes for test_eval_nsd.sh and a brute-force double-precision NSD reference.

gen DIR SEED       DIR/pred, DIR/gt: label volumes on axis-aligned grids with random anisotropic spacing (random axis
                   signs, so the canonical grid flips some axes), random blobs touching the border now and then, and
                   the known cases: an identical class (NSD 1), an empty prediction (0), an empty ground truth (0), a
                   class absent from both (nan); DIR/tol holds a random tolerance in mm.
check DIR CSV TOL  compares the nsd column of CSV (mrisam eval's per_volume.csv) with the reference at TOL mm.

The reference follows the definition (the DeepMind surface-distance package's compute_surface_distances and
compute_surface_dice_at_tolerance) independently of the C code: the mask is zero-padded, every point of the lattice
between voxels gets the 2x2x2 neighbourhood of voxels around it, a point whose neighbourhood is neither empty nor
full is a surface element whose area is that of its marching-cubes triangles (built here from the cube's faces:
edge midpoints, diagonal corners of the minority kind kept apart, each polygon split as the fan with the fewest
planes), and the distance of an element to the other surface is the minimum over ALL elements of the other mask.
"""
import csv
import math
import os
import sys

import numpy as np
import nibabel as nib


# ---- marching-cubes areas per neighbourhood (corner bit d0 + 2 d1 + 4 d2 = voxel offset (d0, d1, d2)) ----------
def corner(j):
    return (j & 1, j >> 1 & 1, j >> 2 & 1)


def polygons(code):
    inside = {corner(j) for j in range(8) if code >> j & 1}
    minority_in = len(inside) <= 4
    links = {}

    def link(a, b):
        links.setdefault(a, []).append(b)
        links.setdefault(b, []).append(a)

    for ax in range(3):
        o = [a for a in range(3) if a != ax]
        for v in (0, 1):
            ring = []
            for p, q in ((0, 0), (0, 1), (1, 1), (1, 0)):
                c = [0, 0, 0]
                c[ax], c[o[0]], c[o[1]] = v, p, q
                ring.append(tuple(c))
            mids = []  # (edge k from ring[k] to ring[k+1], midpoint)
            for k in range(4):
                a, b = ring[k], ring[(k + 1) % 4]
                if (a in inside) != (b in inside):
                    mids.append((k, tuple((x + y) / 2 for x, y in zip(a, b))))
            if len(mids) == 2:
                link(mids[0][1], mids[1][1])
            elif len(mids) == 4:
                m = [x[1] for x in mids]
                # ring[0] lies between edges 3 and 0: cut it off when it is of the minority kind
                if (ring[0] in inside) == minority_in:
                    link(m[3], m[0]), link(m[1], m[2])
                else:
                    link(m[0], m[1]), link(m[2], m[3])
    out, seen = [], set()
    for s in links:
        if s in seen:
            continue
        loop, prev, cur = [], None, s
        while cur not in seen:
            seen.add(cur)
            loop.append(cur)
            nxt = [n for n in links[cur] if n != prev]
            prev, cur = cur, nxt[0]
        out.append(loop)
    return out


def triangles(loop):
    """The fan with the fewest distinct planes, as lists of 3 points."""
    best = None
    for s in range(len(loop)):
        r = loop[s:] + loop[:s]
        tris = [(r[0], r[i], r[i + 1]) for i in range(1, len(r) - 1)]
        normals = []
        for a, b, c in tris:
            n = np.cross(np.subtract(b, a), np.subtract(c, a))
            n = n / np.linalg.norm(n)
            if not any(abs(abs(float(n @ m)) - 1) < 1e-12 for m in normals):
                normals.append(n)
        if best is None or len(normals) < best[0]:
            best = (len(normals), tris)
    return best[1]


def area_table(sp, cells=[]):
    if not cells:  # the triangles do not depend on the spacing: built once
        cells.extend([t for loop in polygons(code) for t in triangles(loop)] for code in range(256))
    sp = np.asarray(sp, float)
    t = np.zeros(256)
    for code in range(256):
        for a, b, c in cells[code]:
            a, b, c = np.array(a) * sp, np.array(b) * sp, np.array(c) * sp
            t[code] += np.linalg.norm(np.cross(b - a, c - a)) / 2
    return t


# ---- the brute-force NSD ------------------------------------------------------------------------------------------
def surfels(mask, table):
    """Lattice positions (index units) and areas of the surface elements of a boolean 3-D mask."""
    p = np.pad(mask, 1).astype(np.int64)
    X, Y, Z = mask.shape
    code = np.zeros((X + 1, Y + 1, Z + 1), np.int64)
    for j in range(8):
        d = corner(j)
        code |= p[d[0]:d[0] + X + 1, d[1]:d[1] + Y + 1, d[2]:d[2] + Z + 1] << j
    sel = (code != 0) & (code != 255)
    return np.argwhere(sel).astype(float), table[code[sel]]


def nsd(pred, gt, sp, tol, table):
    if not pred.any() and not gt.any():
        return math.nan
    if not pred.any() or not gt.any():
        return 0.0
    pp, ap = surfels(pred, table)
    pg, ag = surfels(gt, table)
    sp = np.asarray(sp, float)
    lim = tol * (1 + 1e-6)

    def within(a, b, w):
        d = np.full(len(a), np.inf)
        for i in range(0, len(a), 512):  # every pair, in chunks
            diff = (a[i:i + 512, None, :] - b[None, :, :]) * sp
            d[i:i + 512] = np.sqrt((diff * diff).sum(-1)).min(1)
        return w[d <= lim].sum()

    return (within(pp, pg, ap) + within(pg, pp, ag)) / (ap.sum() + ag.sum())


# ---- volumes --------------------------------------------------------------------------------------------------------
def blob(rng, sh):
    """A random ellipsoid, sometimes cut by the volume's border."""
    c = [rng.uniform(-1, s) for s in sh]
    r = [rng.uniform(1.2, s / 2 + 1) for s in sh]
    g = np.meshgrid(*[np.arange(s) for s in sh], indexing='ij')
    return sum(((g[k] - c[k]) / r[k]) ** 2 for k in range(3)) <= 1


def save(arr, sp, signs, path):
    a = np.diag(list(np.asarray(sp) * signs) + [1.0])
    img = nib.Nifti1Image(arr.astype(np.uint8), a)
    img.set_sform(a, code=2)
    img.set_qform(a, code=1)
    nib.save(img, path)


def gen(d, seed):
    rng = np.random.default_rng(seed)
    for sub in ('pred', 'gt'):
        os.makedirs(f'{d}/{sub}', exist_ok=True)
    for k in range(5):
        sh = tuple(int(x) for x in rng.integers(5, 13, 3))
        sp = rng.uniform(0.4, 2.5, 3) if k != 4 else np.array([1.0, 1.0, 2.0])  # k 4: exact ties at 1 mm
        signs = rng.choice([-1.0, 1.0], 3)
        gt = np.zeros(sh, np.int64)
        pred = np.zeros(sh, np.int64)
        for c in (1, 2, 3):
            g = blob(rng, sh)
            gt[g] = c
            if c == 3:  # a later class's blob can cover an earlier one whole; the fixed cases below need each present
                free = np.flatnonzero((gt == 0) | (gt == 3))  # voxels no earlier class needs
                for e in (1, 2):
                    if not (gt == e).any():
                        gt.flat[free[e - 1]] = e  # seed 65630037: class 2 was gone
            moved = np.roll(g, tuple(int(x) for x in rng.integers(-1, 2, 3)), axis=(0, 1, 2))
            pred[moved ^ (rng.random(sh) < 0.04)] = c
        if k == 0:
            pred[pred == 1] = 0
            pred[gt == 1] = 1       # class 1 identical: NSD 1
        if k == 1:
            pred[pred == 2] = 0     # empty prediction: 0
            gt[gt == 3] = 0         # class 3 absent from both: nan
            pred[pred == 3] = 0
        if k == 2:
            gt[gt == 3] = 0         # empty ground truth, prediction present: 0
            pred[0, 0, 0] = 3
        save(gt, sp, signs, f'{d}/gt/v{k}.nii.gz')
        save(pred, sp, signs, f'{d}/pred/v{k}.nii.gz')
    with open(f'{d}/tol', 'w') as f:
        f.write('%g\n' % round(rng.uniform(0.5, 3.0), 3))  # as summary.md prints it


def check(d, csv_path, tol):
    rows = list(csv.DictReader(open(csv_path, newline='')))
    bad, tables = [], {}
    for r in rows:
        v, c = r['volume'], int(r['class'])
        gi, pi = nib.load(f'{d}/gt/{v}.nii.gz'), nib.load(f'{d}/pred/{v}.nii.gz')
        sp = tuple(float(x) for x in np.abs(np.diag(gi.affine))[:3])
        if sp not in tables:
            tables[sp] = area_table(sp)
        g, p = np.rint(gi.get_fdata()) == c, np.rint(pi.get_fdata()) == c
        want, got = nsd(p, g, sp, tol, tables[sp]), float(r['nsd'])
        if not ((math.isnan(want) and math.isnan(got)) or abs(want - got) <= 6e-9):  # the CSV has 8 decimals
            bad.append(f'{v} class {c}: nsd {got!r}, reference {want!r}')
    k = {(r['volume'], int(r['class'])): r['nsd'] for r in rows}
    for key, want in ((('v0', 1), 1.0), (('v1', 2), 0.0), (('v2', 3), 0.0)):
        if float(k.get(key, 'nan')) != want:
            bad.append(f'{key}: nsd {k.get(key)}, want {want}')
    if k.get(('v1', 3)) != 'nan':
        bad.append(f'class absent from both: nsd {k.get(("v1", 3))}, want nan')
    for b in bad:
        print('FAIL', b)
    vals = [float(r['nsd']) for r in rows]
    print(f'{len(rows)} rows at {tol} mm: NSD {["%.4f" % x for x in vals]}: {"ok" if not bad else "FAILED"}')
    return 1 if bad else 0


if __name__ == '__main__':
    if sys.argv[1] == 'gen':
        gen(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(check(sys.argv[2], sys.argv[3], float(sys.argv[4])))
