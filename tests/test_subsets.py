"""Low-label subsets (medssl_jax.data.subsets) and patient-level splits (tfds_builders.common)."""
import json

import numpy as np
import pytest

from medssl_jax.data import subsets
from tfds_builders import common


@pytest.mark.parametrize("spec,expected", [
    ("", ("all", 1.0)), ("all", ("all", 1.0)), ("100%", ("all", 1.0)), ("10%", ("fraction", 0.1)),
    ("1 %", ("fraction", 0.01)), (0.25, ("fraction", 0.25)), ("0.5", ("fraction", 0.5)),
    ("k=5", ("per_class", 5.0)), ("5-shot", ("per_class", 5.0)), ("10 per class", ("per_class", 10.0)),
])
def test_parse_spec(spec, expected):
  assert subsets.parse_spec(spec) == expected


@pytest.mark.parametrize("bad", ["0%", "150%", "ten", "k=0", 1.5, -0.1])
def test_parse_spec_rejects(bad):
  with pytest.raises(ValueError, match="label subset"):
    subsets.parse_spec(bad)


def _labels(counts):
  return np.concatenate([np.full(c, k) for k, c in enumerate(counts)])


def test_fraction_is_stratified_deterministic_and_nested():
  labels = np.random.default_rng(0).permutation(_labels([500, 300, 150, 40, 10]))
  one = subsets.select(labels, spec="1%", seed=0)
  ten = subsets.select(labels, spec="10%", seed=0)
  # round(1% of each class), at least one of every class; 10% exactly per class.
  assert np.bincount(labels[one], minlength=5).tolist() == [5, 3, 2, 1, 1]
  assert np.bincount(labels[ten], minlength=5).tolist() == [50, 30, 15, 4, 1]
  assert set(one) <= set(ten)  # Nested for one seed.
  np.testing.assert_array_equal(one, subsets.select(labels, spec="1%", seed=0))
  assert not np.array_equal(ten, subsets.select(labels, spec="10%", seed=1))
  assert list(ten) == sorted(ten) and len(set(ten)) == len(ten)
  np.testing.assert_array_equal(subsets.select(labels, spec="100%", seed=0), np.arange(len(labels)))


def test_selection_does_not_depend_on_other_records():
  """A record's membership depends on its own key and class, so it is stable under appended data."""
  labels = _labels([200, 200])
  a = set(subsets.select(labels, spec="k=20", seed=3).tolist())
  b = set(subsets.select(np.concatenate([labels, np.ones(50, int)]), spec="k=20", seed=3).tolist())
  assert {i for i in a if labels[i] == 0} == {i for i in b if i < 200 and labels[i] == 0}


def test_k_per_class_and_too_few():
  labels = _labels([30, 12, 7])
  sel = subsets.select(labels, spec="5-shot", seed=0)
  assert np.bincount(labels[sel]).tolist() == [5, 5, 5]
  with pytest.raises(ValueError, match="8 per class requested but class 2 has only 7"):
    subsets.select(labels, spec="k=8", seed=0)


def test_patient_aware_keeps_patients_whole():
  rng = np.random.default_rng(1)
  patients = np.repeat([f"p{i:03d}" for i in range(200)], rng.integers(1, 5, 200))
  labels = np.asarray([int(p[1:]) % 2 for p in patients])
  sel = subsets.select(labels, spec="10%", seed=0, patient_ids=patients)
  chosen = set(patients[sel])
  assert {i for i, p in enumerate(patients) if p in chosen} == set(sel.tolist())  # Whole patients only.
  for k in (0, 1):
    share = np.sum(labels[sel] == k) / np.sum(labels == k)
    assert 0.08 < share < 0.14, share


def test_multilabel_fraction():
  labels = (np.random.default_rng(0).random((400, 14)) < 0.1).astype(int)
  sel = subsets.select(labels, spec="10%", seed=0)
  assert len(sel) == 40
  with pytest.raises(ValueError, match="multi-label"):
    subsets.select(labels, spec="k=5", seed=0)


def test_write_read_round_trip_and_no_overwrite(tmp_path):
  labels = _labels([50, 50])
  sel = subsets.select(labels, spec="10%", seed=0)
  name = subsets.file_name(dataset="medmnist/retinamnist", split="train", spec="10%", seed=0)
  assert name == "medmnist-retinamnist_train_10pct_seed0.json"
  path = tmp_path / name
  rec = subsets.write(str(path), indices=sel, spec="10%", seed=0, dataset="medmnist/retinamnist", split="train",
                      num_records=100, labels=labels)
  assert rec["class_counts"] == {"0": 5, "1": 5} and rec["sha256"] == subsets.digest(sel)
  back = subsets.read(str(path), dataset="medmnist/retinamnist", split="train", num_records=100)
  assert back["indices"] == sel.tolist()
  subsets.write(str(path), indices=sel, spec="10%", seed=0, dataset="medmnist/retinamnist", split="train",
                num_records=100)  # Same content: fine.
  other = subsets.select(labels, spec="10%", seed=1)
  with pytest.raises(ValueError, match="already holds a different subset"):
    subsets.write(str(path), indices=other, spec="10%", seed=1, dataset="d", split="train", num_records=100)
  assert subsets.read(str(path))["indices"] == sel.tolist()  # Untouched.
  with pytest.raises(ValueError, match="num_records=100, not 99"):
    subsets.read(str(path), num_records=99)
  data = json.loads(path.read_text())
  data["indices"][0] += 1
  path.write_text(json.dumps(data))
  with pytest.raises(ValueError, match="sha256 of its indices does not match"):
    subsets.read(str(path))


# ---------------------------------------------------------------- patient-level splits (builders)


def test_patient_split_no_leak_stratified_and_order_free():
  rng = np.random.default_rng(0)
  patients = [f"p{i}" for i in rng.integers(0, 300, 1000)]
  labels = [int(p[1:]) % 3 for p in patients]
  keys = [f"img{i:04d}" for i in range(1000)]
  fr = {"train": 0.7, "validation": 0.1, "test": 0.2}
  out = common.patient_split(keys, fractions=fr, seed=0, patient_ids=patients, labels=labels)
  assert sorted(sum(out.values(), [])) == list(range(1000))
  sets = {s: {patients[i] for i in idx} for s, idx in out.items()}
  assert not (sets["train"] & sets["test"] or sets["train"] & sets["validation"] or sets["validation"] & sets["test"])
  for s, f in fr.items():
    assert abs(len(out[s]) / 1000 - f) < 0.03, (s, len(out[s]))
  # The listing order of the files does not matter.
  perm = rng.permutation(1000)
  again = common.patient_split([keys[i] for i in perm], fractions=fr, seed=0,
                               patient_ids=[patients[i] for i in perm], labels=[labels[i] for i in perm])
  assert {s: sorted(keys[perm[i]] for i in idx) for s, idx in again.items()} == {
      s: sorted(keys[i] for i in idx) for s, idx in out.items()}
  assert common.patient_split(keys, fractions=fr, seed=1, patient_ids=patients, labels=labels) != out


def test_patient_split_without_patients_is_exact_per_class():
  keys = [f"{i:02d}" for i in range(45)]
  labels = [i % 3 for i in range(45)]
  out = common.patient_split(keys, fractions={"train": 9, "validation": 3, "test": 3}, seed=0, labels=labels)
  for s, n in (("train", 9), ("validation", 3), ("test", 3)):
    assert np.bincount([labels[i] for i in out[s]], minlength=3).tolist() == [n] * 3
