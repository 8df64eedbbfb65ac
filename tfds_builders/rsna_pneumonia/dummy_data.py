"""Writes a miniature RSNA Pneumonia Detection Challenge layout (our own tiny DICOMs) for tests.

The DICOMs are uncompressed (the Kaggle files are JPEG-baseline compressed, which pydicom decodes
with Pillow); most are 8-bit MONOCHROME2, one is 16-bit and one MONOCHROME1, to exercise the
conversion to 8 bits.
"""
from __future__ import annotations

import csv
import pathlib
import uuid

import numpy as np

CLASS_NAMES = ('Normal', 'No Lung Opacity / Not Normal', 'Lung Opacity')


def write_dicom(path, pixels: np.ndarray, *, monochrome1: bool = False, view: str = 'PA', sex: str = 'M',
                age: int = 51) -> None:
  """A minimal single-frame grayscale DICOM file (Secondary Capture, explicit VR little endian)."""
  import pydicom  # pylint: disable=import-outside-toplevel
  from pydicom.dataset import FileDataset, FileMetaDataset  # pylint: disable=import-outside-toplevel
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # pylint: disable=import-outside-toplevel
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.7'
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset(str(path), {}, file_meta=meta, preamble=b'\0' * 128)
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.Modality, ds.ViewPosition, ds.PatientSex, ds.PatientAge = 'CR', view, sex, f'{age:03d}Y'
  ds.PatientID = pathlib.Path(path).stem
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = 'MONOCHROME1' if monochrome1 else 'MONOCHROME2'
  bits = 16 if pixels.dtype == np.uint16 else 8
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
  ds.PixelData = np.ascontiguousarray(pixels).tobytes()
  pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def write(root, *, per_class: int = 10, size: tuple[int, int] = (32, 24), seed: int = 0) -> pathlib.Path:
  """`per_class` images of each class; Lung Opacity images get 1 or 2 boxes. Returns root.

  Image (width, height) = `size` (not square, to test the box rescaling with padding). The first
  image in patientId order is 16-bit and the second MONOCHROME1.
  """
  root = pathlib.Path(root)
  images = root / 'stage_2_train_images'
  images.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  w, h = size
  ids = sorted(str(uuid.UUID(int=int(rng.integers(0, 2**62)))) for _ in range(3 * per_class))
  labels, classes = [], []
  for k, pid in enumerate(ids):
    cls = k % 3  # Exactly per_class images of each class.
    pixels = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if k == 0:
      pixels = (pixels.astype(np.uint16) * 16)  # 12-bit range in 16-bit words.
    write_dicom(images / f'{pid}.dcm', pixels, monochrome1=(k == 1), view=('PA', 'AP')[k % 2], sex='MF'[k % 2],
                age=20 + k)
    classes.append([pid, CLASS_NAMES[cls]])
    if cls == 2:
      for b in range(1 + k % 2):
        box = [float(rng.integers(0, w // 2)), float(rng.integers(0, h // 2)), float(4 + b), float(5 + b)]
        labels.append([pid] + box + [1])
        if b:
          classes.append([pid, CLASS_NAMES[cls]])  # The official file repeats the row once per box.
    else:
      labels.append([pid, '', '', '', '', 0])
  with open(root / 'stage_2_train_labels.csv', 'w', newline='') as f:
    wr = csv.writer(f)
    wr.writerow(['patientId', 'x', 'y', 'width', 'height', 'Target'])
    wr.writerows(labels)
  with open(root / 'stage_2_detailed_class_info.csv', 'w', newline='') as f:
    wr = csv.writer(f)
    wr.writerow(['patientId', 'class'])
    wr.writerows(classes)
  return root
