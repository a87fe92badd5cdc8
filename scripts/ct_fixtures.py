#!/usr/bin/env python3
"""Writes the CT reader fixtures under ct/tests/fixtures/ with other tools: DICOM series as
pydicom and GDCM write them, NIfTI volumes as nibabel writes them (FSL's layout included).

Run by hand, never by CI (the tests read the committed files):

    python3 -m venv /tmp/dcmvenv
    /tmp/dcmvenv/bin/pip install pydicom python-gdcm numpy nibabel
    /tmp/dcmvenv/bin/python scripts/ct_fixtures.py

Every volume holds the same HU pattern, written in a3d's orientation (slices inferior to
superior, rows anterior to posterior, columns right to left):

    hu(z, y, x) = (37 x + 11 y + 101 z) mod 3000 - 1024

so the tests recompute what each file must read as. `ct/tests/other_tools.rs` reads them.
"""
import os
import shutil

import gdcm
import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

ROOT = os.path.join(os.path.dirname(__file__), "..", "ct", "tests", "fixtures")
Z, H, W = 3, 20, 24
SPACING = (2.5, 0.75, 0.7)  # z, y, x in mm
ORIGIN = (-8.4, -7.5, -100.0)  # LPS of voxel (0, 0, 0)


def hu_pattern():
    z, y, x = np.meshgrid(np.arange(Z), np.arange(H), np.arange(W), indexing="ij")
    return ((37 * x + 11 * y + 101 * z) % 3000 - 1024).astype(np.int32)


def ct_slice(k, hu, series_uid, signed, bits_stored=16):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "a3d^fixture"
    ds.PatientID = "a3d-fixture"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[series_uid, "study"])
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid, "frame"])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    # Instance numbers run against the positions: only ImagePositionPatient orders slices.
    ds.InstanceNumber = Z - k
    ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + SPACING[0] * k]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [SPACING[1], SPACING[2]]
    ds.SliceThickness = SPACING[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = H, W
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    if signed:
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        stored = hu[k].astype(np.int16)
    else:
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        stored = (hu[k] + 1024).astype(np.uint16)
    ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()
    return ds


def meta(ds, ts):
    m = FileMetaDataset()
    m.MediaStorageSOPClassUID = ds.SOPClassUID
    m.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    m.TransferSyntaxUID = ts
    return m


def series(name, ts=ExplicitVRLittleEndian, signed=False, bits_stored=16, no_meta=False,
           compress=None, gdcm_syntax=None):
    out = os.path.join(ROOT, "dicom", name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    hu = hu_pattern()
    uid = generate_uid()
    for k in range(Z):
        ds = ct_slice(k, hu, uid, signed, bits_stored)
        # File names run against the positions too.
        path = os.path.join(out, f"IM{Z - k:04d}")
        if no_meta:
            # A bare data set, as old tools wrote it: no preamble, no file meta group.
            pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True,
                             enforce_file_format=False)
            continue
        ds.file_meta = meta(ds, ts)
        if compress is not None:
            ds.compress(compress)
        big = ts == ExplicitVRBigEndian
        if big:
            # pydicom writes the pixel bytes as given: big-endian words for a big-endian file.
            ds["PixelData"].VR = "OW"
            ds.PixelData = np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2").tobytes()
        ds.save_as(path, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=not big,
                   enforce_file_format=True)
        if gdcm_syntax is not None:
            reader = gdcm.ImageReader()
            reader.SetFileName(path)
            assert reader.Read(), path
            change = gdcm.ImageChangeTransferSyntax()
            change.SetTransferSyntax(gdcm.TransferSyntax(gdcm_syntax))
            change.SetInput(reader.GetImage())
            assert change.Change(), (name, gdcm_syntax)
            writer = gdcm.ImageWriter()
            writer.SetFileName(path)
            writer.SetFile(reader.GetFile())
            writer.SetImage(change.GetOutput())
            assert writer.Write(), path
    # The files must read back as the pattern with pydicom (and GDCM's decoders) first.
    for k in range(Z):
        ds = pydicom.dcmread(os.path.join(out, f"IM{Z - k:04d}"), force=True)
        if no_meta:
            ds.file_meta = meta(ds, ImplicitVRLittleEndian)
        got = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(got, hu[k]), (name, k)
    print("wrote", out)


def nifti():
    out = os.path.join(ROOT, "nifti")
    os.makedirs(out, exist_ok=True)
    hu = hu_pattern()  # [z, y, x] in a3d's orientation
    # Stored the nibabel way: array axes (i, j, k) = (x, y, z) with an affine to RAS.
    # a3d's x runs right to left (RAS -x), y anterior to posterior (RAS -y), z up (RAS +z).
    data = np.transpose(hu, (2, 1, 0))
    affine = np.diag([-SPACING[2], -SPACING[1], SPACING[0], 1.0])
    affine[:3, 3] = [-ORIGIN[0], -ORIGIN[1], ORIGIN[2]]
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, os.path.join(out, "nibabel_float32.nii.gz"))
    # FSL's layout: int16 stored flipped in x (a "radiological" array, positive determinant),
    # qform and sform both scanner, a slope and intercept.
    flipped = data[::-1, :, :]
    faff = affine.copy()
    faff[0, 0] = SPACING[2]
    faff[0, 3] = -ORIGIN[0] - SPACING[2] * (W - 1)
    stored = ((flipped + 1024) * 2).astype(np.int16)  # hu = stored * 0.5 - 1024
    img = nib.Nifti1Image(stored, faff)
    img.header.set_slope_inter(0.5, -1024.0)
    img.set_qform(faff, code=1)
    img.set_sform(faff, code=1)
    nib.save(img, os.path.join(out, "fsl_int16_scaled.nii.gz"))
    img = nib.Nifti2Image(data.astype(np.float32), affine)
    nib.save(img, os.path.join(out, "nibabel_nifti2.nii"))
    print("wrote", out)


def main():
    series("pydicom_implicit_le_signed", ts=ImplicitVRLittleEndian, signed=True)
    series("pydicom_explicit_be", ts=ExplicitVRBigEndian)
    series("pydicom_no_meta", no_meta=True, signed=True)
    series("pydicom_12bit", bits_stored=12)
    series("pydicom_rle", compress=RLELossless)
    series("gdcm_jpeg_lossless", gdcm_syntax=gdcm.TransferSyntax.JPEGLosslessProcess14_1)
    series("gdcm_jpeg2000_lossless", gdcm_syntax=gdcm.TransferSyntax.JPEG2000Lossless)
    series("gdcm_jpegls_lossless", gdcm_syntax=gdcm.TransferSyntax.JPEGLSLossless)
    nifti()


if __name__ == "__main__":
    main()
