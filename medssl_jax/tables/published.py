"""Published results that tables put beside their own rows, looked up by the dataset a row actually opens.

MedMNIST v2's benchmark (Yang et al. 2023, Scientific Data 10:41, doi:10.1038/s41597-022-01721-8; arXiv 2110.14795,
the "ResNet-18 (28)" row of its 2D results table): test-split AUC and ACC of all twelve 2D datasets. Five of them are
quoted in ../shared/TARGETS.md. The other seven were read from public reproductions that quote the table (no copy of
the paper was reachable here): PathMNIST, OCTMNIST, TissueMNIST, OrganAMNIST and ChestMNIST's AUC in two or more
independent ones; ChestMNIST's ACC, OrganCMNIST and OrganSMNIST in one (marked below; check them against the paper's
table before quoting them). Datasets without a row here get none, and the runner says so; add one with its source
to extend it.
"""
from __future__ import annotations

MEDMNIST_V2_SOURCE = "Yang et al. 2023 (MedMNIST v2)"
# builder config: (AUC, ACC) of ResNet-18 (28), trained from scratch with all labels.
MEDMNIST_V2_RESNET18_28 = {
    "pathmnist": (0.983, 0.907),
    "chestmnist": (0.768, 0.947),  # ACC seen in one reproduction only.
    "dermamnist": (0.917, 0.735),
    "octmnist": (0.943, 0.743),
    "pneumoniamnist": (0.944, 0.854),
    "retinamnist": (0.717, 0.524),
    "breastmnist": (0.901, 0.863),
    "bloodmnist": (0.998, 0.958),
    "tissuemnist": (0.930, 0.676),
    "organamnist": (0.997, 0.935),
    "organcmnist": (0.992, 0.900),  # Seen in one reproduction only.
    "organsmnist": (0.972, 0.782),  # Seen in one reproduction only.
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
