"""Deterministic synthetic chest-X-ray-like images paired with templated reports (numpy + PIL only).

Each grayscale image shows a body silhouette, two dark lungs crossed by faint ribs, a bright
mediastinum and heart. Findings are drawn into the image and described in the report:

  cardiomegaly:  the heart silhouette is enlarged (cardiothoracic ratio ~0.6 instead of ~0.45)
  consolidation: bright blurry blobs in the lower zone of the right, left or both lungs
  effusion:      a fluid level (bright, with a meniscus) at the base of the right, left or both lungs

Laterality follows the radiological convention: the patient's right lung is on the image's LEFT.
`label` is a 0/1 vector over FINDINGS; the report names exactly those findings (with the side for
consolidation and effusion), negates the absent ones ("No pleural effusion.") and varies its phrasing
and sentence order. Everything is a function of (seed, index): the anatomy of a patient (two
consecutive indices per patient) comes from (seed, patient), the findings, report wording and noise
from (seed, index) on separate random streams, so `draw_findings=False` renders the same image
without the findings.
"""
from __future__ import annotations


import numpy as np
from PIL import Image, ImageDraw

FINDINGS = ('cardiomegaly', 'consolidation', 'effusion')
NUM_FINDINGS = len(FINDINGS)
SIDES = ('right', 'left', 'both')  # Patient's side; 'right' is the image's left half.
IMAGES_PER_PATIENT = 2
FINDING_PROB = 0.35  # Each finding independently; ~27% of images are normal.

_SS = 2  # Supersampling factor: draw at _SS * size, then box-downsample.


def patient_of(index: int) -> int:
  """Patient number of example `index` (IMAGES_PER_PATIENT consecutive indices per patient)."""
  return int(index) // IMAGES_PER_PATIENT


def patient_id(index: int) -> str:
  """Patient id text of example `index`, e.g. 'synth00012'."""
  return f'synth{patient_of(index):05d}'


def sample_findings(index: int, *, seed: int = 0) -> dict:
  """The findings of example `index`: {'cardiomegaly': bool, 'consolidation': side or None,
  'effusion': side or None} with side in SIDES."""
  rng = np.random.default_rng([seed, int(index), 0xC0])
  present = rng.uniform(size=NUM_FINDINGS) < FINDING_PROB
  sides = rng.integers(0, len(SIDES), size=2)
  return {'cardiomegaly': bool(present[0]),
          'consolidation': SIDES[sides[0]] if present[1] else None,
          'effusion': SIDES[sides[1]] if present[2] else None}


def label_vector(findings: dict) -> np.ndarray:
  """int64 [NUM_FINDINGS] 0/1 vector of a findings dict (order of FINDINGS)."""
  return np.array([int(bool(findings[f])) for f in FINDINGS], np.int64)


def _sides(side: str | None) -> tuple[str, ...]:
  return () if side is None else ('right', 'left') if side == 'both' else (side,)


def _blur(img: np.ndarray) -> np.ndarray:
  """Separable [1, 2, 1] / 4 blur with edge padding (softens the drawn edges like a real X-ray)."""
  p = np.pad(img, 1, mode='edge')
  p = (p[:-2] + 2.0 * p[1:-1] + p[2:]) / 4.0
  return (p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]) / 4.0


def render_example(index: int, *, size: int = 64, seed: int = 0,
                   draw_findings: bool = True) -> tuple[np.ndarray, np.ndarray, str, dict]:
  """Renders example `index` deterministically from (seed, index).

  Returns:
    (image uint8 [size, size, 1], label int64 [NUM_FINDINGS], report str, meta) where meta holds
    'findings' (see sample_findings), 'patient_id', and 'lungs': {'right': (cx, cy, rx, ry), 'left':
    ...}, each lung's ellipse in output pixels (the lower zone is cy + ry / 3 <= y <= cy + ry).
    With draw_findings=False the image has no findings drawn (label, report and meta unchanged).
  """
  index = int(index)
  findings = sample_findings(index, seed=seed)
  rng_a = np.random.default_rng([seed, patient_of(index), 0xA1])  # Patient anatomy.
  rng_j, rng_f, rng_n = (np.random.default_rng([seed, index, k]) for k in (1, 2, 3))
  s = size * _SS
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5

  def ellipse(cx, cy, rx, ry):
    """Anti-aliased-ish soft ellipse mask in [0, 1]."""
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    edge = 1.5 / max(min(rx, ry), 1.0)
    return np.clip((1.0 - d) / edge + 0.5, 0.0, 1.0)

  # --- Anatomy of the patient, with a small per-image jitter (positioning).
  off_x, off_y = rng_j.normal(0.0, 0.015 * s, size=2)
  mid = s / 2 + off_x
  body = ellipse(mid, s * 0.62 + off_y, s * rng_a.uniform(0.42, 0.48), s * 0.62)
  lung_cy = s * rng_a.uniform(0.44, 0.48) + off_y
  lung_ry = s * rng_a.uniform(0.26, 0.30)
  lungs_canvas = {}
  for name, sign in (('right', -1.0), ('left', 1.0)):  # Patient's right = image left.
    rx = s * rng_a.uniform(0.13, 0.155)
    cx = mid + sign * (s * 0.065 + rx * rng_a.uniform(0.95, 1.1))
    lungs_canvas[name] = (cx, lung_cy + rng_a.normal(0.0, 0.01 * s), rx, lung_ry * rng_a.uniform(0.95, 1.05))
  tissue = rng_a.uniform(0.45, 0.55)
  img = 0.04 + (tissue - 0.04) * body
  lung_mask = np.zeros((s, s), np.float32)
  for cx, cy, rx, ry in lungs_canvas.values():
    lung_mask = np.maximum(lung_mask, ellipse(cx, cy, rx, ry))
  # Ribs: faint bright arcs across both lungs.
  ribs = Image.new('L', (s, s), 0)
  rdraw = ImageDraw.Draw(ribs)
  n_ribs = int(rng_a.integers(5, 8))
  top = lung_cy - lung_ry
  for k in range(n_ribs):
    y = top + (k + 0.5) * 1.8 * lung_ry / n_ribs
    for cx, _, rx, _ in lungs_canvas.values():
      box = [cx - 1.4 * rx, y - 0.25 * lung_ry, cx + 1.4 * rx, y + 0.25 * lung_ry]
      rdraw.arc(box, 200, 340, fill=255, width=max(1, int(round(s / 64))))
  ribs_a = np.asarray(ribs, np.float32) / 255.0
  lung_val = rng_a.uniform(0.12, 0.2)
  lung_img = lung_val + rng_a.uniform(0.06, 0.1) * ribs_a
  img = img * (1.0 - lung_mask) + lung_img * lung_mask

  # --- Findings inside the lungs (own random stream, so drawing them changes nothing else).
  if findings['consolidation']:
    for name in _sides(findings['consolidation']):
      cx, cy, rx, ry = lungs_canvas[name]
      lateral = -1.0 if name == 'right' else 1.0
      blobs = np.zeros((s, s), np.float32)
      for _ in range(int(rng_f.integers(1, 4))):
        bx = cx + lateral * rx * rng_f.uniform(0.0, 0.45)
        by = cy + ry * rng_f.uniform(0.45, 0.72)
        sig = rx * rng_f.uniform(0.3, 0.45)
        blobs = np.maximum(blobs, np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * sig * sig)))
      amp = rng_f.uniform(0.3, 0.4)
      if draw_findings:
        img = img + amp * blobs * ellipse(cx, cy, rx, ry)
  if findings['effusion']:
    for name in _sides(findings['effusion']):
      cx, cy, rx, ry = lungs_canvas[name]
      lateral = -1.0 if name == 'right' else 1.0
      level = cy + ry * rng_f.uniform(0.6, 0.78)
      # Meniscus: the fluid climbs higher laterally.
      surface = level - 0.25 * ry * np.clip(lateral * (xx - cx) / rx, 0.0, 1.0) ** 2
      fluid = np.clip(yy - surface + 0.5, 0.0, 1.0) * ellipse(cx, cy, rx, ry)
      if draw_findings:
        img = img * (1.0 - fluid) + (tissue + 0.05) * fluid
  # --- Mediastinum and heart on top of the lungs.
  heart_rx = s * rng_a.uniform(0.115, 0.13)
  if findings['cardiomegaly'] and draw_findings:
    heart_rx = s * rng_f.uniform(0.175, 0.2)
  heart_cx = mid + s * 0.045 + 0.25 * (heart_rx - s * 0.12)  # Grows mostly towards the patient's left.
  heart_cy = lung_cy + lung_ry * rng_a.uniform(0.42, 0.52)
  heart = ellipse(heart_cx, heart_cy, heart_rx, heart_rx * rng_a.uniform(0.72, 0.82))
  med = np.clip((s * 0.06 - np.abs(xx - mid)) / 2.0 + 0.5, 0.0, 1.0) * (yy < heart_cy)
  heart_val = tissue + rng_a.uniform(0.08, 0.14)
  img = img * (1.0 - np.maximum(heart, med)) + heart_val * np.maximum(heart, med)

  # --- Acquisition: brightness / contrast, blur, downsample, noise.
  img = np.clip(img, 0.0, 1.0) ** rng_j.uniform(0.85, 1.15) * rng_j.uniform(0.85, 1.1)
  img = _blur(np.clip(img, 0.0, 1.0))
  img = img.reshape(size, _SS, size, _SS).mean(axis=(1, 3))
  img = img + rng_n.normal(0.0, rng_n.uniform(0.01, 0.025), img.shape)
  out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)[..., None]
  lungs = {k: tuple(float(v) / _SS for v in box) for k, box in lungs_canvas.items()}
  meta = {'findings': findings, 'patient_id': patient_id(index), 'lungs': lungs}
  return out, label_vector(findings), make_report(findings, index=index, seed=seed), meta


# --- Reports: one sentence per finding in the FINDINGS section (varied wording, random order), then an
# IMPRESSION that names the present findings. Positive sentences never contain 'no', 'normal' or
# 'without'; negative ones always do or name no finding keyword, so a keyword parser can read them back.
# Side-dependent phrases: index 0 for one side, the 'both' entries name no side but say "bilateral(ly)".
_PHRASES = {
    'right': {'side': 'right', 'zone': 'right lower zone', 'base': 'right base',
              'angle': 'right costophrenic angle', 'effusion': 'effusion'},
    'left': {'side': 'left', 'zone': 'left lower zone', 'base': 'left base',
             'angle': 'left costophrenic angle', 'effusion': 'effusion'},
    'both': {'side': 'bilateral', 'zone': 'lower zones bilaterally', 'base': 'bases bilaterally',
             'angle': 'costophrenic angles bilaterally', 'effusion': 'effusions'},
}
_POSITIVE = {
    'cardiomegaly': ('The heart is enlarged.', 'Cardiomegaly.', 'The cardiac silhouette is enlarged.',
                     'Enlarged cardiac silhouette.'),
    'consolidation': ('Consolidation in the {zone}.', '{Side} lower zone opacity consistent with consolidation.',
                      'Airspace consolidation at the {base}.', 'There is {side} basal consolidation.'),
    'effusion': ('{Side} pleural {effusion}.', 'Small {side} pleural {effusion}.',
                 'Pleural fluid layering at the {base}, consistent with effusion.',
                 'Blunting of the {angle} due to pleural {effusion}.'),
}
_NEGATIVE = {
    'cardiomegaly': ('Heart size is normal.', 'The cardiac silhouette is within normal limits.',
                     'No cardiomegaly.', 'Normal heart size.'),
    'consolidation': ('No focal consolidation.', 'The lungs are clear.', 'No consolidation.',
                      'Lungs are clear without consolidation.'),
    'effusion': ('No pleural effusion.', 'No effusion.', 'Costophrenic angles are sharp; no pleural effusion.',
                 'There is no pleural effusion.'),
}
_IMPRESSION = {'cardiomegaly': 'cardiomegaly', 'consolidation': '{side} lower zone consolidation',
               'effusion': '{side} pleural {effusion}'}
_NORMAL_IMPRESSION = ('No acute cardiopulmonary abnormality.', 'Normal chest radiograph.',
                      'No acute cardiopulmonary process.')
_PREAMBLE = ('', 'Frontal view of the chest. ', 'PA view of the chest. ')


def _fill(template: str, side: str | None) -> str:
  words = _PHRASES[side] if side else {k: '' for k in _PHRASES['right']}
  return template.format(Side=words['side'].capitalize(), **words)


def make_report(findings: dict, *, index: int, seed: int = 0) -> str:
  """The templated report of `findings` ("FINDINGS: ...\\nIMPRESSION: ..."), wording from (seed, index)."""
  rng = np.random.default_rng([seed, int(index), 0xE4])
  sentences = []
  for f in FINDINGS:
    pool = _POSITIVE[f] if findings[f] else _NEGATIVE[f]
    side = findings[f] if isinstance(findings[f], str) else None
    sentences.append(_fill(pool[int(rng.integers(len(pool)))], side))
  order = rng.permutation(len(sentences))
  body = _PREAMBLE[int(rng.integers(len(_PREAMBLE)))] + ' '.join(sentences[i] for i in order)
  present = [_fill(_IMPRESSION[f], findings[f] if isinstance(findings[f], str) else None)
             for f in FINDINGS if findings[f]]
  if not present:
    impression = _NORMAL_IMPRESSION[int(rng.integers(len(_NORMAL_IMPRESSION)))]
  else:
    # One clause per finding ("Cardiomegaly; left pleural effusion."), so each side word sits with its finding.
    impression = '; '.join(present)
    impression = impression[0].upper() + impression[1:] + '.'
  return f'FINDINGS: {body}\nIMPRESSION: {impression}'


def generate(num: int, *, size: int = 64, seed: int = 0,
             start: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Examples start..start+num-1: (images uint8 [num, size, size, 1], labels int64 [num, K], reports)."""
  images = np.empty((num, size, size, 1), np.uint8)
  labels = np.empty((num, NUM_FINDINGS), np.int64)
  reports = []
  for i in range(num):
    images[i], labels[i], report, _ = render_example(start + i, size=size, seed=seed)
    reports.append(report)
  return images, labels, reports


if __name__ == '__main__':
  # python -m medssl_jax.synthetic.cxr /tmp/cxr.png : a grid of 16 examples, reports printed.
  import sys
  out = sys.argv[1] if len(sys.argv) > 1 else 'synthetic_cxr.png'
  images, labels, reports = generate(16, size=64)
  grid = np.concatenate([np.concatenate(list(images[r * 4:(r + 1) * 4, ..., 0]), axis=1) for r in range(4)])
  Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(out)
  for i, (lab, rep) in enumerate(zip(labels, reports)):
    print(i, lab.tolist(), rep.replace('\n', ' | '))
  print(f'wrote {out}')
