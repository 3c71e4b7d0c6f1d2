"""tests/finetune/ft_check.py — independent checks for predict / eval / export-weights on fine-tuned checkpoints
(test_predict_ft.sh, test_export_ft.sh). Run with Debian's /usr/bin/python3 (torch 1.13, numpy, nibabel).
Several commands may be given separated by "--" (one process: torch is imported once).

  make DIR                       NIfTI volumes with an oblique, non-identity affine (DIR/in/v*.nii.gz), label volumes
                                 with values {0,3,7} (DIR/lab/), DIR/pairs.csv for ingest, DIR/lesion_map.csv (3→5).
  reweight CKPT_DIR SEED         rewrites CKPT_DIR/model.safetensors with counter_init values (same keys, shapes and
                                 order; LoRA B included, so it is NON-zero): after 2 training steps a model predicts
                                 background everywhere, which would make every check below trivially true.
  predict CKPT_DIR TASK IN_DIR OUT_DIR
                                 every OUT_DIR/<name> keeps the input's shape, affine, q/sform and codes, pixdim, has an
                                 empty descrip and values in TASK's class values; and equals the float64 PyTorch
                                 reference of the checkpoint (LoRA merged in float64, TASK's head) up to near-ties
                                 (tests/finetune/predict_ref.py's rule).
  predict-prompt CKPT_DIR TASK IN_DIR LAB_DIR OUT_DIR
                                 a prompt-trained checkpoint's OUT_DIR/<name> (prompts from LAB_DIR/<name>) against the
                                 float64 reference: per slice the label goes to the label grid (ms_prep_label's nearest
                                 rule), each present class gets prompt_gen.h's deterministic prompts (boxes of the 3
                                 largest 8-connected regions, scale-4 footprints, repeated to 3; 5 most interior
                                 points over those regions, repeated to 8), binary logits, and per pixel the positive
                                 class with the largest l_fg − l_bg wins.
  csv A.csv B.csv [C.csv D.csv]  the rows of A (volume, class) appear in B with the same dice, iou, hd95 (1e-6).
  export-sam CKPT_DIR TASK F     the SAM-layout export (.pth or .safetensors): exactly SAM's keys for vit_test with
                                 TASK's mask tokens, in SAM's order, strict-loadable into sam_ref.Sam; LoRA merged
                                 (max error vs float64 W + B·A printed), every other tensor equal to the checkpoint's
                                 (TASK's head).
  labels-equal CKPT_DIR TASK FT_DIR SAM_DIR
                                 the fine-tuned model's label volumes (task values) equal those of its SAM-layout
                                 export (class c as c) in every voxel.
  export-fsam CKPT_DIR TASK F.pth
                                 finetune-SAM layout: the key list (order included) and shapes of the state_dict of a
                                 PyTorch model rebuilt the way finetune-SAM builds it (docs/MODEL.md §PEFT: _LoRA_qkv,
                                 _LoRA_qkv_proj, Block adapters registered between attn and norm2, decoder adapters
                                 after cross_attn_image_to_token), strict load into it, LoRA/adapter tensors equal to
                                 model.safetensors, Depth_Adapter zeros.
"""
import collections
import glob
import json
import os
import struct
import sys

import nibabel as nib
import numpy as np
import torch
import torch.nn as nn

SRC = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
sys.path.insert(0, os.path.join(SRC, "tests", "finetune"))
import predict_ref  # noqa: E402
import sam_ref  # noqa: E402

HEAD = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head.")


# ---- safetensors (F32 only; what mrisam writes) ----------------------------------------------------------------------
def st_read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n], object_pairs_hook=collections.OrderedDict)
    out = collections.OrderedDict()
    for k, v in h.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + a:8 + n + e], dtype="<f4").reshape(v["shape"]).copy()
    return out


def st_write(path, sd):
    h, off, blobs = collections.OrderedDict(), 0, []
    for k, v in sd.items():
        v = np.ascontiguousarray(v, dtype="<f4")
        h[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + v.nbytes]}
        off += v.nbytes
        blobs.append(v.tobytes())
    hj = json.dumps(h).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))


def meta(ckpt):
    return json.load(open(os.path.join(ckpt, "meta.json")))


def task_of(m, name):
    for i, t in enumerate(m["tasks"]):
        if t["name"] == name:
            return i, t
    raise SystemExit("no task %s in meta.json" % name)


# ---- make ------------------------------------------------------------------------------------------------------------
def make(d):
    os.makedirs(os.path.join(d, "in"), exist_ok=True)
    os.makedirs(os.path.join(d, "lab"), exist_ok=True)
    rows = []
    shapes = [((34, 30, 3), 1), ((30, 34, 2), 2), ((32, 28, 3), 3)]  # few slices: the CPU model costs per slice
    for i, (shape, seed) in enumerate(shapes):
        # oblique (15° about z, 8° about x), x flipped, thick z → axial slices
        lin = predict_ref.rot(2, 15) @ predict_ref.rot(0, 8) @ np.diag([-1.2, 1.0, 3.0])
        aff = np.eye(4)
        aff[:3, :3] = lin
        aff[:3, 3] = [30.5, -20.25, 12.0 + i]
        g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        lab = np.zeros(shape, np.uint8)
        lab[(g[0] - 0.2) ** 2 + (g[1] + 0.1) ** 2 + 0.5 * g[2] ** 2 < 0.3] = 3
        lab[(g[0] + 0.5) ** 2 + (g[1] - 0.4) ** 2 < 0.08] = 7
        for sub, data, qc, sc in (("in", predict_ref.volume(shape, seed), 1, 2), ("lab", lab, 1, 2)):
            img = nib.Nifti1Image(data, aff)
            img.set_qform(aff, code=qc)
            img.set_sform(aff, code=sc)
            img.header["descrip"] = b"patient name that must not be copied"
            nib.save(img, os.path.join(d, sub, "v%d.nii.gz" % i))
        rows.append("in/v%d.nii.gz,lab/v%d.nii.gz" % (i, i))
    open(os.path.join(d, "pairs.csv"), "w").write("image,label\n" + "\n".join(rows) + "\n")
    open(os.path.join(d, "lesion_map.csv"), "w").write("value,class\n3,5\n")


# ---- reweight --------------------------------------------------------------------------------------------------------
def reweight(ckpt, seed):
    path = os.path.join(ckpt, "model.safetensors")
    sd = st_read(path)
    new = collections.OrderedDict()
    for k, v in sd.items():
        if k == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            new[k] = v  # the buffer (never trained)
        else:
            new[k] = sam_ref.test_weight(k, tuple(v.shape), seed).numpy()
    st_write(path, new)
    n_lora = sum(1 for k in new if "linear_b_" in k or ".w_b." in k)
    print("reweight: %d tensors (%d LoRA B, max |B| %.3g)" % (len(new), n_lora, max(
        [float(np.abs(v).max()) for k, v in new.items() if "linear_b_" in k or ".w_b." in k] or [0])))


# ---- the checkpoint as a plain SAM in float64 ------------------------------------------------------------------------
def merged_sam_sd(ckpt, task):
    """SAM-layout state dict (float64 tensors) of the fine-tuned model: LoRA merged, TASK's head as SAM's."""
    m = meta(ckpt)
    ti, t = task_of(m, task)
    sd = {k: torch.from_numpy(v).double() for k, v in st_read(os.path.join(ckpt, "model.safetensors")).items()}
    out = collections.OrderedDict()
    for k, v in sd.items():
        if k.startswith("tasks.") or "linear_a_" in k or "linear_b_" in k or ".w_a." in k or ".w_b." in k:
            continue
        if "Adapter." in k:
            raise SystemExit("adapters cannot be merged")
        if k.startswith(HEAD) and ti > 0:
            continue
        out[k] = v.clone()
    if ti > 0:
        pre = "tasks.%s." % t["name"]
        for k, v in sd.items():
            if k.startswith(pre):
                out[k[len(pre):]] = v.clone()
    for k in list(out):
        if k.endswith(".attn.qkv.weight"):
            base = k[:-len("weight")]
            if base + "linear_a_q.weight" in sd:
                D = out[k].shape[1]
                out[k][0:D] += sd[base + "linear_b_q.weight"] @ sd[base + "linear_a_q.weight"]
                out[k][2 * D:3 * D] += sd[base + "linear_b_v.weight"] @ sd[base + "linear_a_v.weight"]
        if k.endswith("_proj.weight") and k[:-len("weight")] + "w_a.weight" in sd:
            b = k[:-len("weight")]
            out[k] += sd[b + "w_b.weight"] @ sd[b + "w_a.weight"]
    return out, t


def sam_model(ckpt, task):
    sd, t = merged_sam_sd(ckpt, task)
    binary = meta(ckpt)["prompt"] != "none"  # prompt heads are binary: 3 tokens, channels (background, foreground)
    model = sam_ref.Sam("vit_test", num_multimask_outputs=2 if binary else t["num_cls"]).double()
    model.load_state_dict(sd, strict=True)
    return model, t


# ---- predict ---------------------------------------------------------------------------------------------------------
def check_geometry(name, a, b, req):
    ha, hb = a.header, b.header
    req(a.shape == b.shape, "shape %s vs input %s" % (b.shape, a.shape))
    req(np.array_equal(a.affine, b.affine), "affine differs:\n%s\n%s" % (b.affine, a.affine))
    req(np.array_equal(ha.get_sform(), hb.get_sform()), "sform differs")
    req(np.array_equal(ha.get_qform(), hb.get_qform()), "qform differs")
    req(int(ha["qform_code"]) == int(hb["qform_code"]) and int(ha["sform_code"]) == int(hb["sform_code"]),
        "codes q%d s%d vs input q%d s%d" % (hb["qform_code"], hb["sform_code"], ha["qform_code"], ha["sform_code"]))
    req(np.array_equal(ha["pixdim"][:4], hb["pixdim"][:4]), "pixdim differs")
    req(hb["descrip"].tobytes().strip(b"\0") == b"", "descrip not empty")


def reference(path, model, num_cls, resize, norm):
    """tests/finetune/predict_ref.py's reference (canonical RAS+, ingest's axis rule and percentile normalisation, the
    model in float64, argmax of tokens 1..num_cls) with the checkpoint's resize and norm: "longest" is SAM's (resize
    the longest side, pad, crop back), "stretch" resizes the slice to S×S and the logits from S×S straight to the
    slice; norm "sam" is SAM's mean/std on 0..255, "medsam" the [0,1] values."""
    if resize == "longest" and norm == "sam":
        return predict_ref.reference(path, model, num_cls)
    assert resize == "stretch"
    F = torch.nn.functional
    can = nib.as_closest_canonical(nib.load(path))
    v = np.asarray(can.dataobj, dtype=np.float32)
    axis = predict_ref.pick_axis(np.sqrt((can.affine[:3, :3] ** 2).sum(0)), v.shape)
    nz = v[v != 0].astype(np.float64)
    lo, hi = np.percentile(nz, [0.5, 99.5])
    q = np.floor(65535 * np.clip((v.astype(np.float64) - lo) / (hi - lo), 0, 1) + 0.5)
    img01 = (q.astype(np.float32) * np.float32(1 / 65535.0)).astype(np.float32)
    sl = np.moveaxis(img01, axis, 0)
    K, H, W = sl.shape
    S = model.img_size
    mean = torch.tensor(sam_ref.enc_ref.PIXEL_MEAN).view(1, 3, 1, 1).double()
    std = torch.tensor(sam_ref.enc_ref.PIXEL_STD).view(1, 3, 1, 1).double()
    x = F.interpolate(torch.from_numpy(sl).double()[:, None].repeat(1, 3, 1, 1), size=(S, S), mode="bilinear",
                      align_corners=False)
    if norm == "sam":
        x = (x * 255.0 - mean) / std
    with torch.no_grad():
        emb = model.image_encoder(x)
        sparse, dense = model.prompt_encoder(None, None, None)
        low, _ = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
        full = F.interpolate(F.interpolate(low, (S, S), mode="bilinear", align_corners=False), (H, W),
                             mode="bilinear", align_corners=False).numpy()
    lab = full.argmax(1)
    top2 = np.sort(full, axis=1)[:, -2:]
    return (np.moveaxis(lab, 0, axis), np.moveaxis(top2[:, 1] - top2[:, 0], 0, axis), np.abs(full).max(), can, axis)


def predict(ckpt, task, in_dir, out_dir):
    model, t = sam_model(ckpt, task)
    values = np.array(t["values"])
    m = meta(ckpt)
    resize, norm = m["preprocess"]["resize"], m["preprocess"]["norm"]
    assert m["preprocess"]["axis"] == "auto" and m["preprocess"]["intensity"] == "percentile"
    ok = True
    for path in sorted(glob.glob(os.path.join(in_dir, "*.nii*"))):
        name = os.path.basename(path)

        def req(cond, what):
            nonlocal ok
            if not cond:
                print("FAIL %s: %s" % (name, what))
                ok = False

        a, b = nib.load(path), nib.load(os.path.join(out_dir, name))
        check_geometry(name, a, b, req)
        lab = np.asarray(b.dataobj)
        req(set(np.unique(lab).tolist()) <= set(values.tolist()),
            "values %s not within the task's %s" % (np.unique(lab).tolist(), values.tolist()))
        if not ok:
            continue
        ref, margin, lscale, can, axis = reference(path, model, t["num_cls"], resize, norm)
        ref = values[ref]
        mine = nib.orientations.apply_orientation(lab, nib.orientations.io_orientation(a.affine))
        diff = mine != ref
        near = margin < 1e-3 * lscale
        counts = {int(v): int((ref == v).sum()) for v in values}
        print("%s: task %s, %s/%s, axis %d, %d voxels, reference classes %s, agreement %.5f, %d differ (%d near ties)" %
              (name, task, resize, norm, axis, ref.size, counts, 1 - diff.mean(), diff.sum(), (diff & near).sum()))
        req(not (diff & ~near).any(), "voxels differ away from ties")
        req(1 - diff.mean() >= 0.995, "agreement below 0.995")
        req(sum(c > 0.01 * ref.size for c in counts.values()) >= 2, "degenerate test: < 2 classes above 1%")
    return ok


def label_to_grid(lab, S, L):
    """data/preprocess.c ms_prep_label: nearest neighbour into the L×L label grid of the S×S frame (longest side)."""
    H, W = lab.shape
    oh, ow = sam_ref.enc_ref.resize_longest_shape(H, W, S)
    out = np.zeros((L, L), lab.dtype)
    step = S / L
    for i in range(L):
        fy = (i + 0.5) * step
        if fy >= oh:
            continue
        ry = min(max(int(np.floor(fy * H / oh)), 0), H - 1)
        for j in range(L):
            fx = (j + 0.5) * step
            if fx < ow:
                out[i, j] = lab[ry, min(max(int(np.floor(fx * W / ow)), 0), W - 1)]
    return out


def regions_of(mask, max_regions=3):
    """8-connected regions by size, ties: first pixel in raster order (scipy numbers them in raster order); the
    max_regions largest, as boolean masks."""
    import scipy.ndimage as ndi
    comp, n = ndi.label(mask, structure=np.ones((3, 3)))
    order = sorted((-(comp == k).sum(), k) for k in range(1, n + 1))
    return [comp == k for _, k in order[:max_regions]]


def boxes_of(regions, scale, max_regions=3):
    """finetune/prompt_gen.h, deterministic: per kept region the tight bounds x0·s .. x1·s + s − 1 (clipped), padded
    to max_regions by repeating the last box."""
    L = regions[0].shape[0]
    boxes = []
    for r in regions:
        ys, xs = np.nonzero(r)
        b = [xs.min() * scale, ys.min() * scale, xs.max() * scale + scale - 1, ys.max() * scale + scale - 1]
        boxes.append([min(max(v, 0), L * scale - 1) for v in b])
    while len(boxes) < max_regions:
        boxes.append(boxes[-1])
    return np.array(boxes, dtype=np.float64)


def points_of(regions, scale, n_points=5, max_points=8, ratio=0.1):
    """finetune/prompt_gen.h, deterministic: n_points split over the kept regions (largest first, region i gets
    n/k + (i < n mod k); with n <= k one point in each of the n largest), in each region its most interior pixels
    (exact Euclidean distance to the region's outside, the image border counting as outside; descending, ties in
    raster order) among those with d >= max(d[floor(ratio·m)], 1); centre of the scale×scale footprint; padded to
    max_points by repeating the last point."""
    import scipy.ndimage as ndi
    k = len(regions)
    parts = [1] * n_points if n_points <= k else [n_points // k + (i < n_points % k) for i in range(k)]
    pts = []
    for reg, part in zip(regions, parts):
        d2 = np.rint(ndi.distance_transform_edt(np.pad(reg, 1)) ** 2)[1:-1, 1:-1]
        ys, xs = np.nonzero(reg)  # raster order
        order = sorted(range(len(ys)), key=lambda i: (-d2[ys[i], xs[i]], i))
        d_sorted = [d2[ys[i], xs[i]] for i in order]
        t = min(int(ratio * len(order)), len(order) - 1)
        thr = max(d_sorted[t], 1.0)
        nc = sum(1 for d in d_sorted if d >= thr)
        for j in range(part):
            i = order[j % nc]
            pts.append([xs[i] * scale + (scale - 1) / 2.0, ys[i] * scale + (scale - 1) / 2.0])
    while len(pts) < max_points:
        pts.append(pts[-1])
    return np.array(pts, dtype=np.float64)


def predict_prompt(ckpt, task, in_dir, lab_dir, out_dir):
    """Prompted prediction (box, point or hybrid, meta.json): per slice and present class, the class's prompts on the
    label grid → binary logits (background, foreground) → per pixel the positive class with the largest
    l_fg − l_bg. The order of the sparse tokens does not matter to the decoder (no positional code among tokens), so
    the extra boxes are embedded as boxes here (the C side passes them as corner points labelled 2/3)."""
    model, t = sam_model(ckpt, task)
    m = meta(ckpt)
    mode = m["prompt"]
    assert mode in ("box", "point", "hybrid") and m["preprocess"]["resize"] == "longest"
    S, L = m["preprocess"]["input_size"], m["preprocess"]["label_size"]
    values = t["values"]
    ok = True
    pe = model.prompt_encoder
    for path in sorted(glob.glob(os.path.join(in_dir, "*.nii*"))):
        name = os.path.basename(path)
        a, b = nib.load(path), nib.load(os.path.join(out_dir, name))

        def req(cond, what):
            nonlocal ok
            if not cond:
                print("FAIL %s: %s" % (name, what))
                ok = False

        check_geometry(name, a, b, req)
        can = nib.as_closest_canonical(a)
        lab_can = np.asarray(nib.as_closest_canonical(nib.load(os.path.join(lab_dir, name))).dataobj).astype(np.int64)
        v = np.asarray(can.dataobj, dtype=np.float32)
        axis = predict_ref.pick_axis(np.sqrt((can.affine[:3, :3] ** 2).sum(0)), v.shape)
        nz = v[v != 0].astype(np.float64)
        lo, hi = np.percentile(nz, [0.5, 99.5])
        q = np.floor(65535 * np.clip((v.astype(np.float64) - lo) / (hi - lo), 0, 1) + 0.5)
        img01 = (q.astype(np.float32) * np.float32(1 / 65535.0)).astype(np.float32)
        sl, ls = np.moveaxis(img01, axis, 0), np.moveaxis(lab_can, axis, 0)
        K, H, W = sl.shape
        ref = np.zeros((K, H, W), np.int64)
        margin = np.full((K, H, W), np.inf)
        scale = 0.0
        with torch.no_grad():
            for k in range(K):
                x = sam_ref.enc_ref.preprocess(sl[k] * np.float32(255.0), S).double()
                emb = model.image_encoder(x)
                _, dense = pe(None, None, None)
                small = label_to_grid(ls[k], S, L)
                best = np.zeros((H, W))
                for c in range(1, len(values)):
                    mask = small == values[c]
                    if not mask.any():
                        continue
                    regions = regions_of(mask)
                    parts = []
                    if mode in ("point", "hybrid"):
                        xy = torch.from_numpy(points_of(regions, S // L))[None]
                        parts.append(pe._embed_points(xy, torch.ones(1, xy.shape[1]), mode == "point"))
                    if mode in ("box", "hybrid"):
                        bx = torch.from_numpy(boxes_of(regions, S // L))
                        parts += [pe._embed_boxes(bx[i:i + 1]) for i in range(len(bx))]
                    sparse = torch.cat(parts, 1)
                    low, _ = model.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, True)
                    full = sam_ref.postprocess(low, S, H, W)[0].numpy()
                    d = full[1] - full[0]
                    scale = max(scale, float(np.abs(full).max()))
                    margin[k] = np.minimum(margin[k], np.abs(d - best))  # closeness to the current decision
                    win = d > best
                    ref[k][win] = values[c]
                    best = np.where(win, d, best)
        ref = np.moveaxis(ref, 0, axis)
        margin = np.moveaxis(margin, 0, axis)
        mine = nib.orientations.apply_orientation(np.asarray(b.dataobj), nib.orientations.io_orientation(a.affine))
        diff = mine != ref
        near = margin < 1e-3 * scale
        counts = {int(c): int((ref == c).sum()) for c in values}
        print("%s: %s prompts, %d voxels, reference classes %s, agreement %.5f, %d differ (%d near ties)" %
              (name, mode, ref.size, counts, 1 - diff.mean(), diff.sum(), (diff & near).sum()))
        req(not (diff & ~near).any(), "voxels differ away from ties")
        req(1 - diff.mean() >= 0.995, "agreement below 0.995")
        req(sum(c > 0.005 * ref.size for c in counts.values()) >= 2, "degenerate test: no class above 0.5%")
    return ok


# ---- eval CSVs -------------------------------------------------------------------------------------------------------
def read_csv(p):
    lines = open(p).read().strip().split("\n")
    hdr = lines[0].split(",")
    rows = {}
    for ln in lines[1:]:
        f = dict(zip(hdr, ln.split(",")))
        rows[(f["volume"], int(f["class"]))] = f
    return hdr, rows


def csv_compare(a, b):
    ha, ra = read_csv(a)
    hb, rb = read_csv(b)
    ok = ha == hb and len(ra) > 0
    if ha != hb:
        print("FAIL: headers differ: %s vs %s" % (ha, hb))
    for key, f in ra.items():
        g = rb.get(key)
        if g is None:
            print("FAIL: %s class %d missing from %s" % (key[0], key[1], b))
            ok = False
            continue
        for col in ("dice", "iou", "hd95", "nsd"):
            if col not in f:
                continue
            x, y = float(f[col]), float(g[col])
            same = (np.isnan(x) and np.isnan(y)) or x == y or abs(x - y) <= 1e-6
            if not same:
                print("FAIL: %s class %d %s: %s vs %s" % (key[0], key[1], col, f[col], g[col]))
                ok = False
    dice = [float(f["dice"]) for f in ra.values()]
    print("csv: %d rows of %s found in %s with equal metrics; Dice %s" % (len(ra), a, b,
                                                                         ["%.4f" % d for d in dice]))
    return ok


# ---- export: SAM layout ----------------------------------------------------------------------------------------------
def load_weights(path):
    if path.endswith(".safetensors"):
        return collections.OrderedDict((k, torch.from_numpy(v)) for k, v in st_read(path).items())
    return torch.load(path)


def export_sam(ckpt, task, pth):
    ref_sd, t = merged_sam_sd(ckpt, task)
    got = load_weights(pth)
    model = sam_ref.Sam("vit_test", num_multimask_outputs=t["num_cls"])
    want_keys = list(model.state_dict().keys())
    ok = True
    if list(got.keys()) != want_keys:
        print("FAIL: key list differs from SAM's (%d vs %d keys); first differences: %s" % (
            len(got), len(want_keys), [(a, b) for a, b in zip(got.keys(), want_keys) if a != b][:3]))
        return False
    model.load_state_dict(got, strict=True)
    raw = st_read(os.path.join(ckpt, "model.safetensors"))
    err_merge, err_copy, n_merged = 0.0, 0.0, 0
    for k, v in got.items():
        r = ref_sd[k]
        e = float((v.double() - r).abs().max())
        if k in raw and np.array_equal(raw[k], v.numpy()) and e == 0:
            continue
        src = k if k in raw else None
        merged = (k.endswith(".attn.qkv.weight") and k[:-len("weight")] + "linear_a_q.weight" in raw) or \
                 (k.endswith("_proj.weight") and k[:-len("weight")] + "w_a.weight" in raw)
        if merged:
            n_merged += 1
            scale = float(r.abs().max())
            err_merge = max(err_merge, e / scale)
            if e > 1e-6 * scale:
                print("FAIL: %s merged with error %.3g (scale %.3g)" % (k, e, scale))
                ok = False
        else:
            err_copy = max(err_copy, e)
            if e != 0:
                print("FAIL: %s differs from the checkpoint (%s) by %.3g" % (k, src, e))
                ok = False
    print("export-sam: %d keys = SAM's order, strict load ok, %d LoRA-merged tensors (max rel. error %.2e vs float64), "
          "other tensors max error %.1e" % (len(got), n_merged, err_merge, err_copy))
    if n_merged == 0:
        print("FAIL: nothing was merged (not a LoRA checkpoint?)")
        ok = False
    return ok


# ---- export: finetune-SAM layout -------------------------------------------------------------------------------------
class LoRAQKV(nn.Module):  # finetune-SAM's _LoRA_qkv: attribute order qkv, a_q, b_q, a_v, b_v
    def __init__(self, qkv, r):
        super().__init__()
        D = qkv.in_features
        self.qkv = qkv
        self.linear_a_q = nn.Linear(D, r, bias=False)
        self.linear_b_q = nn.Linear(r, D, bias=False)
        self.linear_a_v = nn.Linear(D, r, bias=False)
        self.linear_b_v = nn.Linear(r, D, bias=False)


class LoRAProj(nn.Module):  # finetune-SAM's _LoRA_qkv_proj: proj, w_a, w_b
    def __init__(self, proj, r):
        super().__init__()
        self.proj = proj
        self.w_a = nn.Linear(proj.in_features, r, bias=False)
        self.w_b = nn.Linear(r, proj.out_features, bias=False)


class Adapter(nn.Module):  # common.py Adapter: D_fc1, D_fc2
    def __init__(self, D):
        super().__init__()
        self.D_fc1 = nn.Linear(D, int(D * 0.25))
        self.D_fc2 = nn.Linear(int(D * 0.25), D)


def blocks_of(lst, depth):
    return list(range(depth)) if not lst else [b for b in lst if b < depth]


def finetune_sam_model(m, t):
    """sam_ref.Sam rebuilt as finetune-SAM's classes would register it, for meta.json's configuration."""
    model = sam_ref.Sam("vit_test", num_multimask_outputs=t["num_cls"] if m["prompt"] == "none" else 2)
    enc, dec = model.image_encoder, model.mask_decoder
    r = m["lora_rank"]
    enc_peft = m["scope"] == "encoder+decoder"
    if m["method"] == "lora":
        if enc_peft:
            for i in blocks_of(m["lora_blocks"], len(enc.blocks)):
                enc.blocks[i].attn.qkv = LoRAQKV(enc.blocks[i].attn.qkv, r)
        layers = list(dec.transformer.layers)
        for a in [x for L in layers for x in (L.self_attn, L.cross_attn_token_to_image, L.cross_attn_image_to_token)] \
                + [dec.transformer.final_attn_token_to_image]:
            a.q_proj = LoRAProj(a.q_proj, r)
            a.v_proj = LoRAProj(a.v_proj, r)
    if m["method"] == "adapter":
        if enc_peft:
            for i in blocks_of(m["adapter_blocks"], len(enc.blocks)):
                blk = enc.blocks[i]
                D = blk.norm1.normalized_shape[0]
                mods = collections.OrderedDict()
                for name, mod in blk._modules.items():
                    if name == "norm2":  # Block.__init__: attn, then the adapters, then norm2
                        mods["MLP_Adapter"] = Adapter(D)
                        mods["Space_Adapter"] = Adapter(D)
                        mods["Depth_Adapter"] = Adapter(D)
                    mods[name] = mod
                blk._modules = mods
        for L in dec.transformer.layers:  # registered after cross_attn_image_to_token (the block's last module)
            L.MLP_Adapter = Adapter(256)
            L.Adapter = Adapter(256)
    return model


def export_fsam(ckpt, task, pth):
    m = meta(ckpt)
    ti, t = task_of(m, task)
    model = finetune_sam_model(m, t)
    want = model.state_dict()
    got = torch.load(pth)
    ok = True
    if list(got.keys()) != list(want.keys()):
        gk, wk = list(got.keys()), list(want.keys())
        print("FAIL: key order differs from finetune-SAM's (%d vs %d keys); first differences: %s; missing %s; extra %s"
              % (len(gk), len(wk), [(a, b) for a, b in zip(gk, wk) if a != b][:3], sorted(set(wk) - set(gk))[:5],
                 sorted(set(gk) - set(wk))[:5]))
        return False
    for k in want:
        if tuple(want[k].shape) != tuple(got[k].shape):
            print("FAIL: %s shape %s, expected %s" % (k, tuple(got[k].shape), tuple(want[k].shape)))
            ok = False
    if not ok:
        return False
    model.load_state_dict(got, strict=True)
    raw = st_read(os.path.join(ckpt, "model.safetensors"))
    pre = "tasks.%s." % t["name"] if ti > 0 else ""
    n_peft, n_zero = 0, 0
    for k, v in got.items():
        if "Depth_Adapter" in k:
            n_zero += 1
            if v.abs().max() != 0:
                print("FAIL: %s is not zero" % k)
                ok = False
            continue
        src = k.replace("attn.qkv.qkv.", "attn.qkv.").replace("_proj.proj.", "_proj.")
        if k.startswith(HEAD):
            src = pre + k
        if src not in raw:
            print("FAIL: %s (from %s) not in model.safetensors" % (k, src))
            ok = False
            continue
        if not np.array_equal(raw[src], v.numpy()):
            print("FAIL: %s differs from model.safetensors' %s" % (k, src))
            ok = False
        n_peft += "linear_" in k or ".w_a." in k or ".w_b." in k or "Adapter" in k
    print("export-fsam: %d keys in finetune-SAM's order and shapes (%s, %s), strict load ok, %d LoRA/adapter tensors "
          "equal to model.safetensors, %d Depth_Adapter tensors zero" % (len(got), m["method"], m["scope"], n_peft,
                                                                          n_zero))
    return ok


def labels_equal(ckpt, task, ft_dir, sam_dir):
    """The fine-tuned checkpoint's labels (task values) equal its SAM-layout export's (class c written as c)."""
    values = np.array(task_of(meta(ckpt), task)[1]["values"])
    n = nd = 0
    ok = True
    for f in sorted(glob.glob(os.path.join(ft_dir, "*.nii*"))):
        a = np.asarray(nib.load(f).dataobj)
        b = values[np.asarray(nib.load(os.path.join(sam_dir, os.path.basename(f))).dataobj)]
        n += a.size
        nd += int((a != b).sum())
        if len(np.unique(a)) < 2:
            print("FAIL: %s degenerate (one class)" % f)
            ok = False
    print("fine-tuned vs SAM-layout export: %d of %d voxels differ" % (nd, n))
    return ok and nd == 0


def run(a):
    if len(a) == 2 and a[0] == "make":
        make(a[1])
    elif len(a) == 3 and a[0] == "reweight":
        reweight(a[1], int(a[2]))
    elif len(a) == 5 and a[0] == "predict":
        return predict(a[1], a[2], a[3], a[4])
    elif len(a) == 6 and a[0] == "predict-prompt":
        return predict_prompt(a[1], a[2], a[3], a[4], a[5])
    elif len(a) >= 3 and len(a) % 2 == 1 and a[0] == "csv":
        return all([csv_compare(a[i], a[i + 1]) for i in range(1, len(a), 2)])
    elif len(a) == 5 and a[0] == "labels-equal":
        return labels_equal(a[1], a[2], a[3], a[4])
    elif len(a) == 4 and a[0] == "export-sam":
        return export_sam(a[1], a[2], a[3])
    elif len(a) == 4 and a[0] == "export-fsam":
        return export_fsam(a[1], a[2], a[3])
    else:
        print(__doc__)
        sys.exit(2)
    return True


def main():
    """Several commands separated by "--" run in one process (torch is imported once); all are run, the exit
    status is 1 when any failed."""
    cmds, cur = [], []
    for x in sys.argv[1:] + ["--"]:
        if x == "--":
            cmds.append(cur)
            cur = []
        else:
            cur.append(x)
    ok = all([run(c) for c in cmds])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
