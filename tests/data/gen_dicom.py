#!/usr/bin/python3
"""DICOM series for test_ingest_dicom.sh (pydicom + numpy + nibabel): MR, int16 with noise, one series per folder,
with headers full of identifying fields that hold distinctive random strings.

usage: gen_dicom.py OUT SEED

OUT/archive/axial/           an axial series (rows 64 x cols 48, 12 slices), file names random, not in slice order
OUT/archive/deep/er/sag/     a sagittal series (64 x 64, 10 slices)
OUT/archive/deep/obl/        an oblique series (56 x 64, 9 slices, tilted 15 degrees about the x axis)
OUT/mixed/                   a NIfTI volume beside a DICOM series (48 x 48, 8 slices)
OUT/single.dcm               one slice of its own
OUT/secrets.txt              every identifying string written into a header, one a line
Random ImageComments, descriptions etc. land in dcm2niix's NIfTI text fields, which mrisam must not read.
"""
import os
import sys

import nibabel as nib
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

out, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
MR = "1.2.840.10008.5.1.4.1.1.4"
secrets = []


def token(prefix, n=12):
    s = prefix + "".join(chr(65 + int(c)) for c in rng.integers(0, 26, n))
    secrets.append(s)
    return s


def date():
    s = f"19{int(rng.integers(20, 60))}{int(rng.integers(1, 13)):02d}{int(rng.integers(10, 29)):02d}"
    secrets.append(s)
    return s


def uid():
    tail = str(int(rng.integers(1, 10))) + "".join(str(int(d)) for d in rng.integers(0, 10, 23))
    secrets.append(tail)
    return "1.2.826.0.1.3680043.8.498." + tail


def series(folder, rows, cols, n, iop, spacing, thick, number, names="random", study=None):
    """Writes one series; returns nothing (the test reads the files back independently)."""
    os.makedirs(folder, exist_ok=True)
    row_dir, col_dir = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row_dir, col_dir)
    origin = rng.uniform(-80, -40, 3)
    # noise everywhere (int16, a few negative values), a brighter ellipsoid in the middle
    z, y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    vol = rng.normal(300, 90, (n, rows, cols)) + 900 * ((x ** 2 + y ** 2 / 0.6 + z ** 2 / 0.8) < 0.5)
    vol = np.clip(vol, -500, 32000).astype(np.int16)
    order = rng.permutation(n)
    ser_uid, ser_date = uid(), date()
    per_series = dict(SeriesDescription=token("SD"), ProtocolName=token("PR"), ImageComments=token("IC"),
                      DeviceSerialNumber=token("SN"))
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR
        meta.MediaStorageSOPInstanceUID = uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        base = token("IM", 6) if names == "random" else f"{int(order[k]) if names == 'order' else k:04d}"
        fn = f"{folder}/{base}"
        ds = FileDataset(fn, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = MR, meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.Manufacturer = "GENERIC"
        for f, v in study.items():
            setattr(ds, f, v)
        for f, v in per_series.items():
            setattr(ds, f, v)
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ser_date
        ds.StudyTime = ds.SeriesTime = "101112.131415"
        ds.SeriesInstanceUID = ser_uid
        ds.SeriesNumber = number
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.MagneticFieldStrength = 3
        ds.EchoTime, ds.RepetitionTime = 4.5, 2000
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SP", "2D"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        pos = origin + normal * thick * k
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.SliceLocation = f"{float(pos @ normal):.4f}"
        ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
        ds.SliceThickness = f"{thick:g}"
        ds.SpacingBetweenSlices = f"{thick:g}"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = vol[k].astype("<i2").tobytes()
        ds.save_as(fn, write_like_original=False)


def study():
    s = dict(PatientName=token("PN") + "^" + token("GN"), PatientID=token("ID"), PatientBirthDate=date(),
             PatientSex="O", InstitutionName=token("IN"), InstitutionAddress=token("IA"),
             ReferringPhysicianName=token("RP") + "^" + token("RG"), PerformingPhysicianName=token("PP"),
             OperatorsName=token("OP"), StationName=token("ST"), AccessionNumber=token("AC", 10),
             StudyID=token("SI", 8), StudyDescription=token("DE"), StudyDate=date(), StudyInstanceUID=uid(),
             FrameOfReferenceUID=uid())
    return s


s1, s2 = study(), study()
A = f"{out}/archive"
series(f"{A}/axial", 64, 48, 12, [1, 0, 0, 0, 1, 0], (0.9, 0.8), 3.0, 3, study=s1)
series(f"{A}/deep/er/sag", 64, 64, 10, [0, 1, 0, 0, 0, -1], (1.0, 1.0), 2.5, 4, names="order", study=s1)
t = np.deg2rad(15)
series(f"{A}/deep/obl", 56, 64, 9, [1, 0, 0, 0, np.cos(t), -np.sin(t)], (1.1, 0.9), 3.5, 5, study=s2)
series(f"{out}/mixed", 48, 48, 8, [1, 0, 0, 0, 1, 0], (1.2, 1.2), 4.0, 6, names="index", study=s2)
nib.Nifti1Image(rng.integers(1, 1000, (20, 18, 7)).astype(np.int16), np.diag([1.0, 1.0, 2.0, 1.0])).to_filename(
    f"{out}/mixed/plain.nii.gz")
tmp = f"{out}/single_tmp"
series(tmp, 40, 40, 1, [1, 0, 0, 0, 1, 0], (1.0, 1.0), 1.0, 7, names="index", study=s1)
os.rename(f"{tmp}/0000", f"{out}/single.dcm")
os.rmdir(tmp)
with open(f"{out}/secrets.txt", "w") as f:
    f.write("\n".join(secrets) + "\n")
print(f"gen_dicom: seed {seed}, {len(secrets)} identifying strings")
