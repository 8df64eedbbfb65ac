"""Fixed low-label subsets: 1%, 10%, any fraction or k per class; stratified, seeded, patient-aware.

A subset is chosen from a split's labels (and patient ids, where the dataset has them) and nothing
else, so the same spec and seed give the same records on any machine, in any process count. Choices
are nested: for one seed, the 1% subset lies inside the 10% subset, which lies inside 50%, so
label-efficiency curves compare like with like.

How: within each stratum (single-label data: the class; patients: their most common class;
multi-label data: one stratum, since the label combinations are too many), units (examples, or whole
patients when patient ids are given) are ordered by a hash of (seed, unit key) and taken in that
order until the stratum's quota is met: round(fraction x stratum size), at least 1, or k per class.
Patient-aware means a patient's images are selected together, never split between the labelled
subset and the rest.

The chosen record indices are written to a JSON file with a sha256 of the index list, so a run
names exactly which labels it saw, and another run can reuse the file (`read`).
"""
from __future__ import annotations

import collections
import hashlib
import json
import re
from typing import Sequence

import numpy as np

from medssl_jax import paths

_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_SHOT = re.compile(r"^\s*(?:k\s*=\s*(\d+)|(\d+)\s*(?:-?\s*shot|per[\s_-]*class))\s*$", re.IGNORECASE)


def parse_spec(spec: str | float | int) -> tuple[str, float]:
  """Parses a subset spec: '' / 'all' / '100%' -> ('all', 1); '10%' or 0.1 -> ('fraction', 0.1);
  'k=5', '5-shot', '5 per class' -> ('per_class', 5).

  Raises:
    ValueError with the accepted forms.
  """
  if isinstance(spec, (int, float)) and not isinstance(spec, bool):
    if 0 < spec <= 1:
      return ("all", 1.0) if spec == 1 else ("fraction", float(spec))
    raise ValueError(f"label subset fraction {spec!r} must be in (0, 1]")
  text = str(spec).strip()
  if text in ("", "all"):
    return ("all", 1.0)
  m = _FRACTION.match(text)
  if m:
    value = float(m.group(1)) / 100
    if not 0 < value <= 1:
      raise ValueError(f"label subset {spec!r}: the percentage must be in (0, 100]")
    return ("all", 1.0) if value == 1 else ("fraction", value)
  m = _SHOT.match(text)
  if m:
    k = int(m.group(1) or m.group(2))
    if k <= 0:
      raise ValueError(f"label subset {spec!r}: k must be positive")
    return ("per_class", float(k))
  try:
    return parse_spec(float(text))
  except ValueError:
    pass
  raise ValueError(f"label subset {spec!r} not understood; use '' or 'all', a percentage like '1%' or '10%', "
                   "a fraction like 0.1, or k per class like 'k=5' / '5-shot'")


def _key_hash(seed: int, key) -> int:
  return int.from_bytes(hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()[:8], "little")


def select(labels: Sequence, *, spec: str | float, seed: int = 0,
           patient_ids: Sequence[str] | None = None) -> np.ndarray:
  """Record indices of the labelled subset, sorted.

  Args:
    labels: one label per record: an int class, or a 0/1 vector (multi-label, not stratified).
    spec: see `parse_spec`.
    seed: subset seed; different seeds give different (overlapping) subsets.
    patient_ids: optional patient id per record ("" = unknown: the record is its own patient).

  Raises:
    ValueError if k per class asks for more examples than a class has, naming the class.
  """
  kind, value = parse_spec(spec)
  labels = np.asarray(labels)
  n = len(labels)
  if n == 0:
    raise ValueError("cannot choose a label subset of an empty split")
  if kind == "all":
    return np.arange(n)
  multi = labels.ndim > 1
  if kind == "per_class" and multi:
    raise ValueError("k per class is not defined for multi-label data; use a percentage")
  units: dict[str, list[int]] = collections.defaultdict(list)
  for i in range(n):
    pid = patient_ids[i] if patient_ids is not None else ""
    pid = pid.decode() if isinstance(pid, bytes) else str(pid)
    units[f"patient:{pid}" if pid else f"record:{i}"].append(i)
  strata: dict[int, list[str]] = collections.defaultdict(list)
  for unit, idx in units.items():
    strata[0 if multi else collections.Counter(int(labels[i]) for i in idx).most_common(1)[0][0]].append(unit)
  chosen: list[int] = []
  for label in sorted(strata):
    ordered = sorted(strata[label], key=lambda u: (_key_hash(seed, u), u))
    size = sum(len(units[u]) for u in ordered)
    if kind == "fraction":
      quota = max(1, int(round(value * size)))
    else:
      quota = int(value)
      if quota > size:
        raise ValueError(f"{int(value)} per class requested but class {label} has only {size} records")
    taken = 0
    for u in ordered:
      if taken >= quota:
        break
      chosen.extend(units[u])
      taken += len(units[u])
  return np.asarray(sorted(chosen), np.int64)


def digest(indices: Sequence[int]) -> str:
  """sha256 of the sorted index list as text ('0,5,17,...'), the subset's fingerprint."""
  return hashlib.sha256(",".join(str(int(i)) for i in sorted(indices)).encode()).hexdigest()


def safe_name(text: str) -> str:
  """`text` with every run of characters other than letters, digits, '_', '.' and '-' made one '-'."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def file_name(*, dataset: str, split: str, spec: str, seed: int) -> str:
  """A descriptive file name, e.g. 'medmnist-retinamnist_train_10pct_seed0.json'."""
  kind, value = parse_spec(spec)
  tag = {"all": "all", "fraction": f"{value * 100:g}pct", "per_class": f"{int(value)}shot"}[kind]
  return f"{safe_name(dataset)}_{safe_name(split)}_{tag}_seed{seed}.json"


def write(path: str, *, indices: Sequence[int], spec: str, seed: int, dataset: str, split: str,
          num_records: int, labels: Sequence | None = None) -> dict:
  """Writes the subset (indices, spec, seed, dataset, split, class counts, sha256) as JSON.

  An existing file with the same content is left alone; one with different indices is never
  overwritten (ValueError naming it), so a run cannot silently change the labels another run used.
  """
  indices = [int(i) for i in sorted(indices)]
  record = {"dataset": dataset, "split": split, "spec": str(spec), "seed": int(seed), "num_records": int(num_records),
            "num_selected": len(indices), "sha256": digest(indices)}
  if labels is not None:
    labels = np.asarray(labels)
    if labels.ndim == 1:
      record["class_counts"] = {str(k): int(v) for k, v in sorted(collections.Counter(labels[indices].tolist()).items())}
  record["indices"] = indices
  if paths.exists(path):
    old = read(path)
    if old["sha256"] != record["sha256"]:
      raise ValueError(f"{path} already holds a different subset (sha256 {old['sha256'][:12]}, "
                       f"{old['num_selected']} records); not overwriting it. Move it away or use another workdir.")
    return old
  paths.makedirs(paths.path(path).parent)
  paths.write_text(path, json.dumps(record, indent=1))  # Atomic: a reader never sees half a file.
  return record


def read(path: str, *, dataset: str | None = None, split: str | None = None,
         num_records: int | None = None) -> dict:
  """Reads and verifies a subset file (sha256, and dataset/split/size when given).

  Raises:
    FileNotFoundError / ValueError naming the file and the field that does not match.
  """
  if not paths.exists(path):
    raise FileNotFoundError(f"label subset file {path} does not exist")
  try:
    record = json.loads(paths.read_text(path))
    indices = [int(i) for i in record["indices"]]
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"label subset file {path} is not a subset written by medssl_jax ({e})") from e
  if digest(indices) != record.get("sha256"):
    raise ValueError(f"label subset file {path}: sha256 of its indices does not match the recorded "
                     f"{record.get('sha256')!r}; the file was edited or damaged")
  for key, want in (("dataset", dataset), ("split", split), ("num_records", num_records)):
    if want is not None and record.get(key) != want:
      raise ValueError(f"label subset file {path} was made for {key}={record.get(key)!r}, not {want!r}")
  if indices and (min(indices) < 0 or (num_records is not None and max(indices) >= num_records)):
    raise ValueError(f"label subset file {path} has indices outside [0, {num_records})")
  return record
