"""Deterministic synthetic "fundus-like" images with a 4-grade lesion label (numpy + PIL only).

Each image is a black frame with a circular field of view (FOV) holding an orange/red retina, an optic
disc on the left or right ("eye side"), branching vessels leaving the disc, a darker macula and mild
noise. The label is carried only by small lesions:

  healthy:  none
  mild:     1-3 tiny dark-red dots (microaneurysms)
  moderate: 4-10 red dots and larger blots (haemorrhages)
  severe:   red dots/blots plus bright yellow spots (exudates)

Nuisance variation (hue, brightness, vignetting, illumination, disc position, vessel layout) is large
and lesions are small on purpose, so global colour statistics say little about the label and a
pretrained encoder should beat a random one under a linear probe.

Rendering happens at 2x resolution (anti-aliased PIL shapes) and is box-downsampled to `size`.
"""
from __future__ import annotations

import math
import pathlib

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ('healthy', 'mild', 'moderate', 'severe')
EYE_NAMES = ('left', 'right')
NUM_CLASSES = len(CLASS_NAMES)

_SS = 2  # Supersampling factor: draw at _SS * size, then box-downsample.
_RGB_KEY = np.array([0.299, 0.587, 0.114], np.float32)
# Fraction of an output pixel a vessel stroke must cover to count as vessel in the vessel map: a stroke
# 1 canvas pixel wide (the thinnest tapered ends) covers half an output pixel.
VESSEL_COVERAGE = 0.5


def label_for_index(index: int, *, seed: int = 0) -> int:
  """Label of example `index`: a seeded permutation of the 4 classes within each block of 4 indices.

  Blocks keep classes exactly balanced over any aligned range, while the permutation stops the label
  from being a plain function of `index % 4`.
  """
  block, pos = divmod(int(index), NUM_CLASSES)
  perm = np.random.default_rng([seed, block, 0x1AB]).permutation(NUM_CLASSES)
  return int(perm[pos])


def _walk(rng, start, angle, turn, length, step, n_branch, depth, out):
  """Appends (points, width_scale) polylines of a smooth random walk and its branches to `out`."""
  pts = [start]
  x, y = start
  n = max(2, int(length / step))
  branch_at = set()
  if n_branch and n > 4:  # Branch points away from both ends of the parent.
    branch_at = set(rng.choice(np.arange(2, n - 2), size=min(n_branch, n - 4), replace=False).tolist())
  for i in range(n):
    # Curvature drifts slowly so curves stay smooth rather than jagged.
    turn += rng.normal(0.0, 0.02)
    angle += turn + rng.normal(0.0, 0.05)
    x, y = x + step * math.cos(angle), y + step * math.sin(angle)
    pts.append((x, y))
    if i in branch_at and depth < 2:
      side = rng.choice((-1.0, 1.0))
      _walk(rng, (x, y), angle + side * rng.uniform(0.4, 0.9), rng.normal(0.0, 0.03),
            (length - i * step) * rng.uniform(0.4, 0.8), step, 1 if depth == 0 else 0, depth + 1, out)
  out.append((pts, 0.75 ** depth))


def _sample_in_fov(rng, cx, cy, r, disc, n, min_disc_dist):
  """Samples n points uniformly in 0.85 * FOV, rejecting points on/near the optic disc."""
  pts = []
  while len(pts) < n:
    rho = 0.85 * r * math.sqrt(rng.uniform())
    phi = rng.uniform(0.0, 2.0 * math.pi)
    x, y = cx + rho * math.cos(phi), cy + rho * math.sin(phi)
    if math.hypot(x - disc[0], y - disc[1]) > min_disc_dist:
      pts.append((x, y))
  return pts


def _background(rng, s: int):
  """The lesion-free retina on the 2x canvas: FOV geometry, colour, brightness, illumination, choroidal texture,
  optic disc and macula. Returns (image [s, s, 3] float32, geometry dict)."""
  r = s * rng.uniform(0.43, 0.49)
  cx = s / 2 + rng.normal(0.0, 0.015 * s)
  cy = s / 2 + rng.normal(0.0, 0.015 * s)
  eye = int(rng.integers(2))  # 0 = left, 1 = right; the disc sits nasally.
  side = -1.0 if eye == 0 else 1.0
  hue = rng.uniform(0.0, 1.0)  # 0 = deep red, 1 = orange.
  base = np.array([rng.uniform(0.70, 0.95),
                   0.18 + 0.27 * hue + rng.uniform(-0.04, 0.04),
                   0.04 + 0.10 * rng.uniform()], np.float32)
  bright = rng.uniform(0.45, 1.15)
  vignette = rng.uniform(0.25, 0.6)
  illum_dir = rng.uniform(0.0, 2.0 * math.pi)
  illum_amp = rng.uniform(0.0, 0.3)

  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
  dx, dy = (xx - cx) / r, (yy - cy) / r
  d2 = dx * dx + dy * dy
  shade = bright * (1.0 - vignette * d2) * (1.0 + illum_amp * (dx * math.cos(illum_dir)
                                                                + dy * math.sin(illum_dir)))
  # Smooth choroidal texture: a coarse random field upsampled bicubically (cheap in PIL).
  g = int(rng.integers(4, 9))
  field = rng.normal(0.0, 1.0, (g, g)).astype(np.float32)
  field = np.asarray(Image.fromarray(field).resize((s, s), Image.BICUBIC))
  shade = shade * (1.0 + rng.uniform(0.04, 0.15) * field)
  img = shade[..., None] * base

  # Optic disc (bright yellowish ellipse) and macula (darker spot on the other side).
  disc = (cx + side * r * rng.uniform(0.25, 0.42), cy + r * rng.normal(0.0, 0.06))
  drx = r * rng.uniform(0.11, 0.16)
  dry = drx * rng.uniform(1.0, 1.25)
  disc_col = np.array([1.0, rng.uniform(0.75, 0.95), rng.uniform(0.35, 0.6)], np.float32)
  e = ((xx - disc[0]) / drx) ** 2 + ((yy - disc[1]) / dry) ** 2
  a_disc = (np.clip(1.25 - e, 0.0, 1.0) * rng.uniform(0.75, 0.95))[..., None]
  img = img * (1 - a_disc) + a_disc * disc_col * min(1.0, bright + 0.35)
  mac = (cx - side * r * rng.uniform(0.0, 0.12), cy + r * rng.normal(0.0, 0.05))
  mr = r * rng.uniform(0.15, 0.25)
  img *= 1.0 - rng.uniform(0.1, 0.3) * np.exp(-((xx - mac[0]) ** 2 + (yy - mac[1]) ** 2) /
                                              (2 * mr * mr))[..., None]
  return img, dict(r=r, cx=cx, cy=cy, eye=eye, side=side, bright=bright, disc=disc, drx=drx, dry=dry,
                   disc_col=disc_col, xx=xx, yy=yy)


def _vessels(rng, img, geo: dict, s: int, unit: float):
  """Vessel arcades up and down curving towards the macula, plus nasal vessels, painted on `img`.
  Returns (image, vessel stroke mask: a PIL 'L' image on the 2x canvas)."""
  paths = []
  disc, r, tmp = geo["disc"], geo["r"], -geo["side"]  # tmp: unit x direction from disc towards the macula.
  for vert in (-1.0, 1.0):
    for _ in range(int(rng.integers(1, 3))):
      ang0 = math.atan2(vert, tmp * rng.uniform(0.1, 0.6))
      turn = -vert * tmp * rng.uniform(0.02, 0.06)  # Bend back towards the macula.
      if math.cos(ang0) * tmp < 0:
        turn = -turn
      _walk(rng, disc, ang0, turn, r * rng.uniform(1.0, 1.6), 4 * unit, int(rng.integers(1, 3)), 0, paths)
  for _ in range(int(rng.integers(2, 4))):
    ang0 = math.atan2(rng.uniform(-1.0, 1.0), -tmp)
    _walk(rng, disc, ang0, rng.normal(0.0, 0.02), r * rng.uniform(0.4, 0.8), 4 * unit,
          int(rng.integers(0, 2)), 0, paths)
  vmask = Image.new('L', (s, s), 0)
  vdraw = ImageDraw.Draw(vmask)
  w0 = rng.uniform(2.2, 3.2) * unit
  for pts, wscale in paths:
    n = len(pts) - 1
    for i in range(n):  # Taper along the vessel.
      w = max(1, int(round(w0 * wscale * (1.0 - 0.6 * i / n))))
      vdraw.line([pts[i], pts[i + 1]], fill=255, width=w)
  a_v = np.asarray(vmask, np.float32)[..., None] / 255.0 * rng.uniform(0.35, 0.6)
  return img * (1.0 - a_v) + a_v * img * np.array([0.55, 0.2, 0.25], np.float32), vmask


def _artefacts(rng, img, geo: dict):
  """Lens dust / reflex artefacts in every class: large, blurry, low-contrast dark or bright blobs, so
  "has dark/bright pixels" alone does not give the label away; lesions are small and sharp."""
  xx, yy, cx, cy, r = geo["xx"], geo["yy"], geo["cx"], geo["cy"], geo["r"]
  for _ in range(int(rng.integers(0, 4))):
    ax, ay = _sample_in_fov(rng, cx, cy, r, (-1e9, -1e9), 1, 0.0)[0]
    ar = r * rng.uniform(0.06, 0.14)
    blob = np.exp(-((xx - ax) ** 2 + (yy - ay) ** 2) / (2 * ar * ar))[..., None]
    if rng.uniform() < 0.5:
      img = img * (1.0 - rng.uniform(0.15, 0.35) * blob)
    else:
      img = img + rng.uniform(0.08, 0.2) * blob * np.array([1.0, 0.9, 0.6], np.float32)
  return img


def _lesion_masks(rng, label: int, geo: dict, s: int, unit: float):
  """The label-carrying lesions as masks on the 2x canvas: (counts (microaneurysms, haemorrhages, exudates), red
  mask, yellow mask), PIL 'L' images."""
  cx, cy, r, disc = geo["cx"], geo["cy"], geo["r"], geo["disc"]
  n_ma = n_hm = n_ex = 0
  if label == 1:
    n_ma = int(rng.integers(1, 4))
  elif label == 2:
    n_ma = int(rng.integers(1, 4))
    n_hm = int(rng.integers(max(1, 4 - n_ma), 11 - n_ma))
  elif label == 3:
    n_ma = int(rng.integers(1, 4))
    n_hm = int(rng.integers(max(1, 4 - n_ma), 11 - n_ma))
    n_ex = int(rng.integers(3, 10))
  red_mask = Image.new('L', (s, s), 0)
  yel_mask = Image.new('L', (s, s), 0)
  rdraw, ydraw = ImageDraw.Draw(red_mask), ImageDraw.Draw(yel_mask)
  keepout = 1.6 * max(geo["drx"], geo["dry"])
  for x, y in _sample_in_fov(rng, cx, cy, r, disc, n_ma, keepout):
    rad = rng.uniform(1.3, 2.0) * unit
    rdraw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=255)
  for x, y in _sample_in_fov(rng, cx, cy, r, disc, n_hm, keepout):
    rx, ry = rng.uniform(1.8, 3.8) * unit, rng.uniform(1.8, 3.8) * unit
    rdraw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=int(rng.integers(170, 256)))
  if n_ex:
    # Exudates cluster: a few centres with spots scattered around them.
    centres = _sample_in_fov(rng, cx, cy, r, disc, int(rng.integers(1, 3)), keepout)
    for k in range(n_ex):
      ccx, ccy = centres[k % len(centres)]
      x, y = ccx + rng.normal(0.0, 6 * unit), ccy + rng.normal(0.0, 6 * unit)
      if math.hypot(x - cx, y - cy) > 0.9 * r or math.hypot(x - disc[0], y - disc[1]) < keepout:
        x, y = ccx, ccy
      rad = rng.uniform(1.2, 2.4) * unit
      ydraw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=255)
  return (n_ma, n_hm, n_ex), red_mask, yel_mask


def render_example(index: int, *, size: int = 64, seed: int = 0, draw_lesions: bool = True,
                   return_masks: bool = False, lesion_scale: float = 1.0) -> tuple[np.ndarray, int, dict]:
  """Renders example `index` deterministically from (seed, index).

  Args:
    index: example index (>= 0).
    size: output side length in pixels.
    seed: dataset seed.
    draw_lesions: if False, render the identical image without lesions (for tests and figures).
    lesion_scale: lesion sizes (and exudate cluster spread) x this; the same draws, so 1.0 and 2.0 differ only in
      how large each lesion is drawn.
    return_masks: also put the vessel map and the field of view in `meta` (computed from the drawing
      masks after the fact: the image, label and other meta are identical either way).

  Returns:
    (image uint8 [size, size, 3], label int, meta dict with 'eye', 'num_lesions',
    'num_microaneurysms', 'num_haemorrhages', 'num_exudates' and 'lesion_pixels', the number of
    output pixels covered at least 25% by a lesion). With `return_masks`, meta also holds
    'vessel_mask' and 'fov_mask', uint8 {0, 1} [size, size]: an output pixel is vessel when at least
    VESSEL_COVERAGE of it (on the 2x canvas) is covered by a vessel stroke inside the FOV, and inside
    the FOV when at least half of it is inside the circle.
  """
  label = label_for_index(index, seed=seed)
  # Separate streams so lesions never perturb the nuisance draws (enables draw_lesions=False).
  rng_img, rng_les, rng_noise = (np.random.default_rng([seed, index, k]) for k in range(3))
  s = size * _SS
  unit = s / 128.0  # Geometry is tuned in units of a 128 px canvas (64 px output).
  img, geo = _background(rng_img, s)
  img, vmask = _vessels(rng_img, img, geo, s, unit)
  img = _artefacts(rng_img, img, geo)
  (n_ma, n_hm, n_ex), red_mask, yel_mask = _lesion_masks(rng_les, label, geo, s, unit * lesion_scale)
  num_lesions = n_ma + n_hm + n_ex
  lesion_pixels = 0
  if num_lesions and draw_lesions:
    a_r = np.asarray(red_mask, np.float32)[..., None] / 255.0
    a_y = np.asarray(yel_mask, np.float32)[..., None] / 255.0
    # Dark red relative to the local retina, so lesion contrast follows the image's brightness.
    red_col = img * np.array([0.45, 0.12, 0.15], np.float32) * rng_les.uniform(0.8, 1.2)
    # Exudates share the optic disc's colour and brightness, so bright-yellow pixel statistics
    # alone do not reveal them (every image has a disc); their shape and location do.
    yel_col = geo["disc_col"] * min(1.0, geo["bright"] + 0.35) * rng_les.uniform(0.8, 0.95)
    img = img * (1.0 - a_r) + a_r * red_col
    img = img * (1.0 - a_y) + a_y * yel_col
    a_l = np.maximum(a_r, a_y)[..., 0]
    lesion_pixels = int((a_l.reshape(size, _SS, size, _SS).mean(axis=(1, 3)) >= 0.25).sum())

  # --- FOV mask (anti-aliased at 2x), downsample, noise.
  cx, cy, r = geo["cx"], geo["cy"], geo["r"]
  fov = Image.new('L', (s, s), 0)
  ImageDraw.Draw(fov).ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
  img *= np.asarray(fov, np.float32)[..., None] / 255.0
  img = img.reshape(size, _SS, size, _SS, 3).mean(axis=(1, 3))
  fov_small = np.asarray(fov, np.float32).reshape(size, _SS, size, _SS).mean(axis=(1, 3)) / 255.0
  noise = rng_noise.normal(0.0, rng_noise.uniform(0.01, 0.03), img.shape).astype(np.float32)
  img = img + noise * fov_small[..., None]  # Keep the frame outside the FOV truly black.
  out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
  meta = {'eye': EYE_NAMES[geo["eye"]], 'num_lesions': num_lesions if draw_lesions else 0,
          'num_microaneurysms': n_ma, 'num_haemorrhages': n_hm, 'num_exudates': n_ex,
          'lesion_pixels': lesion_pixels}
  if return_masks:
    # Vessels outside the FOV are blacked out in the image, so they are not vessels in the map either.
    v = (np.asarray(vmask, np.float32) / 255.0) * (np.asarray(fov, np.float32) / 255.0)
    v = v.reshape(size, _SS, size, _SS).mean(axis=(1, 3))
    meta['vessel_mask'] = (v >= VESSEL_COVERAGE).astype(np.uint8)
    meta['fov_mask'] = (fov_small >= 0.5).astype(np.uint8)
  return out, label, meta


def generate(num: int, *, size: int = 64, seed: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Renders examples start..start+num-1: (images uint8 [num, size, size, 3], labels int64 [num])."""
  images = np.empty((num, size, size, 3), np.uint8)
  labels = np.empty((num,), np.int64)
  for i in range(num):
    images[i], labels[i], _ = render_example(start + i, size=size, seed=seed)
  return images, labels


def save_grid(path: str | pathlib.Path, *, size: int = 64, per_class: int = 8, seed: int = 0,
              scale: int = 2, lesion_scale: float = 1.0) -> np.ndarray:
  """Saves a PNG grid (one row per class, `per_class` columns), upscaled by `scale`; returns it."""
  rows = [[] for _ in CLASS_NAMES]
  index = 0
  while min(len(r) for r in rows) < per_class:
    image, label, _ = render_example(index, size=size, seed=seed, lesion_scale=lesion_scale)
    if len(rows[label]) < per_class:
      rows[label].append(image)
    index += 1
  pad = 2
  grid = np.full((NUM_CLASSES * (size + pad) + pad, per_class * (size + pad) + pad, 3), 255, np.uint8)
  for c, row in enumerate(rows):
    for j, image in enumerate(row):
      y, x = pad + c * (size + pad), pad + j * (size + pad)
      grid[y:y + size, x:x + size] = image
  pil = Image.fromarray(grid)
  if scale != 1:
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
  pil.save(str(path))
  return np.asarray(pil)


if __name__ == '__main__':
  # python -m medssl_jax.synthetic.fundus docs/synthetic_fundus.png [lesion_scale]  (rows: healthy..severe)
  import sys
  out = sys.argv[1] if len(sys.argv) > 1 else 'synthetic_fundus.png'
  lesions = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
  save_grid(out, size=64, per_class=8, seed=0, scale=2, lesion_scale=lesions)
  print(f'wrote {out}: {", ".join(CLASS_NAMES)} (one row each), 8 examples at 64 px, seed 0, lesions x{lesions:g}')
