"""Published results that tables put beside their own rows, looked up by the dataset a row actually opens.

Registries (`table.published_from`):

medmnist_v2_resnet18_28: MedMNIST v2's 2D benchmark (Yang et al. 2023, Scientific Data 10:41,
doi:10.1038/s41597-022-01721-8; arXiv 2110.14795, the "ResNet-18 (28)" row of its 2D results table): test-split AUC
and ACC of all twelve 2D datasets (builder `medmnist`). Five of them are quoted in ../shared/TARGETS.md. The other
seven were read from public reproductions that quote the table (no copy of the paper was reachable here):
PathMNIST, OCTMNIST, TissueMNIST, OrganAMNIST and ChestMNIST's AUC in two or more independent ones; ChestMNIST's
ACC, OrganCMNIST and OrganSMNIST in one (marked below; check them against the paper's table before quoting them).

medmnist_v2_3d: the same paper's 3D benchmark table (MedMNIST3D at 28³, test split, trained from scratch with all
labels; builder `medmnist3d`): the ResNet-18 / ResNet-50 rows with 2.5D, 3D and ACS convolutions, several rows per
dataset. No copy of the paper was reachable here either; every value was read from copies of the table:
  [page]   the MedMNIST project page's own source, github.com/MedMNIST/medmnist.github.io v2.html at commit 6f5bc1a5
           ("Benchmarking Performance on MedMNIST3D"). The page predates the published table: its NoduleMNIST3D
           test split had 526 volumes (310 in the released files the builder reads), and its ResNet-50 + 3D
           numbers of NoduleMNIST3D, AdrenalMNIST3D and VesselMNIST3D differ from [site]'s. So it is used for
           OrganMNIST3D, FractureMNIST3D and SynapseMNIST3D only, whose ResNet-50 + 3D row it shares with [site]
           and whose OrganMNIST3D ResNet-18 rows it shares with [organ].
  [site]   github.com/habib-analyst/MedMNIST_v2_Reproducibility_Benchmark configs/benchmark-references.json,
           "ResNet-50 + 3D" of all six datasets, read from medmnist.com/v2.
  [organ]  an OrganMNIST3D equivariance study's published-baselines list (analyze_results.py, "Yang et al. 2023"):
           OrganMNIST3D ResNet-18 + 3D and ResNet-18 + ACS.
  [card]   the VesselCNN model card (huggingface.co/habib-analyst/vesselcnn, by [site]'s author): the paper's
           VesselMNIST3D ResNet-18 (3D) AUC. Another benchmark's README gives it as "~0.87".
Each row's note says how many of these copies hold its values. NoduleMNIST3D and AdrenalMNIST3D have no
ResNet-18 row: no copy of the published values was found (the one candidate seen, a NoduleMNIST3D ResNet-18 (3D)
"0.879 / 84.5%" in a single repository, is corroborated by no other copy). VesselMNIST3D's ResNet-18 + 3D row has
no accuracy for the same reason.

Datasets without a row here get none, and the runner says so (the 64 px / 64³ configs included: the tables are
of 28 px images); add one with its source to extend it.
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

MEDMNIST_V2_3D_SOURCE = "Yang et al. 2023 (MedMNIST v2), 3D benchmark table, https://doi.org/10.1038/s41597-022-01721-8"
# How many copies of the table hold a row's values (the module docstring names them).
_TWO = "28³; AUC and ACC in two copies of the table"
_PAGE = "28³; one copy only (the project page): check against the paper's table"
_SITE = "28³; one copy only (a reproduction quoting medmnist.com/v2): check against the paper's table"
# builder config: {method: (AUC, ACC or None when not found, note)}, in the paper's row order.
MEDMNIST_V2_3D = {
    "organmnist3d": {
        "ResNet-18 + 2.5D": (0.977, 0.788, _PAGE),
        "ResNet-18 + 3D": (0.996, 0.907, _TWO + " ([page], [organ]; a third gives ~0.996 / ~0.907)"),
        "ResNet-18 + ACS": (0.994, 0.900, _TWO + " ([page], [organ])"),
        "ResNet-50 + 2.5D": (0.974, 0.769, _PAGE),
        "ResNet-50 + 3D": (0.994, 0.883, _TWO + " ([page], [site])"),
        "ResNet-50 + ACS": (0.994, 0.889, _PAGE),
    },
    "nodulemnist3d": {
        "ResNet-50 + 3D": (0.875, 0.847, _SITE),
    },
    "fracturemnist3d": {
        "ResNet-18 + 2.5D": (0.587, 0.451, _PAGE),
        "ResNet-18 + 3D": (0.712, 0.508, _PAGE),
        "ResNet-18 + ACS": (0.714, 0.497, _PAGE),
        "ResNet-50 + 2.5D": (0.552, 0.397, _PAGE),
        "ResNet-50 + 3D": (0.725, 0.494, _TWO + " ([page], [site])"),
        "ResNet-50 + ACS": (0.750, 0.517, _PAGE),
    },
    "adrenalmnist3d": {
        "ResNet-50 + 3D": (0.828, 0.745, _SITE),
    },
    "vesselmnist3d": {
        "ResNet-18 + 3D": (0.874, None, "28³; AUC in one copy ([card]; another gives ~0.87), ACC not found: check "
                                        "against the paper's table"),
        "ResNet-50 + 3D": (0.907, 0.918, _SITE),
    },
    "synapsemnist3d": {
        "ResNet-18 + 2.5D": (0.634, 0.696, _PAGE),
        "ResNet-18 + 3D": (0.820, 0.745, "28³; AUC in two copies ([page]; another gives ~0.82), ACC on the project "
                                         "page only"),
        "ResNet-18 + ACS": (0.705, 0.722, _PAGE),
        "ResNet-50 + 2.5D": (0.669, 0.735, _PAGE),
        "ResNet-50 + 3D": (0.851, 0.795, _TWO + " ([page], [site]; a third gives ~0.85)"),
        "ResNet-50 + ACS": (0.719, 0.709, _PAGE),
    },
}
REGISTRIES = ("medmnist_v2_resnet18_28", "medmnist_v2_3d")


def _medmnist_v2_2d(builder: str, config: str) -> list[dict]:
  values = MEDMNIST_V2_RESNET18_28.get(config) if builder == "medmnist" else None
  if values is None:
    return []
  return [dict(method="ResNet-18 (28)", protocol="supervised", labels="100%", auroc=values[0], accuracy=values[1],
               source=MEDMNIST_V2_SOURCE)]


def _medmnist_v2_3d(builder: str, config: str) -> list[dict]:
  methods = MEDMNIST_V2_3D.get(config, {}) if builder == "medmnist3d" else {}
  found = []
  for method, (auroc, accuracy, note) in methods.items():
    row = dict(method=method, protocol="supervised", labels="100%", auroc=auroc, source=MEDMNIST_V2_3D_SOURCE,
               note=note)
    if accuracy is not None:
      row["accuracy"] = accuracy
    found.append(row)
  return found


_LOOKUP = {"medmnist_v2_resnet18_28": _medmnist_v2_2d, "medmnist_v2_3d": _medmnist_v2_3d}


def rows(registry: str, datasets) -> tuple[list[dict], list[str]]:
  """(published rows of `registry` for the dataset references `datasets` ('medmnist/retinamnist',
  'medmnist3d/organmnist3d'), one or more per dataset, the datasets it has no row for)."""
  if registry not in REGISTRIES:
    raise ValueError(f"table.published_from={registry!r} is not known; valid choices: {list(REGISTRIES)}")
  found, missing = [], []
  for dataset in datasets:
    builder, _, config = dataset.partition("/")
    dataset_rows = _LOOKUP[registry](builder, config)
    if not dataset_rows:
      missing.append(dataset)
    found += [dict(dataset=dataset, **row) for row in dataset_rows]
  return found, missing
