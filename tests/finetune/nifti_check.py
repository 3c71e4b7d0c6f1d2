"""tests/finetune/nifti_check.py — reference volumes for the label writer and the nibabel-side checks.

gen DIR SEED          writes DIR/ref_*.nii[.gz]: oblique LAS-like sform+qform int16 with free text and an extension;
                      a permuted oblique qform-only float32 with scl_slope; a big-endian 4D volume.
check REF OUT         checks OUT (written by nifti_write_driver from REF) with nibabel: dims, pixdim, codes, quaternion,
                      srows, units exactly; no free text, no extension; datatype; voxel values = rint(REF frame 0).
"""
import gzip
import io
import sys

import numpy as np
import nibabel as nib


def rot(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def gen(d, seed):
    rng = np.random.default_rng(seed)
    # 1: LAS-like (x flipped), oblique by a few degrees, odd dims, values up to 300 (uint16 output)
    a = np.eye(4)
    a[:3, :3] = rot(0.07, -0.11, 0.05) @ np.diag([-1.2, 0.9, 2.5])
    a[:3, 3] = [41.3, -27.7, 13.1]
    data = rng.integers(0, 301, size=(7, 9, 5)).astype(np.int16)
    img = nib.Nifti1Image(data, a)
    img.set_sform(a, code=2)
    img.set_qform(a, code=1)
    h = img.header
    h['descrip'] = b'John Doe 1970-01-01 secret'
    h['aux_file'] = b'secret-aux'
    h['intent_name'] = b'secretint'
    h['db_name'] = b'secretdb'
    h.set_xyzt_units('mm', 'sec')
    h.set_dim_info(freq=1, phase=0, slice=2)
    h.extensions.append(nib.nifti1.Nifti1Extension(6, b'PATIENT secret comment'))
    nib.save(img, f'{d}/ref_las_oblique.nii.gz')
    # 2: axes permuted (voxel x -> world S, y -> world L, z -> world A), oblique, qform only, float32, scl_slope 2
    p = np.array([[0, -1.0, 0], [0, 0, 1.1], [0.8, 0, 0]])
    a2 = np.eye(4)
    a2[:3, :3] = rot(-0.05, 0.08, 0.12) @ p
    a2[:3, 3] = [-12.5, 30.25, -7.0]
    v = rng.integers(0, 3, size=(11, 6, 3)).astype(np.float32)
    img2 = nib.Nifti1Image(v, None)
    img2.set_qform(a2, code=1)
    img2.set_sform(np.eye(4), code=0)
    img2.header.set_slope_inter(2.0, 1.0)  # stored v -> 2 v + 1 in 1..5 (uint8 output)
    nib.save(img2, f'{d}/ref_perm_qform.nii')
    # 3: big-endian 4D int16, sform scanner code 1 (frame 0 is written, dim[0] becomes 3)
    a3 = np.diag([1.5, -1.5, 3.0, 1.0])
    a3[:3, 3] = [5, 6, -7]
    v3 = rng.integers(0, 4, size=(5, 4, 3, 2)).astype('>i2')
    img3 = nib.Nifti1Image(v3, a3)
    img3.set_sform(a3, code=1)
    img3.set_qform(a3, code=1)
    nib.save(img3, f'{d}/ref_4d_be.nii.gz')


def check(ref_path, out_path):
    ref, out = nib.load(ref_path), nib.load(out_path)
    rh, oh = ref.header, out.header
    bad = []

    def need(cond, what):
        if not cond:
            bad.append(what)

    rd = rh['dim']
    if rd[0] > 3 and np.prod(rd[4:rd[0] + 1]) > 1:
        need(oh['dim'][0] == 3 and np.array_equal(oh['dim'][1:4], rd[1:4]) and all(oh['dim'][4:] == 1),
             f"dims {oh['dim']} for a 4D reference {rd}")
    else:
        need(np.array_equal(oh['dim'], rd), f"dim {oh['dim']} != {rd}")
    need(np.array_equal(oh['pixdim'], rh['pixdim']), f"pixdim {oh['pixdim']} != {rh['pixdim']}")
    for k in ['qform_code', 'sform_code', 'quatern_b', 'quatern_c', 'quatern_d', 'qoffset_x', 'qoffset_y',
              'qoffset_z', 'srow_x', 'srow_y', 'srow_z', 'xyzt_units', 'dim_info']:
        need(np.array_equal(oh[k], rh[k]), f"{k}: {oh[k]} != {rh[k]}")
    need(np.array_equal(out.get_qform(), ref.get_qform()), 'get_qform differs')
    need(np.array_equal(out.get_sform(), ref.get_sform()), 'get_sform differs')
    need(np.array_equal(out.affine, ref.affine), 'affine differs')
    for k in ['descrip', 'aux_file', 'intent_name', 'db_name']:
        need(oh[k].item() == b'', f"{k} not empty: {oh[k]}")
    need(len(oh.extensions) == 0, 'extensions written')
    raw = open(out_path, 'rb').read()
    if out_path.endswith('.gz'):
        raw = gzip.decompress(raw)
    # nibabel's loaded header consumes vox_offset and the scaling: read the raw header for those
    fh = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:352]))
    need(fh['vox_offset'] == 352 and fh['scl_slope'] == 1 and fh['scl_inter'] == 0 and fh['sizeof_hdr'] == 348
         and fh['magic'].item() == b'n+1' and fh.endianness == '<',
         f"vox_offset {fh['vox_offset']} slope {fh['scl_slope']} inter {fh['scl_inter']} magic {fh['magic']}")
    need(b'secret' not in raw and b'Doe' not in raw, 'free text leaked into the file')
    need(raw[348:352] == b'\0\0\0\0', 'extension flag set')
    want = np.rint(np.asarray(ref.get_fdata()))
    if want.ndim > 3:
        want = want[..., 0].reshape(want.shape[:3])
    got = np.asarray(out.dataobj)
    need(got.dtype == (np.uint16 if want.max() > 255 else np.uint8), f"dtype {got.dtype} for max {want.max()}")
    need(got.shape == want.shape and np.array_equal(got.astype(np.int64), want.astype(np.int64)),
         f"voxel values differ ({int(np.sum(got != want)) if got.shape == want.shape else 'shape'} voxels)")
    need(len(raw) == 352 + got.size * got.dtype.itemsize, f"file length {len(raw)}")
    for b in bad:
        print(f"FAIL {out_path}: {b}")
    print(f"{out_path}: {'ok' if not bad else 'FAILED'} ({got.shape}, {got.dtype}, max {want.max():.0f}, "
          f"{nib.aff2axcodes(out.affine)})")
    return 1 if bad else 0


if __name__ == '__main__':
    if sys.argv[1] == 'gen':
        gen(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(check(sys.argv[2], sys.argv[3]))
