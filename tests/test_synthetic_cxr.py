"""Tests for the synthetic chest X-ray + report data (medssl_jax.synthetic.cxr, builder synthetic_cxr)."""
import re

import numpy as np
import pytest

from medssl_jax.data import pipeline
from medssl_jax.synthetic import cxr as sc

# An independent keyword reader of the reports: finding -> words that mention it in a sentence.
_KEYWORDS = {'cardiomegaly': ('cardiomegaly', 'enlarged'), 'consolidation': ('consolidation', 'opacity'),
             'effusion': ('effusion', 'effusions', 'fluid')}
_NEGATION = re.compile(r'\b(no|normal|without|clear|sharp)\b')


def parse_report(report):
  """(label vector, {finding: side}) read back from a report: a finding is present when a sentence
  that is not negated names it; its side is 'both' / 'right' / 'left' from the words of that sentence."""
  label, sides = np.zeros(len(sc.FINDINGS), np.int64), {}
  for sentence in re.split(r'(?<=[.;])\s+|\n', report.lower()):
    words = set(re.findall(r'[a-z]+', sentence))
    if _NEGATION.search(sentence):
      continue
    for k, f in enumerate(sc.FINDINGS):
      if words & set(_KEYWORDS[f]):
        label[k] = 1
        side = ('both' if any(w.startswith('bilateral') for w in words) else
                'right' if 'right' in words else 'left' if 'left' in words else None)
        assert not ('right' in words and 'left' in words), sentence
        sides.setdefault(f, set()).add(side)
  return label, sides


def test_render_is_deterministic_and_seeded():
  a = sc.render_example(5, size=32, seed=0)
  b = sc.render_example(5, size=32, seed=0)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert a[2] == b[2] and a[3] == b[3]
  c = sc.render_example(5, size=32, seed=1)
  assert not np.array_equal(a[0], c[0])
  assert a[0].shape == (32, 32, 1) and a[0].dtype == np.uint8 and a[1].dtype == np.int64


def test_reports_mention_exactly_the_labelled_findings():
  seen = set()
  for i in range(120):
    findings = sc.sample_findings(i)
    label = sc.label_vector(findings)
    report = sc.make_report(findings, index=i)
    parsed, sides = parse_report(report)
    np.testing.assert_array_equal(parsed, label, err_msg=report)
    for f in ('consolidation', 'effusion'):
      if findings[f]:
        # Every sentence naming a lateralised finding names its side (the impression too).
        assert sides[f] == {findings[f]}, (report, findings)
    # One negated sentence per absent finding in the FINDINGS section.
    body = report.lower().split('\nimpression:')[0]
    negated = [s for s in body.split('.') if _NEGATION.search(s)]
    assert len(negated) == int((label == 0).sum()), report
    seen.add(tuple(label))
  assert (0, 0, 0) in seen and len(seen) >= 6  # Normal and many combinations occur.


def test_labels_are_balanced_enough():
  labels = np.stack([sc.label_vector(sc.sample_findings(i)) for i in range(400)])
  np.testing.assert_allclose(labels.mean(0), sc.FINDING_PROB, atol=0.07)


def _lower_zone(meta, side, size):
  """Boolean [size, size] mask of a lung's lower third, lateral half (away from the heart)."""
  cx, cy, rx, ry = meta['lungs'][side]
  yy, xx = np.mgrid[0:size, 0:size] + 0.5
  inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 0.85
  lateral = xx <= cx if side == 'right' else xx >= cx
  return inside & lateral & (yy >= cy + ry / 3)


def _first(pred, limit=200):
  return next(i for i in range(limit) if pred(sc.sample_findings(i)))


@pytest.mark.parametrize('finding', ['consolidation', 'effusion'])
def test_findings_brighten_their_lower_zone_only(finding):
  size = 64
  i = _first(lambda f: f[finding] in ('right', 'left') and not f['cardiomegaly'])
  img, _, _, meta = sc.render_example(i, size=size)
  clean, _, _, _ = sc.render_example(i, size=size, draw_findings=False)
  side = meta['findings'][finding]
  other = 'left' if side == 'right' else 'right'
  img, clean = img[..., 0].astype(float), clean[..., 0].astype(float)
  zone, other_zone = _lower_zone(meta, side, size), _lower_zone(meta, other, size)
  assert img[zone].mean() > clean[zone].mean() + 15  # Drawn opacity / fluid on the labelled side.
  if not meta['findings'][{'effusion': 'consolidation', 'consolidation': 'effusion'}[finding]]:
    np.testing.assert_allclose(img[other_zone].mean(), clean[other_zone].mean(), atol=1.0)


def test_cardiomegaly_widens_the_heart():
  i = _first(lambda f: f['cardiomegaly'])
  img, _, _, meta = sc.render_example(i, size=64)
  clean, _, _, _ = sc.render_example(i, size=64, draw_findings=False)
  # Bright (heart) pixels inside the left lung's box grow when the heart is enlarged.
  cx, cy, rx, ry = meta['lungs']['left']
  box = (slice(int(cy), int(cy + ry)), slice(int(cx - rx), int(cx + rx)))
  assert (img[box] > 100).sum() > (clean[box] > 100).sum() + 20


def test_normal_example_is_unchanged_without_findings():
  i = _first(lambda f: not any(f.values()))
  np.testing.assert_array_equal(sc.render_example(i, size=32)[0],
                                sc.render_example(i, size=32, draw_findings=False)[0])


def test_patients_span_consecutive_pairs():
  assert sc.patient_id(0) == sc.patient_id(1) == 'synth00000' and sc.patient_id(2) == 'synth00001'


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  return pipeline.get_builder('synthetic_cxr', config='tiny', data_dir=str(tmp_path_factory.mktemp('tfds')))


def test_builder_splits_and_features(builder):
  assert builder.name == 'synthetic_cxr' and builder.builder_config.image_size == 32
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train': 64, 'validation': 32, 'test': 32}
  assert builder.info.features['image'].shape == (32, 32, 1)
  assert builder.info.features['label'].shape == (sc.NUM_FINDINGS,)


def test_load_split_arrays_reports_aligned_with_labels(builder):
  arrays = pipeline.load_split_arrays(builder, split='validation', extra_keys=('report', 'patient_id'))
  assert arrays['image'].shape == (32, 32, 32, 1) and arrays['label'].shape == (32, sc.NUM_FINDINGS)
  np.testing.assert_array_equal(arrays['id'], np.arange(64, 96))
  images, labels, reports = sc.generate(32, size=32, start=64)
  np.testing.assert_array_equal(arrays['image'], images)
  np.testing.assert_array_equal(arrays['label'], labels)
  got = [r.decode() if isinstance(r, bytes) else str(r) for r in arrays['report']]
  assert got == reports
  for report, label in zip(got, arrays['label']):
    np.testing.assert_array_equal(parse_report(report)[0], label)
  # Patient-disjoint splits: validation patients are not in train.
  train = pipeline.load_split_arrays(builder, split='train', extra_keys=('patient_id',))
  assert not set(train['patient_id'].tolist()) & set(arrays['patient_id'].tolist())


def test_odd_split_sizes_are_rejected(tmp_path):
  from tfds_builders.synthetic_cxr import SyntheticCxr, SyntheticCxrConfig
  bad = SyntheticCxrConfig(name='odd', image_size=32, num_train=3, num_validation=2, num_test=2)
  b = SyntheticCxr(config=bad, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"'num_train': 3"):
    b._split_generators(None)
