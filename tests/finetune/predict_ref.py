"""tests/finetune/predict_ref.py — independent reference for `mrisam predict` (test_predict.sh).

  /usr/bin/python3 predict_ref.py make DIR           write the test volumes into DIR/in/ (nibabel)
  /usr/bin/python3 predict_ref.py check DIR CKPT NUM_CLS
      for every DIR/in/*.nii*: DIR/out/<name> must keep the input's shape, affine, qform/sform and their codes, have
      an empty descrip and labels in 0..NUM_CLS-1, and equal the PyTorch reference's prediction.

The reference is written from the specs, not from the C code: nibabel's as_closest_canonical (RAS+ by permutation and
flip), ingest's axis rule (lowest resolution, ties axial), ingest's percentile normalisation (numpy's linear
percentiles of the nonzero voxels, uint16 quantisation, /65535), SAM preprocessing (tests/reference/sam_ref_encoder
.preprocess: bilinear longest-side resize, mean/std, zero pad), the whole model in float64 (sam_ref.Sam) with no
prompts, multimask tokens 1..NUM_CLS, the official post-processing, argmax over the classes.

Agreement: the C model runs in float32, the reference in float64, and the bilinear resizes are computed in a
different order, so logits differ by ~1e-5 relative. A voxel whose two best classes are that close can flip. So a
voxel may differ only where the reference's top-2 margin is below 1e-3 of the logit scale, and at least 99.5% of all
voxels must agree.
"""
import glob
import os
import sys

import nibabel as nib
import numpy as np
import torch

SRC = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))


def rot(ax, deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [(1, 2), (0, 2), (0, 1)][ax]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def volume(shape, seed):
    rng = np.random.RandomState(seed)
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    v = 300 + 200 * np.sin(3 * g[0] + 1) * np.cos(2 * g[1]) + 100 * g[2]
    v += 500 * ((g[0] - 0.2) ** 2 + (g[1] + 0.1) ** 2 + 0.5 * g[2] ** 2 < 0.3)
    v += 20 * rng.randn(*shape)
    v[:2] = 0  # background rows: the percentile uses nonzero voxels only
    return v.astype(np.float32)


def save(path, data, lin, offset, qcode, scode):
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = offset
    img = nib.Nifti1Image(data, aff)
    img.set_qform(aff, code=qcode)
    img.set_sform(aff, code=scode)
    img.header["descrip"] = b"patient name that must not be copied"
    nib.save(img, path)


def make(d):
    os.makedirs(os.path.join(d, "in"), exist_ok=True)
    # A: LAS-like (x flipped), oblique (15° about z, 8° about x), odd dims, thick slices along z → axial
    lin = rot(2, 15) @ rot(0, 8) @ np.diag([-1.2, 1.0, 3.0])
    save(os.path.join(d, "in", "a_las.nii.gz"), volume((41, 35, 7), 1), lin, [30.5, -20.25, 12.0], 1, 2)
    # B: stored axes (A flipped = P, S, R), oblique; the thick axis is anterior-posterior → coronal
    perm = np.array([[0, 0, 1.1], [-2.5, 0, 0], [0, 1.0, 0]])  # columns: stored axis i → world
    lin = rot(1, 12) @ perm
    save(os.path.join(d, "in", "b_psr.nii"), volume((9, 33, 27), 2), lin, [-5.0, 40.0, -7.5], 2, 1)


def pick_axis(sp, dim):
    for a in (2, 1, 0):
        if dim[a] == 1 and dim[(a + 1) % 3] > 1 and dim[(a + 2) % 3] > 1:
            return a
    mx = max(sp)
    if sp[2] >= mx * (1 - 1e-3):
        return 2
    if sp[1] >= mx * (1 - 1e-3):
        return 1
    return 0


def reference(path, model, num_cls):
    """Returns (canonical labels, canonical top-2 margin, logit scale, nibabel canonical image)."""
    import sam_ref
    import sam_ref_encoder as enc_ref
    img = nib.load(path)
    can = nib.as_closest_canonical(img)
    v = np.asarray(can.dataobj, dtype=np.float32)
    sp = np.sqrt((can.affine[:3, :3] ** 2).sum(0))
    axis = pick_axis(sp, v.shape)
    nz = v[v != 0].astype(np.float64)
    lo, hi = np.percentile(nz, [0.5, 99.5])
    scale = hi - lo if hi - lo > 0 else 1.0
    q = np.floor(65535 * np.clip((v.astype(np.float64) - lo) / scale, 0, 1) + 0.5)
    img01 = (q.astype(np.float32) * np.float32(1 / 65535.0)).astype(np.float32)
    sl = np.moveaxis(img01, axis, 0)  # (K, rows = lower remaining axis, cols = higher)
    K, H, W = sl.shape
    S = model.img_size
    x = torch.cat([enc_ref.preprocess(sl[k] * np.float32(255.0), S) for k in range(K)]).double()
    with torch.no_grad():
        emb = model.image_encoder(x)
        sparse, dense = model.prompt_encoder(None, None, None)
        low, _ = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
        assert low.shape[1] == num_cls
        full = torch.cat([sam_ref.postprocess(low[k:k + 1], S, H, W) for k in range(K)]).numpy()  # (K,C,H,W)
    lab = full.argmax(1)
    top2 = np.sort(full, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return (np.moveaxis(lab, 0, axis), np.moveaxis(margin, 0, axis), np.abs(full).max(), can, axis)


def check(d, ckpt, num_cls):
    import sam_ref
    model = sam_ref.Sam("vit_test", num_multimask_outputs=num_cls).double()
    model.load_state_dict({k: v.double() for k, v in torch.load(ckpt).items()}, strict=True)
    ok = True
    for path in sorted(glob.glob(os.path.join(d, "in", "*.nii*"))):
        name = os.path.basename(path)
        if name.startswith("bad"):
            continue
        out = os.path.join(d, "out", name)
        a, b = nib.load(path), nib.load(out)
        ha, hb = a.header, b.header

        def req(cond, what):
            nonlocal ok
            if not cond:
                print("FAIL %s: %s" % (name, what))
                ok = False

        req(a.shape == b.shape, "shape %s vs input %s" % (b.shape, a.shape))
        req(np.array_equal(a.affine, b.affine), "affine differs:\n%s\n%s" % (b.affine, a.affine))
        req(np.array_equal(ha.get_sform(), hb.get_sform()), "sform differs")
        req(np.array_equal(ha.get_qform(), hb.get_qform()), "qform differs")
        req(int(ha["qform_code"]) == int(hb["qform_code"]) and int(ha["sform_code"]) == int(hb["sform_code"]),
            "codes q%d s%d vs input q%d s%d" % (hb["qform_code"], hb["sform_code"], ha["qform_code"],
                                                ha["sform_code"]))
        req(np.array_equal(ha["pixdim"][:4], hb["pixdim"][:4]), "pixdim differs")
        req(hb["descrip"].tobytes().strip(b"\0") == b"", "descrip not empty: %r" % hb["descrip"].tobytes())
        lab = np.asarray(b.dataobj)
        req(lab.min() >= 0 and lab.max() < num_cls, "labels outside 0..%d: %d..%d" % (num_cls - 1, lab.min(),
                                                                                     lab.max()))
        if not ok:
            continue
        ref, margin, lscale, can, axis = reference(path, model, num_cls)
        # our labels to the canonical frame through the same (nibabel) reorientation as the input
        ornt = nib.orientations.io_orientation(a.affine)
        mine = nib.orientations.apply_orientation(lab, ornt)
        req(mine.shape == ref.shape, "canonical shape %s vs %s" % (mine.shape, ref.shape))
        if not ok:
            continue
        diff = mine != ref
        near = margin < 1e-3 * lscale
        agree = 1 - diff.mean()
        counts = np.bincount(ref.ravel(), minlength=num_cls)
        print("%s: axis %d, %d voxels, classes %s (reference), agreement %.5f, %d differ (%d near ties)" %
              (name, axis, ref.size, counts.tolist(), agree, diff.sum(), (diff & near).sum()))
        req(not (diff & ~near).any(), "voxels differ away from ties")
        req(agree >= 0.995, "agreement %.5f < 0.995" % agree)
        req((counts > 0.01 * ref.size).sum() >= 2, "degenerate test: fewer than 2 classes above 1%")
    return ok


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
        return
    if len(sys.argv) == 5 and sys.argv[1] == "check":
        sys.exit(0 if check(sys.argv[2], sys.argv[3], int(sys.argv[4])) else 1)
    print(__doc__)
    sys.exit(2)


if __name__ == "__main__":
    main()
