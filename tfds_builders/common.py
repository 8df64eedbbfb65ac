"""Shared pieces of the medical TFDS builders: layout checks, image reading, patient-level splits.

Every builder in `tfds_builders/` reads a dataset's official manual-download layout from
`dl_manager.manual_dir` and writes array_record without TensorFlow. The conventions they share:

* Features: `image` (PNG or JPEG bytes; 1 channel for X-ray/ultrasound, 3 for colour), `label`
  (ClassLabel, or an int vector for multi-label data) where the dataset has one, `id` (int64: the
  record's index in its split, in a documented deterministic order), `file_name` (path relative to
  the manual dir) and `patient_id` (text; "" where the dataset has none). Segmentation targets are
  1-channel PNG `mask` images of the same size as `image`.
* Layout problems are found before anything is written, and the error names the manual dir, every
  missing path and what was expected; a broken image names its file. TFDS writes into an
  `*.incomplete*` folder and only renames it when the build succeeds, so a failed build leaves
  nothing a later run could mistake for a dataset.
* Where a dataset has no official split, `patient_split` makes a seeded, stratified split in which
  no patient is on two sides; the builder documents the seed and fractions.
"""
from __future__ import annotations

import collections
import csv
import gzip
import hashlib
import io
import os
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

# Decompression-bomb guard off: HRF and full-size fundus photographs are large but genuine.
Image.MAX_IMAGE_PIXELS = None

PathLike = str | os.PathLike


class LayoutError(FileNotFoundError):
  """The manual dir does not hold the layout a builder expects."""


def _listing(root: pathlib.Path, limit: int = 12) -> str:
  if not root.is_dir():
    return f"{root} does not exist"
  names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
  more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
  return f"found in {root}: {names[:limit] or 'nothing'}{more}"


def require(manual_dir: PathLike, *relpaths: str, dataset: str) -> list[pathlib.Path]:
  """Returns `manual_dir/relpath` for each relpath; raises LayoutError naming every one missing."""
  root = pathlib.Path(manual_dir)
  paths = [root / p for p in relpaths]
  missing = [str(p) for p in paths if not p.exists()]
  if missing:
    raise LayoutError(f"{dataset}: missing {missing} in the manual dir {root} ({_listing(root)}). "
                      f"See MANUAL_DOWNLOAD_INSTRUCTIONS of tfds_builders.{dataset} for the expected layout.")
  return paths


def find_first(manual_dir: PathLike, candidates: Sequence[str], *, dataset: str) -> pathlib.Path:
  """The first of several accepted locations of one file or folder (official archives nest differently)."""
  root = pathlib.Path(manual_dir)
  for c in candidates:
    if (root / c).exists():
      return root / c
  raise LayoutError(f"{dataset}: none of {list(candidates)} found in the manual dir {root} ({_listing(root)}). "
                    f"See MANUAL_DOWNLOAD_INSTRUCTIONS of tfds_builders.{dataset} for the expected layout.")


def list_files(folder: PathLike, suffixes: Iterable[str], *, dataset: str, min_count: int = 1) -> list[pathlib.Path]:
  """Files in `folder` (not recursive) with one of `suffixes` (case-insensitive), sorted by name."""
  folder = pathlib.Path(folder)
  suffixes = tuple(s.lower() for s in suffixes)
  if not folder.is_dir():
    raise LayoutError(f"{dataset}: expected a folder {folder} ({_listing(folder.parent)})")
  files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))
  if len(files) < min_count:
    raise LayoutError(f"{dataset}: expected at least {min_count} {'/'.join(suffixes)} file(s) in {folder}, "
                      f"found {len(files)} ({_listing(folder)})")
  return files


def read_csv(path: PathLike, *, required: Sequence[str] = (), dataset: str, delimiter: str = ",") -> list[dict]:
  """Rows of a CSV (optionally .gz) as dicts; raises ValueError naming the file and missing columns."""
  path = pathlib.Path(path)
  opener = gzip.open if path.name.endswith(".gz") else open
  try:
    with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f, delimiter=delimiter)
      columns = [c.strip() for c in (reader.fieldnames or [])]
      rows = [{(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()} for row in reader]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise ValueError(f"{dataset}: could not read the table {path}: {e}") from e
  missing = [c for c in required if c not in columns]
  if missing:
    raise ValueError(f"{dataset}: {path} lacks column(s) {missing}; found columns {columns}")
  return rows


def check_nonempty(split: str, items: Sequence, *, dataset: str, where: PathLike) -> None:
  """A split with no examples is an error, named with the place it was read from."""
  if not len(items):
    raise ValueError(f"{dataset}: split {split!r} would be empty (read from {where}); check the manual dir layout")


# ---------------------------------------------------------------- images


def load_image(path: PathLike, *, mode: str | None = None, min_side: int = 0) -> Image.Image:
  """Opens and fully decodes an image, converting 16-bit and float images to 8 bits.

  Args:
    path: any format PIL reads (JPEG, PNG incl. 16-bit, TIFF, GIF, PPM, BMP).
    mode: "RGB", "L" or None (keep what the file has, except that 16-bit grayscale becomes "L").
      16-bit grayscale is scaled by its own range (`to_8bit`); 16-bit colour PNGs (48/64 bpp) are
      decoded by Pillow to 8 bits per channel by keeping the high byte (0..65535 -> 0..255).
    min_side: > 0 lets a JPEG decode at 1/2, 1/4 or 1/8 scale (JPEG draft mode: several times
      faster for full-size photographs) while its shorter side stays >= min_side.

  Raises:
    ValueError naming the file when it is missing, truncated or not an image.
  """
  path = pathlib.Path(path)
  try:
    with Image.open(path) as im:
      if min_side and im.format == "JPEG" and min(im.size) > 2 * min_side:
        scale = min_side / min(im.size)
        im.draft(im.mode, (int(np.ceil(im.width * scale)), int(np.ceil(im.height * scale))))
      im.load()
      pil = to_8bit(im)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Could not read the image {path}: {e} (expected a readable image file)") from e
  if mode and pil.mode != mode:
    pil = pil.convert(mode)
  return pil


def to_8bit(pil: Image.Image) -> Image.Image:
  """16-bit / 32-bit grayscale (X-rays) scaled to 0-255 by the image's own range; others unchanged."""
  if pil.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    a = np.asarray(pil, np.float64)
    lo, hi = float(a.min()), float(a.max())
    scaled = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")
  if pil.mode in ("1", "P", "LA", "RGBA", "CMYK", "YCbCr", "PA", "La"):
    return pil.convert("RGB" if pil.mode in ("P", "RGBA", "CMYK", "YCbCr", "PA") else "L")
  return pil.copy()


def fov_box(pil: Image.Image, *, threshold: int = 10) -> tuple[int, int, int, int]:
  """Bounding box (left, top, right, bottom) of a fundus photograph's field of view (non-dark pixels)."""
  a = np.asarray(pil.convert("L"))
  rows, cols = np.nonzero(a.max(1) > threshold)[0], np.nonzero(a.max(0) > threshold)[0]
  if not len(rows) or not len(cols):
    return (0, 0, pil.width, pil.height)
  return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def square(pil: Image.Image, *, fit: str = "pad", box: tuple[int, int, int, int] | None = None) -> Image.Image:
  """Makes an image square: 'pad' (black borders, keeps everything), 'center_crop', or 'fov'
  (crop to the fundus field of view `box` or `fov_box(pil)`, then pad)."""
  if fit == "fov":
    pil = pil.crop(box or fov_box(pil))
    fit = "pad"
  w, h = pil.size
  if w == h:
    return pil
  s = max(w, h) if fit == "pad" else min(w, h)
  if fit == "pad":
    out = Image.new(pil.mode, (s, s))
    out.paste(pil, ((s - w) // 2, (s - h) // 2))
    return out
  if fit == "center_crop":
    left, top = (w - s) // 2, (h - s) // 2
    return pil.crop((left, top, left + s, top + s))
  raise ValueError(f"fit={fit!r}; expected 'pad', 'center_crop' or 'fov'")


def encode(pil: Image.Image, *, fmt: str = "png", quality: int = 95) -> bytes:
  """PNG or JPEG bytes of a PIL image (what `_generate_examples` yields: numpy would need TensorFlow)."""
  buf = io.BytesIO()
  if fmt == "png":
    pil.save(buf, format="PNG")
  elif fmt == "jpeg":
    pil.save(buf, format="JPEG", quality=quality)
  else:
    raise ValueError(f"fmt={fmt!r}; expected 'png' or 'jpeg'")
  return buf.getvalue()


def image_bytes(path: PathLike, *, mode: str, fmt: str = "png", size: int = 0, fit: str = "pad",
                quality: int = 95) -> bytes:
  """Reads, checks and re-encodes one image file.

  Args:
    path: the image file.
    mode: "RGB" or "L" (the builder's channel count).
    fmt: encoding stored in the dataset ("png" lossless; "jpeg" for large colour photographs).
    size: 0 keeps the original size (and the original bytes when the file already is `fmt` in
      `mode`); otherwise the image is made square by `fit` (see `square`) and resized to size x size.
  """
  path = pathlib.Path(path)
  pil = load_image(path, mode=mode, min_side=size)
  if not size:
    suffix = path.suffix.lower()
    same_format = (fmt == "png" and suffix == ".png") or (fmt == "jpeg" and suffix in (".jpg", ".jpeg"))
    if same_format:
      with Image.open(path) as probe:
        if probe.mode == mode:
          return path.read_bytes()  # Already what we store: no generation loss, no work.
    return encode(pil, fmt=fmt, quality=quality)
  pil = square(pil, fit=fit).resize((size, size), Image.BICUBIC)
  return encode(pil, fmt=fmt, quality=quality)


def mask_array(path: PathLike, *, threshold: int | None = 127) -> np.ndarray:
  """A binary annotation image (vessel map, lesion map, lung mask) as uint8 {0, 1} [H, W].

  threshold=None takes half the image's own maximum, for masks saved as 0/1 as well as 0/255.
  """
  pil = load_image(path)
  a = np.asarray(pil.convert("L"))
  if threshold is None:
    if a.max() == 0:
      return np.zeros_like(a)
    threshold = int(a.max()) // 2
  return (a > threshold).astype(np.uint8)


def resize_volume(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """A volume [D, H, W] or [D, H, W, C] resized to `shape` (d, h, w), as float32.

  Where every axis shrinks by a whole factor (64³ -> 32³) each output voxel is the mean of its block
  (area resize: exact, no aliasing). Otherwise trilinear on voxel edges (as PIL aligns pixels), after
  a Gaussian blur (sigma (factor - 1) / 2) along the axes that shrink, so thin structures do not alias.
  """
  v = np.asarray(volume, np.float32)
  src, shape = v.shape[:3], tuple(int(s) for s in shape)
  if len(shape) != 3 or v.ndim not in (3, 4) or min(shape) < 1:
    raise ValueError(f'resize_volume: volume {v.shape} to {shape}; expected [D, H, W(, C)] to 3 positive sizes')
  if src == shape:
    return v
  rest = v.shape[3:]
  if all(s >= t and s % t == 0 for s, t in zip(src, shape)):
    blocks = v.reshape(shape[0], src[0] // shape[0], shape[1], src[1] // shape[1], shape[2], src[2] // shape[2],
                       *rest)
    return blocks.mean(axis=(1, 3, 5))
  sigma = [max(0.0, (s / t - 1) / 2) for s, t in zip(src, shape)] + [0.0] * len(rest)
  if any(sigma):
    v = ndimage.gaussian_filter(v, sigma, mode='nearest')
  zoom = [t / s for s, t in zip(src, shape)] + [1.0] * len(rest)
  out = ndimage.zoom(v, zoom, order=1, mode='nearest', grid_mode=True)
  assert out.shape[:3] == shape, (out.shape, shape)
  return out


def file_md5(path: PathLike) -> str:
  """The hex MD5 of a file (what dataset releases publish to check downloads against)."""
  h = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def read_text(path: PathLike) -> str:
  """A free-text file (clinical reading, report): UTF-8, else Latin-1, stripped."""
  data = pathlib.Path(path).read_bytes()
  try:
    return data.decode("utf-8-sig").strip()
  except UnicodeDecodeError:
    return data.decode("latin-1").strip()


def mask_bytes(mask: np.ndarray, *, size: int = 0, fit: str = "pad",
               box: tuple[int, int, int, int] | None = None) -> bytes:
  """PNG bytes of an integer label map [H, W] (values are class ids, e.g. {0, 1}), resized with
  nearest neighbour so no new values appear. Use the same `size`, `fit` and `box` as the image."""
  pil = Image.fromarray(np.asarray(mask, np.uint8), "L")
  if size:
    pil = square(pil, fit=fit, box=box).resize((size, size), Image.NEAREST)
  return encode(pil, fmt="png")


# ---------------------------------------------------------------- splits


def _stable_hash(*parts) -> int:
  return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


def patient_split(keys: Sequence[str], *, fractions: Mapping[str, float], seed: int = 0,
                  patient_ids: Sequence[str] | None = None,
                  labels: Sequence | None = None) -> dict[str, list[int]]:
  """A seeded, stratified split in which no patient falls on two sides.

  Patients (each example its own patient when `patient_ids` is None or "") are grouped by their most
  common label, ordered within each group by a hash of (seed, patient id), and dealt to the splits in
  proportion to `fractions`, so each split gets about its share of every label. The result depends
  only on the keys, ids, labels and seed: not on the order the files were listed in.

  Args:
    keys: one unique key per example (e.g. file names); used to order examples within a split.
    fractions: split name -> fraction (they are normalised to sum to 1), e.g. {'train': .8, 'test': .2}.
    seed: the split seed the builder documents.
    patient_ids: optional patient id per example.
    labels: optional label per example (hashable: an int or a tuple for multi-label).

  Returns:
    split name -> indices into `keys`, sorted by key.
  """
  n = len(keys)
  if len(set(keys)) != n:
    raise ValueError("patient_split needs unique keys")
  pids = [str(p) if p not in (None, "") else f"__example__{k}" for p, k in
          zip(patient_ids if patient_ids is not None else [None] * n, keys)]
  labs = list(labels) if labels is not None else [0] * n
  by_patient: dict[str, list[int]] = collections.defaultdict(list)
  for i, p in enumerate(pids):
    by_patient[p].append(i)
  strata: dict[str, list[str]] = collections.defaultdict(list)
  for p, idx in by_patient.items():
    common = collections.Counter(repr(labs[i]) for i in idx).most_common()
    top = max(c for _, c in common)
    strata[min(l for l, c in common if c == top)].append(p)  # Ties broken by the label's repr.
  names = list(fractions)
  weights = np.asarray([fractions[s] for s in names], np.float64)
  if (weights < 0).any() or weights.sum() <= 0:
    raise ValueError(f"fractions must be non-negative with a positive sum, got {dict(fractions)}")
  cum = np.cumsum(weights / weights.sum())
  out: dict[str, list[int]] = {s: [] for s in names}
  for label in sorted(strata):
    patients = sorted(strata[label], key=lambda p: (_stable_hash(seed, p), p))
    sizes = np.asarray([len(by_patient[p]) for p in patients], np.float64)
    # Deal patients in hash order: each goes to the split whose share of this stratum's examples the
    # running total has reached, so splits match the fractions to within one patient.
    centres = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
    for p, c in zip(patients, centres):
      out[names[int(min(np.searchsorted(cum, c, side="right"), len(names) - 1))]].extend(by_patient[p])
  return {s: sorted(idx, key=lambda i: keys[i]) for s, idx in out.items()}
