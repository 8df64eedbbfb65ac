"""Lung fields of frontal chest X-rays from their intensities: a classical, deterministic proxy mask.

Used by mode "analyze" (`config.analysis.derived_mask = "lung_intensity"`) for the attention-in-lung
measure on chest X-ray data without lung masks (PneumoniaMNIST). Per image (numpy + scipy.ndimage):

1. Scale to [0, 1] (uint8 / 255; floats are taken as [0, 1]) and smooth lightly (Gaussian, sigma 0.5 px at
   28 px, growing with the size).
2. "Dark" pixels: below Otsu's threshold of the central region (the middle 80% of rows and columns,
   where lungs, mediastinum and diaphragm are; corners of air would skew it).
3. Air outside the body: pixels darker than half the median dark central pixel (0 is black in a
   radiograph, and air is far darker than aerated lung) that are connected to the image border, grown by
   one pixel to take the blurred body edge. They are removed from the dark pixels. Dark regions that merely
   touch the border are kept: 28 px crops such as PneumoniaMNIST cut the lungs at the image's edges.
4. A closing (joins lung pieces split by bright ribs), an opening (drops thin rims), a cut along the spine
   (the brightest column of the middle third: lungs joined across the top through the dark trachea are
   split), then the connected components: up to the two largest with at least `min_area` of the image each (and at least a tenth of
   the largest), holes filled (vessels, consolidation enclosed by aerated lung).

Limits (it is a proxy, not a trained segmenter): it finds "dark, aerated regions inside the body". Dense
consolidation or effusion at the lung edge makes the lung brighter than Otsu's threshold and is left out
(the mask shrinks precisely where pneumonia is); the heart and mediastinum overlapping the lungs are left
out (as a radiologist's lung-field mask usually does too); at 28 px the two lungs can merge into one
component through the trachea (the cut along the spine separates most), very tight crops or unusual
exposure give odd masks, and an image without aerated lung still gets its darkest regions as a mask
(only a flat image gets an empty one). Measured on the
synthetic chest X-rays of medssl_jax/synthetic/cxr.py and the real PneumoniaMNIST test split:
see tests/test_lung_mask.py. A lung segmenter trained on the Montgomery / Shenzhen masks (their TFDS
builders are in tfds_builders/) would be the better source of lung masks when those downloads are present.

Command (an overlay grid a person can check; PneumoniaMNIST read through its TFDS builder):

  python -m medssl_jax.data.lung_mask --split=test --out=/tmp/lungs.png --count=32
  python -m medssl_jax.data.lung_mask --synthetic_size=28 --count=32   # Dice vs the drawn lungs: 0.868 (64 px: 0.911)
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from medssl_jax.data import pipeline
from medssl_jax.data import shared
from medssl_jax.synthetic import cxr as synthetic_cxr

NAME = "lung fields (intensity segmentation)"  # How summaries name this mask.


def otsu(values: np.ndarray) -> float:
  """Otsu's threshold of values in [0, 1] (256 bins): the one maximising the between-class variance."""
  hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
  hist = hist.astype(np.float64)
  centres = (edges[:-1] + edges[1:]) / 2
  w0 = np.cumsum(hist)
  w1 = w0[-1] - w0
  m0 = np.cumsum(hist * centres)
  with np.errstate(invalid="ignore", divide="ignore"):
    between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
  between = np.nan_to_num(between[:-1], nan=-1.0)
  return float(edges[int(np.argmax(between)) + 1])


def _as_float_images(images) -> np.ndarray:
  x = np.asarray(images)
  if x.ndim == 4:
    if x.shape[-1] != 1:
      raise ValueError(f"images must be grayscale [N, H, W, 1] or [N, H, W]; got shape {x.shape} "
                       f"({x.shape[-1]} channels)")
    x = x[..., 0]
  if x.ndim != 3 or min(x.shape[1:], default=0) < 8 or x.shape[0] == 0:
    raise ValueError(f"images must be [N, H, W, 1] or [N, H, W] with N >= 1 and H, W >= 8; got shape {x.shape}")
  if x.dtype == np.uint8:
    return x.astype(np.float64) / 255.0
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"images must be uint8 (0-255) or float in [0, 1]; got dtype {x.dtype}")
  if not np.all(np.isfinite(x)) or x.min() < -1e-6 or x.max() > 1 + 1e-6:
    raise ValueError(f"float images must be finite and in [0, 1]; got range [{np.nanmin(x):g}, {np.nanmax(x):g}]")
  return np.clip(x.astype(np.float64), 0.0, 1.0)


def lung_mask(image: np.ndarray, *, min_area: float = 0.02) -> np.ndarray:
  """The lung fields of one image, float [H, W] in [0, 1]: bool [H, W] (method in the module docstring)."""
  h, w = image.shape
  scale = min(h, w) / 28.0
  smooth = ndimage.gaussian_filter(image, sigma=0.5 * max(1.0, scale) ** 0.5, mode="nearest")
  r0, r1, c0, c1 = int(0.1 * h), int(np.ceil(0.9 * h)), int(0.1 * w), int(np.ceil(0.9 * w))
  centre = smooth[r0:r1, c0:c1]
  threshold = otsu(centre)
  dark = smooth < threshold
  central_dark = centre[centre < threshold]
  if not len(central_dark):
    return np.zeros((h, w), bool)
  # Air: very dark and connected to the border (through very dark pixels).
  very_dark = smooth < 0.5 * float(np.median(central_dark))
  labels, n = ndimage.label(very_dark)
  border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
  air = np.isin(labels, border[border > 0])
  air = ndimage.binary_dilation(air, iterations=1)
  lungs = dark & ~air
  k = max(1, int(round(scale / 2)))  # Structuring-element radius: 1 px at 28-64 px.
  struct = ndimage.generate_binary_structure(2, 1)
  lungs = ndimage.binary_closing(lungs, structure=struct, iterations=k, border_value=0) & ~air
  lungs = ndimage.binary_opening(lungs, structure=struct, iterations=k)
  # The lungs never cross the midline: cut a strip at the spine (the brightest column of the middle third
  # over the central rows), which splits lungs joined across the top through the dark trachea / neck.
  third = slice(w // 3, w - w // 3)
  spine = w // 3 + int(np.argmax(smooth[r0:r1, third].mean(axis=0)))
  half = max(1, int(round(w / 28)))
  lungs[:, max(0, spine - half):spine + half] = False
  labels, n = ndimage.label(lungs)
  if n == 0:
    return np.zeros((h, w), bool)
  areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
  order = np.argsort(-areas, kind="stable")[:2]
  keep = [i + 1 for i in order if areas[i] >= min_area * h * w and areas[i] >= 0.1 * areas[order[0]]]
  out = np.zeros((h, w), bool)
  for i in keep:
    out |= ndimage.binary_fill_holes(labels == i)
  return out


def lung_masks(images, *, min_area: float = 0.02) -> np.ndarray:
  """Lung-field masks of frontal chest X-rays by intensity (see the module docstring for method and limits).

  Args:
    images: [N, H, W, 1] or [N, H, W]; uint8 (0-255) or float in [0, 1]; H, W >= 8.
    min_area: the smallest lung component kept, as a fraction of the image.

  Returns:
    bool [N, H, W]; all False for an image where no lung-like region is found.
  """
  if not 0.0 <= min_area < 0.5:
    raise ValueError(f"min_area must be a fraction of the image in [0, 0.5); got {min_area!r}")
  x = _as_float_images(images)
  return np.stack([lung_mask(img, min_area=min_area) for img in x])


def num_components(masks) -> np.ndarray:
  """Number of 4-connected components of each mask [N, H, W]: int [N]."""
  return np.array([ndimage.label(np.asarray(m, bool))[1] for m in masks], np.int64)


def dice(a, b) -> np.ndarray:
  """Per-image Dice 2|a & b| / (|a| + |b|) of boolean masks [N, H, W] (1 where both are empty): float64 [N]."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  inter = (a & b).sum(axis=(1, 2))
  total = a.sum(axis=(1, 2)) + b.sum(axis=(1, 2))
  return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def overlay_grid(images, masks, path: str, *, ncols: int = 8, zoom: int = 4) -> str:
  """A PNG grid of grayscale images with their masks tinted red (nearest zoom), for a person to check."""
  from PIL import Image
  x = _as_float_images(images)
  masks = np.asarray(masks, bool)
  if masks.shape != x.shape:
    raise ValueError(f"masks shape {masks.shape} != images shape {x.shape}")
  n, h, w = x.shape
  rows = -(-n // ncols)
  grid = np.zeros((rows * (h + 2), ncols * (w + 2), 3), np.float64)
  for i in range(n):
    rgb = np.repeat(x[i][..., None], 3, axis=-1)
    rgb[masks[i]] = 0.6 * rgb[masks[i]] + 0.4 * np.array([1.0, 0.0, 0.0])
    r, c = divmod(i, ncols)
    grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = rgb
  img = Image.fromarray((grid * 255 + 0.5).astype(np.uint8))
  img.resize((img.width * zoom, img.height * zoom), Image.NEAREST).save(path)
  return path


def synthetic_dice(*, size: int, count: int = 32) -> np.ndarray:
  """Per-image Dice of `lung_masks` against the lungs drawn into the first `count` synthetic chest X-rays
  (medssl_jax/synthetic/cxr.py: the union of the two lung ellipses in meta['lungs']) at `size` px."""
  images, truth = [], []
  yy, xx = np.mgrid[0:size, 0:size] + 0.5
  for i in range(count):
    image, _, _, meta = synthetic_cxr.render_example(i, size=size)
    images.append(image)
    truth.append(np.logical_or.reduce([((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
                                       for cx, cy, rx, ry in meta["lungs"].values()]))
  return dice(lung_masks(np.stack(images)), np.stack(truth))


def main(argv=None) -> None:
  """python -m medssl_jax.data.lung_mask [--split=test] [--out=lungs.png] [--count=32] [--data_dir=...]"""
  import argparse
  p = argparse.ArgumentParser(description="Lung-field masks of PneumoniaMNIST images as an overlay grid PNG.")
  p.add_argument("--split", default="test")
  p.add_argument("--out", default="lungs.png")
  p.add_argument("--count", type=int, default=32)
  p.add_argument("--data_dir", default="", help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  p.add_argument("--synthetic_size", type=int, default=0,
                 help="instead: Dice against the known lungs of --count synthetic CXRs at this size (e.g. 28, 64)")
  args = p.parse_args(argv)
  if args.synthetic_size:
    d = synthetic_dice(size=args.synthetic_size, count=args.count)
    print(f"{args.count} synthetic CXRs at {args.synthetic_size} px: Dice {d.mean():.3f} (min {d.min():.3f})")
    return
  manual = shared.dataset_dir("pneumoniamnist")
  builder = pipeline.get_builder("medmnist", config="pneumoniamnist", data_dir=args.data_dir or None,
                                 manual_dir=str(manual))
  n = min(args.count, pipeline.num_examples(builder, args.split))
  data = pipeline.load_split_arrays(builder, split=args.split, indices=np.arange(n))
  masks = lung_masks(data["image"])
  overlay_grid(data["image"], masks, args.out)
  comps = num_components(masks)
  labels, names = np.asarray(data["label"]), pipeline.class_names(builder)
  area = masks.mean(axis=(1, 2))
  print(f"{n} '{args.split}' images: mask area {area.mean():.3f} ± {area.std(ddof=1) if n > 1 else 0:.3f} "
        f"(min {area.min():.3f}, max {area.max():.3f}); components: "
        + ", ".join(f"{k}: {int(np.sum(comps == k))}" for k in range(int(comps.max()) + 1) if np.any(comps == k))
        + "; mean area by class " + ", ".join(f"{names[c] if c < len(names) else c}: {area[labels == c].mean():.3f}"
                                              for c in np.unique(labels)))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
