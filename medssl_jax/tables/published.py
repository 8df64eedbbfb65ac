"""Published results that tables put beside their own rows, looked up by the dataset a row actually opens.

MedMNIST v2's benchmark (Yang et al. 2023, Scientific Data 10:41, the "ResNet-18 (28)" row of its 2D results
table; the values as ../shared/TARGETS.md quotes them): test-split AUC and ACC. Datasets without a row here get
none, and the runner says so; add one with its source to extend it.
"""
from __future__ import annotations

MEDMNIST_V2_SOURCE = "Yang et al. 2023 (MedMNIST v2)"
# builder config: (AUC, ACC) of ResNet-18 (28), trained from scratch with all labels.
MEDMNIST_V2_RESNET18_28 = {
    "pneumoniamnist": (0.944, 0.854),
    "retinamnist": (0.717, 0.524),
    "breastmnist": (0.901, 0.863),
    "dermamnist": (0.917, 0.735),
    "bloodmnist": (0.998, 0.958),
}
REGISTRIES = ("medmnist_v2_resnet18_28",)


def rows(registry: str, datasets) -> tuple[list[dict], list[str]]:
  """(published rows of `registry` for the dataset references `datasets` ('medmnist/retinamnist'), the datasets
  it has no row for)."""
  if registry not in REGISTRIES:
    raise ValueError(f"table.published_from={registry!r} is not known; valid choices: {list(REGISTRIES)}")
  found, missing = [], []
  for dataset in datasets:
    builder, _, config = dataset.partition("/")
    values = MEDMNIST_V2_RESNET18_28.get(config) if builder == "medmnist" else None
    if values is None:
      missing.append(dataset)
      continue
    found.append(dict(dataset=dataset, method="ResNet-18 (28)", protocol="supervised", labels="100%",
                      auroc=values[0], accuracy=values[1], source=MEDMNIST_V2_SOURCE))
  return found, missing
