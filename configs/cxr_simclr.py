"""Chest X-ray pretraining arm 'simclr': SimCLR on the radiographs alone (the image-only arm; reports unused).

Reproduces: one arm of Huang et al. 2023 (MIDL) image-only vs image+report vs joint comparison; recipe, data and
            variants (none = MIMIC-CXR-JPG + reports at 224 px, a GPU job; :cpu synthetic paired CXRs on the
            2-core CPU; :quick CI smoke) in configs/_cxr.py.
Command:    python main.py --config=configs/cxr_simclr.py:cpu --workdir=/tmp/cxr_simclr
            then e.g. --config.mode=linear_eval --config.eval.train_subset=10% on the same workdir for a label
            fraction, and (paper scale) --config.mode=transfer for CheXpert / NIH ChestX-ray14.
Outputs:    probe_results.md (linear probe vs a random encoder).
"""
from medssl_jax import config as config_lib

_cxr = config_lib.sibling(__file__, "_cxr")


def get_config(arg=None):
  return _cxr.get("simclr", arg)
